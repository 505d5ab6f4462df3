"""Inputs and callables for each operator and backend, shared by the
pytest-benchmark suite (``pytest bench/ --benchmark-only``) and the report
(``python -m bench.report``): both time exactly these."""
from __future__ import annotations

import torch

import mrl_kernels as mk

from . import costs

DIMS = (4, 8, 16, 32, 64)
M = 16
N_ITEMS = 10_429  # phone-sized


def backends(device: str) -> list[str]:
    return [b for b in mk.available_backends(device) if not (b == "triton" and device == "cpu")]


def workload(op: str, backend: str, B: int, device: str, layout: str = "per-level", seed: int = 0):
    """``(callable, bytes, FLOPs)`` for one forward (+ backward for the losses) call."""
    g = torch.Generator(device=device).manual_seed(seed)
    D, L = DIMS[-1], len(DIMS)
    rand = lambda *s: torch.randn(*s, device=device, generator=g).requires_grad_()  # noqa: E731
    user, pos, items = rand(B, D), rand(B, D), rand(N_ITEMS, D)
    shape = (B, L, M) if layout == "per-level" else (B, M)
    cand = torch.randint(0, N_ITEMS, shape, device=device, generator=g)
    if op == "mns_sample":
        moved, flops = costs.mns_sample(B, M, DIMS, layout, 4)
        return (lambda: mk.mns_sample(user, items, cand, DIMS, backend=backend)), moved, flops
    if op == "mrl_bpr_loss":
        neg = rand(B, L, D)

        def run():
            user.grad = pos.grad = neg.grad = None
            mk.mrl_bpr_loss(user, pos, neg, DIMS, backend=backend).backward()
        moved, flops = costs.mrl_bpr_loss(B, DIMS, 4)
        return run, moved, flops

    def run():
        user.grad = pos.grad = items.grad = None
        mk.mns_bpr_loss(user, pos, items, cand, DIMS, backend=backend)[0].backward()
    moved, flops = costs.mns_bpr_loss(B, M, N_ITEMS, DIMS, layout, 4)
    return run, moved, flops
