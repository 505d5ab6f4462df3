"""The one vocabulary of argument checks, for every layer: a real number
with bounds (:func:`check_real`), an int with a minimum (:func:`check_int`),
an id tensor (:func:`check_id_tensor`, :func:`check_ids`), a CSR
(:func:`check_csr`), and the operators' tensors (shapes, devices, dtypes,
nested widths, level weights). Errors name the argument and what was
expected; the same situation gets the same message everywhere."""
from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


__all__ = ["FLOAT_DTYPES", "REDUCTIONS", "check_real", "check_int", "check_id_tensor", "check_ids", "check_row_ids",
           "check_csr", "check_matrix", "check_float", "can_read_values", "check_dims", "check_weights",
           "check_reduction", "check_batch", "check_rows", "check_pos", "check_table", "check_softmax", "check_sampling",
           "check_correction"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_real(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` as a float: a real number (not a bool), finite, ``>= low``
    (``> low`` if ``low_open``) and ``<= high`` (``< high`` if ``high_open``)."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    ok = isinstance(value, Real) and not isinstance(value, bool) and abs(float(value)) < float("inf")
    if ok:
        value = float(value)
        ok = (low is None or (value > low if low_open else value >= low)) and \
            (high is None or (value < high if high_open else value <= high))
    if not ok:
        raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, "
                         f"got {value!r}")
    return value


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int (numpy integers too, not a bool), ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_id_tensor(name: str, ids, ndim: int | None = None) -> Tensor:
    """``ids`` (a tensor, or a numpy array) as an integer tensor (not bool) of
    ``ndim`` dimensions (any if None); TypeError otherwise."""
    if isinstance(ids, np.ndarray) and ids.dtype != object:
        ids = torch.from_numpy(np.ascontiguousarray(ids))
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ndim is not None and ids.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor of integer ids, got shape {tuple(ids.shape)}")
    return ids


def check_matrix(name: str, t, ndim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t


def check_float(name: str, t, ndim: int, like: tuple[str, Tensor] | None = None) -> Tensor:
    check_matrix(name, t, ndim)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if like is not None:
        other_name, other = like
        if t.device != other.device:
            raise ValueError(f"{name} is on {t.device} but {other_name} is on {other.device}")
        if t.dtype != other.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {other_name} has {other.dtype}")
    return t


def can_read_values(t: Tensor) -> bool:
    """Whether value checks may read ``t`` back: not for meta tensors (shapes
    only), not while ``torch.compile`` traces, nor while a CUDA graph is being
    captured."""
    if t.is_meta or torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_ids(name: str, ids, n: int, device: torch.device, padding: bool = False,
              rows_of: str = "item_weight") -> Tensor:
    """Integer ids on ``device``, inside ``[0, n)``, ``n`` the rows of ``rows_of``
    (below ``n`` if ``padding``: negative ids then mark padding), as int64. The
    range check reads the ids back (one synchronisation); it is skipped while
    compiling or capturing a CUDA graph."""
    ids = check_id_tensor(name, ids)
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but {rows_of} is on {device}")
    if ids.numel() and can_read_values(ids) and bool((((ids < 0) & (not padding)) | (ids >= n)).any()):
        expected = f"be < {n} (the rows of {rows_of}; ids < 0 are padding)" if padding else \
            f"lie in [0, {n}) (the rows of {rows_of})"
        raise ValueError(f"{name} must {expected}; got ids in [{int(ids.min())}, {int(ids.max())}]")
    return ids.long()


def check_row_ids(name: str, ids, n: int, user: Tensor, padding: bool = False) -> Tensor:
    """:func:`check_ids` of one id per row of ``user``: shape ``(B,)``."""
    ids = check_ids(name, ids, n, user.device, padding)
    if ids.shape != (user.shape[0],):
        raise ValueError(f"{name} must have shape ({user.shape[0]},) (one id per row), got {tuple(ids.shape)}")
    return ids


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
    if can_read_values(w) and not bool(((w >= 0) & torch.isfinite(w)).all()):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    return w


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_batch(name: str, t: Tensor, batch: int) -> None:
    if t.shape[0] != batch:
        raise ValueError(f"{name} has {t.shape[0]} rows but user has {batch}")


def check_rows(name: str, t) -> tuple[int, int]:
    """``(B, D)`` of a non-empty float matrix ``t``."""
    check_float(name, t, 2)
    if t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row")
    return t.shape


def check_pos(pos, user: Tensor) -> None:
    check_float("pos", pos, 2, like=("user", user))
    check_batch("pos", pos, user.shape[0])
    if pos.shape[1] != user.shape[1]:
        raise ValueError(f"pos has width {pos.shape[1]} but user has width {user.shape[1]}")


def check_table(user, item_weight, dims, name: str = "item_weight") -> list[int]:
    """``user`` ``(B, D)`` and the item table ``item_weight`` ``(N, D)`` (called
    ``name``) alike; ``dims`` as :func:`check_dims`."""
    _, width = check_rows("user", user)
    check_float(name, item_weight, 2, like=("user", user))
    if item_weight.shape[1] != width:
        raise ValueError(f"{name} has width {item_weight.shape[1]} but user has width {width}")
    return check_dims(dims, width)


def check_softmax(user, pos, table, dims, weights, temperature, reduction,
                  name: str = "item_weight") -> tuple[list[int], Tensor, float, str]:
    """A softmax loss's arguments but its candidates: ``user``, ``pos`` and the
    item table (called ``name``, e.g. a rank's ``shard``) alike, then ``(dims,
    weights, temperature, reduction)`` checked."""
    dims = check_table(user, table, dims, name)
    check_pos(pos, user)
    return (dims, check_weights(weights, len(dims), user.device),
            check_real("temperature", temperature, low=0.0, low_open=True), check_reduction(reduction))


def check_sampling(user, item_weight, candidates, dims, padding: bool = False) -> tuple[Tensor, list[int]]:
    dims, batch = check_table(user, item_weight, dims), user.shape[0]
    if not isinstance(candidates, Tensor) or candidates.dim() not in (2, 3):
        shape = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__
        raise ValueError(f"candidates must be a (B, M) or (B, L, M) tensor of item ids, got {shape}")
    check_batch("candidates", candidates, batch)
    if candidates.dim() == 3 and candidates.shape[1] != len(dims):
        raise ValueError(f"candidates of shape (B, L, M) must have L = len(dims) = {len(dims)} pools, "
                         f"got {candidates.shape[1]}")
    if candidates.shape[-1] == 0:
        raise ValueError("candidates must hold at least one candidate per pool (M >= 1)")
    return check_ids("candidates", candidates, item_weight.shape[0], user.device, padding), dims


def check_correction(name: str, t, shape: tuple[int, ...], device: torch.device, meaning: str) -> None:
    """A float tensor of ``shape`` on ``device`` (a logQ correction, ``meaning``
    saying what its entries are for), where given (None passes)."""
    if t is None:
        return
    if not isinstance(t, Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a float tensor, got {got}")
    if tuple(t.shape) != tuple(shape) or t.device != device:
        raise ValueError(f"{name} must have shape {tuple(shape)} on {device} ({meaning}), "
                         f"got {tuple(t.shape)} on {t.device}")


def check_csr(name: str, indptr, indices, device: torch.device) -> tuple[Tensor, Tensor]:
    """A CSR's ``indptr`` and ``indices`` (tensors or arrays) as int64 tensors on
    ``device``: 1-D integers, ``indptr`` starting at 0, never decreasing and ending
    at ``len(indices)`` (what the kernels index by). ``name`` names the CSR."""
    indptr, indices = (check_id_tensor(f"{name}.{part}", t, ndim=1).to(device=device, dtype=torch.int64)
                       for part, t in (("indptr", indptr), ("indices", indices)))
    if len(indptr) == 0:
        raise ValueError(f"{name}.indptr must hold at least one offset (0)")
    if can_read_values(indptr):
        steps = indptr[1:] - indptr[:-1]
        if int(indptr[0]) != 0 or int(indptr[-1]) != indices.shape[0] or bool((steps < 0).any()):
            raise ValueError(f"{name} is not a well-formed CSR: its indptr must start at 0, never decrease and end "
                             f"at len(indices) = {indices.shape[0]}; got indptr from {int(indptr[0])} to "
                             f"{int(indptr[-1])}" + (", decreasing" if bool((steps < 0).any()) else ""))
    return indptr, indices
