"""Pieces every operator's reference shares: the accumulation dtype, prefix
scores, candidate pools, the cosine clamp. Notation: ``B`` batch rows, ``D``
embedding width, ``dims = (d_1 < ... < d_L = D)`` the nested prefix widths, ``M``
candidates per pool, ``N`` items."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["acc_dtype", "acc", "prefix_scores", "pools", "masked", "reduce", "l2_term", "COSINE_EPS", "LAYOUTS"]

COSINE_EPS = 1e-12  # prefix norms are clamped here, as in F.normalize (the Triton and C++ kernels too)
# candidate layouts: a (B, L, M) pool per level, or one (B, M) pool shared by every level
LAYOUTS = ("per-level", "shared")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores are accumulated in: float32 for half types, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its accumulation dtype (float32 for half types, else its own)."""
    return t.to(acc_dtype(t.dtype))


def prefix_scores(user: torch.Tensor, rows: torch.Tensor, d: int) -> torch.Tensor:
    """``<user[..., :d], rows[..., :d]>``; ``user`` broadcasts against ``rows``."""
    return (acc(user[..., :d]) * acc(rows[..., :d])).sum(-1)


def pools(candidates: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """The candidate pool of each level: the shared ``(B, M)`` pool L times, or
    the ``(B, M)`` slices of a ``(B, L, M)`` tensor."""
    if candidates.dim() == 2:
        return [candidates] * num_levels
    return [candidates[:, level] for level in range(num_levels)]


def masked(gradients, output_mask: Sequence[bool]) -> tuple[torch.Tensor, ...]:
    """``gradients`` with the ones ``output_mask`` masks replaced by empty tensors."""
    return tuple(g if needed else g.new_empty(0) for g, needed in zip(gradients, output_mask))


def reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``loss`` per row, summed (``"sum"``), averaged (``"mean"``) or as it is (``"none"``)."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def l2_term(weight: float, squares: torch.Tensor, batch: int) -> torch.Tensor:
    """The L2 term the paper's trainers add to a batch's loss, ``weight * squares
    / 2 / batch``: ``squares`` the sum of the squared entries of the rows it covers
    (the batch's users, positives and chosen negatives: the operators' losses
    hold no L2 term of their own)."""
    return weight * squares / 2 / batch
