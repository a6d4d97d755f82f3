"""Process helpers: split work across the processes of ``torchrun`` / ``accelerate launch``, and gather
the results.

Uses ``torch.distributed`` with the gloo backend (CPU tensors; object collectives), so the same code runs
on CPU-only machines and next to GPU work. One process (no ``WORLD_SIZE`` > 1 in the environment) is the
plain single-process case: nothing is initialised and every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def range(self, n: int) -> range:
        """This process's contiguous slice of ``n`` items (concatenating all ranks in order gives 0..n-1)."""
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


def current_shard() -> Shard:
    """The running process group, initialising it (gloo, ``env://``) when launched with several processes."""
    if not dist.is_available():
        return Shard()
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Shard()
        dist.init_process_group("gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def gather_to_main(obj: T, shard: Shard) -> list[T] | None:
    """Every rank's ``obj``, in rank order, on the main process (None elsewhere)."""
    if not shard.distributed:
        return [obj]
    out: list[Any] | None = [None] * shard.world_size if shard.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: T, shard: Shard) -> T:
    """The main process's ``obj`` on every rank."""
    if not shard.distributed:
        return obj
    box = [obj if shard.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def barrier(shard: Shard) -> None:
    if shard.distributed:
        dist.barrier()
