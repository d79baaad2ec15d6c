"""Device selection and PyTorch DDP set-up when launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with ``WORLD_SIZE`` > 1 the process group is initialised from them (NCCL on CUDA, gloo on CPU) and
each process uses GPU ``LOCAL_RANK``. A plain ``nucleisam train`` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nucleisam.errors import NucleisamError


def resolve_device(preference: str, *, local_rank: int = 0) -> torch.device:
    """ "auto" → CUDA when available else CPU; "cuda" without a GPU is an error naming the option."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        if preference == "cuda":
            raise NucleisamError(
                "train.device is 'cuda' but torch sees no CUDA GPU (CPU build or no driver). "
                "Use --set train.device=cpu, or install a CUDA build of PyTorch (see README)."
            )
        return torch.device("cpu")
    raise NucleisamError(f"train.device must be 'auto', 'cpu' or 'cuda', not {preference!r}.")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes in place (no-op for one process); returns it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.distributed:
            dist.broadcast(tensor, src=src)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device_preference: str = "auto") -> DistContext:
    """Context of this process; joins the process group when started by ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local, resolve_device(device_preference, local_rank=local))
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device_preference))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank=local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
