"""Plain PyTorch reference of MNS and the MRL loss: the specification the
Triton and C++ kernels are tested against, written to be read next to the
paper, not to be fast: one loop over the nesting levels, each level an ordinary
dot product over the first ``d_l`` columns. Scores are accumulated in at least
float32 whatever the input dtype. ``IMPLEMENTATIONS`` is what the ``"torch"``
backend registers."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..common import acc, masked, pools, prefix_scores

__all__ = ["mns_sample", "level_margins", "mrl_bpr_loss", "mrl_bpr_coef", "mns_bpr_loss", "mrl_bpr_loss_backward"]


@torch.no_grad()
def mns_sample(user: torch.Tensor, item_weight: torch.Tensor, candidates: torch.Tensor,
               dims: Sequence[int]) -> torch.Tensor:
    """Matryoshka negative sampling: ``out[b, l]`` is the candidate of level l's
    pool with the largest ``<user[b, :d_l], item_weight[c, :d_l]>``; ties go to
    the lowest position in the pool (``torch.argmax`` returns the first maximum).
    """
    picks = []
    for d, pool in zip(dims, pools(candidates, len(dims))):
        scores = prefix_scores(user[:, None, :], item_weight[pool], d)  # (B, M)
        best = scores.argmax(dim=1, keepdim=True)
        picks.append(pool.gather(1, best))
    return torch.cat(picks, dim=1).long()


def level_margins(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``margins[b, l] = <u, n_l> - <u, p>`` over the prefix ``[:d_l]``, shape ``(B, L)``."""
    return torch.stack(
        [prefix_scores(user, neg[:, level], d) - prefix_scores(user, pos, d) for level, d in enumerate(dims)],
        dim=1,
    )


def mrl_bpr_loss(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dims: Sequence[int],
                 weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Per-row MRL loss ``sum_l w_l * softplus(<u, n_l> - <u, p>)`` over prefixes
    ``[:d_l]``, shape ``(B,)`` in ``user``'s dtype. Differentiable by autograd."""
    margins = level_margins(user, pos, neg, dims)
    w = torch.as_tensor(weights, dtype=margins.dtype, device=margins.device)
    return (w * F.softplus(margins)).sum(1).to(user.dtype)


def mrl_bpr_coef(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, dims: Sequence[int],
                 weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``coef[b, l] = w_l * sigmoid(<u, n_l> - <u, p>)`` at width d_l, in the
    accumulation dtype: all that the backward of the MRL loss needs from its forward."""
    margins = level_margins(user, pos, neg, dims)
    return torch.as_tensor(weights, dtype=margins.dtype, device=margins.device) * torch.sigmoid(margins)


def mns_bpr_loss(user: torch.Tensor, pos: torch.Tensor, item_weight: torch.Tensor, candidates: torch.Tensor,
                 dims: Sequence[int], weights: Sequence[float] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MNS then the MRL loss with the sampled negatives: ``(per-row loss, negatives)``.
    Autograd gives the gradient of ``item_weight`` in the chosen rows only, with
    repeated ids summed."""
    negatives = mns_sample(user, item_weight, candidates, dims)
    return mrl_bpr_loss(user, pos, item_weight[negatives], dims, weights), negatives


def mrl_bpr_loss_backward(grad: torch.Tensor, user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                          coef: torch.Tensor, dims: Sequence[int],
                          output_mask: Sequence[bool] = (True, True, True)
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The explicit gradient of :func:`mrl_bpr_loss` given
    ``coef[b, l] = w_l * sigmoid(<u, n_l> - <u, p>)`` (at width d_l):

    - ``d user[:d_l] += g * coef_l * (n_l - p)[:d_l]``
    - ``d pos[:d_l]  -= g * coef_l * user[:d_l]``
    - ``d n_l[:d_l]  += g * coef_l * user[:d_l]``

    A gradient that ``output_mask`` masks is returned empty."""
    g = coef * grad.to(coef.dtype)[:, None]  # (B, L)
    u, p, n = acc(user), acc(pos), acc(neg)
    grad_user, grad_pos, grad_neg = u.new_zeros(u.shape), p.new_zeros(p.shape), n.new_zeros(n.shape)
    for level, d in enumerate(dims):
        gl = g[:, level, None]
        grad_user[:, :d] += gl * (n[:, level, :d] - p[:, :d])
        grad_pos[:, :d] -= gl * u[:, :d]
        grad_neg[:, level, :d] += gl * u[:, :d]
    return masked((grad_user.to(user.dtype), grad_pos.to(pos.dtype), grad_neg.to(neg.dtype)), output_mask)


def _mrl_bpr_loss_with_coef(user, pos, neg, dims, weights):
    return mrl_bpr_loss(user, pos, neg, dims, weights), mrl_bpr_coef(user, pos, neg, dims, weights)


def _mns_bpr_loss_with_coef(user, pos, item_weight, candidates, dims, weights):
    negatives = mns_sample(user, item_weight, candidates, dims)
    loss, coef = _mrl_bpr_loss_with_coef(user, pos, item_weight[negatives], dims, weights)
    return loss, negatives, coef


def _mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims, output_mask):
    needs_user, needs_pos, needs_items = output_mask
    grad_user, grad_pos, grad_neg = mrl_bpr_loss_backward(grad, user, pos, item_weight[negatives], coef, dims,
                                                          (needs_user, needs_pos, needs_items))
    if needs_items:
        grad_neg = item_weight.new_zeros(item_weight.shape).index_add_(
            0, negatives.reshape(-1), grad_neg.reshape(-1, item_weight.shape[1]))
    return grad_user, grad_pos, grad_neg


IMPLEMENTATIONS = {
    "mns_sample": mns_sample,
    "mrl_bpr_loss": _mrl_bpr_loss_with_coef,
    "mrl_bpr_loss_backward": mrl_bpr_loss_backward,
    "mns_bpr_loss": _mns_bpr_loss_with_coef,
    "mns_bpr_loss_backward": _mns_bpr_loss_backward,
}
