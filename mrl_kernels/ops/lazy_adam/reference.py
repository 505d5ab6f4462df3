"""The reference of lazy Adam's row pass (the ``"torch"`` backend's
``IMPLEMENTATIONS``): torch's ``SparseAdam`` rule on the given rows, with
``index_select`` / ``index_copy_`` / ``index_add_``, on any device."""
from __future__ import annotations

from torch import Tensor

__all__ = ["lazy_adam"]


def lazy_adam(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, indices: Tensor, values: Tensor,
              beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """``m += (g - m)(1 - beta1)``, ``v += (g^2 - v)(1 - beta2)``,
    ``w -= step_size * m / (sqrt(v) + eps)`` on the rows ``indices`` (unique), in place."""
    m = exp_avg.index_select(0, indices)
    m += (values - m) * (1 - beta1)
    v = exp_avg_sq.index_select(0, indices)
    v += (values * values - v) * (1 - beta2)
    exp_avg.index_copy_(0, indices, m)
    exp_avg_sq.index_copy_(0, indices, v)
    param.index_add_(0, indices, m / (v.sqrt() + eps), alpha=-step_size)


IMPLEMENTATIONS = {"lazy_adam": lazy_adam}
