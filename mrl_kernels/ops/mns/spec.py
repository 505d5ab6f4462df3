"""MNS and the MRL (per-level BPR) loss: three operators and two backwards.

==========================  ==============================================================
``mns_sample``              ``(user, item_weight, candidates, dims) -> negatives (B, L)``
``mrl_bpr_loss``            ``(user, pos, neg, dims, weights) -> (loss (B,), coef (B, L))``
``mrl_bpr_loss_backward``   ``(grad, user, pos, neg, coef, dims, output_mask)
                            -> (d user, d pos, d neg)``
``mns_bpr_loss``            ``(user, pos, item_weight, candidates, dims, weights)
                            -> (loss (B,), negatives (B, L), coef (B, L))``
``mns_bpr_loss_backward``   ``(grad, user, pos, item_weight, negatives, coef, dims, output_mask)
                            -> (d user, d pos, d item_weight)``
==========================  ==============================================================

``coef[b, l] = w_l * sigmoid(margin_l)`` is what a BPR loss's forward saves for
its backward.
"""
from __future__ import annotations

import torch

from ..common import acc_dtype
from ..spec import OpSpec, fake_gradients


def _fake_mns_sample(user, item_weight, candidates, dims):
    return user.new_empty((user.shape[0], len(dims)), dtype=torch.int64)


def _fake_mrl_bpr_loss(user, pos, neg, dims, weights):
    coef = user.new_empty((user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))
    return user.new_empty(user.shape[0]), coef


def _fake_mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
    loss, coef = _fake_mrl_bpr_loss(user, pos, None, dims, weights)
    return loss, _fake_mns_sample(user, item_weight, candidates, dims), coef


SPECS = (
    OpSpec("mns_sample",
           "(Tensor user, Tensor item_weight, Tensor candidates, int[] dims) -> Tensor negatives",
           _fake_mns_sample),
    OpSpec("mrl_bpr_loss",
           "(Tensor user, Tensor pos, Tensor neg, int[] dims, Tensor weights) -> (Tensor loss, Tensor coef)",
           _fake_mrl_bpr_loss, backward="mrl_bpr_loss_backward", grads=("user", "pos", "neg")),
    OpSpec("mrl_bpr_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor neg, Tensor coef, int[] dims, bool[3] output_mask)"
           " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_neg)",
           fake_gradients),
    OpSpec("mns_bpr_loss",
           "(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, Tensor weights)"
           " -> (Tensor loss, Tensor negatives, Tensor coef)",
           _fake_mns_bpr_loss, backward="mns_bpr_loss_backward", grads=("user", "pos", "item_weight")),
    OpSpec("mns_bpr_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor negatives, Tensor coef, int[] dims, "
           "bool[3] output_mask) -> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)",
           fake_gradients),
)
