"""The ``"triton"`` backend: fused MNS + MRL-loss kernels (:mod:`.kernels`).

On CUDA tensors; on CPU tensors too under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests without a GPU). Triton itself is imported only when the
backend is loaded, so the package works without it. On a GPU the operators are
``triton_op``\\ s whose launchers use ``wrap_triton``, so ``torch.compile`` traces
into them; ``wrap_triton`` refuses interpreted kernels, so under the interpreter
the same launchers are registered as plain ``custom_op``\\ s with the spec's fakes.
"""
from __future__ import annotations

import os

import torch

from ... import library

MAX_WIDTH = 1024  # largest D the kernels take (one row in registers)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def _load() -> library.Operators:
    from . import kernels

    implementations = {
        "mns_sample": lambda user, item_weight, candidates, dims: kernels.forward(
            user, None, item_weight, candidates, None, dims, None, compute_loss=False)[1],
        "mrl_bpr_loss": lambda user, pos, neg, dims, weights: kernels.forward(
            user, pos, None, None, neg, dims, weights, compute_loss=True)[::2],
        "mrl_bpr_loss_backward": lambda grad, user, pos, neg, coef, dims: kernels.backward(
            grad, user, pos, None, None, neg, coef, dims),
        "mns_bpr_loss": lambda user, pos, item_weight, candidates, dims, weights: kernels.forward(
            user, pos, item_weight, candidates, None, dims, weights, compute_loss=True),
        "mns_bpr_loss_backward": lambda grad, user, pos, item_weight, negatives, coef, dims: kernels.backward(
            grad, user, pos, item_weight, negatives, None, coef, dims),
        "prefix_topk": kernels.prefix_topk,
        "mrl_softmax_loss": kernels.softmax_forward,
        "mrl_softmax_loss_backward": kernels.softmax_backward,
    }
    if interpreting():
        return library.define("triton", implementations)
    return library.define("triton", implementations, decorator=torch.library.triton_op, with_fake=False)


BACKEND = library.Backend(name="triton", load=_load, devices=_devices, preferred_on=("cuda",), max_width=MAX_WIDTH)
