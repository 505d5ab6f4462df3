"""What every operator's Triton kernels share: tile helpers (``@triton.jit``),
the block configuration, and :func:`launch`, the one way a launcher starts a
kernel (always with keyword arguments).

Conventions of the kernels: scores accumulate in float32 (float64 for float64
inputs: ``FP64``); row offsets are int64 (``program_id(0).to(tl.int64)``, ids
cast to int64 before they multiply a stride); every tensor is addressed
through its strides, so non-contiguous inputs work; switches are UPPER_CASE
``tl.constexpr`` flags. A pointer a flag leaves unread gets a named
placeholder (:func:`placeholder`), never another tensor.

:func:`captured_launches` records the launches instead of running them: the
compile-only check (:mod:`mrl_kernels.ops.backends.triton.aot`) takes each kernel's
signature and constants from the launchers themselves.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .backends.triton import interpreting

__all__ = ["COSINE_EPS", "level_scores", "row_block", "load_rows", "column", "segment_columns", "TILE", "WARPS",
           "config", "configs", "level_meta", "strides", "no_strides", "placeholder", "launch", "captured_launches"]

COSINE_EPS: tl.constexpr = tl.constexpr(1e-12)  # prefix norms are clamped here (mrl_kernels.ops.common.COSINE_EPS)


@triton.jit
def level_scores(prod, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr):
    """``out[b, l] = sum_{k < DIMS[l]} prod[b, k]``: cumulative segment sums."""
    running = tl.sum(tl.where(cols[None, :] < DIMS[0], prod, 0.0), axis=1)
    out = tl.where(lvl[None, :] == 0, running[:, None], 0.0)
    for level in tl.static_range(1, L):
        segment = (cols[None, :] >= DIMS[level - 1]) & (cols[None, :] < DIMS[level])
        running += tl.sum(tl.where(segment, prod, 0.0), axis=1)
        out = tl.where(lvl[None, :] == level, running[:, None], out)
    return out


@triton.jit
def row_block(B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's batch rows (int64), their validity, column and level
    indices, and the (row, column) mask."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, BLOCK_D)
    return rows, row_ok, cols, tl.arange(0, BLOCK_L), row_ok[:, None] & (cols[None, :] < D)


@triton.jit
def load_rows(ptr, rows, cols, stride_b, stride_d, mask, ACC: tl.constexpr):
    """A (BLOCK_B, BLOCK_D) tile of a (B, D) tensor, in the accumulation dtype."""
    return tl.load(ptr + rows[:, None] * stride_b + cols[None, :] * stride_d, mask=mask, other=0.0).to(ACC)


@triton.jit
def column(x2d, lvl, level: tl.constexpr):
    """Column ``level`` of a ``(BLOCK_B, BLOCK_L)`` tensor."""
    return tl.sum(tl.where(lvl[None, :] == level, x2d, 0.0), axis=1)


@triton.jit
def segment_columns(c2d, cols, lvl, DIMS: tl.constexpr, L: tl.constexpr):
    """``out[b, k] = sum of c2d[b, l] over the levels l with k < DIMS[l]``: each
    column's coefficient from per-level ones."""
    out = tl.where(cols[None, :] < DIMS[0], column(c2d, lvl, 0)[:, None], 0.0)
    for level in tl.static_range(1, L):
        out += tl.where(cols[None, :] < DIMS[level], column(c2d, lvl, level)[:, None], 0.0)
    return out


# (BLOCK_B, BLOCK_D) tiles of 512 elements over 4 warps, 4 elements a thread:
# on an H200 at B = 65536 this ran the D = 64 per-level case 2.1x faster than
# 1024-element tiles on 4 warps (8 a thread), and both measured cases within 2%
# of the best of six (tile, warps) pairs
# (bench/results/triton-NVIDIA_H200-2026-11-26-v2.md); 8 warps spilled on sm_80.
TILE, WARPS = 512, 4


def config(width: int, tile: int = TILE, warps: int = WARPS) -> dict:
    """Block sizes for width ``width``: ``(BLOCK_B, BLOCK_D)`` tiles of ``tile``
    elements (the compile-only check makes sure nothing spills). Benchmark
    sweeps patch this function with other ``tile``/``warps``."""
    block_d = max(16, triton.next_power_of_2(width))
    block_b = max(1, min(32, tile // block_d))
    return {"BLOCK_B": block_b, "BLOCK_D": block_d, "num_warps": warps}


def configs() -> list[dict]:
    """Every configuration :func:`config` can return (for the compile-only check)."""
    seen = {}
    for width in (2 ** k for k in range(0, 11)):
        cfg = config(width)
        seen[(cfg["BLOCK_B"], cfg["BLOCK_D"])] = cfg
    return list(seen.values())


def level_meta(user: torch.Tensor, dims) -> tuple[tuple, dict]:
    """The grid over ``user``'s rows and the constants of a per-row kernel:
    the nested widths, the float64 switch and :func:`config`'s block sizes."""
    cfg = config(user.shape[1])
    meta = dict(DIMS=tuple(dims), L=len(dims), FP64=user.dtype == torch.float64,
                BLOCK_L=max(2, triton.next_power_of_2(len(dims))), **cfg)
    return (triton.cdiv(user.shape[0], cfg["BLOCK_B"]),), meta


def strides(prefix: str, t: torch.Tensor, *suffixes: str) -> dict:
    """``{"stride_<prefix><suffix>": t.stride(i)}``: a tensor's strides as the
    kernel's keyword arguments (``suffixes`` name the dimensions, e.g. "b", "d")."""
    return {f"stride_{prefix}{s}": t.stride(i) for i, s in enumerate(suffixes)}


def no_strides(prefix: str, *suffixes: str) -> dict:
    """Zero strides for the keyword arguments of a tensor this launch never
    addresses (a :func:`placeholder`'s), as :func:`strides` names them."""
    return {f"stride_{prefix}{s}": 0 for s in suffixes}


def placeholder(like: torch.Tensor, ndim: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty ``ndim``-dimensional tensor for a pointer the kernel never reads
    or writes under the flags of this launch (Triton needs a tensor there)."""
    return like.new_empty((0,) * ndim, dtype=dtype or like.dtype)


_CAPTURED: list | None = None


def launch(kernel, grid: tuple, **arguments) -> None:
    """Start ``kernel`` on ``grid`` with keyword ``arguments``: through
    ``wrap_triton`` so torch.compile sees the launch, directly under
    ``TRITON_INTERPRET=1`` (where ``wrap_triton`` refuses); only recorded inside
    :func:`captured_launches`."""
    if _CAPTURED is not None:
        _CAPTURED.append((kernel, arguments))
        return
    (kernel if interpreting() else torch.library.wrap_triton(kernel))[grid](**arguments)


@contextlib.contextmanager
def captured_launches():
    """Within it, :func:`launch` records ``(kernel, arguments)`` into the list
    this yields and starts nothing (the outputs stay unwritten)."""
    global _CAPTURED
    _CAPTURED = captured = []
    try:
        yield captured
    finally:
        _CAPTURED = None
