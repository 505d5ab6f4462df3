"""The ``"torch"`` backend: the plain PyTorch reference of
:mod:`mrl_kernels.reference`, on any device; what ``backend="auto"`` falls back to."""
from __future__ import annotations

from .. import library, reference


def _mrl_bpr_loss(user, pos, neg, dims, weights):
    return (reference.mrl_bpr_loss(user, pos, neg, dims, weights),
            reference.mrl_bpr_coef(user, pos, neg, dims, weights))


def _mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
    negatives = reference.mns_sample(user, item_weight, candidates, dims)
    loss, coef = _mrl_bpr_loss(user, pos, item_weight[negatives], dims, weights)
    return loss, negatives, coef


def _mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims):
    grad_user, grad_pos, grad_neg = reference.mrl_bpr_loss_backward(
        grad, user, pos, item_weight[negatives], coef, dims)
    grad_items = item_weight.new_zeros(item_weight.shape).index_add_(
        0, negatives.reshape(-1), grad_neg.reshape(-1, item_weight.shape[1]))
    return grad_user, grad_pos, grad_items


IMPLEMENTATIONS = {
    "mns_sample": reference.mns_sample,
    "mrl_bpr_loss": _mrl_bpr_loss,
    "mrl_bpr_loss_backward": reference.mrl_bpr_loss_backward,
    "mns_bpr_loss": _mns_bpr_loss,
    "mns_bpr_loss_backward": _mns_bpr_loss_backward,
    "prefix_topk": reference.prefix_topk,
    "mrl_softmax_loss": reference.mrl_softmax_loss_lse,
    "mrl_softmax_loss_backward": reference.mrl_softmax_loss_backward,
}

BACKEND = library.Backend(name="torch", load=lambda: library.define("torch", IMPLEMENTATIONS), fallback=True)
