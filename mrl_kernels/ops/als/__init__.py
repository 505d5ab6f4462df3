"""Nested (Matryoshka) alternating least squares, :func:`nested_als_solve`: one
side's solve of a sweep of iALS's objective summed over the nested widths. This
folder holds its spec (``spec.py``), reference (``reference.py``), Triton kernels
(``triton.py``) and C++ kernel (``als_cpu.cpp``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .. import _checks as checks, registry
from .reference import coordinate_weights, nested_gram, nested_mask, observed_terms, unobserved_products

__all__ = ["nested_als_solve", "nested_gram", "nested_mask", "coordinate_weights", "observed_terms", "unobserved_products",
           "ALS_DTYPES"]

ALS_DTYPES = (torch.float32, torch.float64)  # least squares in half precision would not converge


def nested_als_solve(factors: Tensor, other: Tensor, interactions, dims: Sequence[int], weights=None, *,
                     alpha, reg, cg_steps: int = 3, backend: str = "auto") -> Tensor:
    """One side's solve of nested iALS: every row's vector minimising, with the
    other side fixed,

    ``sum_l w_l [ sum_obs alpha_l (1 - <x[:d_l], y_i[:d_l]>)^2 + sum_unobs <x[:d_l], y_i[:d_l]>^2
    + reg_l |x[:d_l]|^2 ]``

    (iALS's objective at each width, with that width's confidence and L2 weight,
    summed) by conjugate gradient (implicit's solver) warm-started at ``factors``;
    a conjugate-gradient product costs what iALS's does (the masked structure:
    :mod:`.reference`). With ``weights = (0, ..., 0, 1)`` it is implicit's iALS step exactly.

    Args:
        factors: ``(R, D)`` the rows' current vectors (the warm start), float32 or float64.
        other: ``(N, D)`` the other side's vectors, fixed.
        interactions: the rows' observed items, a CSR with ``indptr`` (R + 1,) and
            ``indices`` (ids in ``[0, N)``), tensors or array-likes (e.g. a
            :class:`~mrl_kernels.ops.CSR`, or ``transpose()`` of one for the other
            side); a row with none is zero (its exact solution).
        dims: nested widths, the last ``D``.
        weights: per-level weights ``w_l`` (>= 0, not all 0; default ``1 / L``
            each). Only their ratios matter (the objective times a constant has
            the same minimiser): the solve scales them by a power of two (exactly)
            to put the largest in [1, 2), so that their size moves neither the
            conjugate gradient's stopping test (an absolute one, implicit's)
            nor its range.
        alpha: the weight ``alpha_l`` of an observed pair at each width (implicit's
            ``alpha``): one number for every width, or one per level; each ``> 0``
            and at most ``finfo(dtype).max ** 0.25`` (4.3e9 in float32, 1.2e77 in
            float64) in ``factors``' dtype: the solve's inner products grow as
            its cube.
        reg: the L2 weight ``reg_l`` of each width's objective (implicit's
            ``regularization``): one number for every width, or one per level;
            each ``>= 0``, bounded as ``alpha``.
        cg_steps: conjugate-gradient steps per row (implicit's default 3; ``D``
            steps solve exactly in exact arithmetic).

    Returns:
        ``(R, D)`` the solved vectors, in ``factors``' dtype. A NaN or infinity
        among ``factors`` or ``other`` reaches it; from finite ones, a result
        that overflowed is a ValueError (never silently NaN).
    """
    rows, width = checks.check_rows("factors", factors)
    checks.check_float("other", other, 2, like=("factors", factors))
    if factors.dtype not in ALS_DTYPES:
        raise TypeError(f"factors must be float32 or float64, got {factors.dtype}")
    if other.shape[1] != width:
        raise ValueError(f"other has width {other.shape[1]} but factors has width {width}")
    dims = checks.check_dims(dims, width)
    weights = checks.check_weights(weights, len(dims), factors.device)
    weights = torch.ldexp(weights, 1 - torch.frexp(weights.max()).exponent)  # exactly: the largest in [1, 2)
    largest = torch.finfo(factors.dtype).max ** 0.25
    alphas = checks.check_per_level("alpha", alpha, len(dims), low=0.0, low_open=True, high=largest,
                                    dtype=factors.dtype)
    regs = checks.check_per_level("reg", reg, len(dims), low=0.0, high=largest, dtype=factors.dtype)
    cg_steps = checks.check_int("cg_steps", cg_steps)
    if not (hasattr(interactions, "indptr") and hasattr(interactions, "indices")):
        raise TypeError(f"interactions must be a CSR with indptr and indices, got {type(interactions).__name__}")
    indptr, indices = checks.check_csr("interactions", interactions.indptr, interactions.indices, factors.device)
    if len(indptr) != rows + 1:
        raise ValueError(f"interactions has {len(indptr) - 1} rows but factors has {rows}")
    indices = checks.check_ids("indices", indices, other.shape[0], factors.device)
    gram = nested_gram(other, dims, weights, torch.tensor(regs, dtype=other.dtype, device=other.device))
    solve = registry.operator_for("nested_als_solve", backend, factors)
    solved = solve(factors, other, gram, indptr, indices, dims, weights,
                   torch.tensor(alphas, dtype=factors.dtype, device=factors.device), cg_steps)
    if checks.can_read_values(solved) and not bool(torch.isfinite(solved).all()) and \
            bool(torch.isfinite(factors).all()) and bool(torch.isfinite(other).all()):
        raise ValueError(f"nested_als_solve overflowed {str(factors.dtype).removeprefix('torch.')} with "
                         f"alpha up to {max(alphas):g}, reg up to {max(regs):g} on these vectors (its inner products "
                         f"grow as the cube of alpha and reg, and faster in the vectors' scale): solve in float64, or "
                         f"scale them down")
    return solved
