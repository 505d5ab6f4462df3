"""Inputs and callables for each operator and backend, shared by the
pytest-benchmark suite (``pytest bench/ --benchmark-only``) and the report
(``python -m bench.report``): both time exactly these."""
from __future__ import annotations

import mrl_kernels as mk
from mrl_kernels.ops.testing import make_inputs

from . import costs

DIMS = (4, 8, 16, 32, 64)
M = 16
N_ITEMS = 10_429  # phone-sized


def backends(device: str) -> list[str]:
    return [b for b in mk.available_backends(device) if not (b == "triton" and device == "cpu")]


def inputs(B: int, device: str, layout: str = "per-level", seed: int = 0) -> dict:
    """The operators' float32 inputs at batch ``B`` (leaves that require gradients)."""
    return make_inputs(B, DIMS[-1], N_ITEMS, M, DIMS, layout, device=device, seed=seed, requires_grad=True)


def workload(op: str, backend: str, B: int, device: str, layout: str = "per-level", seed: int = 0):
    """``(callable, bytes, FLOPs)`` for one forward (+ backward for the losses) call."""
    x = inputs(B, device, layout, seed)
    user, pos, items, neg, cand = x["user"], x["pos"], x["item_weight"], x["neg"], x["candidates"]
    if op == "mns_sample":
        moved, flops = costs.mns_sample(B, M, DIMS, layout, 4)
        return (lambda: mk.mns_sample(user, items, cand, DIMS, layout=layout, backend=backend)), moved, flops
    if op == "mrl_bpr_loss":
        def run():
            user.grad = pos.grad = neg.grad = None
            mk.mrl_bpr_loss(user, pos, neg, DIMS, backend=backend).backward()
        moved, flops = costs.mrl_bpr_loss(B, DIMS, 4)
        return run, moved, flops

    if op == "mrl_softmax_loss":
        def run():
            user.grad = pos.grad = items.grad = None
            mk.mrl_softmax_loss(user, pos, items, cand, DIMS, layout=layout, backend=backend).backward()
        moved, flops = costs.mrl_softmax_loss(B, M, N_ITEMS, DIMS, layout, 4)
        return run, moved, flops

    def run():
        user.grad = pos.grad = items.grad = None
        mk.mns_bpr_loss(user, pos, items, cand, DIMS, layout=layout, backend=backend)[0].backward()
    moved, flops = costs.mns_bpr_loss(B, M, N_ITEMS, DIMS, layout, 4)
    return run, moved, flops
