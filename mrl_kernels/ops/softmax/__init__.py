"""The Matryoshka sampled softmax, :func:`mrl_softmax_loss`. This folder holds
its spec (``spec.py``), reference (``reference.py``), Triton kernels
(``triton.py``) and C++ kernels (``softmax_cpu.cpp``)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .. import _checks as checks, registry
from ..common import reduce
from ..full_softmax import every_item_loss

__all__ = ["mrl_softmax_loss", "check_log_q"]


def mrl_softmax_loss(user: Tensor, pos: Tensor, item_weight: Tensor, candidates: Tensor | None, dims: Sequence[int],
                     weights: Sequence[float] | Tensor | None = None, temperature: float = 1.0, reduction: str = "mean",
                     *, cosine: bool = False, pos_ids: Tensor | None = None, log_q: Tensor | None = None,
                     pos_log_q: Tensor | None = None, layout: str | None = None, backend: str = "auto") -> Tensor:
    """Matryoshka softmax, fused: at every nested width, a softmax over the
    positive and a pool of candidates, each candidate's row read once; or, with
    ``candidates=None``, over the positive and every other item, without ever
    holding a ``(B, N)`` logit matrix.

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
            ``None``: every item is a candidate
            (:mod:`mrl_kernels.ops.full_softmax`); ``pos_ids`` is then
            required, the positive's own row is left out of the pool (the
            positive counts once, scored from ``pos``), ``log_q`` is ``(N,)``
            and scores are inner products.
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
            With ``candidates=None``, ``(N,)``, finite: ``log_q[i]`` is
            subtracted from item i's logit wherever it appears, the positive's
            included (``log_q[pos_ids]``).
        pos_log_q: optional ``(B,)``, subtracted from the positive's logit; finite
            (not with ``candidates=None``, where the positive's is ``log_q[pos_ids]``).
        layout: as in :func:`~mrl_kernels.mns_sample` (not with ``candidates=None``).

    Differentiable in ``user``, ``pos`` and ``item_weight`` (non-zero in the
    candidates' rows only; repeated ids sum). No L2 term: add one on the rows
    the loss used (docs/own_trainer.md shows how).
    """
    dims, w, temperature, reduction = checks.check_softmax(user, pos, item_weight, dims, weights, temperature,
                                                           reduction)
    if candidates is not None:
        candidates, _ = checks.check_sampling(user, item_weight, candidates, dims, padding=True, layout=layout)
    elif layout is not None:
        raise ValueError(f"layout is for candidate pools: with candidates=None every item is one pool, got "
                         f"layout={layout!r}")
    if pos_ids is not None:
        pos_ids = checks.check_row_ids("pos_ids", pos_ids, item_weight.shape[0], user)
    if not isinstance(cosine, bool):
        raise TypeError(f"cosine must be a bool, got {type(cosine).__name__}")
    if candidates is None:
        return reduce(every_item_loss(user, pos, item_weight, dims, w, temperature, pos_ids, log_q,
                                      cosine=cosine, pos_log_q=pos_log_q, backend=backend), reduction)
    if pos_ids is not None:
        row_pos = pos_ids.view(-1, *[1] * (candidates.dim() - 1))
        candidates = candidates.masked_fill(candidates == row_pos, -1)
    log_q, pos_log_q = check_log_q(log_q, pos_log_q, candidates, user)
    loss, _ = registry.operator_for("mrl_softmax_loss", backend, user)(user, pos, item_weight, candidates, dims, w,
                                                                         temperature, cosine, log_q, pos_log_q)
    return reduce(loss, reduction)


def check_log_q(log_q: Tensor | None, pos_log_q: Tensor | None, candidates: Tensor, user: Tensor
                ) -> tuple[Tensor | None, Tensor | None]:
    """``log_q`` the shape of ``candidates`` and ``pos_log_q`` ``(B,)``
    (:func:`~mrl_kernels.ops._checks.check_correction`, one rule for every
    backend), in the accumulation dtype."""
    return (checks.check_correction("log_q", log_q, tuple(candidates.shape), user, "like the candidates", candidates),
            checks.check_correction("pos_log_q", pos_log_q, (user.shape[0],), user, "one per row",
                                    each="row"))
