"""Uniform candidate sampling with exclusion, vectorised on the users' device."""
from __future__ import annotations

import torch
from torch import Tensor

from .data import CSR

__all__ = ["sample_candidates"]


def sample_candidates(
    users: Tensor,
    num: int,
    n_items: int,
    exclude: CSR | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(B, num)`` int64 item ids drawn uniformly from ``[0, n_items)`` on ``users``'
    device, skipping each user's items in ``exclude`` (e.g. the training
    interactions) by vectorised rejection: every round redraws all rejected ids of
    the whole batch at once. ``generator`` must live on ``users``' device.

    Raises ValueError for a user who has every item (nothing is left to draw)."""
    if not isinstance(users, Tensor) or users.dim() != 1 or users.dtype.is_floating_point:
        raise ValueError("users must be a 1-D tensor of integer user ids")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"n_items must be a positive int, got {n_items!r}")
    users = users.long()

    def draw(shape):
        return torch.randint(0, n_items, shape, generator=generator, device=users.device)

    out = draw((users.shape[0], num))
    if exclude is None:
        return out
    if exclude.n_cols != n_items:
        raise ValueError(f"exclude has {exclude.n_cols} columns but n_items is {n_items}")
    lengths = exclude.on(users.device)[0]
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= lengths.shape[0]):
        raise ValueError(f"users must lie in [0, {lengths.shape[0]}) (the rows of exclude)")
    full = lengths[users] >= n_items
    if bool(full.any()):
        raise ValueError(f"users {users[full].unique().tolist()[:10]} have every item; no negative can be sampled")
    rows = users[:, None].expand_as(out)
    rejected = exclude.contains(rows, out)
    while bool(rejected.any()):
        redraw = draw((int(rejected.sum()),))
        out[rejected] = redraw
        still = exclude.contains(rows[rejected], redraw)
        rejected[rejected.clone()] = still
    return out
