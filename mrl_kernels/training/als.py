"""Nested (Matryoshka) alternating least squares, ``--method mrl-als`` and
:class:`~mrl_kernels.training.estimator.MatryoshkaALS`: an MF model fitted by
sweeps of :func:`mrl_kernels.ops.nested_als_solve` (every user's vector solved
with the items fixed, then every item's), minimising iALS's objective summed
over the nested widths, each width with its own weight, confidence and L2 weight,

``sum_l w_l [ sum_obs alpha_l (1 - <x_u[:d_l], y_i[:d_l]>)^2 + sum_unobs <x_u[:d_l], y_i[:d_l]>^2
+ reg_l (|X[:, :d_l]|^2 + |Y[:, :d_l]|^2) ]``

(``reg_l`` is the run's ``l2``, one value or one per width). The first
``rotations`` sweeps each end by :func:`rotate_to_singular_basis`: both tables
turned to the singular basis of their product, which ``user @ item.T`` keeps
while each prefix becomes its truncated SVD (see :class:`Sweeps`). :class:`Sweeps` is
the one fitting code path: :class:`AlsFit` (the trainer's, with
:class:`~.fit.Fit`'s face, an epoch being one sweep, so selection, refit,
checkpoints and ``--resume`` are the trainer's own) and the estimator both sweep
with it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..ops import CSR, nested_als_solve
from ..ops._checks import check_dims, check_int, check_per_level, check_weights
from ..ops.als import coordinate_weights, nested_mask, observed_terms, unobserved_products
from .backbones import BACKBONES
from .config import TrainConfig
from .fit import check_stop
from .group import Group

__all__ = ["AlsFit", "Sweeps", "INIT_SCALE", "nested_objective", "initial_factors", "initial_tables",
           "rotate_to_singular_basis"]

INIT_SCALE = 0.01  # initial vectors uniform in [0, INIT_SCALE), as implicit's
CHUNK = 1 << 13  # observed pairs scored at a time by nested_objective (their rows stay in cache)


def initial_factors(rows: int, width: int, generator: torch.Generator, dtype=torch.float32) -> Tensor:
    """``(rows, width)`` vectors uniform in ``[0, INIT_SCALE)`` (implicit's start)."""
    return torch.rand((rows, width), generator=generator, dtype=dtype) * INIT_SCALE


def initial_tables(interactions: CSR, width: int, seed: int) -> tuple[Tensor, Tensor]:
    """The user and item tables of a fit on ``interactions`` from ``seed``, drawn
    in that order (:func:`initial_factors`): :class:`AlsFit`'s start, and a search
    trial's."""
    generator = torch.Generator().manual_seed(seed)
    return initial_factors(interactions.n_rows, width, generator), initial_factors(interactions.n_cols, width,
                                                                                   generator)


@torch.no_grad()
def rotate_to_singular_basis(users: Tensor, items: Tensor) -> bool:
    """Turn both tables in place to the balanced singular basis of their product
    ``P = users @ items.T``: ``users @ T_u`` and ``items @ T_i`` with ``P`` unchanged,
    ``users.T @ users = items.T @ items`` diagonal and descending, so that each
    prefix's product is ``P``'s truncated SVD (the best rank-``d`` approximation of
    ``P``) and the tables' squared norm the least any factorisation of ``P`` has.
    From the Cholesky factors of the two Gramians (``R_u^T R_u = users.T @ users``,
    the Gramians summed in the tables' dtype, factored in float64):
    ``R_u R_i^T = U S V^T``, ``T_u = R_u^{-1} U S^{1/2}``, ``T_i = R_i^{-1} V S^{1/2}``,
    so ``T_u T_i^T = I`` to float64's rounding however the Gramians rounded, and the
    tables are turned in their dtype. False, and nothing turned, where a Gramian
    is singular to the tables' precision (fewer rows than columns, dependent
    columns): a squared Cholesky pivot at most ``D eps`` times the largest."""
    floor = users.shape[1] * torch.finfo(users.dtype).eps
    lowers = []
    for table in (users, items):
        lower, info = torch.linalg.cholesky_ex((table.T @ table).double())
        pivots = torch.diagonal(lower).square()
        if bool(info) or not bool(pivots.min() > floor * pivots.max()):
            return False
        lowers.append(lower)
    lower_u, lower_i = lowers
    left, singular, right_t = torch.linalg.svd(lower_u.T @ lower_i)
    root = singular.sqrt()
    for table, lower, basis in ((users, lower_u, left), (items, lower_i, right_t.T)):
        turn = torch.linalg.solve_triangular(lower.T, basis * root, upper=True)
        table.copy_(table @ turn.to(table.dtype))
    return True


@dataclass(frozen=True)
class Sweeps:
    """The settings of nested ALS's sweeps, checked: ``dims``, the level weights
    ``w_l`` (default 1 each: the sum of every width's iALS objective), ``alpha_l``
    and ``reg_l`` (one float or one per width), conjugate-gradient steps, backend,
    and ``rotations``: how many of a fit's first sweeps end by
    :func:`rotate_to_singular_basis`.

    Why the rotations: iALS's objective at full width does not change when both
    tables turn by an invertible matrix and its inverse transpose; only the
    narrower widths' terms tell the bases apart, so alternating sweeps settle the
    basis slowly: on phone (seed 2, the defaults, every validation user) width 4's
    Recall@20 rose from 0.0851 at 20 sweeps to 0.0906 at 50, and with 3 rotations
    it was 0.0916 at 10. The rotation lowered the nested objective after each of
    the first 4 sweeps (phone) and after 8 of the first 10 (tool), not after;
    rotating after every sweep keeps the basis from settling on the nested optimum. ``mrl-als``'s 3 was
    measured on tool's validation split (bench/als_rotations.py). A fit whose
    narrower widths all weigh 0 (one level: iALS) is never rotated: its objective
    cannot tell the bases apart."""

    dims: tuple[int, ...]
    weights: Tensor
    alphas: tuple[float, ...]
    regs: tuple[float, ...]
    cg_steps: int = 3
    backend: str = "auto"
    rotations: int = 0

    @classmethod
    def of(cls, dims: Sequence[int], weights, alpha, reg, cg_steps: int = 3, backend: str = "auto",
           rotations: int = 0) -> "Sweeps":
        dims = tuple(check_dims(dims, dims[-1] if len(dims) else 0))
        weights = check_weights([1.0] * len(dims) if weights is None else weights, len(dims), torch.device("cpu"))
        return cls(dims, weights, tuple(check_per_level("alpha", alpha, len(dims), low=0.0, low_open=True)),
                   tuple(check_per_level("reg", reg, len(dims), low=0.0)), check_int("cg_steps", cg_steps), backend,
                   check_int("rotations", rotations, 0))

    @classmethod
    def of_config(cls, config: TrainConfig) -> "Sweeps":
        """The sweeps of a run's settings (``mrl-train --method mrl-als``)."""
        return cls.of(config.dims, config.level_weights, config.alpha, config.l2, config.cg_steps, config.backend,
                      config.rotations)

    def solve(self, factors: Tensor, other: Tensor, interactions, cg_steps: int | None = None) -> Tensor:
        """``factors``' rows solved with ``other`` fixed on ``interactions`` (a new tensor)."""
        return nested_als_solve(factors, other, interactions, self.dims, self.weights, alpha=self.alphas,
                                reg=self.regs, cg_steps=cg_steps or self.cg_steps, backend=self.backend)

    @torch.no_grad()
    def sweep(self, users: Tensor, items: Tensor, interactions: CSR, transposed: CSR, done: int) -> None:
        """One sweep in place: every user's vector, then every item's; stops after
        the current half when a stop was requested. ``done``: the fit's sweeps
        before this one (the first :attr:`rotations` end by a rotation)."""
        users.copy_(self.solve(users, items, interactions))
        check_stop()
        items.copy_(self.solve(items, users, transposed))
        check_stop()
        if done < self.rotations and bool((self.weights[:-1] > 0).any()):
            rotate_to_singular_basis(users, items)

    def objective(self, users: Tensor, items: Tensor, interactions: CSR) -> float:
        """The nested objective per observed pair (:func:`nested_objective`)."""
        return nested_objective(users, items, interactions, self.dims, self.weights, self.alphas,
                                self.regs) / max(interactions.nnz, 1)


@torch.no_grad()
def nested_objective(user: Tensor, item: Tensor, interactions: CSR, dims, weights: Tensor, alpha,
                     reg) -> float:
    """The nested iALS objective of the tables ``user`` and ``item`` on
    ``interactions`` (``alpha`` and ``reg`` one float or one per width): the
    unobserved pairs through the Gramians,
    ``sum_l w_l sum_{u, i} <x_u[:d_l], y_i[:d_l]>^2 = <(X^T X) ⊙ M, Y^T Y>_F``, the
    observed ones corrected pair by pair, the L2 term of each width (sums in float64)."""
    m = coordinate_weights(dims, weights.to(user.dtype))
    total = float(unobserved_products(user, item, nested_mask(m)).double().sum())
    alphas = torch.as_tensor(alpha, dtype=torch.float64)
    rows, cols = (torch.from_numpy(a) for a in interactions.pairs())
    for start in range(0, len(rows), CHUNK):
        u, i = rows[start:start + CHUNK], cols[start:start + CHUNK]
        total += float(observed_terms(user[u], item[i], dims, weights, alphas, dtype=torch.float64).sum())
    m_reg = coordinate_weights(dims, weights.double() * torch.as_tensor(reg, dtype=torch.float64))
    return total + float((user.double().square().sum(0) * m_reg).sum() + (item.double().square().sum(0) * m_reg).sum())


class AlsFit:
    """An MF model and its nested least-squares sweeps on ``interactions``
    (initialised afresh from the seed, so the selection run and the refit start
    alike). One process: the sweeps parallelise over rows in the kernels."""

    def __init__(self, config: TrainConfig, interactions: CSR, device: torch.device, group: Group | None = None):
        if group is not None and group.world > 1:
            raise ValueError(f"--method {config.method} runs in one process (its solves use every thread of "
                             f"it); got {group.world} processes")
        self.config, self.interactions, self.group = config, interactions, group or Group()
        self.transposed = interactions.transpose()
        self.sparse = False
        self.model = BACKBONES[config.model](interactions, config.dims[-1], config.layers, False).to(device)
        with torch.no_grad():
            for table, drawn in zip(self.model.tables(), initial_tables(interactions, config.dims[-1], config.seed)):
                table.copy_(drawn)
        self.sweeps = Sweeps.of_config(config)
        self.done = 0  # sweeps so far

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "sweeps": self.done}

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        # a checkpoint written before the rotations: the fit goes on without them, as it began
        self.done = saved.get("sweeps", self.sweeps.rotations)

    def epoch(self, loss: bool = True) -> float | None:
        """One sweep (users, then items); with ``loss``, the objective per
        observed pair (the history's loss; it costs half a sweep, so the refit,
        which records none, skips it). Stops after the current half when a stop
        was requested."""
        users, items = self.model.tables()
        self.sweeps.sweep(users, items, self.interactions, self.transposed, self.done)
        self.done += 1
        return self.sweeps.objective(users, items, self.interactions) if loss else None
