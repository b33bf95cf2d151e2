"""torch.distributed plumbing for the commands that scale out under torchrun (extract, train).

torchrun starts one process per GPU (or per CPU slot) on every machine and tells each one its place
through WORLD_SIZE, RANK and LOCAL_RANK. Without them (or with WORLD_SIZE=1) a command is one process
with no process group at all, exactly as when run directly.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from construct.errors import ConstructError
from construct.runtime import resolve_device

T = TypeVar("T")
# A rank that finishes its slice first waits at a barrier for the slowest one (another GPU model, a busier
# disk); the default 10-30 min timeouts would abort a long extraction. A rank that dies is noticed at once
# regardless: torchrun stops the others.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.world_size > 1

    def part(self, n: int) -> slice:
        """This rank's contiguous part of n items; parts differ in size by one at most."""
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (self.rank < r))

    def barrier(self) -> None:
        if self.spread:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (picklable objects)."""
        if not self.spread:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and give its result to every rank. A ConstructError there is raised on
        every rank, so that no rank waits forever for one that has stopped."""
        if not self.spread:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except ConstructError as e:
                error = str(e)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise ConstructError(error)
        return result

    def total(self, n: int, device: torch.device) -> int:
        """Sum of an integer over all ranks."""
        if not self.spread:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return int(t.item())


def env_world() -> World:
    """The place torchrun gave this process (rank 0 of 1 without torchrun)."""
    try:
        world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ConstructError(f"RANK/WORLD_SIZE/LOCAL_RANK environment: not integers ({e})") from e
    if not 0 <= world.rank < world.world_size:
        raise ConstructError(f"RANK {world.rank} is outside WORLD_SIZE {world.world_size}")
    return world


def is_main_process() -> bool:
    """Whether this process prints a command's summary (rank 0, or the only process)."""
    return env_world().is_main


def process_device(device: str, world: World) -> torch.device:
    """`--device` for this process: under torchrun, auto/cuda mean this machine's GPU number LOCAL_RANK."""
    dev = resolve_device(device)
    if not world.spread or dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise ConstructError(f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
                             f"pass --device cuda or auto")
    n_gpus = torch.cuda.device_count()
    if world.local_rank >= n_gpus:
        raise ConstructError(f"LOCAL_RANK {world.local_rank}: this machine has {n_gpus} GPU(s); "
                             f"use --nproc-per-node {n_gpus} or less")
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def session(device: str) -> Iterator[tuple[World, torch.device]]:
    """This process's World and device, inside a process group when torchrun started several processes
    (NCCL between GPUs, gloo on CPUs). A group that a caller set up already is used and left to it."""
    if dist.is_available() and dist.is_initialized():
        world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        yield world, process_device(device, world)
        return
    world = env_world()
    dev = process_device(device, world)
    if not world.spread:
        yield world, dev
        return
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # collectives and broadcast_object_list use the current device
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=dev if dev.type == "cuda" else None)
    yield world, dev
    # On success only: a rank that failed must exit at once, so that torchrun stops the others; tearing
    # NCCL down while another rank waits in a collective can block it.
    dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum over ranks of the gradients (each rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `x` over the ranks of the default group."""
    return _AllReduceSum.apply(x)


def gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows of `x` (their counts may differ), concatenated in rank order, on every rank.
    Differentiable: the gradient reaching a rank's own rows is the sum of every rank's gradient for them."""
    if not world.spread:
        return x
    counts = torch.zeros(world.world_size, dtype=torch.int64, device=x.device)
    counts[world.rank] = len(x)
    dist.all_reduce(counts)
    before, total = int(counts[: world.rank].sum()), int(counts.sum())
    # Zeros elsewhere, own rows in place, summed over ranks: the sum adds exact zeros, so values are unchanged.
    padded = torch.cat([x.new_zeros((before, *x.shape[1:])), x, x.new_zeros((total - before - len(x), *x.shape[1:]))])
    return all_reduce_sum(padded)
