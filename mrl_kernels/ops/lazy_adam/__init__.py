"""Lazy Adam's row pass, :func:`lazy_adam`: the step of
:class:`mrl_kernels.training.LazyAdam` (torch's ``SparseAdam`` rule on the rows
of a gradient). This folder holds its spec (``spec.py``), reference
(``reference.py``), Triton kernel (``triton.py``) and C++ kernel
(``lazy_adam_cpu.cpp``: rows in parallel, random rows prefetched)."""
from __future__ import annotations

from torch import Tensor

from .. import registry
from .._checks import check_float, check_ids, check_real

__all__ = ["lazy_adam"]


def lazy_adam(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, indices: Tensor, values: Tensor, *,
              beta1: float, beta2: float, eps: float, step_size: float, backend: str = "auto") -> None:
    """One lazy Adam step, in place, on the rows ``indices`` (unique) of the
    ``(N, D)`` tables ``param``, ``exp_avg``, ``exp_avg_sq`` (contiguous, one
    dtype and device), with their gradient rows ``values`` ``(R, D)``:
    ``m += (g - m)(1 - beta1)``, ``v += (g^2 - v)(1 - beta2)``,
    ``w -= step_size * m / (sqrt(v) + eps)``, ``eps > 0`` and ``step_size`` finite
    in ``param``'s dtype. ``indices``: a tensor or an array-like. The other rows
    keep their values."""
    check_float("param", param, 2)
    for name, t in (("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_float(name, t, 2, like=("param", param))
        if t.shape != param.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but param has {tuple(param.shape)}")
    for name, t in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place, row by row)")
    indices = check_ids("indices", indices, param.shape[0], param.device, rows_of="param")
    check_float("values", values, 2, like=("param", param))
    if values.shape != (indices.shape[0], param.shape[1]):
        raise ValueError(f"values must hold one row of width {param.shape[1]} per index, "
                         f"({indices.shape[0]}, {param.shape[1]}), got {tuple(values.shape)}")
    beta1 = check_real("beta1", beta1, low=0.0, high=1.0, high_open=True)
    beta2 = check_real("beta2", beta2, low=0.0, high=1.0, high_open=True)
    eps = check_real("eps", eps, low=0.0, low_open=True, dtype=param.dtype)  # 0 there would divide 0 by 0
    step_size = check_real("step_size", step_size, low=0.0, dtype=param.dtype)
    operator = registry.operator_for("lazy_adam", backend, param)
    operator(param, exp_avg, exp_avg_sq, indices, values, beta1, beta2, eps, step_size)
