"""The Matryoshka softmax over every item: :func:`full_softmax_lse`, the nested
log-sum-exp over a whole item table without a ``(B, N)`` logit matrix, and
the loss :func:`mrl_kernels.mrl_softmax_loss` computes from it for
``candidates=None`` (:func:`every_item_loss`). This folder holds the
operator's spec (``spec.py``), reference (``reference.py``), Triton kernels
(``triton.py``) and C++ kernels (``full_softmax_cpu.cpp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _checks as checks, registry
from ..common import prefix_scores

__all__ = ["full_softmax_lse", "every_item_loss", "loss_from_lse"]


def full_softmax_lse(user: Tensor, item_weight: Tensor, dims: Sequence[int], temperature: float = 1.0, *,
                     exclude: Tensor | None = None, log_q: Tensor | None = None, backend: str = "auto") -> Tensor:
    """The nested log-sum-exp over every item, fused: ``(B, L)`` with
    ``out[b, l] = logsumexp_{i != exclude[b]} (<user[b, :d_l], item_weight[i, :d_l]> / t - log_q[i])``
    over every row of ``item_weight`` (``-inf`` where no item counts), in the
    accumulation dtype (float32 for half inputs). One sweep over the item table
    serves every width; no backend holds a ``(B, N)`` matrix (the backward
    recomputes the scores tile by tile).

    Args:
        user: ``(B, D)`` user vectors.
        item_weight: ``(N, D)`` item table.
        dims: the nested widths ``d_1 < ... < d_L = D``.
        temperature: a positive float ``t``.
        exclude: optional ``(B,)`` item ids, one a row, left out of that row's
            sum; ids < 0 leave none out.
        log_q: optional ``(N,)`` float, subtracted from every item's logit
            (the logQ correction); it gets no gradient.

    Differentiable in ``user`` and ``item_weight``.
    """
    dims = checks.check_table(user, item_weight, dims)
    temperature = checks.check_temperature(temperature, user.dtype)
    if exclude is not None:
        exclude = checks.check_row_ids("exclude", exclude, item_weight.shape[0], user, padding=True)
    return _lse(user, item_weight, exclude, dims, temperature, _correction(log_q, item_weight, user), backend)


def every_item_loss(user: Tensor, pos: Tensor, item_weight: Tensor, dims: list[int], weights: Tensor,
                    temperature: float, pos_ids: Tensor | None, log_q: Tensor | None, *, cosine: bool,
                    pos_log_q: Tensor | None, backend: str) -> Tensor:
    """The per-row loss of :func:`mrl_kernels.mrl_softmax_loss` with
    ``candidates=None`` (its other arguments checked there):
    ``sum_l w_l (logaddexp(lse_l, z_pos_l) - z_pos_l)``, ``lse`` the nested
    log-sum-exp over every item but the row's positive (:func:`full_softmax_lse`)
    and ``z_pos_l = <user[:d_l], pos[:d_l]> / t - log_q[pos_ids]``: the positive
    counts once, scored from ``pos`` (``item_weight[pos_ids]`` gives the
    cross-entropy over all N items)."""
    if pos_ids is None:
        raise ValueError("pos_ids is required with candidates=None (every item a candidate): the id of each row's "
                         "positive, whose own row of item_weight is left out of the softmax (pos scores it)")
    if cosine:
        raise ValueError("cosine=True needs candidates: with candidates=None (every item a candidate) the scores "
                         "are inner products")
    if pos_log_q is not None:
        raise ValueError("pos_log_q is for candidate pools: with candidates=None the positive's correction is "
                         "log_q[pos_ids] (pass log_q of shape (N,))")
    log_q = _correction(log_q, item_weight, user)
    lse = _lse(user, item_weight, pos_ids, dims, temperature, log_q, backend)
    return loss_from_lse(lse, user, pos, dims, weights, temperature, None if log_q is None else log_q[pos_ids])


def loss_from_lse(lse: Tensor, user: Tensor, pos: Tensor, dims: Sequence[int], weights: Tensor, temperature: float,
                  pos_log_q: Tensor | None = None) -> Tensor:
    """The per-row loss ``sum_l w_l (logaddexp(lse_l, z_pos_l) - z_pos_l)`` from
    ``lse`` ``(B, L)``, the nested log-sum-exp of every item but the positive,
    and the positive's logits ``z_pos_l = <user[:d_l], pos[:d_l]> / t - pos_log_q``;
    in ``user``'s dtype. Differentiable."""
    pos_logits = torch.stack([prefix_scores(user, pos, d) for d in dims], 1) / temperature
    if pos_log_q is not None:
        pos_logits = pos_logits - pos_log_q.to(pos_logits.dtype)[:, None]
    loss = weights.to(lse.dtype) * (torch.logaddexp(lse, pos_logits) - pos_logits)
    return loss.sum(1).to(user.dtype)


def _lse(user, item_weight, exclude, dims, temperature, log_q, backend) -> Tensor:
    return registry.operator_for("full_softmax_lse", backend, user)(user, item_weight, exclude, dims, temperature,
                                                                    log_q)


def _correction(log_q: Tensor | None, item_weight: Tensor, user: Tensor) -> Tensor | None:
    """``log_q`` ``(N,)`` checked (finite at every item), detached, in the accumulation dtype (None stays None)."""
    return checks.check_correction("log_q", log_q, (item_weight.shape[0],), user, "one per item", each="item")

