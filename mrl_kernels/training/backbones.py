"""Backbones: the modules that turn ids into vectors.

A :class:`Backbone` is an ``nn.Module`` whose ``forward(users, pos)`` returns a
:class:`Batch` (everything a batch's loss needs) and whose ``tables()`` returns
the ``(user, item)`` tables that evaluation and serving score with. The trainer
calls ``forward`` (so ``DistributedDataParallel`` can wrap the module) and knows
no backbone by name: :data:`BACKBONES` maps names to builders
``(interactions, dim, layers, sparse=False) -> Backbone``, ``interactions`` being the training
:class:`~mrl_kernels.ops.CSR` (users x items) the model learns from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import CSR

__all__ = ["Batch", "Backbone", "MF", "LightGCN", "BACKBONES", "lookup", "normalized_adjacency"]


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
    sparse: bool = False  # the item table's gradient must stay row-sparse: no fused operator
    pos_ids: Tensor | None = None  # (B,) the positives' rows of items (a softmax over every item leaves each out)

    def negative_rows(self, negatives: Tensor) -> Tensor:
        """The item vectors of ``negatives`` (ids of any shape), differentiable."""
        return lookup(self.items, negatives, self.sparse)

    def squared_norms(self, negatives: Tensor | None = None) -> Tensor:
        """``|u|^2 + |i|^2 (+ |negatives|^2)`` summed over the batch's rows."""
        total = self.reg_user.square().sum() + self.reg_pos.square().sum()
        if negatives is None:
            return total
        return total + lookup(self.reg_items, negatives, self.sparse).square().sum()


def lookup(table: Tensor, ids: Tensor, sparse: bool = False) -> Tensor:
    """``table[ids]`` whose backward sums repeated ids in the same order on every
    run: ``F.embedding``'s, where the CPU backward of indexing (``table[ids]``)
    adds with atomics across threads and its sums vary from run to run. With
    ``sparse`` the table's gradient is row-sparse (the rows looked up only)."""
    return F.embedding(ids, table, sparse=sparse)


class Backbone(nn.Module):
    def forward(self, users: Tensor, pos: Tensor) -> Batch:
        raise NotImplementedError

    def tables(self) -> tuple[Tensor, Tensor]:
        """The ``(n_users, D)`` and ``(n_items, D)`` tables a user's scores come from."""
        raise NotImplementedError


class MF(Backbone):
    """Matrix factorisation: user and item tables of width ``dim``, Xavier-uniform
    initialised; the score of (u, i) is ``<user_weight[u], item_weight[i]>``.
    ``sparse``: row-sparse gradients (for a row-sparse optimizer), so a step
    costs the same whatever the number of users and items."""

    def __init__(self, n_users: int, n_items: int, dim: int, sparse: bool = False):
        super().__init__()
        self.sparse = sparse
        self.user_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))

    def forward(self, users: Tensor, pos: Tensor) -> Batch:
        u, p = lookup(self.user_weight, users, self.sparse), lookup(self.item_weight, pos, self.sparse)
        return Batch(u, p, self.item_weight, u, p, self.item_weight, self.sparse, pos_ids=pos)

    def tables(self) -> tuple[Tensor, Tensor]:
        return self.user_weight, self.item_weight


class LightGCN(Backbone):
    """LightGCN (He et al., 2020) as in the MRL4Rec authors' code: layer-0 user and
    item tables (Xavier-uniform), propagated ``layers`` times over the
    symmetric-normalised user-item adjacency ``D^-1/2 A D^-1/2`` of the training
    interactions, the layer outputs (layer 0 included) mean-pooled. Each step
    propagates once (one sparse matmul per layer over the whole graph); the L2
    term covers the batch's layer-0 rows, as the authors' ``create_mrl_loss``."""

    def __init__(self, interactions: CSR, dim: int, layers: int = 1, sparse: bool = False):
        super().__init__()
        if sparse:
            raise ValueError("LightGCN propagates the whole tables every step, so its gradients are dense: "
                             "sparse training needs the mf backbone")
        if layers < 1:
            raise ValueError(f"layers must be >= 1; got {layers}")
        self.n_users, self.n_items, self.layers = interactions.n_rows, interactions.n_cols, layers
        self.user_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, dim)))
        self.item_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, dim)))
        self.register_buffer("adjacency", normalized_adjacency(interactions), persistent=False)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """The mean-pooled ``(users, items)`` tables."""
        x = torch.cat([self.user_weight, self.item_weight])
        total = x
        for _ in range(self.layers):
            x = torch.sparse.mm(self.adjacency, x)
            total = total + x
        return (total / (self.layers + 1)).split([self.n_users, self.n_items])

    def forward(self, users: Tensor, pos: Tensor) -> Batch:
        user_table, item_table = self.propagate()
        return Batch(lookup(user_table, users), lookup(item_table, pos), item_table,
                     lookup(self.user_weight, users), lookup(self.item_weight, pos), self.item_weight, pos_ids=pos)

    def tables(self) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.propagate()


def normalized_adjacency(interactions: CSR) -> Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph ``A = [[0, R], [R^T, 0]]`` with
    ``R`` the user x item interactions, a sparse (COO) tensor over users then items."""
    n_users, n_items = interactions.n_rows, interactions.n_cols
    users, items = interactions.rows(), interactions.indices + n_users
    rows, cols = torch.cat([users, items]), torch.cat([items, users])
    degree = torch.bincount(rows, minlength=n_users + n_items).float()
    scale = degree.clamp(min=1).rsqrt()
    values = scale[rows] * scale[cols]
    n = n_users + n_items
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=True).coalesce()


BACKBONES = {
    "mf": lambda interactions, dim, layers, sparse=False: MF(interactions.n_rows, interactions.n_cols, dim, sparse),
    "lightgcn": LightGCN,
}
