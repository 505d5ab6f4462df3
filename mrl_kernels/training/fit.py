"""What trains: the protocol every fit follows (:class:`Fitter`), the
gradient-trained fit, a model with its objective, optimizer and generators
(:class:`Fit`), one step or one epoch at a time, and the stop request that ends
an epoch early (:func:`request_stop`)."""
from __future__ import annotations

import math
import threading
from typing import Protocol

import torch
from torch import Tensor

from ..ops import CSR, sample_candidates
from .backbones import BACKBONES, Backbone
from .config import TrainConfig
from .group import Group
from .methods import METHODS
from .optim import LazyAdam

__all__ = ["Fitter", "Fit", "Diverged", "Interrupted", "request_stop", "check_stop", "STOP"]

STOP = threading.Event()  # set by request_stop: the epoch ends after the current step, an evaluation after its batch


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM; the message says what was kept."""


class Diverged(RuntimeError):
    """The training loss is not finite: the weights are no longer a model."""


def request_stop(signum=None, frame=None) -> None:
    """A signal handler: the run stops cleanly after the current training step or
    batch of evaluated users (:func:`check_stop`; the run then raises
    :class:`Interrupted`); a second request interrupts at once, wherever the run
    is, also with :class:`Interrupted`."""
    if STOP.is_set():
        raise Interrupted("interrupted again: stopped at once")
    STOP.set()


def check_stop() -> None:
    """Raise KeyboardInterrupt if a stop was requested (:func:`request_stop`): the
    training loop calls it after each step and each batch of evaluated users."""
    if STOP.is_set():
        raise KeyboardInterrupt


class Fitter(Protocol):
    """What fits a method, by gradient steps (:class:`Fit`) or by sweeps
    (:class:`~mrl_kernels.training.als.AlsFit`), made afresh from the run's
    settings and interactions: the model, whether its tables train row-sparse,
    one epoch (its mean loss, which a fitter whose loss costs extra work, e.g. a
    sweep's objective, computes only where ``loss``; it ends early on a stop
    request), and the state a checkpoint keeps and a resume loads."""

    model: Backbone
    sparse: bool

    def epoch(self, loss: bool = True) -> float | None: ...

    def state(self) -> dict: ...

    def load(self, saved: dict) -> None: ...


class Fit:
    """A model, its objective, optimizer and sampling generator, trained on
    ``interactions`` (made afresh from the seed, so the selection run and the
    refit start alike). Under ``torchrun`` each rank of ``group`` trains its
    shard of every batch."""

    def __init__(self, config: TrainConfig, interactions: CSR, device: torch.device, group: Group | None = None):
        torch.manual_seed(config.seed)
        self.config, self.interactions, self.group = config, interactions, group or Group()
        self.sparse = config.sparse_for(interactions.n_cols)
        self.model = BACKBONES[config.model](interactions, config.dims[-1], config.layers, self.sparse).to(device)
        self.step_model = self.group.wrap(self.model)
        self.objective = METHODS[config.method].objective(config, interactions)
        if self.sparse:  # lazy Adam: moments and weights of the rows in the batch only
            self.optimizer = LazyAdam(self.model.parameters(), lr=config.lr)
        else:  # the fused (single-kernel) Adam: on 2 CPU cores 9x faster than the for-loop one
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=True)
        # the epoch order must be the same on every rank, the candidate draws differ
        # by rank; one process draws both from one generator
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.sampler = self.generator if self.group.world == 1 else \
            torch.Generator(device=device).manual_seed(config.seed + 1 + self.group.rank)
        self.users, self.items = (torch.from_numpy(a).to(device) for a in interactions.pairs())

    def state(self) -> dict:
        """What a checkpoint keeps, every rank's candidate generator included (a
        collective call: every rank makes it)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "samplers": self.group.gather(self.sampler.get_state())}

    def load(self, saved: dict) -> None:
        """Continue from ``saved`` (:meth:`state` of a fit at as many processes)."""
        if len(saved["samplers"]) != self.group.world:  # the draws of each rank, and the epoch order, differ
            raise ValueError(f"the checkpoint was written by {len(saved['samplers'])} processes, not "
                             f"{self.group.world}; resume with as many")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"].cpu())
        if self.sampler is not self.generator:
            self.sampler.set_state(saved["samplers"][self.group.rank].cpu())

    def step(self, rows: Tensor) -> float:
        """One optimizer step on the interactions ``rows``; their mean loss."""
        per_row = self.objective.candidate_shape
        users, pos = self.users[rows], self.items[rows]
        if math.prod(per_row):
            cand = sample_candidates(users, math.prod(per_row), self.interactions.n_cols, self.interactions,
                                     self.sampler)
        else:  # an objective that samples no negatives
            cand = users.new_empty((len(rows), 0))
        loss = self.objective(self.step_model(users, pos), cand.view(len(rows), *per_row))
        value = float(loss.detach())
        if not math.isfinite(value):  # before the step: the weights stay as they were
            raise Diverged(f"the training loss is {value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value

    def epoch(self, loss: bool = True) -> float:
        """One pass over the shuffled interactions; the mean training loss (the
        steps compute it whatever ``loss`` says). Stops after the current step
        when a stop was requested (:func:`request_stop`)."""
        order = torch.randperm(len(self.users), generator=self.generator, device=self.users.device)
        rank, world = self.group.rank, self.group.world
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            if len(rows) < world:  # a last batch too small for every rank to get a row
                break
            rows = rows[rank::world]  # this rank's shard (all of it in one process)
            total, count = total + self.step(rows) * len(rows), count + len(rows)
            check_stop()
        total, count = self.group.sum([total, count])
        return total / count
