"""The processes of a run (:class:`Group`): one, or ``torchrun``'s."""
from __future__ import annotations

import os

import torch

__all__ = ["Group"]


class Group:
    """The processes of a run: one, or ``torchrun``'s (``WORLD_SIZE`` > 1), joined
    in a ``torch.distributed`` process group (gloo on the CPU, NCCL on CUDA).
    Every rank trains its shard of each batch and ``DistributedDataParallel``
    averages the gradients; rank 0 evaluates, writes every output and broadcasts
    its decisions, so all ranks stop together."""

    def __init__(self, rank: int = 0, world: int = 1, started: bool = False):
        self.rank, self.world, self.started = rank, world, started

    @classmethod
    def start(cls, device: torch.device) -> "Group":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), started=True)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order (on every rank)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: list[float]) -> list[float]:
        """The sums of ``values`` over the ranks (on every rank)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        sums = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(sums)
        return sums.tolist()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the steps call: the model, or ``DistributedDataParallel`` over it."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)

    def stop(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()
