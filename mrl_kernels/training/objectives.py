"""Training objectives: a negative selector (:mod:`~mrl_kernels.training.selectors`) times
a loss. The paper's five methods are entries of :data:`OBJECTIVES`:

=========  ==========  ====  ==================================================
``bpr``    ``UNIFORM``  BPR   one uniform negative, BPR loss at full width
``bpr-d``  ``DNS``      BPR   the best of M candidates at full width
``bpr-m``  ``MNS``      BPR   one negative per level, ``log(1 + sum_l exp(s_{j_l} - s_i))``
                              at full width (the authors' code)
``mrl-d``  ``DNS``      MRL   the full-width DNS negative at every level of the MRL loss
``mrl-m``  ``MNS``      MRL   MNS + MRL loss (the method)
``mrl-s``  (all)       SSM   the Matryoshka sampled softmax over every candidate
                              (:func:`mrl_kernels.mrl_softmax_loss`)
=========  ==========  ====  ==================================================

Where the selector picks at exactly the widths the loss scores at (MNS + MRL,
DNS + BPR), selection and loss run fused in :func:`mrl_kernels.mns_bpr_loss`.

Each entry is a :class:`Method`: ``OBJECTIVES[name].build(settings, interactions)`` makes the
:class:`Objective` of a run's settings (widths, L2, backend; temperature and
scores for the softmax; alpha and level weights for least squares) and training
interactions (which only least squares reads: their density scales its unobserved
term), which the trainer calls as ``objective(batch, candidates)`` on
``(B, *objective.candidate_shape)`` candidate ids. Adding an
objective = one entry here: a :class:`Ranking` with a new :class:`Loss` or
:class:`~mrl_kernels.training.selectors.Selector` if needed, or, for a loss over the whole
candidate pool like :class:`SampledSoftmax`, a method of its own and the
objective it builds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import Batch, lookup
from ..ops import CSR, mns_bpr_loss, mrl_bpr_loss, mrl_softmax_loss
from ..ops.als import coordinate_weights, nested_mask
from .selectors import DNS, MNS, UNIFORM, Selector

__all__ = ["Loss", "BPR", "MRL", "Settings", "Objective", "Method", "Ranking", "RankingObjective", "SampledSoftmax",
           "SoftmaxObjective", "NestedLeastSquares", "LeastSquaresObjective", "OBJECTIVES"]


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
    """What building an objective reads; a :class:`mrl_kernels.training.TrainConfig` is one."""

    dims: Sequence[int]  # nested widths, the last the embedding width
    candidates: int  # candidates per pool
    layout: str  # one of sampling.LAYOUTS
    l2: float
    backend: str  # the operators' backend
    temperature: float  # the sampled softmax's only
    cosine: bool  # the sampled softmax's only
    alpha: float | None  # least squares' only: the weight of an observed pair
    level_weights: Sequence[float] | None  # least squares' only (None: 1 each)


class Objective(Protocol):
    """A training loss built for one run's settings (``OBJECTIVES[method].build(settings)``):
    ``candidate_shape`` is the shape of the candidate ids to draw for each row of
    a batch, and ``objective(batch, candidates (B, *candidate_shape))`` the
    batch's scalar training loss."""

    candidate_shape: tuple[int, ...]

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor: ...


class Method(Protocol):
    """An entry of :data:`OBJECTIVES` (a ``--method``): what builds its objective
    (``interactions``: the training CSR the run learns from)."""

    def build(self, settings: Settings, interactions: CSR | None = None) -> Objective: ...


@dataclass(frozen=True)
class Ranking:
    """A negative selector times a ranking loss (the paper's five methods)."""

    selector: Selector
    loss: Loss

    def build(self, settings: Settings, interactions: CSR | None = None) -> "RankingObjective":
        dims = tuple(settings.dims)
        return RankingObjective(self.selector, self.loss, dims,
                                self.selector.candidate_shape(len(dims), settings.candidates, settings.layout),
                                settings.l2, settings.backend)


@dataclass(frozen=True)
class RankingObjective:
    """:class:`Ranking`'s objective for ``dims``, ``l2`` and ``backend``."""

    selector: Selector
    loss: Loss
    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    l2: float
    backend: str

    @property
    def fused(self) -> bool:
        return self.selector.scored and self.selector.per_level == self.loss.per_level

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        """The training loss of one batch: the ranking loss plus the authors' L2
        term ``l2 * (|u|^2 + |i|^2 + |negatives|^2) / 2 / B`` on the batch's rows."""
        dims, backend = self.dims, self.backend
        if self.fused and not batch.sparse:  # the fused operator's item gradient is dense
            loss, negatives = mns_bpr_loss(batch.user, batch.pos, batch.items, candidates, self.selector.widths(dims),
                                           layout="shared" if len(self.candidate_shape) == 1 else "per-level",
                                           backend=backend)
        else:
            negatives = self.selector.select(batch.user, batch.items, candidates, dims, backend)
            loss = self.loss.fn(batch.user, batch.pos, batch.negative_rows(negatives), dims, backend)
        return loss + self.l2 * batch.squared_norms(negatives) / 2 / batch.user.shape[0]


@dataclass(frozen=True)
class SampledSoftmax:
    """The Matryoshka sampled softmax: every candidate of the pool is a negative
    at every width it serves (one pool shared by all levels, ``layout="shared"``,
    or one per level), none is selected."""

    def build(self, settings: Settings, interactions: CSR | None = None) -> "SoftmaxObjective":
        dims = tuple(settings.dims)
        shape = (settings.candidates,) if settings.layout == "shared" else (len(dims), settings.candidates)
        return SoftmaxObjective(dims, shape, settings.l2, settings.backend, settings.temperature, settings.cosine)


@dataclass(frozen=True)
class SoftmaxObjective:
    """:class:`SampledSoftmax`'s objective for ``dims``, ``l2``, ``backend``, the
    softmax ``temperature`` and its scores (``cosine`` or inner products)."""

    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    l2: float
    backend: str
    temperature: float
    cosine: bool

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        """:func:`mrl_softmax_loss` plus the L2 term ``l2 * (|u|^2 + |i|^2 + mean_j
        |e_j|^2) / 2 / B`` on the batch's users, positives and candidates (each
        row's candidates weigh as one negative)."""
        items, ids = batch.items, candidates
        if batch.sparse:  # the operator's item gradient is dense: hand it the pool's rows only
            unique, inverse = candidates.unique(return_inverse=True)
            items, ids = batch.negative_rows(unique), inverse
        loss = mrl_softmax_loss(batch.user, batch.pos, items, ids, self.dims, temperature=self.temperature,
                                cosine=self.cosine, layout="shared" if len(self.candidate_shape) == 1 else "per-level",
                                backend=self.backend)
        per_row = candidates[0].numel()
        candidate_norms = lookup(batch.reg_items, candidates, batch.sparse).square().sum() / per_row
        return loss + self.l2 * (batch.squared_norms() + candidate_norms) / 2 / batch.user.shape[0]


@dataclass(frozen=True)
class NestedLeastSquares:
    """Nested least squares by gradient, for any backbone: ``mrl-als``'s objective
    (iALS's, summed over the widths with weights ``w_l``) per observed pair,

    ``mean_batch sum_l w_l [alpha (1 - s_l)^2 - s_l^2] + (n_users n_items / nnz) <(U^T U / B) ⊙ M, (P^T P / B)>_F``

    plus the trainer's L2 term, ``s_l`` the batch pairs' prefix scores, ``U`` and ``P``
    the batch's user and positive rows, ``M[j, k] = sum_{l : d_l > max(j, k)} w_l``.
    The second term is every pair's ``sum_l w_l <u[:d_l], i[:d_l]>^2`` through
    Gramians estimated from the batch's rows (Krichene et al. 2019): no negative is
    sampled. Rows drawn by interaction weigh users by activity and items by
    popularity there (a popularity-weighted unobserved term, as popularity-drawn
    negatives are)."""

    def build(self, settings: Settings, interactions: CSR | None = None) -> "LeastSquaresObjective":
        if interactions is None or interactions.nnz == 0:
            raise ValueError("nested least squares needs the training interactions (their density scales the "
                             "unobserved term)")
        dims = tuple(settings.dims)
        weights = torch.tensor(settings.level_weights or [1.0] * len(dims), dtype=torch.float32)
        return LeastSquaresObjective(dims, (0,), weights, nested_mask(coordinate_weights(dims, weights)),
                                     float(settings.alpha), settings.l2,
                                     interactions.n_rows * interactions.n_cols / interactions.nnz)


@dataclass(frozen=True)
class LeastSquaresObjective:
    """:class:`NestedLeastSquares`' objective: ``weights`` (L,), ``mask`` ``M`` (D, D),
    ``alpha``, ``l2`` and the unobserved term's ``scale`` (users x items / observed)."""

    dims: tuple[int, ...]
    candidate_shape: tuple[int, ...]
    weights: Tensor
    mask: Tensor
    alpha: float
    l2: float
    scale: float

    def __call__(self, batch: Batch, candidates: Tensor) -> Tensor:
        user, pos = batch.user, batch.pos
        rows = user.shape[0]
        weights, mask = self.weights.to(user.device), self.mask.to(user.device)
        scores = (user * pos).cumsum(1)[:, [d - 1 for d in self.dims]]  # (B, L) prefix scores
        observed = ((self.alpha * (1 - scores) ** 2 - scores ** 2) * weights).sum(1).mean()
        unobserved = self.scale * ((user.T @ user) * mask * (pos.T @ pos)).sum() / rows ** 2
        return observed + unobserved + self.l2 * batch.squared_norms() / 2 / rows


OBJECTIVES: dict[str, Method] = {
    "bpr": Ranking(UNIFORM, BPR),
    "bpr-d": Ranking(DNS, BPR),
    "bpr-m": Ranking(MNS, BPR),
    "mrl-d": Ranking(DNS, MRL),
    "mrl-m": Ranking(MNS, MRL),
    "mrl-s": SampledSoftmax(),
    "mrl-ls": NestedLeastSquares(),
}
