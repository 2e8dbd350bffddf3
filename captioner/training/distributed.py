"""Data-parallel training under `torchrun`: the process group, this process's place in it, and its
share of every batch.

`torchrun --nproc_per_node=N -m captioner train ...` starts N processes and tells each its rank in
environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Without them (or
with WORLD_SIZE=1) there is one process, a `ProcessGroup` of one, and nothing here talks to anyone.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import CaptionerError

# Rank 0 may work alone for a long time while the others wait (building COCO's feature cache,
# scoring the dev split), longer than the default collective timeout, so waits use their own group.
LONG_WAIT = datetime.timedelta(hours=24)


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank's share of a global batch: every `world_size`-th item from `rank` on, as
    DistributedSampler deals indices. Shares differ in size by at most one."""
    return batch[rank::world_size]


def share_weight(units: np.ndarray, rank: int, world_size: int) -> float:
    """What rank's mean loss must be multiplied by so that DDP's average of the ranks' gradients
    is the gradient of the whole batch's mean loss: `units` counts what each item of the global
    batch adds to that mean (its target tokens, or 1 per photo)."""
    return world_size * float(units[rank::world_size].sum()) / float(units.sum())


@dataclass(frozen=True)
class ProcessGroup:
    """This process's rank among `world_size` training processes (a group of one by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    waits: object = None  # a gloo group with a long timeout, for waiting on rank 0 and CPU collectives
    owned: bool = False  # initialised here, so destroyed here

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, batch: np.ndarray) -> np.ndarray:
        return shard(batch, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier(group=self.waits)

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (building files the others then only read); the others wait."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if not self.is_distributed:
            return value
        message = [value]
        dist.broadcast_object_list(message, src=0, group=self.waits)
        return message[0]

    def sum(self, values: list[float]) -> list[float]:
        """The element-wise sum over all ranks of each rank's `values`."""
        if not self.is_distributed:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total, group=self.waits)
        return total.tolist()

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order."""
        if not self.is_distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.waits)
        return values

    def cleanup(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def join(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group `torchrun` describes in the environment (nccl on CUDA, gloo on the
    CPU) and return it with this process's device: under torchrun each process takes the GPU of
    its local rank (choose which GPUs with CUDA_VISIBLE_DEVICES)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CaptionerError(
                f"process {local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} visible); "
                "start at most one process per GPU (torchrun --nproc_per_node) or use --device cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    waits = dist.new_group(backend="gloo", timeout=LONG_WAIT)
    return ProcessGroup(rank, world_size, local_rank, waits, owned), device
