"""The one vocabulary of argument checks, for every layer: a real number
with bounds, in the dtype that computes with it (:func:`check_real`), an int
with a minimum (:func:`check_int`), ids as a tensor or an array-like
(:func:`check_id_tensor`, :func:`check_ids`), a CSR (:func:`check_csr`), a
random generator (:func:`check_generator`), and the operators' tensors
(shapes, devices, dtypes, nested widths, level weights, the candidates'
layout). Errors name the argument and what was expected; the same situation
gets the same message everywhere."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .common import LAYOUTS, acc_dtype


__all__ = ["FLOAT_DTYPES", "REDUCTIONS", "check_real", "check_per_level", "check_int", "check_id_tensor", "check_ids",
           "check_row_ids", "check_csr", "check_generator", "check_matrix", "check_float", "can_read_values",
           "check_dims", "check_weights", "check_reduction", "check_batch", "check_rows", "check_pos", "check_table",
           "check_softmax", "check_temperature", "check_layout", "check_sampling", "check_correction"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def check_real(name: str, value, *, low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False, dtype: torch.dtype | None = None) -> float:
    """``value`` as a float: a real number (not a bool), finite, ``>= low``
    (``> low`` if ``low_open``) and ``<= high`` (``< high`` if ``high_open``);
    with ``dtype``, all of that also once rounded to ``dtype``, the dtype that
    computes with it (``1e-50`` is 0 in float32, ``1e39`` infinite)."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")

    def within(x: float) -> bool:
        return abs(x) < float("inf") and (low is None or (x > low if low_open else x >= low)) and \
            (high is None or (x < high if high_open else x <= high))

    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        try:
            ok = within(float(value))
        except OverflowError:  # an int beyond every float
            ok = False
    if ok and dtype is not None:
        ok = within(_held(float(value), dtype))
    if not ok:
        where = f" in {str(dtype).removeprefix('torch.')} (the dtype it is computed in)" if dtype is not None else ""
        raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}{where}, "
                         f"got {value!r}")
    return float(value)


def _held(value: float, dtype: torch.dtype) -> float:
    """``value`` as far as ``dtype`` holds it for a bounds check: infinite beyond its
    largest number, 0 below half its smallest subnormal (plain arithmetic, which
    ``torch.compile`` traces without reading a tensor)."""
    finfo = torch.finfo(dtype)
    if abs(value) > finfo.max:
        return math.copysign(math.inf, value)
    return 0.0 if abs(value) < finfo.tiny * finfo.eps / 2 else value


def check_per_level(name: str, value, num_levels: int, **bounds) -> list[float]:
    """``value``, one real number (every level's) or a sequence, 1-D array or
    tensor of ``num_levels`` of them, as a list of ``num_levels`` floats, each
    checked by :func:`check_real` with ``bounds`` (named ``name[l]``)."""
    if isinstance(value, (Tensor, np.ndarray)) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (Real, Sequence)):
        raise ValueError(f"{name} must be a number or one per level ({num_levels}), got {value!r}")
    if isinstance(value, Real):
        return [check_real(name, value, **bounds)] * num_levels
    if len(value) != num_levels:
        raise ValueError(f"{name} must be a number or one per level ({num_levels}), got {len(value)} values")
    return [check_real(f"{name}[{level}]", v, **bounds) for level, v in enumerate(value)]


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int (numpy integers too, not a bool), ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_id_tensor(name: str, ids, ndim: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """``ids`` as an integer tensor (not bool) of ``ndim`` dimensions (any if
    None): a tensor as it is, an array-like of ints (a numpy array, a list, a
    tuple) as a new int64 tensor, on ``device`` where given; TypeError otherwise."""
    if not isinstance(ids, Tensor):
        ids = torch.from_numpy(_id_array(name, ids))
        ids = ids if device is None else ids.to(device)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    if ndim is not None and ids.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor of integer ids, got shape {tuple(ids.shape)}")
    return ids


def _id_array(name: str, ids) -> np.ndarray:
    """An array-like of integer ids as a contiguous int64 numpy array (a copy
    where it had negative strides or another integer dtype)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (np.ndarray, Sequence)):
        raise TypeError(f"{name} must be a tensor or an array-like (numpy array, list) of integer ids, "
                        f"got {type(ids).__name__}")
    try:
        array = np.asarray(ids)
    except ValueError:  # rows of different lengths
        raise TypeError(f"{name} must be a rectangular array-like of integer ids, got rows of different "
                        "lengths") from None
    if array.size == 0 and not isinstance(ids, np.ndarray):
        array = array.astype(np.int64)  # an empty list holds no type
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer ids, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must hold ids below 2^63, got {int(array.max())}")
    return np.ascontiguousarray(array, dtype=np.int64)


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


def check_ids(name: str, ids, n: int | None, device: torch.device, padding: bool = False,
              rows_of: str = "item_weight", rows: str = "rows") -> Tensor:
    """Integer ids (a tensor on ``device``, or an array-like, put there) inside
    ``[0, n)``, ``n`` the ``rows`` of ``rows_of`` (below ``n`` if ``padding``:
    negative ids then mark padding; any id >= 0 if ``n`` is None), as int64.
    The range check reads the ids back (one synchronisation); it is skipped
    while compiling or capturing a CUDA graph."""
    ids = check_id_tensor(name, ids, device=device)
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but {rows_of} is on {device}")
    if not (ids.numel() and can_read_values(ids)):
        return ids.long()
    low, high = torch.stack(torch.aminmax(ids)).tolist()  # one pass, one read back, no mask tensors
    if (low < 0 and not padding) or (n is not None and high >= n):
        if n is None:
            expected = "be >= 0"
        else:
            expected = f"be < {n} (the {rows} of {rows_of}; ids < 0 are padding)" if padding else \
                f"lie in [0, {n}) (the {rows} of {rows_of})"
        raise ValueError(f"{name} must {expected}; got ids in [{low}, {high}]")
    return ids.long()


def check_generator(generator, device: torch.device) -> torch.Generator | None:
    """``generator``: None, or a ``torch.Generator`` on ``device`` (the device
    it draws on)."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be None or a torch.Generator (on {device}), got {type(generator).__name__}")
    if generator.device.type != device.type or (device.index is not None and generator.device.index is not None
                                                and generator.device.index != device.index):
        raise ValueError(f"generator is on {generator.device} but must be on {device} (where the ids are drawn)")
    return generator


def check_row_ids(name: str, ids, n: int | None, user: Tensor, padding: bool = False) -> Tensor:
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
    """The per-level weights (a sequence, array or tensor of L numbers) as a
    float32 tensor, the dtype every operator weighs in (default 1/L each):
    finite, >= 0, not all 0, and each one 0 or a normal float32 number (one
    that would round to 0, to a subnormal or to infinity there is refused)."""
    if weights is None:
        return torch.full((num_levels,), 1.0 / num_levels, dtype=torch.float32, device=device)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Tensor, np.ndarray, Sequence)):
        raise TypeError(f"weights must be a sequence, array or tensor of {num_levels} numbers (one per level), "
                        f"got {type(weights).__name__}")
    try:
        w = torch.as_tensor(weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"weights must be a sequence, array or tensor of {num_levels} numbers (one per level), "
                        f"got {weights!r}") from None
    if w.dim() != 1 or w.shape[0] != num_levels:
        raise ValueError(f"weights must have one entry per level ({num_levels}), got shape {tuple(w.shape)}")
    if can_read_values(w):
        if not bool(((w >= 0) & torch.isfinite(w)).all()):
            raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
        finfo = torch.finfo(torch.float32)
        if bool(((w != 0) & ((w < finfo.tiny) | (w > finfo.max))).any()):
            raise ValueError(f"weights must each be 0 or in [{finfo.tiny:g}, {finfo.max:g}] (a normal float32 number: "
                             f"float32 is the dtype they weigh in), got {w.tolist()}")
        if not bool((w > 0).any()):
            raise ValueError(f"weights must not all be 0 (no level would count), got {w.tolist()}")
    return w.to(device=device, dtype=torch.float32)


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


def check_layout(candidates: Tensor, num_levels: int, layout: str | None) -> None:
    """The candidates' layout, never guessed: ``(B, L, M)`` is a pool per level
    (``layout`` None or ``"per-level"``); ``(B, M)`` is one pool shared by every
    level only where the call says so (``layout="shared"``) or there is one
    level. A ``(B, K)`` tensor could as well hold L pools side by side (pool l
    in columns ``l*M .. (l+1)*M``): the error shows both fixes."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be None or one of {LAYOUTS}, got {layout!r}")
    shape = tuple(candidates.shape)
    if candidates.dim() == 3:
        if layout == "shared":
            raise ValueError(f"layout='shared' takes one (B, M) pool for every level, got candidates of shape "
                             f"{shape} (B, L, M): a pool per level, layout='per-level'")
        return
    if layout == "shared" or num_levels == 1:
        return
    (batch, k), levels = shape, num_levels
    flat = f"pass candidates.view({batch}, {levels}, {k // levels})" if k % levels == 0 else \
        f"reshape them to (B, L, M) = ({batch}, {levels}, M)"
    if layout == "per-level":
        raise ValueError(f"layout='per-level' takes a (B, L, M) pool per level, got candidates of shape {shape}: "
                         f"if pool l is in columns l*M .. (l+1)*M, {flat}")
    raise ValueError(f"candidates of shape {shape} for L = {levels} levels is ambiguous: if pool l is in columns "
                     f"l*M .. (l+1)*M (one pool per level side by side), {flat}; if it is one pool shared by "
                     f"every level, pass layout='shared'")


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
    weights, temperature, reduction)`` checked (``temperature`` by
    :func:`check_temperature`)."""
    dims = check_table(user, table, dims, name)
    check_pos(pos, user)
    return (dims, check_weights(weights, len(dims), user.device), check_temperature(temperature, user.dtype),
            check_reduction(reduction))


def check_temperature(temperature, dtype: torch.dtype) -> float:
    """A softmax temperature for inputs of ``dtype``: positive and at least
    ``max^-1/2`` of the accumulation dtype (logits divided by it stay finite)."""
    acc = acc_dtype(dtype)
    return check_real("temperature", temperature, low=torch.finfo(acc).max ** -0.5, dtype=acc)


def check_sampling(user, item_weight, candidates, dims, padding: bool = False,
                   layout: str | None = None) -> tuple[Tensor, list[int]]:
    dims, batch = check_table(user, item_weight, dims), user.shape[0]
    candidates = check_id_tensor("candidates", candidates, device=user.device)
    if candidates.dim() not in (2, 3):
        raise ValueError(f"candidates must be a (B, M) or (B, L, M) tensor of item ids, got {tuple(candidates.shape)}")
    check_batch("candidates", candidates, batch)
    if candidates.dim() == 3 and candidates.shape[1] != len(dims):
        raise ValueError(f"candidates of shape (B, L, M) must have L = len(dims) = {len(dims)} pools, "
                         f"got {candidates.shape[1]}")
    if candidates.shape[-1] == 0:
        raise ValueError("candidates must hold at least one candidate per pool (M >= 1)")
    check_layout(candidates, len(dims), layout)
    return check_ids("candidates", candidates, item_weight.shape[0], user.device, padding), dims


def check_correction(name: str, t, shape: tuple[int, ...], user: Tensor, meaning: str,
                     candidates: Tensor | None = None, each: str = "entry") -> Tensor | None:
    """A logQ correction, where given (None passes): a float tensor of ``shape``
    on ``user``'s device (``meaning`` saying what its entries are for), finite in
    the accumulation dtype (that of the logits) at every candidate (the entries
    where ``candidates >= 0``; at every ``each`` without ``candidates``): a candidate
    with ``-inf`` could never have been drawn, its logit would be infinite, and
    two of them in a pool have no log-sum-exp. Returned detached, contiguous, in
    the accumulation dtype (it gets no gradient)."""
    if t is None:
        return None
    if not isinstance(t, Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name} must be a float tensor, got {got}")
    if tuple(t.shape) != tuple(shape) or t.device != user.device:
        raise ValueError(f"{name} must have shape {tuple(shape)} on {user.device} ({meaning}), "
                         f"got {tuple(t.shape)} on {t.device}")
    acc = acc_dtype(user.dtype)
    values = t.detach().to(acc).contiguous()
    if can_read_values(values):
        bad = ~torch.isfinite(values) & (True if candidates is None else candidates >= 0)
        if bool(bad.any()):
            where = "at every candidate (ids >= 0; padding may hold anything)" if candidates is not None else \
                f"at every {each}"
            raise ValueError(f"{name} must be finite in {str(acc).removeprefix('torch.')} (the dtype of the logits) "
                             f"{where}; got {sorted(set(values[bad].tolist()))} at {int(bad.sum())} places")
    return values


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
