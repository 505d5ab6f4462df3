"""The training objectives, one frozen type each: :class:`Ranking` (a negative
selector of :mod:`~mrl_kernels.training.selectors` times a :class:`Loss`),
:class:`SampledSoftmax` (every candidate a negative), :class:`FullSoftmax`
(every item a negative, no candidates) and :class:`NestedLeastSquares` (no
candidates). A run's objective is made from its
settings (:meth:`of`) and called by the trainer as ``objective(batch,
candidates)`` on ``(B, *objective.candidate_shape)`` candidate ids; which
method uses which is the method table, :data:`mrl_kernels.training.methods.METHODS`.

Where the selector picks at exactly the widths the loss scores at (MNS + MRL,
DNS + BPR), selection and loss run fused in :func:`mrl_kernels.mns_bpr_loss`.
Every objective adds the authors' L2 term on the rows it covers
(:func:`mrl_kernels.ops.common.l2_term`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import CSR, mns_bpr_loss, mrl_bpr_loss, mrl_softmax_loss
from ..ops._checks import check_per_level
from ..ops.als import coordinate_weights, nested_mask, observed_terms, unobserved_products
from ..ops.common import l2_term
from .backbones import Batch, lookup
from .selectors import Selector

__all__ = ["Loss", "BPR", "MRL", "Settings", "Objective", "Ranking", "SampledSoftmax", "FullSoftmax",
           "NestedLeastSquares"]


def _bpr(user: Tensor, pos: Tensor, neg: Tensor, dims: Sequence[int], backend: str) -> Tensor:
    """``log(1 + sum_k exp(<u, n_k> - <u, p>))`` at full width over the K
    negatives ``neg (B, K, D)``; with one negative, BPR, by the operator."""
    if neg.shape[1] == 1:
        return mrl_bpr_loss(user, pos, neg, dims[-1:], backend=backend)
    margins = (user[:, None, :] * neg).sum(-1) - (user * pos).sum(-1, keepdim=True)
    return F.softplus(torch.logsumexp(margins, dim=1)).mean()


def _mrl(user: Tensor, pos: Tensor, neg: Tensor, dims: Sequence[int], backend: str) -> Tensor:
    """The MRL loss; one negative ``(B, 1, D)`` serves every level."""
    return mrl_bpr_loss(user, pos, neg.expand(-1, len(dims), -1), dims, backend=backend)


@dataclass(frozen=True)
class Loss:
    """A ranking loss over the negatives' vectors: ``fn(user, pos, neg (B, K, D),
    dims, backend) -> scalar``; ``per_level`` if it scores level l's negative at
    width d_l (else everything at full width)."""

    name: str
    per_level: bool
    fn: Callable[[Tensor, Tensor, Tensor, Sequence[int], str], Tensor]


BPR = Loss("bpr", per_level=False, fn=_bpr)
MRL = Loss("mrl", per_level=True, fn=_mrl)


class Settings(Protocol):
    """What making an objective reads; a :class:`mrl_kernels.training.TrainConfig` is one."""

    dims: Sequence[int]  # nested widths, the last the embedding width
    candidates: int  # candidates per pool
    layout: str  # one of ops.LAYOUTS
    l2: float
    backend: str  # the operators' backend
    temperature: float  # the sampled softmax's only
    cosine: bool  # the sampled softmax's only
    alpha: float | None  # least squares' only: the weight of an observed pair
    level_weights: Sequence[float] | None  # least squares' only (None: 1 each)


class Objective(Protocol):
    """A training loss made for one run's settings: ``candidate_shape`` is the
    shape of the candidate ids to draw for each row of a batch, and
    ``objective(batch, candidates (B, *candidate_shape))`` the batch's scalar
    training loss."""

    candidate_shape: tuple[int, ...]

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Ranking:
    """A negative selector times a ranking loss (the paper's five methods), for
    ``dims``, ``l2`` and ``backend``."""

    selector: Selector
    loss: Loss
    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    l2: float
    backend: str

    @classmethod
    def of(cls, selector: Selector, loss: Loss, settings: Settings, interactions: CSR | None = None) -> "Ranking":
        dims = tuple(settings.dims)
        return cls(selector, loss, dims, selector.candidate_shape(len(dims), settings.candidates, settings.layout),
                   settings.l2, settings.backend)

    @property
    def fused(self) -> bool:
        return self.selector.scored and self.selector.per_level == self.loss.per_level

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        """The ranking loss plus the L2 term on the batch's users, positives and negatives."""
        dims, backend = self.dims, self.backend
        if self.fused and not batch.sparse:  # the fused operator's item gradient is dense
            loss, negatives = mns_bpr_loss(batch.user, batch.pos, batch.items, candidates, self.selector.widths(dims),
                                           layout="shared" if len(self.candidate_shape) == 1 else "per-level",
                                           backend=backend)
        else:
            negatives = self.selector.select(batch.user, batch.items, candidates, dims, backend)
            loss = self.loss.fn(batch.user, batch.pos, batch.negative_rows(negatives), dims, backend)
        return loss + l2_term(self.l2, batch.squared_norms(negatives), batch.user.shape[0])


@dataclass(frozen=True)
class SampledSoftmax:
    """The Matryoshka sampled softmax: every candidate of the pool is a negative
    at every width it serves (one pool shared by all levels, ``layout="shared"``,
    or one per level), none is selected; the softmax ``temperature`` and its
    scores (``cosine`` or inner products)."""

    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    l2: float
    backend: str
    temperature: float
    cosine: bool

    @classmethod
    def of(cls, settings: Settings, interactions: CSR | None = None) -> "SampledSoftmax":
        dims = tuple(settings.dims)
        shape = (settings.candidates,) if settings.layout == "shared" else (len(dims), settings.candidates)
        return cls(dims, shape, settings.l2, settings.backend, settings.temperature, settings.cosine)

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        """:func:`mrl_softmax_loss` plus the L2 term on the batch's users,
        positives and candidates (each row's candidates weigh as one negative)."""
        items, ids = batch.items, candidates
        if batch.sparse:  # the operator's item gradient is dense: hand it the pool's rows only
            unique, inverse = candidates.unique(return_inverse=True)
            items, ids = batch.negative_rows(unique), inverse
        loss = mrl_softmax_loss(batch.user, batch.pos, items, ids, self.dims, temperature=self.temperature,
                                cosine=self.cosine, layout="shared" if len(self.candidate_shape) == 1 else "per-level",
                                backend=self.backend)
        per_row = candidates[0].numel()
        candidate_norms = lookup(batch.reg_items, candidates, batch.sparse).square().sum() / per_row
        return loss + l2_term(self.l2, batch.squared_norms() + candidate_norms, batch.user.shape[0])


@dataclass(frozen=True)
class FullSoftmax:
    """The Matryoshka softmax over every item (:func:`mrl_softmax_loss` with
    ``candidates=None``): at every width, each row's positive against every
    other item of the table, no candidates drawn; the softmax ``temperature``,
    inner-product scores. Every item gets a gradient each step (no row-sparse
    path); the L2 term covers the batch's users and positives."""

    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    l2: float
    backend: str
    temperature: float

    @classmethod
    def of(cls, settings: Settings, interactions: CSR | None = None) -> "FullSoftmax":
        if settings.cosine:
            raise ValueError("cosine scores need candidate pools (--method mrl-s): the softmax over every item "
                             "scores by inner products")
        return cls(tuple(settings.dims), (0,), settings.l2, settings.backend, settings.temperature)

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        loss = mrl_softmax_loss(batch.user, batch.pos, batch.items, None, self.dims, temperature=self.temperature,
                                pos_ids=batch.pos_ids, backend=self.backend)
        return loss + l2_term(self.l2, batch.squared_norms(), batch.user.shape[0])


@dataclass(frozen=True)
class NestedLeastSquares:
    """Nested least squares by gradient, for any backbone: ``mrl-als``'s objective
    (iALS's, summed over the widths with weights ``w_l``) per observed pair,

    ``mean_batch sum_l w_l [alpha_l (1 - s_l)^2 - s_l^2] + (n_users n_items / nnz) <(U^T U / B) ⊙ M, (P^T P / B)>_F``

    plus the trainer's L2 term, ``s_l`` the batch pairs' prefix scores, ``U`` and ``P``
    the batch's user and positive rows, ``M[j, k] = sum_{l : d_l > max(j, k)} w_l``.
    The second term is every pair's ``sum_l w_l <u[:d_l], i[:d_l]>^2`` through
    Gramians estimated from the batch's rows (Krichene et al. 2019): no negative is
    sampled. Rows drawn by interaction weigh users by activity and items by
    popularity there (a popularity-weighted unobserved term, as popularity-drawn
    negatives are). ``scale``: users x items / observed pairs."""

    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    weights: Tensor
    mask: Tensor
    alpha: Tensor  # (L,): alpha_l
    l2: float
    scale: float

    @classmethod
    def of(cls, settings: Settings, interactions: CSR | None = None) -> "NestedLeastSquares":
        if interactions is None or interactions.nnz == 0:
            raise ValueError("nested least squares needs the training interactions (their density scales the "
                             "unobserved term)")
        dims = tuple(settings.dims)
        weights = torch.tensor(settings.level_weights or [1.0] * len(dims), dtype=torch.float32)
        alpha = torch.tensor(check_per_level("alpha", settings.alpha, len(dims), low=0.0, low_open=True))
        return cls(dims, (0,), weights, nested_mask(coordinate_weights(dims, weights)), alpha,
                   settings.l2, interactions.n_rows * interactions.n_cols / interactions.nnz)

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        user, pos = batch.user, batch.pos
        rows = user.shape[0]
        weights, mask = self.weights.to(user.device), self.mask.to(user.device)
        observed = observed_terms(user, pos, self.dims, weights, self.alpha.to(user.device)).sum(1).mean()
        unobserved = self.scale * unobserved_products(user, pos, mask).sum() / rows ** 2
        return observed + unobserved + l2_term(self.l2, batch.squared_norms(), rows)
