"""The Matryoshka sampled softmax.

=============================  ===========================================================
``mrl_softmax_loss``           ``(user, pos, item_weight, candidates, dims, weights, temperature,
                               cosine, log_q, pos_log_q) -> (loss (B,), lse (B, L))``
``mrl_softmax_loss_backward``  ``(grad, user, pos, item_weight, candidates, lse, dims, weights,
                               temperature, cosine, log_q, pos_log_q, output_mask)
                               -> (d user, d pos, d item_weight)``
=============================  ===========================================================

``lse[b, l]`` (the log-sum-exp of level l's logits) is what the forward saves;
the backward recomputes the candidates' scores. Candidate ids < 0 are padding.
``log_q`` (the candidates' shape) and ``pos_log_q`` (``(B,)``), optional, in
the accumulation dtype, are subtracted from the logits (the logQ correction);
they get no gradient.
"""
from __future__ import annotations

from ..mns.spec import _fake_mrl_bpr_loss
from ..spec import OpSpec, fake_gradients


def _fake_mrl_softmax_loss(user, pos, item_weight, candidates, dims, weights, temperature, cosine, log_q, pos_log_q):
    return _fake_mrl_bpr_loss(user, pos, None, dims, weights)


SPECS = (
    OpSpec("mrl_softmax_loss",
           "(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, Tensor weights, "
           "float temperature, bool cosine, Tensor? log_q, Tensor? pos_log_q) -> (Tensor loss, Tensor lse)",
           _fake_mrl_softmax_loss, backward="mrl_softmax_loss_backward", grads=("user", "pos", "item_weight")),
    OpSpec("mrl_softmax_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, Tensor lse, int[] dims, "
           "Tensor weights, float temperature, bool cosine, Tensor? log_q, Tensor? pos_log_q, bool[3] output_mask)"
           " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)",
           fake_gradients),
)
