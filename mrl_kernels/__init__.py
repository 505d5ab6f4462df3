"""Fused kernels and a trainer for Matryoshka Representation Learning for
Recommendation (MRL4Rec): Matryoshka negative sampling (MNS) and the MRL loss.

Public operators (each takes ``backend="auto" | "torch" | "triton" | "cpp"``):

- :func:`mns_sample`: per-level dynamic negative sampling over nested prefixes.
- :func:`mrl_bpr_loss`: the MRL (per-level BPR) loss for given negatives.
- :func:`mns_bpr_loss`: both fused: the loss and the chosen negatives.
- :func:`mrl_softmax_loss`: a sampled softmax at every nested width, fused.
- :func:`prefix_topk`: top-k retrieval through a narrow-prefix shortlist.
- :func:`nested_als_solve`: one side's solve of nested (Matryoshka) least squares.
- :func:`sample_candidates`: uniform candidate ids with exclusion.
- :class:`CSR`: the sparse 0/1 matrix they exclude with (``CSR.from_scipy``,
  ``CSR.from_pairs``, ``to_scipy``).

Serving: :class:`MatryoshkaIndex`, :class:`NestedIndex`, :func:`load_run`. The
layers: :mod:`mrl_kernels.ops` (the kernel layer, standing alone),
:mod:`mrl_kernels.training`, :mod:`mrl_kernels.serving`,
:mod:`mrl_kernels.distributed`, :mod:`mrl_kernels.cli`.

:class:`MatryoshkaALS` (nested iALS with implicit's ``AlternatingLeastSquares``
interface; the ``als`` extra) is imported on first use.
"""
from .ops import (CSR, available_backends, mns_bpr_loss, mns_sample, mrl_bpr_loss, mrl_softmax_loss, nested_als_solve,
                  prefix_topk, sample_candidates)
from .serving import MatryoshkaIndex, NestedIndex, load_run

__version__ = "0.1.0"
__all__ = ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss", "prefix_topk", "nested_als_solve",
           "sample_candidates", "CSR", "available_backends", "MatryoshkaIndex", "NestedIndex", "load_run",
           "MatryoshkaALS"]


def __getattr__(name: str):
    if name == "MatryoshkaALS":  # implicit is an extra: imported when the estimator is asked for
        from .training.estimator import MatryoshkaALS

        return MatryoshkaALS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
