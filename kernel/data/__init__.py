"""Data: reading images, sources (ImageFolder, CSV, shapes), splits, loaders and prediction inputs.

Layers, lowest first: :mod:`.images` (pixels from files), :mod:`.sources` (samples from folders and
CSVs), :mod:`.shapes` (the built-in procedural data), :mod:`.split` (train/val for classification),
:mod:`.loader` (transformed datasets and DataLoaders), :mod:`.prefetch` (batches finished on the device),
:mod:`.cache` (decoded pixels kept between epochs), :mod:`.inputs` (what to predict).
"""
from .folds import fold_indices, make_folds, read_folds_csv, write_folds_csv
from .guard import (BAD_IMAGES, REPORT, ReadGuard, name_files, read_error, read_report, settle_unreadable_inputs,
                    source_path, too_many_bad, too_many_error)
from .images import DEFAULT_DATA_CONFIG, IMAGE_EXTENSIONS, Draft, decoding, draft_request, fit_channel_stats, is_image_file, load_image
from .inputs import collect_inputs, index_sample_ids
from .loader import ImageList, TransformedDataset, build_loader, transform_draft
from .prefetch import DeviceLoader
from .sampler import EpochSampler, sample_seed
from .shapes import SHAPE_CLASSES, ShapesSource, draw_shape, write_shapes
from .sources import CsvSource, FolderSource, Subset, csv_column, match_image_ids, read_csv_rows
from .split import DataSplit, build_sources, sample_ids, stratified_split

__all__ = [
    "IMAGE_EXTENSIONS", "DEFAULT_DATA_CONFIG", "Draft", "decoding", "draft_request", "is_image_file", "load_image", "fit_channel_stats", "collect_inputs", "index_sample_ids", "ImageList",
    "TransformedDataset", "build_loader", "DeviceLoader", "transform_draft", "SHAPE_CLASSES", "ShapesSource", "draw_shape", "write_shapes",
    "CsvSource", "FolderSource", "Subset", "match_image_ids", "read_csv_rows", "csv_column", "DataSplit", "build_sources", "sample_ids",
    "stratified_split", "make_folds", "read_folds_csv", "write_folds_csv", "fold_indices", "BAD_IMAGES", "REPORT", "ReadGuard", "read_report", "source_path",
    "too_many_bad", "too_many_error", "name_files", "settle_unreadable_inputs", "read_error", "EpochSampler", "sample_seed",
]
