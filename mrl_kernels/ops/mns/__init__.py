"""MNS and the MRL loss: :func:`mns_sample`, :func:`mrl_bpr_loss` and the two
fused in :func:`mns_bpr_loss`. This folder holds their spec (``spec.py``),
reference (``reference.py``), Triton kernels (``triton.py``) and C++ kernels
(``mns_cpu.cpp``). Every function takes ``backend="auto" | "torch" | "triton" |
"cpp"`` (:mod:`mrl_kernels.ops.registry`)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .. import _checks as checks, registry
from ..common import reduce

__all__ = ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss"]


def mns_sample(user: Tensor, item_weight: Tensor, candidates: Tensor, dims: Sequence[int], *,
               layout: str | None = None, backend: str = "auto") -> Tensor:
    """Matryoshka negative sampling.

    Args:
        user: ``(B, D)`` user vectors.
        item_weight: ``(N, D)`` item table.
        candidates: item ids, a tensor or an array-like: ``(B, L, M)`` (pool l
            for level l), or ``(B, M)``, one pool for every level, with
            ``layout="shared"`` (or a single level). A ``(B, L*M)`` tensor
            holding pool l in columns ``l*M .. (l+1)*M`` is refused without
            ``layout="shared"``: pass ``candidates.view(B, L, M)``.
        dims: the nested widths ``d_1 < ... < d_L = D``.
        layout: ``"per-level"``, ``"shared"`` or None (what the shape says;
            a 2-D tensor for several levels is refused as ambiguous).

    Returns:
        int64 ``(B, L)``: ``out[b, l]`` is the candidate with the largest prefix
        score ``<user[b, :d_l], item_weight[c, :d_l]>``, ties to the lowest
        position in the pool. Not differentiable.
    """
    candidates, dims = checks.check_sampling(user, item_weight, candidates, dims, layout=layout)
    return registry.operator_for("mns_sample", backend, user)(user, item_weight, candidates, dims)


def mrl_bpr_loss(user: Tensor, pos: Tensor, neg: Tensor, dims: Sequence[int],
                 weights: Sequence[float] | Tensor | None = None, reduction: str = "mean", *,
                 backend: str = "auto") -> Tensor:
    """The MRL loss for given negative vectors.

    Per row ``sum_l weights[l] * softplus(<u[:d_l], neg[:, l, :d_l]> - <u[:d_l], pos[:d_l]>)``.

    Args:
        user, pos: ``(B, D)``.
        neg: ``(B, L, D)``, the negative vector of each level.
        dims: the nested widths ``d_1 < ... < d_L = D``.
        weights: L weights, >= 0 and not all 0, default ``1/L`` each.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Differentiable in ``user``, ``pos`` and ``neg``. No L2 term: add one on
    the rows the loss used (docs/own_trainer.md shows the two lines).
    """
    batch, width = checks.check_rows("user", user)
    checks.check_pos(pos, user)
    checks.check_float("neg", neg, 3, like=("user", user))
    dims = checks.check_dims(dims, width)
    checks.check_batch("neg", neg, batch)
    if neg.shape[2] != width:
        raise ValueError(f"neg must have width {width} like user, got {neg.shape[2]}")
    if neg.shape[1] != len(dims):
        raise ValueError(f"neg must have L = len(dims) = {len(dims)} vectors per row, got {neg.shape[1]}")
    w = checks.check_weights(weights, len(dims), user.device)
    reduction = checks.check_reduction(reduction)
    loss, _ = registry.operator_for("mrl_bpr_loss", backend, user)(user, pos, neg, dims, w)
    return reduce(loss, reduction)


def mns_bpr_loss(user: Tensor, pos: Tensor, item_weight: Tensor, candidates: Tensor, dims: Sequence[int],
                 weights: Sequence[float] | Tensor | None = None, reduction: str = "mean", *,
                 layout: str | None = None, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """MNS and the MRL loss fused: ``(loss, negatives)``.

    Equals ``mrl_bpr_loss(user, pos, item_weight[mns_sample(...)], dims, ...)``
    with the negatives of :func:`mns_sample` (returned as the second value;
    ``candidates`` and ``layout`` as there). Differentiable in ``user``, ``pos``
    and ``item_weight`` (whose gradient is non-zero only in the chosen rows; an
    id chosen several times sums). No L2 term: add one on ``user``, ``pos`` and
    ``item_weight[negatives]`` (docs/own_trainer.md shows the two lines).
    """
    candidates, dims = checks.check_sampling(user, item_weight, candidates, dims, layout=layout)
    checks.check_pos(pos, user)
    w = checks.check_weights(weights, len(dims), user.device)
    reduction = checks.check_reduction(reduction)
    fused = registry.operator_for("mns_bpr_loss", backend, user)
    loss, negatives, _ = fused(user, pos, item_weight, candidates, dims, w)
    return reduce(loss, reduction), negatives
