"""Plain PyTorch reference of the Matryoshka sampled softmax: the specification
the Triton and C++ kernels are tested against. ``IMPLEMENTATIONS`` is what the
``"torch"`` backend registers."""
from __future__ import annotations

from typing import Sequence

import torch

from ..common import COSINE_EPS, acc, masked, pools, prefix_scores

__all__ = ["mrl_softmax_loss", "mrl_softmax_loss_lse", "mrl_softmax_loss_backward"]


def _prefix_norm(x: torch.Tensor, d: int) -> torch.Tensor:
    return acc(x[..., :d]).square().sum(-1).sqrt().clamp_min(COSINE_EPS)


def _softmax_levels(user, pos, item_weight, candidates, dims, temperature, cosine, log_q=None, pos_log_q=None):
    """Per level l: ``(positive's score (B,), the pool's scores (B, M))`` at width
    d_l over ``temperature`` (cosine: divided by both prefix norms too), less
    ``log_q`` / ``pos_log_q`` where given, ``-inf`` at padding (ids < 0). Differentiable."""
    out = []
    corrections = pools(log_q, len(dims)) if log_q is not None else [0.0] * len(dims)
    for d, pool, correction in zip(dims, pools(candidates, len(dims)), corrections):
        rows = item_weight[pool.clamp(min=0)]
        scores, pos_score = prefix_scores(user[:, None, :], rows, d), prefix_scores(user, pos, d)
        if cosine:
            scores = scores / (_prefix_norm(user, d)[:, None] * _prefix_norm(rows, d))
            pos_score = pos_score / (_prefix_norm(user, d) * _prefix_norm(pos, d))
        pos_logit = pos_score / temperature - (0.0 if pos_log_q is None else pos_log_q)
        out.append((pos_logit, (scores / temperature - correction).masked_fill(pool < 0, -torch.inf)))
    return out


def mrl_softmax_loss(user: torch.Tensor, pos: torch.Tensor, item_weight: torch.Tensor, candidates: torch.Tensor,
                     dims: Sequence[int], weights: Sequence[float] | torch.Tensor, temperature: float,
                     cosine: bool = False, log_q: torch.Tensor | None = None,
                     pos_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Matryoshka sampled softmax
    ``sum_l w_l * (logsumexp_{j in {pos} + pool_l}(z_j) - z_pos)`` with
    ``z_j = s_j / t - log_q_j``, ``s_j = <u[:d_l], e_j[:d_l]>`` (``cosine``: divided by ``|u[:d_l]| |e_j[:d_l]|``,
    norms clamped at ``COSINE_EPS``) and pool l the ``(B, M)`` candidates (shared
    by every level) or ``candidates[:, l]``; shape ``(B,)`` in ``user``'s dtype.
    ``log_q`` (the candidates' shape) and ``pos_log_q`` (``(B,)``), the logQ
    correction, default to 0. Pool ids < 0 are padding and take no part.
    Differentiable by autograd."""
    return mrl_softmax_loss_lse(user, pos, item_weight, candidates, dims, weights, temperature, cosine,
                                log_q, pos_log_q)[0]


def mrl_softmax_loss_lse(user, pos, item_weight, candidates, dims, weights, temperature, cosine=False,
                         log_q=None, pos_log_q=None):
    """``(loss, lse)``: :func:`mrl_softmax_loss` and ``lse[b, l]``, the log-sum-exp of
    the positive's and pool l's width-d_l logits (``(B, L)``,
    accumulation dtype), all that the fused backwards need from the forward."""
    levels = _softmax_levels(user, pos, item_weight, candidates, dims, temperature, cosine, log_q, pos_log_q)
    lse = torch.stack([torch.cat([sp[:, None], s], 1).logsumexp(1) for sp, s in levels], dim=1)
    pos_scores = torch.stack([sp for sp, _ in levels], dim=1)
    w = torch.as_tensor(weights, dtype=lse.dtype, device=lse.device)
    return (w * (lse - pos_scores)).sum(1).to(user.dtype), lse


def mrl_softmax_loss_backward(grad: torch.Tensor, user: torch.Tensor, pos: torch.Tensor, item_weight: torch.Tensor,
                              candidates: torch.Tensor, lse: torch.Tensor, dims: Sequence[int],
                              weights: Sequence[float] | torch.Tensor, temperature: float, cosine: bool = False,
                              log_q: torch.Tensor | None = None, pos_log_q: torch.Tensor | None = None,
                              output_mask: Sequence[bool] = (True, True, True)
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit gradient of :func:`mrl_softmax_loss` from the saved ``lse``.
    At level l, with ``p_j = exp(s_j / t - log_q_j - lse_l)`` the softmax over the positive
    and pool l, ``c_j = grad * w_l / t * (p_j - [j = pos])`` is the gradient of
    the loss in score ``s_j``. For inner products ``d e_j += c_j u`` and
    ``d u += c_j e_j`` (over ``[:d_l]``); for cosines ``s_j = <u, e_j> / (|u| |e_j|)``,
    ``d e_j += c_j (u / (|u| |e_j|) - s_j e_j / |e_j|^2)`` and
    ``d u += c_j (e_j / (|u| |e_j|) - s_j u / |u|^2)``. Repeated ids sum; a
    gradient that ``output_mask`` masks is returned empty."""
    u, p, table = acc(user), acc(pos), acc(item_weight)
    w = torch.as_tensor(weights, dtype=lse.dtype, device=lse.device)
    g = grad.to(lse.dtype)[:, None] * w / temperature  # (B, L)
    grad_user, grad_pos = u.new_zeros(u.shape), p.new_zeros(p.shape)
    grad_items = table.new_zeros(table.shape) if output_mask[2] else table.new_empty(0)
    ones = torch.ones((), dtype=lse.dtype, device=lse.device)

    def pieces(c, dots, u_norm, e_norm):
        """(coefficient of u in d e, of e in d e, of u in d u); that of e in d u is the first."""
        if not cosine:
            return c, torch.zeros_like(c), torch.zeros_like(c)
        cosines = dots / (u_norm * e_norm)
        return c / (u_norm * e_norm), -c * cosines / e_norm ** 2, -c * cosines / u_norm ** 2

    corrections = pools(log_q, len(dims)) if log_q is not None else [0.0] * len(dims)
    pos_correction = 0.0 if pos_log_q is None else pos_log_q
    for level, (d, pool, correction) in enumerate(zip(dims, pools(candidates, len(dims)), corrections)):
        valid = pool >= 0
        rows = table[pool.clamp(min=0)]
        u_norm = _prefix_norm(u, d) if cosine else ones
        p_norm, e_norm = (_prefix_norm(p, d), _prefix_norm(rows, d)) if cosine else (ones, ones)
        dots, pos_dots = prefix_scores(u[:, None, :], rows, d), prefix_scores(u, p, d)
        scale = (u_norm[:, None] * e_norm) if cosine else ones
        probs = torch.where(valid, torch.exp(dots / scale / temperature - correction - lse[:, level, None]), 0.0)
        cross, own, user_own = pieces(g[:, level, None] * probs, dots, u_norm[:, None] if cosine else ones, e_norm)
        pos_scale = (u_norm * p_norm) if cosine else ones
        c_pos = g[:, level] * (torch.exp(pos_dots / pos_scale / temperature - pos_correction - lse[:, level]) - 1)
        p_cross, p_own, p_user_own = pieces(c_pos, pos_dots, u_norm, p_norm)
        grad_user[:, :d] += ((cross[..., None] * rows[..., :d]).sum(1) + user_own.sum(1, keepdim=True) * u[:, :d]
                             + p_cross[:, None] * p[:, :d] + p_user_own[:, None] * u[:, :d])
        grad_pos[:, :d] += p_cross[:, None] * u[:, :d] + p_own[:, None] * p[:, :d]
        rows_grad = torch.zeros_like(rows)
        rows_grad[..., :d] = cross[..., None] * u[:, None, :d] + own[..., None] * rows[..., :d]
        if output_mask[2]:
            grad_items.index_add_(0, pool[valid], rows_grad[valid])
    return masked((grad_user.to(user.dtype), grad_pos.to(pos.dtype), grad_items.to(item_weight.dtype)), output_mask)


IMPLEMENTATIONS = {
    "mrl_softmax_loss": mrl_softmax_loss_lse,
    "mrl_softmax_loss_backward": mrl_softmax_loss_backward,
}
