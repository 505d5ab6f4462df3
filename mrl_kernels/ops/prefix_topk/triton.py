"""The Triton kernel of :func:`prefix_topk`'s shortlist pass, and its launcher
(the ``"triton"`` backend's ``IMPLEMENTATIONS``): the ``(B, N)`` prefix scores
in tiles, then the reference's exclusion, shortlist and rerank (torch
operations)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import acc_dtype
from ..triton_common import launch
from .reference import excluded_mask, shortlist_rerank


@triton.jit
def _prefix_score_kernel(
    q_ptr, narrow_ptr, out_ptr,
    B, N, W,
    stride_qb, stride_qd, stride_nn, stride_nd,
    FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``out[b, j] = <q[b, :W], narrow[j, :W]>`` for a (BLOCK_B, BLOCK_N) tile,
    one column at a time (widths 4 and 8 are too narrow for ``tl.dot``)."""
    ACC = tl.float64 if FP64 else tl.float32
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    items = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, item_ok = rows < B, items < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for c in range(W):
        q = tl.load(q_ptr + rows * stride_qb + c * stride_qd, mask=row_ok, other=0.0).to(ACC)
        e = tl.load(narrow_ptr + items * stride_nn + c * stride_nd, mask=item_ok, other=0.0).to(ACC)
        acc += q[:, None] * e[None, :]
    tl.store(out_ptr + rows[:, None] * N + items[None, :], acc, mask=row_ok[:, None] & item_ok[None, :])


TOPK_BLOCK_B, TOPK_BLOCK_N = 16, 64  # a 1024-element score tile per program


def prefix_topk(query, narrow, item_weight, k, shortlist, exclude_offsets, exclude_ids):
    """``(scores, ids)``, each ``(B, k)``."""
    batch, n_items = query.shape[0], narrow.shape[0]
    first = torch.empty((batch, n_items), dtype=acc_dtype(query.dtype), device=query.device)
    grid = (triton.cdiv(batch, TOPK_BLOCK_B), triton.cdiv(n_items, TOPK_BLOCK_N))
    launch(_prefix_score_kernel, grid, q_ptr=query, narrow_ptr=narrow, out_ptr=first,
           B=batch, N=n_items, W=narrow.shape[1],
           stride_qb=query.stride(0), stride_qd=query.stride(1), stride_nn=narrow.stride(0), stride_nd=narrow.stride(1),
           FP64=query.dtype == torch.float64, BLOCK_B=TOPK_BLOCK_B, BLOCK_N=TOPK_BLOCK_N)
    blocked = excluded_mask(exclude_offsets, exclude_ids, n_items)
    return shortlist_rerank(query, item_weight, first, blocked, k, shortlist)


IMPLEMENTATIONS = {"prefix_topk": prefix_topk}
