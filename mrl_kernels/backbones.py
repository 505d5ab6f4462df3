"""Backbones: the modules that turn ids into vectors.

A :class:`Backbone` is an ``nn.Module`` whose ``forward(users, pos)`` returns a
:class:`Batch` (everything a batch's loss needs) and whose ``tables()`` returns
the ``(user, item)`` tables that evaluation and serving score with. The trainer
calls ``forward`` (so ``DistributedDataParallel`` can wrap the module) and knows
no backbone by name: :data:`BACKBONES` maps names to constructors
``(n_users, n_items, dim) -> Backbone``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Batch", "Backbone", "MF", "BACKBONES", "lookup"]


@dataclass
class Batch:
    """What a batch's loss needs: the vectors it scores with (``user``, ``pos``,
    and the item table ``items`` negatives are picked from and gathered in) and
    the rows the L2 term covers (``reg_user``, ``reg_pos``, and ``reg_items`` at
    the negatives' ids), which a propagating backbone takes before propagation."""

    user: Tensor  # (B, D)
    pos: Tensor  # (B, D)
    items: Tensor  # (N, D)
    reg_user: Tensor
    reg_pos: Tensor
    reg_items: Tensor

    def negative_rows(self, negatives: Tensor) -> Tensor:
        """The item vectors of ``negatives`` (ids of any shape), differentiable."""
        return lookup(self.items, negatives)

    def squared_norms(self, negatives: Tensor) -> Tensor:
        """``|u|^2 + |i|^2 + |negatives|^2`` summed over the batch's rows."""
        return (self.reg_user.square().sum() + self.reg_pos.square().sum()
                + lookup(self.reg_items, negatives).square().sum())


def lookup(table: Tensor, ids: Tensor) -> Tensor:
    """``table[ids]`` whose backward sums repeated ids in the same order on every
    run: ``F.embedding``'s, where the CPU backward of indexing (``table[ids]``)
    adds with atomics across threads and its sums vary from run to run."""
    return F.embedding(ids, table)


class Backbone(nn.Module):
    def forward(self, users: Tensor, pos: Tensor) -> Batch:
        raise NotImplementedError

    def tables(self) -> tuple[Tensor, Tensor]:
        """The ``(n_users, D)`` and ``(n_items, D)`` tables a user's scores come from."""
        raise NotImplementedError


class MF(Backbone):
    """Matrix factorisation: user and item tables of width ``dim``, Xavier-uniform
    initialised; the score of (u, i) is ``<user_weight[u], item_weight[i]>``."""

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))

    def forward(self, users: Tensor, pos: Tensor) -> Batch:
        u, p = lookup(self.user_weight, users), lookup(self.item_weight, pos)
        return Batch(u, p, self.item_weight, u, p, self.item_weight)

    def tables(self) -> tuple[Tensor, Tensor]:
        return self.user_weight, self.item_weight


BACKBONES = {"mf": MF}
