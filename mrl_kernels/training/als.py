"""Nested (Matryoshka) alternating least squares, ``--method mrl-als``: an MF
model fitted by sweeps of :func:`mrl_kernels.ops.nested_als_solve` (every user's
vector solved with the items fixed, then every item's), minimising iALS's
objective summed over the nested widths,

``sum_l w_l [ sum_obs alpha (1 - <x_u[:d_l], y_i[:d_l]>)^2 + sum_unobs <x_u[:d_l], y_i[:d_l]>^2
+ reg (|X[:, :d_l]|^2 + |Y[:, :d_l]|^2) ]``

(iALS's objective at each width, L2 term included; ``reg`` is the run's ``l2``).
:class:`AlsFit` has :class:`~.fit.Fit`'s face, an epoch being one sweep, so
selection, refit, checkpoints and ``--resume`` are the trainer's own."""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops import CSR, nested_als_solve
from ..ops._checks import check_weights
from ..ops.als import coordinate_weights, nested_mask, observed_terms, unobserved_products
from .backbones import BACKBONES
from .config import TrainConfig
from .fit import check_stop
from .group import Group

__all__ = ["AlsFit", "INIT_SCALE", "nested_objective"]

INIT_SCALE = 0.01  # initial vectors uniform in [0, INIT_SCALE), as implicit's
CHUNK = 1 << 13  # observed pairs scored at a time by nested_objective (their rows stay in cache)


@torch.no_grad()
def nested_objective(user: Tensor, item: Tensor, interactions: CSR, dims, weights: Tensor, alpha: float,
                     reg: float) -> float:
    """The nested iALS objective of the tables ``user`` and ``item`` on
    ``interactions``: the unobserved pairs through the Gramians,
    ``sum_l w_l sum_{u, i} <x_u[:d_l], y_i[:d_l]>^2 = <(X^T X) ⊙ M, Y^T Y>_F``, the
    observed ones corrected pair by pair, the L2 term of each width (sums in float64)."""
    m = coordinate_weights(dims, weights.to(user.dtype))
    total = float(unobserved_products(user, item, nested_mask(m)).double().sum())
    rows, cols = (torch.from_numpy(a) for a in interactions.pairs())
    for start in range(0, len(rows), CHUNK):
        u, i = rows[start:start + CHUNK], cols[start:start + CHUNK]
        total += float(observed_terms(user[u], item[i], dims, weights, alpha, dtype=torch.float64).sum())
    m = m.double()
    return total + reg * float((user.double().square().sum(0) * m).sum() + (item.double().square().sum(0) * m).sum())


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
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for table in self.model.tables():
                table.copy_(torch.rand(table.shape, generator=generator, dtype=table.dtype) * INIT_SCALE)
        # default 1 each: the sum of every width's iALS objective
        self.weights = check_weights(config.level_weights or [1.0] * len(config.dims), len(config.dims),
                                     torch.device("cpu"))

    def state(self) -> dict:
        return {"model": self.model.state_dict()}

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])

    def _solve(self, factors: Tensor, other: Tensor, interactions: CSR) -> None:
        config = self.config
        factors.copy_(nested_als_solve(factors, other, interactions, config.dims, self.weights, alpha=config.alpha,
                                       reg=config.l2, cg_steps=config.cg_steps, backend=config.backend))
        check_stop()

    @torch.no_grad()
    def epoch(self) -> float:
        """One sweep (users, then items); the objective per observed pair. Stops
        after the current half when a stop was requested."""
        users, items = self.model.tables()
        self._solve(users, items, self.interactions)
        self._solve(items, users, self.transposed)
        config = self.config
        return nested_objective(users, items, self.interactions, config.dims, self.weights, config.alpha,
                                config.l2) / max(self.interactions.nnz, 1)
