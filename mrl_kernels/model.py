"""Matrix factorisation and the paper's five training objectives.

=========  ================================================================
``bpr``    one uniform negative, BPR loss at full width
``bpr-d``  DNS: the best of M candidates at full width, BPR loss
``bpr-m``  MNS negatives (one per level), loss ``log(1 + sum_l exp(s_{j_l} - s_i))``
           at full width (the authors' code)
``mrl-d``  DNS at full width, that negative at every level of the MRL loss
``mrl-m``  MNS + MRL loss (the method), fused in :func:`mrl_kernels.mns_bpr_loss`
=========  ================================================================
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import mns_bpr_loss, mns_sample, mrl_bpr_loss

__all__ = ["MF", "METHODS", "candidate_shape", "method_loss"]

METHODS = ("bpr", "bpr-d", "bpr-m", "mrl-d", "mrl-m")


class MF(nn.Module):
    """User and item tables of width ``dim``, Xavier-uniform initialised; the
    score of (u, i) is ``<user_weight[u], item_weight[i]>``."""

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_users, dim)))
        self.item_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_items, dim)))

    @property
    def dim(self) -> int:
        return self.user_weight.shape[1]


def candidate_shape(method: str, num_levels: int, candidates: int, layout: str) -> tuple[int, ...]:
    """The per-row shape of the candidate ids a method draws: ``(1,)`` for ``bpr``,
    ``(M,)`` for DNS, ``(L, M)`` for MNS with per-level pools or ``(M,)`` with one
    shared pool (``layout="shared"``)."""
    if method == "bpr":
        return (1,)
    if method in ("bpr-d", "mrl-d") or layout == "shared":
        return (candidates,)
    return (num_levels, candidates)


def method_loss(
    method: str,
    model: MF,
    users: Tensor,
    pos: Tensor,
    candidates: Tensor,
    dims: Sequence[int],
    l2: float,
    backend: str = "auto",
) -> Tensor:
    """The training loss of one batch: the method's ranking loss plus the authors'
    L2 term ``l2 * (|u|^2 + |i|^2 + |negatives|^2) / 2 / B`` on the batch's rows."""
    u = model.user_weight[users]
    p = model.item_weight[pos]
    items = model.item_weight
    full = [model.dim]
    if method == "mrl-m":
        loss, negatives = mns_bpr_loss(u, p, items, candidates, dims, backend=backend)
    elif method == "bpr-d":
        loss, negatives = mns_bpr_loss(u, p, items, candidates, full, backend=backend)
    elif method == "bpr":
        negatives = candidates
        loss = mrl_bpr_loss(u, p, items[negatives], full, backend=backend)
    elif method == "mrl-d":
        negatives = mns_sample(u.detach(), items.detach(), candidates, full, backend=backend)
        neg = items[negatives].expand(-1, len(dims), -1)
        loss = mrl_bpr_loss(u, p, neg, dims, backend=backend)
    elif method == "bpr-m":
        negatives = mns_sample(u.detach(), items.detach(), candidates, dims, backend=backend)
        margins = (u[:, None, :] * items[negatives]).sum(-1) - (u * p).sum(-1, keepdim=True)
        loss = F.softplus(torch.logsumexp(margins, dim=1)).mean()  # log(1 + sum_l exp(margin_l))
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    reg = u.square().sum() + p.square().sum() + items[negatives].square().sum()
    return loss + l2 * reg / 2 / users.shape[0]
