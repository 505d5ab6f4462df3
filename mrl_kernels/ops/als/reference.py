"""Plain PyTorch reference of :func:`nested_als_solve`: the specification the
C++ and Triton kernels are tested against. ``IMPLEMENTATIONS`` is what the
``"torch"`` backend registers.

Row ``r`` of ``factors`` holds ``x``, the row's vector; ``other`` (N, D) the other
side's fixed vectors ``y_i``; row r's CSR entries ``indices[indptr[r]:indptr[r+1]]``
its observed items. The row's nested iALS objective (implicit's convention: an
observed pair weighs ``alpha``, an unobserved one 1)

``sum_l w_l [ sum_obs alpha (1 - <x[:d_l], y_i[:d_l]>)^2 + sum_unobs <x[:d_l], y_i[:d_l]>^2
+ reg |x[:d_l]|^2 ]``

(iALS's objective at each width, its L2 term included, summed with weights
``w_l``) is minimal where ``A x = b`` with

- ``A = gram + (alpha - 1) sum_{i in r} sum_l w_l y_i[:d_l] y_i[:d_l]^T`` (each prefix
  zero-padded to D), ``gram = (Y^T Y) ⊙ M + reg diag(m)`` (:func:`nested_gram`),
  ``M[j, k] = sum_{l : d_l > max(j, k)} w_l = m[max(j, k)]``;
- ``b = alpha sum_{i in r} sum_l w_l y_i[:d_l]``.

The solve is implicit's conjugate gradient: ``cg_steps`` steps from ``x`` (a warm
start), a row stopping once its squared residual is below :data:`CG_TOLERANCE`;
a row without observed items is zero (its exact solution; implicit's too).
With the single level ``weights = (0, ..., 0, 1)`` it is iALS's user (or item) step.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["CG_TOLERANCE", "coordinate_weights", "nested_mask", "nested_gram", "nested_products", "observed_terms",
           "unobserved_products", "nested_als_solve"]

CG_TOLERANCE = 1e-20  # a row's conjugate gradient stops below this squared residual (implicit's)


def coordinate_weights(dims: Sequence[int], weights: Tensor) -> Tensor:
    """``m[j] = sum_{l : d_l > j} w_l``, (D,): the weight of coordinate j, summed over
    the levels whose prefix holds it (``M[j, k] = m[max(j, k)]``)."""
    m = torch.zeros(dims[-1], dtype=weights.dtype, device=weights.device)
    for d, w in zip(dims, weights):
        m[:d] += w
    return m


def nested_mask(m: Tensor) -> Tensor:
    """``M[j, k] = m[max(j, k)]``, (D, D), from the coordinate weights ``m``
    (:func:`coordinate_weights`): how much the pair of coordinates (j, k) weighs in
    the nested Gramian terms."""
    index = torch.arange(len(m), device=m.device)
    return m[torch.maximum(index[:, None], index[None, :])]


def observed_terms(user: Tensor, item: Tensor, dims: Sequence[int], weights: Tensor, alpha: float,
                   dtype: torch.dtype | None = None) -> Tensor:
    """``w_l [alpha (1 - s_l)^2 - s_l^2]``, (P, L), of P observed pairs (rows of
    ``user`` and ``item``), ``s_l`` their prefix scores (in ``dtype`` if given): what
    an observed pair adds to the nested objective beyond the unobserved term
    every pair has (:func:`unobserved_products`)."""
    scores = (user * item).cumsum(1)[:, [d - 1 for d in dims]]
    if dtype is not None:
        scores, weights = scores.to(dtype), weights.to(dtype)
    return (alpha * (1 - scores) ** 2 - scores ** 2) * weights


def unobserved_products(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``(X^T X) ⊙ M ⊙ (Y^T Y)``, (D, D), whose sum is every pair's
    ``sum_l w_l <x[:d_l], y[:d_l]>^2`` (``M`` from :func:`nested_mask`)."""
    return (x.T @ x) * mask * (y.T @ y)


def nested_gram(other: Tensor, dims: Sequence[int], weights: Tensor, reg: float) -> Tensor:
    """``(Y^T Y) ⊙ M + reg diag(m)``, (D, D), in ``other``'s dtype: the part of every
    row's system that all unobserved pairs (and the L2 term) share. Each coordinate
    is regularised as much as the widths that hold it weigh, so its ratio of data
    to L2 is iALS's at each width."""
    m = coordinate_weights(dims, weights.to(other.dtype))
    return (other.T @ other) * nested_mask(m) + reg * torch.diag(m)


def _rows(indptr: Tensor) -> Tensor:
    """The row of every CSR entry."""
    return torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr[1:] - indptr[:-1])


def _coefficients(v: Tensor, y: Tensor, rows: Tensor, dims: Sequence[int], weights: Tensor) -> Tensor:
    """``t[e, j] = sum_{l : d_l > j} w_l <y_e[:d_l], v[rows[e], :d_l]>``, (entries, D): each
    observed entry's nested score of ``v``, coordinate by coordinate."""
    t = torch.zeros_like(y)
    for d, w in zip(dims, weights.tolist()):
        t[:, :d] += w * (y[:, :d] * v[rows, :d]).sum(1, keepdim=True)
    return t


def _observed_sum(v: Tensor, y: Tensor, rows: Tensor, dims: Sequence[int], weights: Tensor) -> Tensor:
    """``out[r] = sum_{e in r} t_e ⊙ y_e`` (:func:`_coefficients`' ``t``), (R, D)."""
    return torch.zeros_like(v).index_add_(0, rows, _coefficients(v, y, rows, dims, weights) * y)


def nested_products(v: Tensor, other: Tensor, indptr: Tensor, indices: Tensor, dims: Sequence[int],
                    weights: Tensor) -> Tensor:
    """``out[r] = sum_{i in r} sum_l w_l <y_i[:d_l], v[r, :d_l]> y_i[:d_l]``, (R, D): the
    observed pairs' part of ``A v``, level by level."""
    return _observed_sum(v, other[indices], _rows(indptr), dims, weights.to(v.dtype))


@torch.no_grad()
def nested_als_solve(factors: Tensor, other: Tensor, gram: Tensor, indptr: Tensor, indices: Tensor,
                     dims: Sequence[int], weights: Tensor, alpha: float, cg_steps: int) -> Tensor:
    """Each row's ``A x = b`` (see the module) by ``cg_steps`` conjugate-gradient
    steps from ``factors``; the solutions, (R, D), in ``factors``' dtype. The
    residual ``b - A x`` is summed entry by entry, ``(alpha m - (alpha - 1) t_e) ⊙ y_e``,
    as implicit does: ``b`` and ``A x`` apart would cancel in float32 near the solution."""
    weights = weights.to(factors.dtype)
    rows, y = _rows(indptr), other[indices]
    m = coordinate_weights(dims, weights)
    x = factors.clone()
    r = torch.zeros_like(x).index_add_(0, rows, (alpha * m - (alpha - 1) * _coefficients(x, y, rows, dims, weights))
                                       * y) - x @ gram
    p, rs = r.clone(), (r * r).sum(1)
    for _ in range(cg_steps):
        active = ~(rs < CG_TOLERANCE)  # NaN stays active: it reaches the output
        ap = p @ gram + (alpha - 1) * _observed_sum(p, y, rows, dims, weights)
        step = torch.where(active, rs / torch.where(active, (p * ap).sum(1), 1), 0)[:, None]
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(1)
        p = torch.where(active[:, None], r + (rs_new / torch.where(active, rs, 1))[:, None] * p, p)
        rs = torch.where(active, rs_new, rs)
    x[indptr[1:] == indptr[:-1]] = 0
    return x


IMPLEMENTATIONS = {"nested_als_solve": nested_als_solve}
