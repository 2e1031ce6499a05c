"""Data-parallel ranks inside one job, on torch.distributed: process start, rank context.

:func:`run_ranks` starts ``world_size`` processes with ``torch.multiprocessing.spawn`` (which
also propagates a rank's exception and stops the others), joins them into a process group
over a free loopback TCP port (single machine: the job's own GPUs or CPU), and runs
``fn(ranks, *args)`` in each. Backend from :class:`benchmark.device.Device`: NCCL on CUDA,
gloo on CPU. :class:`Ranks` is what the training loop needs to know about the others: who
writes files, how to average logged values, and which module holds the weights.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmark.device import Device

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel ranks (one process: rank 0 of 1).

    Attributes:
        rank: global rank (also the local rank: one machine).
        world_size: number of ranks.
        device: this rank's device (its own GPU on CUDA).
    """

    rank: int = 0
    world_size: int = 1
    device: Device | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, summaries and logs."""
        return self.rank == 0

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average scalars over ranks (for logging). Every rank must call it at the same step.

        gloo has no ``ReduceOp.AVG``, so it is a SUM divided by the world size.
        """
        if self.world_size == 1:
            return dict(values)
        device = self.device.torch_device if self.device is not None else torch.device("cpu")
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(values, (t / self.world_size).tolist(), strict=True))

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The module whose state dict is the model's (DDP prefixes keys with ``module.``)."""
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


SINGLE = Ranks()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now on ``host`` (the OS picks it; the tiny window before the
    rendezvous binds it is the usual trade-off, as in torchrun's standalone mode)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def threads_per_rank(world_size: int, num_threads: int | None = None) -> int:
    """Intra-op threads for each rank so that the ranks together use the cores once over."""
    total = num_threads or os.cpu_count() or 1
    return max(1, int(total) // world_size)


def run_ranks(
    fn: Callable[..., None],
    world_size: int,
    device: Device,
    *args,
    num_threads: int | None = None,
) -> None:
    """Run ``fn(ranks, *args)`` on ``world_size`` spawned ranks and wait for all of them.

    Args:
        fn: a module-level function (spawned processes import it by name).
        world_size: number of ranks.
        device: the job's device; rank ``r`` uses GPU ``r`` on CUDA, the CPU otherwise.
        args: picklable arguments passed to every rank.
        num_threads: total intra-op threads to split over CPU ranks (None: all cores).

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised; its traceback is in the
            message and the other ranks were terminated.
    """
    port = free_port()
    mp.spawn(
        _rank_entry,
        args=(fn, world_size, port, device, threads_per_rank(world_size, num_threads), args),
        nprocs=world_size,
        join=True,
    )


def _rank_entry(
    rank: int,
    fn: Callable[..., None],
    world_size: int,
    port: int,
    device: Device,
    threads: int,
    args: tuple,
) -> None:
    torch.set_num_threads(threads)
    rank_device = device.for_rank(rank)
    dist.init_process_group(
        device.dist_backend,
        init_method=f"tcp://{LOOPBACK}:{port}",
        rank=rank,
        world_size=world_size,
    )
    try:
        fn(Ranks(rank, world_size, rank_device), *args)
    finally:
        dist.destroy_process_group()
