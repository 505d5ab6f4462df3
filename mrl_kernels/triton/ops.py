"""Registers the Triton backend's ``torch.library`` operators and its eager path.

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
    """The five operator bodies; ``direct`` launches kernels without
    ``wrap_triton`` (the eager path), else through it (the registered operators)."""

    def __init__(self, direct: bool):
        self.direct = direct

    def mns_sample(self, user, item_weight, candidates, dims):
        return kernels.forward(user, None, item_weight, candidates, None, dims, None, False, self.direct)[1]

    def mrl_bpr_loss(self, user, pos, neg, dims, weights):
        loss, _, coef = kernels.forward(user, pos, None, None, neg, dims, weights, True, self.direct)
        return loss, coef

    def mrl_bpr_loss_backward(self, grad, user, pos, neg, coef, dims):
        return kernels.backward(grad, user, pos, None, None, neg, coef, dims, self.direct)

    def mns_bpr_loss(self, user, pos, item_weight, candidates, dims, weights):
        return kernels.forward(user, pos, item_weight, candidates, None, dims, weights, True, self.direct)

    def mns_bpr_loss_backward(self, grad, user, pos, item_weight, negatives, coef, dims):
        return kernels.backward(grad, user, pos, item_weight, negatives, None, coef, dims, self.direct)


if dispatch.triton_interpreting():
    BACKEND = dispatch.define_ops("triton", TritonImpl(direct=True), eager=TritonImpl(direct=True),
                                  max_width=kernels.MAX_WIDTH)
else:
    BACKEND = dispatch.define_ops("triton", TritonImpl(direct=False), eager=TritonImpl(direct=True),
                                  decorator=torch.library.triton_op, with_fake=False, max_width=kernels.MAX_WIDTH)
