"""Distributed data parallel in one place: the process group, the all-reduce self-test, sums and gathers.

A run with several processes (``--devices N`` or ``torchrun``) has one process per device; rank 0 alone
writes files. NCCL joins GPUs, gloo CPUs (so the whole path runs in the tests). Every helper here is a
no-op in a single-process run, so the loop and the meters call them unconditionally.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, List, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = ["World", "world", "init_from_env", "self_test", "SelfTestFailed", "all_reduce_sum", "all_reduce_max",
           "gather_objects", "barrier", "wrap_ddp", "destroy", "gather_in_order"]

log = logging.getLogger("kernel")
# How long a collective may wait. Rank 0 works alone while the others wait at the next collective: an epoch's
# save and pictures, the out-of-fold pass, a whole test set's prediction at the end. A start-up hang (NCCL
# between Kaggle's T4s) is caught sooner, by the self-test's own limit.
GROUP_TIMEOUT_S = 3 * 3600.0


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size, local rank (its device index on the machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The running process group's shape, or a single process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


class SelfTestFailed(RuntimeError):
    """The first all-reduce did not come back in time (e.g. NCCL peer-to-peer hangs between Kaggle's T4s)."""


def init_from_env(device_type: str, timeout_s: float = GROUP_TIMEOUT_S) -> World:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT: torchrun's).

    NCCL for CUDA, gloo otherwise. On Kaggle, NCCL's peer-to-peer path between the two T4s is known to
    hang at start-up: ``NCCL_P2P_DISABLE=1`` is set unless the user set it.
    """
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and device_type == "cuda":
        os.environ.setdefault("NCCL_P2P_DISABLE", "1")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world()


def self_test(device: torch.device, timeout_s: float = 30.0) -> None:
    """All-reduce a tensor of ones across the group; raise :class:`SelfTestFailed` when it hangs or is wrong."""
    t = torch.ones(1, device=device)
    work = dist.all_reduce(t, async_op=True)
    try:
        done = work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as e:  # the backend's own timeout
        raise SelfTestFailed(f"the all-reduce self-test failed ({' '.join(str(e).split())[:120]})") from None
    if done is False or int(t.item()) != world().size:
        raise SelfTestFailed(f"the all-reduce self-test gave {t.item()} instead of {world().size}")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over every process (in place; returns it); unchanged in a single process."""
    if world().size > 1:
        on = t.to(_collective_device())  # a process that saw no batch still holds its sums on the CPU
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        t.copy_(on)
    return t


def all_reduce_max(value: float) -> float:
    """The largest ``value`` of any process: the processes agree on a decision (e.g. to stop now)."""
    if world().size == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def gather_objects(obj: Any) -> List[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if world().size == 1:
        return [obj]
    out: List[Any] = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (in a multi-process run); the parameters that are frozen now are
    left out, so the wrapper is rebuilt when ``--unfreeze-at`` releases them."""
    if world().size == 1:
        return model
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("every parameter is frozen: nothing to train")
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_in_order(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Every process's kept rows (its batches' ``torch.cat``; ``parts`` empty: none) as one (N, ...) CPU tensor in
    dataset order: an :class:`~kernel.data.sampler.EpochSampler` gives process r the rows r, r + P, r + 2P...
    In one process: the rows as they are."""
    mine = torch.cat(list(parts)).cpu() if parts else torch.zeros(0)
    if world().size == 1:
        return mine
    gathered = gather_objects(mine)
    filled = [p for p in gathered if p.numel()]
    if not filled:
        return torch.zeros(0)
    out = filled[0].new_empty((sum(len(p) for p in gathered), *filled[0].shape[1:]))
    for r, p in enumerate(gathered):
        if len(p):
            out[r::len(gathered)] = p
    return out
