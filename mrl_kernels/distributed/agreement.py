"""What every rank of a sharded call checks before any collective
(:class:`Agreement`): its own arguments, and that the ranks agree on what their
collectives need to match (the number of levels, the width, the dims, the local
batch size, ...). One small all-gather of ints per call; where a rank's
arguments are bad or the ranks disagree, every rank raises the same
ValueError, instead of one rank raising while the others wait in a collective
(a hang, or a native abort in gloo) or compute on mismatched inputs.

Also the checks of a rank's ids (:func:`local_ids`, :func:`check_pools`,
:func:`check_row_ids`), which run inside an agreement, before the collectives
that depend on them.
"""
from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
from torch import Tensor

from ..ops import _checks as checks

__all__ = ["SHAPES", "Agreement", "check_offset", "check_pools", "check_row_ids", "local_ids"]

# torch 2.13's name (the older one is deprecated there)
_ALL_GATHER_INTO = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

# what the operators' collectives need the ranks to share: (len(dims), width, dims, local batch size)
SHAPES = ("number of levels", "width", "dims", "local batch size")


class Agreement:
    """``with Agreement(group, *names) as agreed:`` runs this rank's checks in the
    block, which ends with ``agreed.facts(*values)``: one value per name (an int,
    or anything whose ``repr`` the ranks must share, e.g. the dims). On leaving
    the block every rank exchanges a flag (whether its checks raised) and its
    facts once; if any rank's checks raised, or the ranks' facts differ, every
    rank raises the same ValueError naming the ranks and what differs."""

    def __init__(self, group, *names: str):
        self.group, self.names, self.values = group, names, None

    def __enter__(self) -> "Agreement":
        return self

    def facts(self, *values) -> None:
        if len(values) != len(self.names):
            raise TypeError(f"facts: {len(self.names)} values expected, got {len(values)}")
        self.values = values

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and not isinstance(error, Exception):
            return False  # an interrupt: propagates as it is
        failed = error is not None or self.values is None
        codes = [0] * len(self.names) if failed else [_code(v) for v in self.values]
        row = torch.tensor([int(failed), *codes], dtype=torch.int64, device=_device(self.group))
        rows = row.new_empty(dist.get_world_size(self.group) * row.numel())
        _ALL_GATHER_INTO(rows, row, group=self.group)
        rows = rows.view(-1, row.numel())
        if not bool((rows == rows[0]).all()) or bool(rows[0, 0]):
            # the rare path: what each rank found, as text, to raise the same error everywhere
            found = [None] * rows.shape[0]
            mine = f"{type(error).__name__ if error else 'error'}: {error}" if failed else \
                [repr(v) for v in self.values]
            dist.all_gather_object(found, mine, group=self.group)
            raise ValueError(_message(self.names, found)) from error
        return False


def _code(value) -> int:
    """``value`` as an int64 the ranks can compare: itself for an int, else a
    checksum of its ``repr``."""
    if isinstance(value, int) and -2 ** 63 <= value < 2 ** 63:
        return value
    return zlib.crc32(repr(value).encode())


def _device(group) -> torch.device:
    """Where the group's collectives take tensors (NCCL: the current CUDA device)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _message(names: tuple[str, ...], found: list) -> str:
    failures = [f"rank {rank}: {what}" for rank, what in enumerate(found) if isinstance(what, str)]
    if failures:
        return "a sharded call failed on " + "; ".join(failures) + " (every rank raises this)"
    for i, name in enumerate(names):
        values = [what[i] for what in found]
        if len(set(values)) > 1:
            return (f"every rank must call with the same {name}; got "
                    + ", ".join(f"{value} on rank {rank}" for rank, value in enumerate(values)))
    raise AssertionError("the ranks' facts differ in no name")  # codes differ only where the texts do


def check_offset(offset) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int (the global id of the shard's first row), got {offset!r}")


def local_ids(candidates: Tensor, shard: Tensor, offset: int, padding: bool = False) -> Tensor:
    """``candidates`` (global ids of this rank's rows) as rows of ``shard``; -1 at padding."""
    check_offset(offset)
    local = checks.check_ids("candidates", candidates, offset + shard.shape[0], shard.device, padding=padding)
    if checks.can_read_values(local) and local.numel():
        valid = local[local >= 0] if padding else local
        if valid.numel() and int(valid.min()) < offset:
            raise ValueError(f"candidates must be ids of this rank's rows [{offset}, {offset + shard.shape[0]}), "
                             f"got id {int(valid.min())}")
    return torch.where(local >= 0, local - offset, -1) if padding else local - offset


def check_pools(candidates: Tensor, batch: int, num_levels: int) -> None:
    """``candidates`` ``(batch, m)`` or ``(batch, num_levels, m)``."""
    if candidates.dim() not in (2, 3) or candidates.shape[0] != batch or \
            (candidates.dim() == 3 and candidates.shape[1] != num_levels):
        raise ValueError(f"candidates must be ({batch}, m) or ({batch}, {num_levels}, m) (every row of the global "
                         f"batch), got {tuple(candidates.shape)}")


def check_row_ids(ids, device: torch.device) -> None:
    """``ids`` a one-dimensional integer tensor on ``device``."""
    if not isinstance(ids, Tensor) or ids.dtype.is_floating_point or ids.dtype.is_complex or \
            ids.dtype == torch.bool or ids.dim() != 1 or ids.device != device:
        raise ValueError(f"ids must be a one-dimensional integer tensor on {device} (global row ids), got "
                         + (f"{ids.dtype} of shape {tuple(ids.shape)} on {ids.device}" if isinstance(ids, Tensor)
                            else type(ids).__name__))
