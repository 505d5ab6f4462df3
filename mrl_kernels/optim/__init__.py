"""Lazy (row-sparse) Adam for tables with row-sparse gradients.

:class:`LazyAdam` is torch's ``SparseAdam`` rule, ``m += (g - m)(1 - b1)``,
``v += (g^2 - v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``,
applied to the rows in the gradient only, with one global step count ``t``
per table. Where torch's ``SparseAdam`` builds several sparse temporaries per
step, this reads and writes each row's weights and moments once: on the CPU in
one fused C++ pass (rows in parallel, random rows prefetched; the ``cpp``
backend's library), elsewhere with ``index_select`` / ``index_copy_`` /
``index_add_`` over the rows. The step of a large table costs what its rows in
the batch cost, whatever the table's size.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Sequence

import torch
from torch import Tensor

from .. import registry

__all__ = ["LazyAdam"]

# the schema of the C++ row pass (lazy_adam_cpu.cpp implements it); not an operator of the spec
_LIBRARY = torch.library.Library("mrl_kernels", "FRAGMENT")
_LIBRARY.define("lazy_adam_cpp(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor indices, "
                "Tensor values, float beta1, float beta2, float eps, float step_size) -> ()")


def _fused_available(param: Tensor) -> bool:
    """Whether the C++ row pass takes ``param`` (a contiguous CPU float32/64 table)."""
    if param.device.type != "cpu" or param.dtype not in (torch.float32, torch.float64) or not param.is_contiguous():
        return False
    return "cpp" in registry.available_backends("cpu")


def adam_rows(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, indices: Tensor, values: Tensor,
              beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """The lazy Adam update of the rows ``indices`` (unique) in place, with torch
    operations on any device (the specification of the fused C++ pass)."""
    m = exp_avg.index_select(0, indices)
    m += (values - m) * (1 - beta1)
    v = exp_avg_sq.index_select(0, indices)
    v += (values * values - v) * (1 - beta2)
    exp_avg.index_copy_(0, indices, m)
    exp_avg_sq.index_copy_(0, indices, v)
    param.index_add_(0, indices, m / (v.sqrt() + eps), alpha=-step_size)


class LazyAdam(torch.optim.Optimizer):
    """Adam on row-sparse gradients (``nn.Embedding(sparse=True)``,
    ``F.embedding(..., sparse=True)``): the moments and weights of the rows in a
    step's gradient move, the others keep their values (lazy Adam, as torch's
    ``SparseAdam`` and the embedding optimizers of large-scale trainers). Dense
    gradients are refused."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be > 0 and finite; got {lr!r}")
        if (isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2
                or not all(isinstance(b, Real) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two floats in [0, 1); got {betas!r}")
        if isinstance(eps, bool) or not isinstance(eps, Real) or not 0 < eps < math.inf:
            raise ValueError(f"eps must be > 0 and finite; got {eps!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    def _gradients(self) -> list[tuple[dict, Tensor, Tensor]]:
        """``(group, param, coalesced gradient)`` of every parameter with a
        gradient, each checked before any parameter moves: row-sparse, shaped like
        its table, its row ids inside the table."""
        found = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("LazyAdam takes row-sparse gradients (sparse=True lookups); "
                                       "use torch.optim.Adam for dense ones")
                grad = param.grad.coalesce()
                if grad.shape != param.shape or grad.sparse_dim() != 1:
                    raise ValueError(f"LazyAdam: a gradient of shape {tuple(grad.shape)} with {grad.sparse_dim()} "
                                     f"sparse dimensions for a table of shape {tuple(param.shape)}; expected "
                                     "row-sparse gradients of the table's shape")
                rows = grad.indices()[0]
                if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= param.shape[0]):
                    raise IndexError(f"LazyAdam: gradient rows must lie in [0, {param.shape[0]}) (the table's "
                                     f"rows); got rows in [{int(rows.min())}, {int(rows.max())}]")
                found.append((group, param, grad))
        return found

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, param, grad in self._gradients():
            beta1, beta2 = group["betas"]
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
            state["step"] += 1
            t = state["step"]
            step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            args = (param, state["exp_avg"], state["exp_avg_sq"], grad.indices()[0], grad.values(),
                    beta1, beta2, group["eps"], step_size)
            if _fused_available(param):
                torch.ops.mrl_kernels.lazy_adam_cpp(*args)
            else:
                adam_rows(*args)
        return loss
