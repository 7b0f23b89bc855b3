"""Every device of the machine from a plain ``python train.py``: one fresh process per device.

Started as a plain script (or ``main()`` from a notebook) with ``--devices`` asking for more than one
process, the run starts one process per device with ``torch.multiprocessing``'s *spawn* method: fresh
interpreters, never forks of a process that may have touched CUDA (the failure of notebook launchers on
Kaggle). A spawned child re-imports the parent's main module first, so the packed ``train.py`` installs
its import hook in every child. Each child gets the resolved options as a config file and the rendezvous
in its environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``: torchrun's variables), so the
same code path serves ``torchrun`` across machines. An error in any process ends them all: a user error
is the failing process's one line and exit status, a bug its traceback, printed once by the parent. When
the all-reduce self-test fails (NCCL between Kaggle's T4s), the run continues on one device.

Signals: Ctrl-C reaches every process of the terminal's group by itself, so the parent ignores it; a SIGTERM
sent to the parent alone (a container's stop) is passed on, and one sent to the whole group (``timeout``, SLURM)
reaches each child twice, which is harmless. Each child saves and exits as a single run does; the parent waits
for all of them to finish so (torch's join would end the others with SIGTERM as soon as the first exits 143).
"""
from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
import yaml

from ..cli import one_line
from ..config import options_to_dict
from ..options import Options
from .budget import StopSignals, process_start
from .seams import SEAMS

__all__ = ["devices_wanted", "auto_workers", "in_torchrun", "launch"]

log = logging.getLogger("kernel")
STOP_GRACE_S = 120.0  # how long the other processes may take to exit after one exited from a signal stop


def devices_wanted(devices: Any, device: str) -> int:
    """Processes to start: ``--devices N``, or auto: every visible GPU (one process on a CPU)."""
    if devices != "auto":
        return int(devices)
    return torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else 1


def auto_workers(processes: int) -> int:
    """``--workers auto``: the machine's CPUs shared among its processes, at most 8 each (Kaggle: 4 CPUs for
    2 GPUs -> 2 workers per process)."""
    return max(0, min(8, (os.cpu_count() or 2) // max(processes, 1)))


def in_torchrun() -> bool:
    """True inside a process started by torchrun (or by :func:`launch`): the group is to be joined."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(local_rank: int, config: str, n: int, port: int, start: float, entry: Callable[[Dict], int]) -> None:
    """One spawned process: torchrun's environment, then the entry (a user error: its exit status; a bug raises).

    A spawned process inherits the parent's ignored signals; it takes the defaults back (the run's own
    handlers save first)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), KERNEL_START_TIME=str(start))
    code = entry({"argv": ["--config", config]})
    if code:
        sys.exit(code)


def launch(opts: Options, n: int, entry: Callable[[Dict], int], single: Callable[[], int]) -> int:
    """Run ``entry`` in ``n`` spawned processes; returns the exit status. ``single()`` runs on one device
    in this process when the self-test fails. Errors: the first failing process's, printed once."""
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException, start_processes

    values = {**options_to_dict(opts), "devices": n}
    with tempfile.TemporaryDirectory(prefix="kernel-launch-") as tmp:
        config = str(Path(tmp) / "config.yaml")
        Path(config).write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
        log.info("starting %d processes, one per device (global batch %d)", n, n * opts.batch_size)
        old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
        try:
            # the time limit counts from this session's start, not from the children's
            ctx = start_processes(_child, args=(config, n, _free_port(), process_start(SEAMS.clock), entry), nprocs=n,
                                  join=False, start_method="spawn")
            signalled: List[int] = []  # the stop signals this process passed on: the children are saving, not failing
            old[signal.SIGTERM] = signal.signal(signal.SIGTERM,
                                                lambda signum, frame: _pass_on(ctx, signum, signalled))
            while not _join(ctx, signalled):
                pass
            return 0
        except ProcessExitedException as e:  # a user error (the child printed its line), a stop or a signal
            if e.exit_code and e.exit_code < 0:  # killed by a signal: the status a shell would give
                return 128 - e.exit_code
            return e.exit_code or 1
        except ProcessRaisedException as e:
            text = str(e)
            if "SelfTestFailed" in text:
                print(f"warning: {one_line(RuntimeError(text.strip().splitlines()[-1]))}; continuing on one device",
                      file=sys.stderr)
                for s, h in old.items():
                    signal.signal(s, h)
                return single()
            print(text.strip(), file=sys.stderr)  # a bug: the child's traceback, once
            return 1
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _join(ctx: Any, signalled: Sequence[int] = ()) -> bool:
    """``ctx.join()`` (True once every process has exited, 0 each; a failure raises), except during a signal
    stop: once this process passed a stop signal on (``signalled``, filled by the handler while we wait), or one
    child exited from a stop (130, 143), the others get ``STOP_GRACE_S`` to finish theirs first. They stopped at
    the same step and leave together, and torch's join would end those still exiting with SIGTERM."""
    running = {p.sentinel: p for p in ctx.processes if p.exitcode is None}
    if running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            # the sentinel closes a moment before the process can be reaped: its exit code needs the join
            running[sentinel].join()
    # a stop: exit 143/130, or the stop signal's default action (a group SIGTERM reaches a child twice, from the
    # sender and passed on by us, and the second can land after the child's handler is gone as it exits)
    stops = {*StopSignals.CODES.values(), *(-int(s) for s in StopSignals.CODES)}
    if signalled or any(p.exitcode in stops for p in ctx.processes):
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in ctx.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
    return ctx.join()


def _pass_on(ctx: Any, signum: int, signalled: List[int]) -> None:
    """Send ``signum`` to every child still running; ``signalled`` records it."""
    signalled.append(signum)
    for proc in ctx.processes:
        if proc.is_alive():
            os.kill(proc.pid, signum)
