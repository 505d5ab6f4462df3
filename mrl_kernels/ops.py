"""The public operators: argument checks, backend choice, reduction.

Every function takes ``backend="auto" | "torch" | "triton" | "cpp"``: ``"torch"``
is the plain PyTorch reference (:mod:`mrl_kernels.reference`), ``"triton"`` the
fused GPU kernels, ``"cpp"`` the fused CPU kernels; ``"auto"`` follows the rule
of :mod:`mrl_kernels.registry` (Triton for CUDA tensors, C++ for CPU tensors,
the reference where those cannot run).
"""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import registry

__all__ = ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss", "prefix_topk"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTIONS = ("mean", "sum", "none")


def _check_matrix(name: str, t, ndim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def _check_float(name: str, t, ndim: int, like: tuple[str, Tensor] | None = None) -> Tensor:
    _check_matrix(name, t, ndim)
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if like is not None:
        other_name, other = like
        if t.device != other.device:
            raise ValueError(f"{name} is on {t.device} but {other_name} is on {other.device}")
        if t.dtype != other.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {other_name} has {other.dtype}")
    return t


def _can_read_values(t: Tensor) -> bool:
    """Whether value checks may read ``t`` back: not for meta tensors (shapes
    only), not while ``torch.compile`` traces, nor while a CUDA graph is being
    captured."""
    if t.is_meta or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_ids(name: str, ids, n: int, device: torch.device, padding: bool = False) -> Tensor:
    """Integer ids on ``device``, inside ``[0, n)`` (below ``n`` if ``padding``:
    negative ids then mark padding), as int64. The range check reads the ids back
    (one synchronisation); it is skipped while compiling or capturing a CUDA graph."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but the embeddings are on {device}")
    if ids.numel() and _can_read_values(ids) and bool((((ids < 0) & (not padding)) | (ids >= n)).any()):
        expected = f"be < {n} (the rows of item_weight; ids < 0 are padding)" if padding else \
            f"lie in [0, {n}) (the rows of item_weight)"
        raise ValueError(f"{name} must {expected}; got ids in [{int(ids.min())}, {int(ids.max())}]")
    return ids.long()


def check_dims(dims, width: int) -> list[int]:
    """``dims`` (a sequence, or a 1-D array or tensor, of ints) as a list of
    strictly increasing positive ints ending at ``width``."""
    integer_tensor = isinstance(dims, Tensor) and not (dims.is_floating_point() or dims.is_complex())
    integer_array = isinstance(dims, np.ndarray) and np.issubdtype(dims.dtype, np.integer)
    if (integer_tensor or integer_array) and dims.ndim == 1:
        dims = dims.tolist()
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) == 0:
        raise ValueError(f"dims must be a non-empty sequence of ints, got {dims!r}")
    if not all(isinstance(d, Integral) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"dims must hold ints, got {dims!r}")
    dims = [int(d) for d in dims]
    if dims[0] <= 0 or any(b <= a for a, b in zip(dims, dims[1:])):
        raise ValueError(f"dims must be strictly increasing positive ints, got {dims}")
    if dims[-1] != width:
        raise ValueError(f"dims[-1] must equal the embedding width {width}, got dims={dims}")
    return dims


def check_weights(weights, num_levels: int, device: torch.device) -> Tensor:
    """The per-level loss weights as a float32 tensor of length L (default 1/L)."""
    if weights is None:
        return torch.full((num_levels,), 1.0 / num_levels, dtype=torch.float32, device=device)
    w = torch.as_tensor(weights, dtype=torch.float32).to(device)
    if w.dim() != 1 or w.shape[0] != num_levels:
        raise ValueError(f"weights must have one entry per level ({num_levels}), got shape {tuple(w.shape)}")
    if _can_read_values(w) and not bool(((w >= 0) & torch.isfinite(w)).all()):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    return w


def check_temperature(temperature) -> float:
    """``temperature`` as a float, which must be positive and finite."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not 0 < temperature < float("inf"):
        raise ValueError(f"temperature must be a positive finite float, got {temperature!r}")
    return float(temperature)


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_batch(name: str, t: Tensor, batch: int) -> None:
    if t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} rows but user has {batch}")


def _check_rows(name: str, t) -> tuple[int, int]:
    """``(B, D)`` of a non-empty float matrix ``t``."""
    _check_float(name, t, 2)
    if t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row")
    return t.shape


def _check_pos(pos, user: Tensor) -> None:
    _check_float("pos", pos, 2, like=("user", user))
    _check_batch("pos", pos, user.shape[0])
    if pos.shape[1] != user.shape[1]:
        raise ValueError(f"pos has width {pos.shape[1]} but user has width {user.shape[1]}")


def _operator(op: str, backend: str, rows: Tensor):
    """Operator ``op`` of the backend for ``rows``' device, width and dtype (``rows``: user or query vectors)."""
    return registry.operator(op, backend, rows.device, rows.shape[1], rows.dtype)


def _check_sampling(user, item_weight, candidates, dims, padding: bool = False) -> tuple[Tensor, list[int]]:
    batch, width = _check_rows("user", user)
    _check_float("item_weight", item_weight, 2, like=("user", user))
    if item_weight.shape[1] != width:
        raise ValueError(f"item_weight has width {item_weight.shape[1]} but user has width {width}")
    dims = check_dims(dims, width)
    if not isinstance(candidates, Tensor) or candidates.dim() not in (2, 3):
        shape = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__
        raise ValueError(f"candidates must be a (B, M) or (B, L, M) tensor of item ids, got {shape}")
    _check_batch("candidates", candidates, batch)
    if candidates.dim() == 3 and candidates.shape[1] != len(dims):
        raise ValueError(f"candidates of shape (B, L, M) must have L = len(dims) = {len(dims)} pools, "
                         f"got {candidates.shape[1]}")
    if candidates.shape[-1] == 0:
        raise ValueError("candidates must hold at least one candidate per pool (M >= 1)")
    return check_ids("candidates", candidates, item_weight.shape[0], user.device, padding), dims


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def mns_sample(
    user: Tensor, item_weight: Tensor, candidates: Tensor, dims: Sequence[int], *, backend: str = "auto"
) -> Tensor:
    """Matryoshka negative sampling.

    Args:
        user: ``(B, D)`` user vectors.
        item_weight: ``(N, D)`` item table.
        candidates: ``(B, M)`` item ids (one pool for every level) or ``(B, L, M)``
            (pool l for level l).
        dims: the nested widths ``d_1 < ... < d_L = D``.

    Returns:
        int64 ``(B, L)``: ``out[b, l]`` is the candidate with the largest prefix
        score ``<user[b, :d_l], item_weight[c, :d_l]>``, ties to the lowest
        position in the pool. Not differentiable.
    """
    candidates, dims = _check_sampling(user, item_weight, candidates, dims)
    return _operator("mns_sample", backend, user)(user, item_weight, candidates, dims)


def mrl_bpr_loss(
    user: Tensor,
    pos: Tensor,
    neg: Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
    *,
    backend: str = "auto",
) -> Tensor:
    """The MRL loss for given negative vectors.

    Per row ``sum_l weights[l] * softplus(<u[:d_l], neg[:, l, :d_l]> - <u[:d_l], pos[:d_l]>)``.

    Args:
        user, pos: ``(B, D)``.
        neg: ``(B, L, D)``, the negative vector of each level.
        dims: the nested widths ``d_1 < ... < d_L = D``.
        weights: L non-negative weights, default ``1/L`` each.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).

    Differentiable in ``user``, ``pos`` and ``neg``.
    """
    batch, width = _check_rows("user", user)
    _check_pos(pos, user)
    _check_float("neg", neg, 3, like=("user", user))
    dims = check_dims(dims, width)
    _check_batch("neg", neg, batch)
    if neg.shape[2] != width:
        raise ValueError(f"neg must have width {width} like user, got {neg.shape[2]}")
    if neg.shape[1] != len(dims):
        raise ValueError(f"neg must have L = len(dims) = {len(dims)} vectors per row, got {neg.shape[1]}")
    w = check_weights(weights, len(dims), user.device)
    reduction = _check_reduction(reduction)
    loss, _ = _operator("mrl_bpr_loss", backend, user)(user, pos, neg, dims, w)
    return _reduce(loss, reduction)


def mns_bpr_loss(
    user: Tensor,
    pos: Tensor,
    item_weight: Tensor,
    candidates: Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
    *,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """MNS and the MRL loss fused: ``(loss, negatives)``.

    Equals ``mrl_bpr_loss(user, pos, item_weight[mns_sample(...)], dims, ...)``
    with the negatives of :func:`mns_sample` (returned as the second value).
    Differentiable in ``user``, ``pos`` and ``item_weight`` (whose gradient is
    non-zero only in the chosen rows; an id chosen several times sums).
    """
    candidates, dims = _check_sampling(user, item_weight, candidates, dims)
    _check_pos(pos, user)
    w = check_weights(weights, len(dims), user.device)
    reduction = _check_reduction(reduction)
    loss, negatives, _ = _operator("mns_bpr_loss", backend, user)(user, pos, item_weight, candidates, dims, w)
    return _reduce(loss, reduction), negatives


def mrl_softmax_loss(
    user: Tensor,
    pos: Tensor,
    item_weight: Tensor,
    candidates: Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    *,
    cosine: bool = False,
    pos_ids: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Matryoshka sampled softmax, fused: at every nested width, a softmax over
    the positive and a pool of candidates, each candidate's row read once.

    Per row ``sum_l weights[l] * (logsumexp_{j in {pos} + pool_l}(s_j / t) - s_pos / t)``
    with ``s_j = <user[:d_l], e_j[:d_l]>`` (``cosine=True``: divided by
    ``|user[:d_l]| |e_j[:d_l]|``, each prefix normalised on its own) and
    ``t = temperature``: every candidate
    of the pool counts (where :func:`mns_bpr_loss` keeps the hardest only), at the
    same memory traffic.

    Args:
        user, pos: ``(B, D)`` user and positive item vectors.
        item_weight: ``(N, D)`` item table the candidates index.
        candidates: ``(B, M)`` item ids (one pool for every level) or ``(B, L, M)``
            (pool l for level l); ids < 0 are padding and take no part (e.g. to
            mask a user's own items among in-batch candidates).
        dims: the nested widths ``d_1 < ... < d_L = D``.
        weights: L non-negative weights, default ``1/L`` each.
        temperature: the softmax temperature, a positive float.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B,)``).
        cosine: score by the cosine of the prefixes instead of their inner product.
        pos_ids: optional ``(B,)`` ids of the positives: candidates equal to
            their row's positive are masked (an accidental hit is not a negative).

    Differentiable in ``user``, ``pos`` and ``item_weight`` (non-zero in the
    candidates' rows only; repeated ids sum).
    """
    candidates, dims = _check_sampling(user, item_weight, candidates, dims, padding=True)
    _check_pos(pos, user)
    w = check_weights(weights, len(dims), user.device)
    reduction = _check_reduction(reduction)
    temperature = check_temperature(temperature)
    if pos_ids is not None:
        pos_ids = check_ids("pos_ids", pos_ids, item_weight.shape[0], user.device)
        if pos_ids.shape != (user.shape[0],):
            raise ValueError(f"pos_ids must have shape ({user.shape[0]},) (one id per row), "
                             f"got {tuple(pos_ids.shape)}")
        row_pos = pos_ids.view(-1, *[1] * (candidates.dim() - 1))
        candidates = candidates.masked_fill(candidates == row_pos, -1)
    if not isinstance(cosine, bool):
        raise TypeError(f"cosine must be a bool, got {type(cosine).__name__}")
    loss, _ = _operator("mrl_softmax_loss", backend, user)(user, pos, item_weight, candidates, dims, w,
                                                          temperature, cosine)
    return _reduce(loss, reduction)


def check_positive(name: str, value) -> int:
    """``value`` as an int, which must be a positive integer (numpy integers too)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def exclusion(exclude, batch: int, n_items: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(offsets (B + 1,), ids)`` int64 on ``device`` from ``exclude``: None, a
    :class:`~mrl_kernels.data.CSR` with one row per query, or a sequence of B
    id collections (tensors, arrays or lists)."""
    if exclude is None:
        return torch.zeros(batch + 1, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64,
                                                                                      device=device)
    if hasattr(exclude, "indptr") and hasattr(exclude, "indices"):
        if exclude.n_rows != batch:
            raise ValueError(f"exclude has {exclude.n_rows} rows but query has {batch}")
        offsets, ids = exclude.indptr, exclude.indices
    else:
        if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence) or len(exclude) != batch:
            raise ValueError(f"exclude must be None, a CSR with one row per query, or a sequence of {batch} id "
                             f"collections; got {type(exclude).__name__}")
        rows = [torch.as_tensor(np.asarray(row), dtype=torch.int64).flatten() for row in exclude]
        offsets = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64).cumsum(0)
        ids = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    return offsets.to(device), check_ids("exclude", ids.to(device), n_items, device)


def prefix_topk(
    query: Tensor,
    item_weight: Tensor,
    k: int,
    width: int,
    shortlist: int,
    exclude=None,
    *,
    narrow: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Top-k retrieval through a narrow shortlist (adaptive retrieval, as in the
    Matryoshka representation papers): the ``shortlist`` items with the largest
    ``width``-prefix inner product, reranked by the full inner product; the best
    ``k`` of those. With ``shortlist >= N`` it is exact search.

    Args:
        query: ``(B, D)`` query (user) vectors.
        item_weight: ``(N, D)`` item table.
        k: results per query.
        width: the prefix width of the shortlist pass (``1 <= width <= D``).
        shortlist: how many items the narrow pass keeps (``>= k``).
        exclude: items each query must not get (e.g. its training interactions),
            in neither pass: a :class:`~mrl_kernels.data.CSR` with one row per
            query, or a sequence of B id collections.
        narrow: the items' first ``width`` columns, ``(N, width)``, to score the
            shortlist pass with instead of ``item_weight[:, :width]`` (e.g. a
            contiguous float16 / bfloat16 copy, see :class:`MatryoshkaIndex`).

    Returns:
        ``(scores, ids)``, each ``(B, k)``: full-width inner products (float32, or
        float64 for float64 inputs) in descending order, ties to the lower id, and
        int64 item ids; where fewer than k items are left, id -1 and score -inf.
    """
    batch, dim = _check_rows("query", query)
    _check_float("item_weight", item_weight, 2, like=("query", query))
    if item_weight.shape[1] != dim:
        raise ValueError(f"item_weight has width {item_weight.shape[1]} but query has width {dim}")
    k, shortlist, width = check_positive("k", k), check_positive("shortlist", shortlist), check_positive("width", width)
    if width > dim:
        raise ValueError(f"width must be at most the embedding width {dim}, got {width}")
    if shortlist < k:
        raise ValueError(f"shortlist must be >= k ({k}), got {shortlist}")
    if narrow is None:
        narrow = item_weight[:, :width]
    else:
        _check_matrix("narrow", narrow, 2)
        if narrow.dtype not in _FLOAT_DTYPES or narrow.device != query.device:
            raise ValueError(f"narrow must be a float tensor on {query.device}, got {narrow.dtype} on {narrow.device}")
        if tuple(narrow.shape) != (item_weight.shape[0], width):
            raise ValueError(f"narrow must have shape ({item_weight.shape[0]}, {width}) (N, width), "
                             f"got {tuple(narrow.shape)}")
    offsets, ids = exclusion(exclude, batch, item_weight.shape[0], query.device)
    return _operator("prefix_topk", backend, query)(query, narrow, item_weight, k, shortlist, offsets, ids)
