"""Lazy (row-sparse) Adam for tables with row-sparse gradients.

:class:`LazyAdam` is torch's ``SparseAdam`` rule, ``m += (g - m)(1 - b1)``,
``v += (g^2 - v)(1 - b2)``, ``w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``,
applied to the rows in the gradient only, with one global step count ``t``
per table. Where torch's ``SparseAdam`` builds several sparse temporaries per
step, this reads and writes each row's weights and moments once, through the
operator :func:`mrl_kernels.ops.lazy_adam` (one fused C++ pass on the CPU, rows
in parallel, random rows prefetched; a Triton kernel on CUDA). The step of a
large table costs what its rows in the batch cost, whatever the table's size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..ops import lazy_adam
from ..ops._checks import check_real

__all__ = ["LazyAdam"]


class LazyAdam(torch.optim.Optimizer):
    """Adam on row-sparse gradients (``nn.Embedding(sparse=True)``,
    ``F.embedding(..., sparse=True)``): the moments and weights of the rows in a
    step's gradient move, the others keep their values (lazy Adam, as torch's
    ``SparseAdam`` and the embedding optimizers of large-scale trainers). Dense
    gradients are refused. ``backend`` runs the row pass
    (:func:`mrl_kernels.ops.lazy_adam`)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, *,
                 backend: str = "auto"):
        lr = check_real("lr", lr, low=0.0, low_open=True)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = tuple(check_real(f"betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas))
        eps = check_real("eps", eps, low=0.0, low_open=True)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.backend = backend

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
            lazy_adam(param, state["exp_avg"], state["exp_avg_sq"], grad.indices()[0], grad.values(), beta1=beta1,
                      beta2=beta2, eps=group["eps"], step_size=step_size, backend=self.backend)
        return loss
