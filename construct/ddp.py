"""What makes N DistributedDataParallel processes take the step one process takes on the same batch.

Each process holds a contiguous part of every global batch (`--batch-size` stays the global batch). Three
things would otherwise differ from one process: batch-norm statistics (each process would see only its
rows), per-row loss means (a part's mean is not the batch's mean when parts differ in size), and the
contrastive term (its mean over (row, class) pairs, and its memory bank of past background embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from construct.distributed import World, all_reduce_sum, gather_rows


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with the statistics of the global batch across processes, on any device and backend
    (torch's nn.SyncBatchNorm runs on GPUs only). Same parameters and buffers as nn.BatchNorm2d, so its
    weights load into the plain head; outside a process group, or in eval mode, it is nn.BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce_sum(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce_sum((centred * centred).sum(dims)) / n  # two passes: no E[x²] - E[x]² cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1), m)  # unbiased, as nn.BatchNorm2d keeps it
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every nn.BatchNorm2d in `module` for a SyncBatchNorm2d holding the same parameters and buffers
    (before the optimizer is built: the parameters are new objects)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.load_state_dict(child.state_dict(), assign=True)  # its tensors, on their device
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child)
    return module


def wrap(head: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The head in DDP (gradients averaged over processes) when there are several processes; else as is."""
    if not world.spread:
        return head
    return DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The head itself, whose attributes (config, prototypes, fused_cam) DDP does not forward."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass(frozen=True)
class BatchShare:
    """This process's rows of one global batch of `n_rows` rows (all of them in a single process)."""

    n_rows: int
    world: World = field(default_factory=World)

    def rows(self) -> slice:
        """This process's rows, a contiguous slice of the global batch."""
        return self.world.part(self.n_rows)

    def weight(self, n_local: int) -> float:
        """Weight of a mean over this process's rows: DDP averages the processes' gradients, so the average
        of the weighted means is the global batch's mean (1 in a single process)."""
        return n_local * self.world.world_size / self.n_rows

    def any(self, x: torch.Tensor) -> bool:
        """Whether `x` is non-zero anywhere in the global batch."""
        return self.world.total(int(x.count_nonzero()), x.device) > 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of `x`, in the global batch's order (differentiable)."""
        return gather_rows(x, self.world)

    def values(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The global batch's loss values, the same on every process."""
        if not self.world.spread:
            return {k: float(v.detach()) for k, v in losses.items()}
        stacked = torch.stack([v.detach().float() for v in losses.values()])
        torch.distributed.all_reduce(stacked)
        return dict(zip(losses, (stacked / self.world.world_size).tolist()))
