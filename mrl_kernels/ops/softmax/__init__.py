"""The Matryoshka sampled softmax, :func:`mrl_softmax_loss`. This folder holds
its spec (``spec.py``), reference (``reference.py``), Triton kernels
(``triton.py``) and C++ kernels (``softmax_cpu.cpp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _checks as checks, registry
from ..common import acc_dtype, reduce

__all__ = ["mrl_softmax_loss", "check_log_q"]


def mrl_softmax_loss(user: Tensor, pos: Tensor, item_weight: Tensor, candidates: Tensor, dims: Sequence[int],
                     weights: Sequence[float] | Tensor | None = None, temperature: float = 1.0, reduction: str = "mean",
                     *, cosine: bool = False, pos_ids: Tensor | None = None, log_q: Tensor | None = None,
                     pos_log_q: Tensor | None = None, layout: str | None = None, backend: str = "auto") -> Tensor:
    """Matryoshka sampled softmax, fused: at every nested width, a softmax over
    the positive and a pool of candidates, each candidate's row read once.

    Per row ``sum_l weights[l] * (logsumexp_{j in {pos} + pool_l}(s_j / t) - s_pos / t)``
    with ``s_j = <user[:d_l], e_j[:d_l]>`` (``cosine=True``: divided by
    ``|user[:d_l]| |e_j[:d_l]|``, each prefix normalised on its own) and
    ``t = temperature``: every candidate
    of the pool counts (where :func:`mns_bpr_loss` keeps the hardest only), at the
    same memory traffic.

    Args:
        user, pos: ``(B, D)`` user and positive item vectors.
        item_weight: ``(N, D)`` item table the candidates index.
        candidates: item ids, a tensor or an array-like: ``(B, L, M)`` (pool l
            for level l), or ``(B, M)``, one pool for every level, with
            ``layout="shared"`` (or a single level), as in
            :func:`~mrl_kernels.mns_sample`; ids < 0 are padding and take no
            part (e.g. to mask a user's own items among in-batch candidates).
        dims: the nested widths ``d_1 < ... < d_L = D``.
        weights: L weights, >= 0 and not all 0, default ``1/L`` each.
        temperature: the softmax temperature, a positive float, at least
            ``finfo(acc).max ** -0.5`` (5.4e-20 for float32 accumulation,
            7.5e-155 for float64): then ``s / t`` is finite for every score
            below ``finfo(acc).max ** 0.5``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).
        cosine: score by the cosine of the prefixes instead of their inner product.
        pos_ids: optional ``(B,)`` ids of the positives (a tensor or an
            array-like): candidates equal to their row's positive are masked
            (an accidental hit is not a negative).
        log_q: optional, the shape of ``candidates``: the log of each
            candidate's sampling probability, subtracted from its logit ``s_j / t``
            (the logQ correction; :mod:`mrl_kernels.ops.candidates`
            return it with their draws). Every backend takes it, in the
            accumulation dtype (float32 for half inputs), where it must be
            finite at every candidate (ids >= 0; a candidate that cannot be
            drawn, ``-inf``, would have an infinite logit); it gets no gradient.
        pos_log_q: optional ``(B,)``, subtracted from the positive's logit; finite.
        layout: as in :func:`~mrl_kernels.mns_sample`.

    Differentiable in ``user``, ``pos`` and ``item_weight`` (non-zero in the
    candidates' rows only; repeated ids sum). No L2 term: add one on the rows
    the loss used (docs/own_trainer.md shows how).
    """
    candidates, dims = checks.check_sampling(user, item_weight, candidates, dims, padding=True, layout=layout)
    checks.check_pos(pos, user)
    w = checks.check_weights(weights, len(dims), user.device)
    reduction = checks.check_reduction(reduction)
    acc = acc_dtype(user.dtype)
    temperature = checks.check_real("temperature", temperature, low=torch.finfo(acc).max ** -0.5, dtype=acc)
    if pos_ids is not None:
        pos_ids = checks.check_ids("pos_ids", pos_ids, item_weight.shape[0], user.device)
        if pos_ids.shape != (user.shape[0],):
            raise ValueError(f"pos_ids must have shape ({user.shape[0]},) (one id per row), "
                             f"got {tuple(pos_ids.shape)}")
        row_pos = pos_ids.view(-1, *[1] * (candidates.dim() - 1))
        candidates = candidates.masked_fill(candidates == row_pos, -1)
    if not isinstance(cosine, bool):
        raise TypeError(f"cosine must be a bool, got {type(cosine).__name__}")
    check_log_q(log_q, pos_log_q, candidates, user)
    log_q, pos_log_q = (None if t is None else t.detach().to(acc).contiguous()
                        for t in (log_q, pos_log_q))
    loss, _ = registry.operator_for("mrl_softmax_loss", backend, user)(user, pos, item_weight, candidates, dims, w,
                                                                         temperature, cosine, log_q, pos_log_q)
    return reduce(loss, reduction)


def check_log_q(log_q: Tensor | None, pos_log_q: Tensor | None, candidates: Tensor, user: Tensor) -> None:
    """``log_q`` the shape of ``candidates`` and ``pos_log_q`` ``(B,)``, float, on
    ``user``'s device (where given), and finite in the accumulation dtype (that of
    the logits) at every candidate (ids >= 0) and every positive: one rule for every
    backend. (A candidate with ``log_q = -inf`` could never have been drawn; its logit
    would be infinite, and two of them in a pool have no log-sum-exp.)"""
    acc = acc_dtype(user.dtype)
    for name, t, shape in (("log_q", log_q, tuple(candidates.shape)), ("pos_log_q", pos_log_q, (user.shape[0],))):
        if t is None:
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(t).__name__ if not isinstance(t, Tensor) else t.dtype}")
        if tuple(t.shape) != shape or t.device != user.device:
            raise ValueError(f"{name} must have shape {shape} on {user.device} (like the candidates), "
                             f"got {tuple(t.shape)} on {t.device}")
        if not checks.can_read_values(t):
            continue
        values = t.detach().to(acc)
        bad = ~torch.isfinite(values) & (candidates >= 0 if name == "log_q" else True)
        if bool(bad.any()):
            where = "at every candidate (ids >= 0; padding may hold anything)" if name == "log_q" else "at every row"
            raise ValueError(f"{name} must be finite in {str(acc).removeprefix('torch.')} (the dtype of the logits) "
                             f"{where}; got {sorted(set(values[bad].tolist()))} at {int(bad.sum())} places")
