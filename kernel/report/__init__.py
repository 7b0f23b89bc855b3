"""Reporting: logs and progress, the run's text files, pictures, TensorBoard, the layer table.

:mod:`.logs` (the ``kernel`` logger, progress lines), :mod:`.files` (``metrics.csv``, JSON, CSV
tables), :mod:`.plots` (figures any task uses), :mod:`.tb` (TensorBoard, optional),
:mod:`.reporter` (what a run redraws each epoch), :mod:`.summary` (``--summary``'s layer table).
"""
from .files import read_json, write_csv, write_json, write_metrics_csv
from .logs import Progress, attach_log_file, close_logging, setup_logging
from .reporter import EpochReporter
from .summary import layer_rows, summary_table
from .tb import TensorBoardLogger, scalar_tag

__all__ = ["write_csv", "read_json", "write_json", "write_metrics_csv", "Progress", "attach_log_file", "close_logging", "setup_logging",
           "EpochReporter", "layer_rows", "summary_table", "TensorBoardLogger", "scalar_tag"]
