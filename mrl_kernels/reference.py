"""The plain PyTorch reference of every operator, in one namespace: the
specification every fast backend (Triton, C++) is tested against, and what a
user validates a kernel of their own against. Each operator's reference lives
in its folder (``mrl_kernels/ops/<operator>/reference.py``); this module only
gathers them."""
from .ops.common import COSINE_EPS, acc_dtype, prefix_scores
from .ops.full_softmax.reference import full_softmax_lse, full_softmax_lse_backward
from .ops.als.reference import coordinate_weights, nested_als_solve, nested_gram, nested_mask, nested_products
from .ops.mns.reference import (level_margins, mns_bpr_loss, mns_sample, mrl_bpr_coef, mrl_bpr_loss,
                                mrl_bpr_loss_backward)
from .ops.prefix_topk.reference import excluded_mask, prefix_topk, shortlist_rerank
from .ops.lazy_adam.reference import lazy_adam
from .ops.softmax.reference import mrl_softmax_loss, mrl_softmax_loss_backward, mrl_softmax_loss_lse

__all__ = [
    "COSINE_EPS",
    "acc_dtype",
    "prefix_scores",
    "mns_sample",
    "mrl_bpr_loss",
    "mns_bpr_loss",
    "level_margins",
    "mrl_bpr_coef",
    "mrl_bpr_loss_backward",
    "mrl_softmax_loss",
    "mrl_softmax_loss_lse",
    "mrl_softmax_loss_backward",
    "full_softmax_lse",
    "full_softmax_lse_backward",
    "excluded_mask",
    "shortlist_rerank",
    "prefix_topk",
    "coordinate_weights",
    "nested_mask",
    "nested_gram",
    "nested_products",
    "nested_als_solve",
    "lazy_adam",
]
