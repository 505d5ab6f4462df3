"""Random operator inputs, shared by the test suite and the benchmarks, and
useful for checking a backend of one's own against the reference."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["make_inputs"]


def make_inputs(B: int, D: int, N: int, M: int, dims: Sequence[int], layout: str = "per-level",
                dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", seed: int = 0,
                integer: bool = False, requires_grad: bool = False) -> dict:
    """Seeded inputs of every operator: ``user``, ``pos`` ``(B, D)``, ``item_weight``
    ``(N, D)``, ``neg`` ``(B, L, D)`` in ``dtype`` on ``device``; ``candidates``
    int64 ``(B, L, M)`` (``layout="per-level"``) or ``(B, M)`` (``"shared"``);
    ``dims`` as a list; ``layout`` (the operators' ``layout=``). Values are standard normal, or small integers in [-3, 3]
    with ``integer=True`` (exact scores, so many candidates tie). The same seed
    gives the same values on any device (drawn on the CPU in float64, then cast).
    ``requires_grad`` makes the float tensors leaves that require gradients."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        if integer:
            return torch.randint(-3, 4, shape, generator=g).double()
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    L = len(dims)
    x = {"user": rand(B, D), "pos": rand(B, D), "item_weight": rand(N, D), "neg": rand(B, L, D)}
    x = {k: v.to(dtype).to(device).requires_grad_(requires_grad) for k, v in x.items()}
    shape = (B, M) if layout == "shared" else (B, L, M)
    x["candidates"] = torch.randint(0, N, shape, generator=g).to(device)
    x["dims"], x["layout"] = list(dims), layout
    return x
