"""Lazy Adam's row pass: one Adam step on some rows of a table, in place.

==============  ======================================================================
``lazy_adam``   ``(param!, exp_avg!, exp_avg_sq!, indices, values, beta1, beta2, eps,
                step_size) -> ()``: the rows ``indices`` (unique) of the three tables
                move by their gradient rows ``values``
==============  ======================================================================
"""
from __future__ import annotations

from ..spec import OpSpec


def _fake_lazy_adam(param, exp_avg, exp_avg_sq, indices, values, beta1, beta2, eps, step_size):
    return None


SPECS = (
    OpSpec("lazy_adam",
           "(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor indices, Tensor values, "
           "float beta1, float beta2, float eps, float step_size) -> ()",
           _fake_lazy_adam),
)
