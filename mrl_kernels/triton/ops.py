"""Registers the Triton backend's ``torch.library`` operators.

With a GPU they are ``triton_op``\\ s whose launchers use ``wrap_triton``, so
``torch.compile`` traces into them. Under ``TRITON_INTERPRET=1`` (kernels run on
CPU tensors with numpy) ``wrap_triton`` refuses interpreted kernels, so the same
launchers are registered as plain ``custom_op``\\ s with the shared fakes.
"""
from __future__ import annotations

import torch

from .. import dispatch
from . import kernels


class TritonImpl:
    @staticmethod
    def mns_sample(user, item_weight, candidates, dims):
        return kernels.forward(user, None, item_weight, candidates, None, dims, None, compute_loss=False)[1]

    @staticmethod
    def mrl_bpr_loss(user, pos, neg, dims, weights):
        loss, _, coef = kernels.forward(user, pos, None, None, neg, dims, weights, compute_loss=True)
        return loss, coef

    @staticmethod
    def mrl_bpr_loss_backward(grad, user, pos, neg, coef, dims):
        return kernels.backward(grad, user, pos, None, None, neg, coef, dims)

    @staticmethod
    def mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
        return kernels.forward(user, pos, item_weight, candidates, None, dims, weights, compute_loss=True)

    @staticmethod
    def mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims):
        return kernels.backward(grad, user, pos, item_weight, negatives, None, coef, dims)


if dispatch.triton_interpreting():
    BACKEND = dispatch.define_ops("triton", TritonImpl, max_width=kernels.MAX_WIDTH)
else:
    BACKEND = dispatch.define_ops("triton", TritonImpl, decorator=torch.library.triton_op, with_fake=False,
                                  max_width=kernels.MAX_WIDTH)
