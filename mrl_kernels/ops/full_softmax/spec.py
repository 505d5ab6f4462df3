"""The nested log-sum-exp over every item: one operator and its backward.

=============================  ===========================================================
``full_softmax_lse``           ``(user, item_weight, exclude, dims, temperature, log_q)
                               -> lse (B, L)``
``full_softmax_lse_backward``  ``(grad, user, item_weight, exclude, lse, dims, temperature,
                               log_q, output_mask) -> (d user, d item_weight)``
=============================  ===========================================================

``lse[b, l] = logsumexp_{i != exclude[b]} (<user[b, :d_l], item_weight[i, :d_l]> / t - log_q[i])``
over every row ``i`` of ``item_weight``, in the accumulation dtype: ``exclude``
``(B,)`` optional, an id per row left out (ids < 0 leave none out), ``log_q``
``(N,)`` optional, in the accumulation dtype, gets no gradient. The forward
saves only ``lse``; the backward recomputes the scores tile by tile. No
backend holds a ``(B, N)`` matrix.
"""
from __future__ import annotations

from ..common import acc_dtype
from ..spec import OpSpec, fake_gradients


def _fake_full_softmax_lse(user, item_weight, exclude, dims, temperature, log_q):
    return user.new_empty((user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))


SPECS = (
    OpSpec("full_softmax_lse",
           "(Tensor user, Tensor item_weight, Tensor? exclude, int[] dims, float temperature, Tensor? log_q)"
           " -> Tensor lse",
           _fake_full_softmax_lse, backward="full_softmax_lse_backward", grads=("user", "item_weight")),
    OpSpec("full_softmax_lse_backward",
           "(Tensor grad, Tensor user, Tensor item_weight, Tensor? exclude, Tensor lse, int[] dims, "
           "float temperature, Tensor? log_q, bool[2] output_mask) -> (Tensor grad_user, Tensor grad_item_weight)",
           fake_gradients),
)
