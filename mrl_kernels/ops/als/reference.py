"""Plain PyTorch reference of :func:`nested_als_solve`: the specification the
C++ and Triton kernels are tested against. ``IMPLEMENTATIONS`` is what the
``"torch"`` backend registers.

Row ``r`` of ``factors`` holds ``x``, the row's vector; ``other`` (N, D) the other
side's fixed vectors ``y_i``; row r's CSR entries ``indices[indptr[r]:indptr[r+1]]``
its observed items. The row's nested iALS objective (implicit's convention: an
observed pair weighs ``alpha``, an unobserved one 1), each width ``d_l`` with its
own weight ``w_l``, confidence ``alpha_l`` and L2 weight ``reg_l``,

``sum_l w_l [ sum_obs alpha_l (1 - s_l)^2 + sum_unobs s_l^2 + reg_l |x[:d_l]|^2 ]``,
``s_l = <x[:d_l], y_i[:d_l]>``,

is, writing every pair as unobserved and correcting the observed ones,
``sum_l w_l [ sum_all s_l^2 + sum_obs ((alpha_l - 1) s_l^2 - 2 alpha_l s_l + alpha_l)
+ reg_l |x[:d_l]|^2 ]``. A width-``d_l`` term ``c_l <x[:d_l], z[:d_l]>^2`` is
``x^T (z z^T ⊙ M_c) x`` with the mask ``M_c[j, k] = sum_{l : d_l > max(j, k)} c_l
= m_c[max(j, k)]`` (:func:`coordinate_weights` of ``c``, :func:`nested_mask`): a pair
of coordinates counts at the widths holding both. So the objective is minimal
where ``A x = b`` with three masks, one per part:

- ``A = gram + sum_{i in r} (y_i y_i^T) ⊙ M_{w (alpha - 1)}``, the observed part's
  mask from ``w_l (alpha_l - 1)``;
- ``gram = (Y^T Y) ⊙ M_w + diag(m_{w reg})`` (:func:`nested_gram`): the Gram part's
  mask from ``w_l``, the diagonal from ``w_l reg_l``; every row of a side shares it;
- ``b = sum_{i in r} y_i ⊙ m_{w alpha}``, from ``w_l alpha_l``.

A product ``A v`` costs what iALS's does: the Gram part is one ``D x D`` product,
and an observed item's part ``t ⊙ y_i`` with ``t[j] = sum_{l : d_l > j} w_l
(alpha_l - 1) <y_i[:d_l], v[:d_l]>`` is one pass over D (running prefix sums of
``y_i ⊙ v``, then suffix sums over the levels). With one level (or the weight on
the full width only) it is iALS's system exactly.

The solve is implicit's conjugate gradient: ``cg_steps`` steps from ``x`` (a warm
start), a row stopping once its squared residual is below :data:`CG_TOLERANCE`;
a row without observed items is zero (its exact solution; implicit's too).
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


def observed_terms(user: Tensor, item: Tensor, dims: Sequence[int], weights: Tensor, alpha,
                   dtype: torch.dtype | None = None) -> Tensor:
    """``w_l [alpha_l (1 - s_l)^2 - s_l^2]``, (P, L), of P observed pairs (rows of
    ``user`` and ``item``), ``s_l`` their prefix scores (in ``dtype`` if given),
    ``alpha`` one float or an (L,) tensor: what an observed pair adds to the nested
    objective beyond the unobserved term every pair has (:func:`unobserved_products`)."""
    scores = (user * item).cumsum(1)[:, [d - 1 for d in dims]]
    alpha = torch.as_tensor(alpha, dtype=scores.dtype if dtype is None else dtype, device=scores.device)
    if dtype is not None:
        scores, weights = scores.to(dtype), weights.to(dtype)
    return (alpha * (1 - scores) ** 2 - scores ** 2) * weights


def unobserved_products(x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``(X^T X) ⊙ M ⊙ (Y^T Y)``, (D, D), whose sum is every pair's
    ``sum_l w_l <x[:d_l], y[:d_l]>^2`` (``M`` from :func:`nested_mask`)."""
    return (x.T @ x) * mask * (y.T @ y)


def nested_gram(other: Tensor, dims: Sequence[int], weights: Tensor, regs) -> Tensor:
    """``(Y^T Y) ⊙ M_w + diag(m_{w reg})``, (D, D), in ``other``'s dtype: the part of
    every row's system that all unobserved pairs (and the L2 terms, ``regs`` the
    per-width ``reg_l``, an (L,) tensor or one float for all) share. Each coordinate is regularised as much as the
    widths that hold it weigh, so its ratio of data to L2 is iALS's at each width."""
    weights = weights.to(other.dtype)
    m = coordinate_weights(dims, weights)
    return (other.T @ other) * nested_mask(m) + torch.diag(coordinate_weights(
        dims, weights * torch.as_tensor(regs, dtype=other.dtype, device=other.device)))


def _rows(indptr: Tensor) -> Tensor:
    """The row of every CSR entry."""
    return torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr[1:] - indptr[:-1])


def _coefficients(v: Tensor, y: Tensor, rows: Tensor, dims: Sequence[int], coefs: Tensor) -> Tensor:
    """``t[e, j] = sum_{l : d_l > j} c_l <y_e[:d_l], v[rows[e], :d_l]>``, (entries, D): each
    observed entry's nested score of ``v``, coordinate by coordinate (``coefs`` the ``c_l``)."""
    t = torch.zeros_like(y)
    for d, c in zip(dims, coefs.tolist()):
        t[:, :d] += c * (y[:, :d] * v[rows, :d]).sum(1, keepdim=True)
    return t


def _observed_sum(v: Tensor, y: Tensor, rows: Tensor, dims: Sequence[int], coefs: Tensor) -> Tensor:
    """``out[r] = sum_{e in r} t_e ⊙ y_e`` (:func:`_coefficients`' ``t``), (R, D)."""
    return torch.zeros_like(v).index_add_(0, rows, _coefficients(v, y, rows, dims, coefs) * y)


def nested_products(v: Tensor, other: Tensor, indptr: Tensor, indices: Tensor, dims: Sequence[int],
                    coefs: Tensor) -> Tensor:
    """``out[r] = sum_{i in r} sum_l c_l <y_i[:d_l], v[r, :d_l]> y_i[:d_l]``, (R, D): the
    observed pairs' part of ``A v`` (``coefs`` the ``c_l = w_l (alpha_l - 1)``), level by level."""
    return _observed_sum(v, other[indices], _rows(indptr), dims, coefs.to(v.dtype))


@torch.no_grad()
def nested_als_solve(factors: Tensor, other: Tensor, gram: Tensor, indptr: Tensor, indices: Tensor,
                     dims: Sequence[int], weights: Tensor, alphas: Tensor, cg_steps: int) -> Tensor:
    """Each row's ``A x = b`` (see the module; ``gram`` from :func:`nested_gram`,
    ``alphas`` (L,) the ``alpha_l``) by ``cg_steps`` conjugate-gradient steps from
    ``factors``; the solutions, (R, D), in ``factors``' dtype. The residual
    ``b - A x`` is summed entry by entry, ``(m_{w alpha} - t_e) ⊙ y_e``, as implicit
    does: ``b`` and ``A x`` apart would cancel in float32 near the solution."""
    weights, alphas = weights.to(factors.dtype), alphas.to(factors.dtype)
    coefs = weights * (alphas - 1)
    rows, y = _rows(indptr), other[indices]
    target = coordinate_weights(dims, weights * alphas)
    x = factors.clone()
    r = torch.zeros_like(x).index_add_(0, rows, (target - _coefficients(x, y, rows, dims, coefs)) * y) - x @ gram
    p, rs = r.clone(), (r * r).sum(1)
    for _ in range(cg_steps):
        active = ~(rs < CG_TOLERANCE)  # NaN stays active: it reaches the output
        ap = p @ gram + _observed_sum(p, y, rows, dims, coefs)
        step = torch.where(active, rs / torch.where(active, (p * ap).sum(1), 1), 0)[:, None]
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(1)
        p = torch.where(active[:, None], r + (rs_new / torch.where(active, rs, 1))[:, None] * p, p)
        rs = torch.where(active, rs_new, rs)
    x[indptr[1:] == indptr[:-1]] = 0
    return x


IMPLEMENTATIONS = {"nested_als_solve": nested_als_solve}
