"""Nested (Matryoshka) least squares: one side's solve of an alternating
least-squares sweep.

=====================  ======================================================================
``nested_als_solve``   ``(factors, other, gram, indptr, indices, dims, weights, alphas, cg_steps)
                       -> solved (R, D)``
=====================  ======================================================================
"""
from __future__ import annotations

from ..spec import OpSpec


def _fake_nested_als_solve(factors, other, gram, indptr, indices, dims, weights, alphas, cg_steps):
    return factors.new_empty(factors.shape)


SPECS = (
    OpSpec("nested_als_solve",
           "(Tensor factors, Tensor other, Tensor gram, Tensor indptr, Tensor indices, int[] dims, Tensor weights, "
           "Tensor alphas, int cg_steps) -> Tensor solved",
           _fake_nested_als_solve),
)
