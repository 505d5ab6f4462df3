"""Top-k retrieval through a narrow-prefix shortlist.

=================  ====================================================================
``prefix_topk``    ``(query, narrow, item_weight, k, shortlist, exclude_offsets, exclude_ids)
                   -> (scores (B, k), ids (B, k))``
=================  ====================================================================
"""
from __future__ import annotations

import torch

from ..common import acc_dtype
from ..spec import OpSpec


def _fake_prefix_topk(query, narrow, item_weight, k, shortlist, exclude_offsets, exclude_ids):
    return (query.new_empty((query.shape[0], k), dtype=acc_dtype(query.dtype)),
            query.new_empty((query.shape[0], k), dtype=torch.int64))


SPECS = (
    OpSpec("prefix_topk",
           "(Tensor query, Tensor narrow, Tensor item_weight, int k, int shortlist, Tensor exclude_offsets, "
           "Tensor exclude_ids) -> (Tensor scores, Tensor ids)",
           _fake_prefix_topk),
)
