"""Plain PyTorch reference of MNS and the MRL loss: the specification.

Every fast backend (Triton, C++) is tested against the functions here. They
are written to be read next to the paper, not to be fast: one loop over the
nesting levels, each level an ordinary dot product over the first ``d_l``
columns. Scores are accumulated in at least float32 whatever the input dtype.

Notation: ``B`` batch rows, ``D`` embedding width, ``dims = (d_1 < ... < d_L = D)``
the nested prefix widths, ``M`` candidates per pool, ``N`` items.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "acc_dtype",
    "prefix_scores",
    "mns_sample",
    "mrl_bpr_loss",
    "mns_bpr_loss",
    "level_margins",
    "mrl_bpr_coef",
    "mrl_bpr_loss_backward",
    "mrl_softmax_loss",
    "mrl_softmax_loss_lse",
    "mrl_softmax_loss_backward",
    "excluded_mask",
    "shortlist_rerank",
    "prefix_topk",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores are accumulated in: float32 for half types, else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def _acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in its accumulation dtype (float32 for half types, else its own)."""
    return t.to(acc_dtype(t.dtype))


def prefix_scores(user: torch.Tensor, rows: torch.Tensor, d: int) -> torch.Tensor:
    """``<user[..., :d], rows[..., :d]>``; ``user`` broadcasts against ``rows``."""
    return (_acc(user[..., :d]) * _acc(rows[..., :d])).sum(-1)


def _pools(candidates: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """The candidate pool of each level: the shared ``(B, M)`` pool L times, or
    the ``(B, M)`` slices of a ``(B, L, M)`` tensor."""
    if candidates.dim() == 2:
        return [candidates] * num_levels
    return [candidates[:, level] for level in range(num_levels)]


@torch.no_grad()
def mns_sample(
    user: torch.Tensor,
    item_weight: torch.Tensor,
    candidates: torch.Tensor,
    dims: Sequence[int],
) -> torch.Tensor:
    """Matryoshka negative sampling: ``out[b, l]`` is the candidate of level l's
    pool with the largest ``<user[b, :d_l], item_weight[c, :d_l]>``; ties go to
    the lowest position in the pool (``torch.argmax`` returns the first maximum).
    """
    picks = []
    for d, pool in zip(dims, _pools(candidates, len(dims))):
        scores = prefix_scores(user[:, None, :], item_weight[pool], d)  # (B, M)
        best = scores.argmax(dim=1, keepdim=True)
        picks.append(pool.gather(1, best))
    return torch.cat(picks, dim=1).long()


def level_margins(
    user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dims: Sequence[int]
) -> torch.Tensor:
    """``margins[b, l] = <u, n_l> - <u, p>`` over the prefix ``[:d_l]``, shape ``(B, L)``."""
    return torch.stack(
        [prefix_scores(user, neg[:, level], d) - prefix_scores(user, pos, d) for level, d in enumerate(dims)],
        dim=1,
    )


def mrl_bpr_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Per-row MRL loss ``sum_l w_l * softplus(<u, n_l> - <u, p>)`` over prefixes
    ``[:d_l]``, shape ``(B,)`` in ``user``'s dtype. Differentiable by autograd."""
    margins = level_margins(user, pos, neg, dims)
    w = torch.as_tensor(weights, dtype=margins.dtype, device=margins.device)
    return (w * F.softplus(margins)).sum(1).to(user.dtype)


def mrl_bpr_coef(
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """``coef[b, l] = w_l * sigmoid(<u, n_l> - <u, p>)`` at width d_l, in the
    accumulation dtype: all that the backward of the MRL loss needs from its forward."""
    margins = level_margins(user, pos, neg, dims)
    return torch.as_tensor(weights, dtype=margins.dtype, device=margins.device) * torch.sigmoid(margins)


def mns_bpr_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    item_weight: torch.Tensor,
    candidates: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNS then the MRL loss with the sampled negatives: ``(per-row loss, negatives)``.
    Autograd gives the gradient of ``item_weight`` in the chosen rows only, with
    repeated ids summed."""
    negatives = mns_sample(user, item_weight, candidates, dims)
    return mrl_bpr_loss(user, pos, item_weight[negatives], dims, weights), negatives


def mrl_bpr_loss_backward(
    grad: torch.Tensor,
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    coef: torch.Tensor,
    dims: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit gradient of :func:`mrl_bpr_loss` given
    ``coef[b, l] = w_l * sigmoid(<u, n_l> - <u, p>)`` (at width d_l):

    - ``d user[:d_l] += g * coef_l * (n_l - p)[:d_l]``
    - ``d pos[:d_l]  -= g * coef_l * user[:d_l]``
    - ``d n_l[:d_l]  += g * coef_l * user[:d_l]``
    """
    g = coef * grad.to(coef.dtype)[:, None]  # (B, L)
    u, p, n = _acc(user), _acc(pos), _acc(neg)
    grad_user, grad_pos, grad_neg = u.new_zeros(u.shape), p.new_zeros(p.shape), n.new_zeros(n.shape)
    for level, d in enumerate(dims):
        gl = g[:, level, None]
        grad_user[:, :d] += gl * (n[:, level, :d] - p[:, :d])
        grad_pos[:, :d] -= gl * u[:, :d]
        grad_neg[:, level, :d] += gl * u[:, :d]
    return grad_user.to(user.dtype), grad_pos.to(pos.dtype), grad_neg.to(neg.dtype)



COSINE_EPS = 1e-12  # prefix norms are clamped here, as in F.normalize


def _prefix_norm(x: torch.Tensor, d: int) -> torch.Tensor:
    return _acc(x[..., :d]).square().sum(-1).sqrt().clamp_min(COSINE_EPS)


def _softmax_levels(user, pos, item_weight, candidates, dims, temperature, cosine):
    """Per level l: ``(positive's score (B,), the pool's scores (B, M))`` at width
    d_l over ``temperature`` (cosine: divided by both prefix norms too), ``-inf``
    at padding (ids < 0). Differentiable."""
    out = []
    for d, pool in zip(dims, _pools(candidates, len(dims))):
        rows = item_weight[pool.clamp(min=0)]
        scores, pos_score = prefix_scores(user[:, None, :], rows, d), prefix_scores(user, pos, d)
        if cosine:
            scores = scores / (_prefix_norm(user, d)[:, None] * _prefix_norm(rows, d))
            pos_score = pos_score / (_prefix_norm(user, d) * _prefix_norm(pos, d))
        out.append((pos_score / temperature, (scores / temperature).masked_fill(pool < 0, -torch.inf)))
    return out


def mrl_softmax_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    item_weight: torch.Tensor,
    candidates: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | torch.Tensor,
    temperature: float,
    cosine: bool = False,
) -> torch.Tensor:
    """Per-row Matryoshka sampled softmax
    ``sum_l w_l * (logsumexp_{j in {pos} + pool_l}(s_j / t) - s_pos / t)`` with
    ``s_j = <u[:d_l], e_j[:d_l]>`` (``cosine``: divided by ``|u[:d_l]| |e_j[:d_l]|``,
    norms clamped at ``COSINE_EPS``) and pool l the ``(B, M)`` candidates (shared
    by every level) or ``candidates[:, l]``; shape ``(B,)`` in ``user``'s dtype.
    Pool ids < 0 are padding and take no part. Differentiable by autograd."""
    return mrl_softmax_loss_lse(user, pos, item_weight, candidates, dims, weights, temperature, cosine)[0]


def mrl_softmax_loss_lse(user, pos, item_weight, candidates, dims, weights, temperature, cosine=False):
    """``(loss, lse)``: :func:`mrl_softmax_loss` and ``lse[b, l]``, the log-sum-exp of
    the positive's and pool l's width-d_l scores over ``temperature`` (``(B, L)``,
    accumulation dtype), all that the fused backwards need from the forward."""
    levels = _softmax_levels(user, pos, item_weight, candidates, dims, temperature, cosine)
    lse = torch.stack([torch.cat([sp[:, None], s], 1).logsumexp(1) for sp, s in levels], dim=1)
    pos_scores = torch.stack([sp for sp, _ in levels], dim=1)
    w = torch.as_tensor(weights, dtype=lse.dtype, device=lse.device)
    return (w * (lse - pos_scores)).sum(1).to(user.dtype), lse


def mrl_softmax_loss_backward(
    grad: torch.Tensor,
    user: torch.Tensor,
    pos: torch.Tensor,
    item_weight: torch.Tensor,
    candidates: torch.Tensor,
    lse: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | torch.Tensor,
    temperature: float,
    cosine: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit gradient of :func:`mrl_softmax_loss` from the saved ``lse``.
    At level l, with ``p_j = exp(s_j / t - lse_l)`` the softmax over the positive
    and pool l, ``c_j = grad * w_l / t * (p_j - [j = pos])`` is the gradient of
    the loss in score ``s_j``. For inner products ``d e_j += c_j u`` and
    ``d u += c_j e_j`` (over ``[:d_l]``); for cosines ``s_j = <u, e_j> / (|u| |e_j|)``,
    ``d e_j += c_j (u / (|u| |e_j|) - s_j e_j / |e_j|^2)`` and
    ``d u += c_j (e_j / (|u| |e_j|) - s_j u / |u|^2)``. Repeated ids sum."""
    u, p, table = _acc(user), _acc(pos), _acc(item_weight)
    w = torch.as_tensor(weights, dtype=lse.dtype, device=lse.device)
    g = grad.to(lse.dtype)[:, None] * w / temperature  # (B, L)
    grad_user, grad_pos, grad_items = u.new_zeros(u.shape), p.new_zeros(p.shape), table.new_zeros(table.shape)
    ones = torch.ones((), dtype=lse.dtype, device=lse.device)

    def pieces(c, dots, u_norm, e_norm):
        """(coefficient of u in d e, of e in d e, of u in d u); that of e in d u is the first."""
        if not cosine:
            return c, torch.zeros_like(c), torch.zeros_like(c)
        cosines = dots / (u_norm * e_norm)
        return c / (u_norm * e_norm), -c * cosines / e_norm ** 2, -c * cosines / u_norm ** 2

    for level, (d, pool) in enumerate(zip(dims, _pools(candidates, len(dims)))):
        valid = pool >= 0
        rows = table[pool.clamp(min=0)]
        u_norm = _prefix_norm(u, d) if cosine else ones
        p_norm, e_norm = (_prefix_norm(p, d), _prefix_norm(rows, d)) if cosine else (ones, ones)
        dots, pos_dots = prefix_scores(u[:, None, :], rows, d), prefix_scores(u, p, d)
        scale = (u_norm[:, None] * e_norm) if cosine else ones
        probs = torch.where(valid, torch.exp(dots / scale / temperature - lse[:, level, None]), 0.0)
        cross, own, user_own = pieces(g[:, level, None] * probs, dots, u_norm[:, None] if cosine else ones, e_norm)
        pos_scale = (u_norm * p_norm) if cosine else ones
        c_pos = g[:, level] * (torch.exp(pos_dots / pos_scale / temperature - lse[:, level]) - 1)
        p_cross, p_own, p_user_own = pieces(c_pos, pos_dots, u_norm, p_norm)
        grad_user[:, :d] += ((cross[..., None] * rows[..., :d]).sum(1) + user_own.sum(1, keepdim=True) * u[:, :d]
                             + p_cross[:, None] * p[:, :d] + p_user_own[:, None] * u[:, :d])
        grad_pos[:, :d] += p_cross[:, None] * u[:, :d] + p_own[:, None] * p[:, :d]
        rows_grad = torch.zeros_like(rows)
        rows_grad[..., :d] = cross[..., None] * u[:, None, :d] + own[..., None] * rows[..., :d]
        grad_items.index_add_(0, pool[valid], rows_grad[valid])
    return grad_user.to(user.dtype), grad_pos.to(pos.dtype), grad_items.to(item_weight.dtype)


def excluded_mask(offsets: torch.Tensor, ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """Boolean ``(B, n_items)``: row b excludes ``ids[offsets[b]:offsets[b + 1]]``."""
    rows = torch.repeat_interleave(torch.arange(offsets.shape[0] - 1, device=ids.device),
                                   offsets[1:] - offsets[:-1])
    mask = torch.zeros((offsets.shape[0] - 1, n_items), dtype=torch.bool, device=ids.device)
    mask[rows, ids] = True
    return mask


def _ranked(scores: torch.Tensor, ids: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` best of ``scores`` per row with their ``ids``: descending score,
    ties to the lower id (``ids`` must be ascending along each row)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :count]
    return scores.gather(1, order), ids.gather(1, order)


def shortlist_rerank(
    query: torch.Tensor,
    item_weight: torch.Tensor,
    first: torch.Tensor,
    blocked: torch.Tensor,
    k: int,
    shortlist: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The second half of :func:`prefix_topk`, given the shortlist pass's
    ``(B, N)`` scores ``first`` and the ``(B, N)`` exclusion mask ``blocked``."""
    batch, n_items = first.shape
    first = first.masked_fill(blocked, -torch.inf)
    all_ids = torch.arange(n_items, device=query.device).expand(batch, -1)
    _, short = _ranked(first, all_ids, min(shortlist, n_items))
    short = short.sort(dim=1).values  # ascending ids: ties of the rerank go to the lower id
    full = (query[:, None, :].to(first.dtype) * item_weight[short].to(first.dtype)).sum(-1)
    full = full.masked_fill(blocked.gather(1, short), -torch.inf)
    scores, ids = _ranked(full, short, min(k, short.shape[1]))
    ids = torch.where(torch.isneginf(scores) & blocked.gather(1, ids), -1, ids)
    if k > ids.shape[1]:  # fewer items than k
        pad = k - ids.shape[1]
        scores = torch.cat([scores, scores.new_full((batch, pad), -torch.inf)], dim=1)
        ids = torch.cat([ids, ids.new_full((batch, pad), -1)], dim=1)
    return scores, ids


@torch.no_grad()
def prefix_topk(
    query: torch.Tensor,
    narrow: torch.Tensor,
    item_weight: torch.Tensor,
    k: int,
    shortlist: int,
    exclude_offsets: torch.Tensor,
    exclude_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive retrieval: the ``shortlist`` items with the largest prefix inner
    product ``<query[:, :w], narrow>`` (``w = narrow.shape[1]``; ``narrow`` holds the
    items' first w columns, possibly in a narrower dtype), reranked by the full
    inner product with ``item_weight``; the top ``k`` of them. Row b's items
    ``exclude_ids[exclude_offsets[b]:exclude_offsets[b + 1]]`` take part in
    neither pass. Ties go to the lower item id. Where fewer than k items are left,
    the remaining slots hold id -1 and score -inf. Returns ``(scores, ids)``:
    ``(B, k)`` in the accumulation dtype and int64."""
    acc = acc_dtype(query.dtype)
    first = query[:, :narrow.shape[1]].to(acc) @ narrow.to(acc).T
    blocked = excluded_mask(exclude_offsets, exclude_ids, narrow.shape[0])
    return shortlist_rerank(query, item_weight, first, blocked, k, shortlist)
