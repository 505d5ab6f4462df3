"""The training loop: per-epoch shuffled (user, positive) batches, validation
every few epochs with early stopping, then by default the refit (a fresh fit on
train + validation for the selected epochs), and the final test metrics.

Where a run stands is a :class:`RunState` that every checkpoint keeps, so a
resumed run continues in the phase it was left in and equals an uninterrupted
one.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..modelfile import MODEL_FILE, save_model
from ..ops import CSR, registry
from . import checkpoint, outputs
from .backbones import BACKBONES
from .data import Dataset, load
from .metrics import evaluate, hierarchy_purity, prefix_evaluate, sample_users
from .als import AlsFit
from .config import TrainConfig
from .fit import STOP, Diverged, Fit, Fitter, Interrupted, check_stop
from .group import Group
from .methods import METHODS

__all__ = ["train", "Interrupted", "RunState", "SELECT_BY"]

SELECT_BY = "recall@20"


@dataclass
class RunState:
    """Where a run stands: what a checkpoint keeps besides the fit's own state.
    A run is in ``"select"`` (train on the training split, evaluate every
    ``eval_every`` epochs, keep the best) until ``epochs`` or ``patience`` ends
    it, then, with ``refit``, in ``"refit"`` (a fresh fit on train + validation
    for the selected number of epochs)."""

    phase: Literal["select", "refit"] = "select"
    epoch: int = 0  # selection epochs done
    history: list[dict] = field(default_factory=list)  # a row per evaluation
    best: dict | None = None  # the row of the best evaluation
    best_state: dict | None = None  # the model's weights at it
    bad_evals: int = 0  # evaluations since the best
    train_seconds: float = 0.0  # spent in epochs, both phases
    elapsed: float = 0.0  # wall time at the latest evaluation or refit checkpoint, before a resume included
    refit_epoch: int = 0  # refit epochs done
    # the selection's fit (its Fitter.state()) during the refit: a resume with a larger --epochs
    # or --patience continues the selection from it
    select_fit: dict | None = None
    backends: dict = field(default_factory=dict)  # operator -> backend, of every process that ran the run


def train(config: TrainConfig, log: Callable[[str], None] = tqdm.write,
          dataset: Dataset | None = None, resume: bool = False) -> dict:
    """Train ``config.method`` on ``config.model`` and return the ``metrics.json`` content.

    With ``resume=True`` training continues from the checkpoint in the run
    folder (same settings and data required) and every output is written again.
    Raises ValueError / RuntimeError / OSError with a one-line message for bad
    settings, data, folders and checkpoints; :class:`Interrupted` on SIGINT."""
    config.check()
    device = torch.device(config.device)
    group = Group.start(device)
    try:
        ds = dataset or load(config.dataset, config.data_dir, seed=config.seed,
                                         synthetic_size=config.synthetic_size)
        if group.writer:
            log(ds.summary())
        out = group.broadcast(outputs.run_folder(config.out, f"{ds.name}-{config.method}", resume)
                              if group.writer else None)
        # rank 0 reads, writes and reports; the others train their shards
        with outputs.claimed(out) if group.writer else contextlib.nullcontext():
            result = _Run(config, ds, device, out, log if group.writer else lambda _: None, group).run(resume)
        group.barrier()  # every rank done before any tears the process group down
        return result
    finally:
        group.stop()


class _Run:
    """One run of ``config`` on ``ds`` in the folder ``out``, on one rank of ``group``."""

    def __init__(self, config: TrainConfig, ds: Dataset, device: torch.device, out: Path,
                 log: Callable[[str], None], group: Group):
        self.started = time.perf_counter()
        self.config, self.ds, self.device, self.out, self.log, self.group = config, ds, device, out, log, group
        self.fit = _fit(config, ds.train, device, group)
        self.fingerprint = ds.fingerprint()
        self.state = RunState()
        self.resumed_at = 0.0  # the wall time of the run before this process resumed it
        self.checkpoint = out / checkpoint.CHECKPOINT
        # who is evaluated on each split: the same users at every evaluation, also after a resume
        self.users = {split: sample_users(getattr(ds, split), config.eval_users, config.seed)
                      for split in ("valid", "test")}

    def _evaluate(self, model, split: str, exclude: list, dims: list[int] | None = None):
        """``model``'s metrics on ``split`` (``{"n": metrics}`` with ``dims``) over
        the run's users of that split, stopping between user batches on request."""
        tables = _finite_tables(model)
        if dims is None:
            return evaluate(*tables, getattr(self.ds, split), exclude, users=self.users[split], between=check_stop)
        return prefix_evaluate(*tables, dims, getattr(self.ds, split), exclude, users=self.users[split],
                               between=check_stop)

    def run(self, resume: bool) -> dict:
        """Resume (``resume``) or start the run, train it to the end; the metrics (on every rank)."""
        if resume:
            self._resume()
        elif self.group.writer:
            outputs.check_new(self.out)
        state = self.state
        self.resumed_at = state.elapsed
        STOP.clear()
        try:
            if state.phase == "select":
                self._select()
                if self.config.refit:
                    state.select_fit = self.fit.state()
                    state.phase, state.refit_epoch = "refit", 0
                    self.fit = self._refit_fit()
            if state.phase == "refit":
                self._refit()
            result = self._report() if self.group.writer else None
        except Diverged as exc:
            done = state.epoch if state.phase == "select" else state.refit_epoch
            phase = "selection" if state.phase == "select" else "refit"
            raise RuntimeError(f"the run diverged: {exc} during the {phase}, after {done} epochs (try a smaller "
                               f"--lr, or another --l2); no metrics were reported; {self._kept()}") from None
        except KeyboardInterrupt as exc:
            how = "interrupted again, stopped at once" if isinstance(exc, Interrupted) else "interrupted"
            raise Interrupted(f"{how}; {self._kept()}") from None
        return self.group.broadcast(result)

    def _refit_fit(self) -> Fit:
        """A fresh fit on train + validation (the refit's)."""
        return _fit(self.config, CSR.union(self.ds.train, self.ds.valid), self.device, self.group)

    def _resume(self) -> None:
        """Continue from the checkpoint: in its phase, or back in the selection when
        the new ``--epochs`` / ``--patience`` let a finished selection go on."""
        config = self.config
        saved = checkpoint.load(self.checkpoint, config, self.fingerprint, self.ds.name, self.device)
        state = self.state = RunState(**saved["state"])
        if state.epoch > config.epochs:
            raise ValueError(f"--epochs {config.epochs} is below the {state.epoch} selection epochs the run in "
                             f"{self.out} has trained; resume with --epochs {state.epoch} or more")
        selecting = state.epoch < config.epochs and state.bad_evals < config.patience
        if state.phase == "refit" and selecting:
            if state.select_fit is None:
                raise ValueError(f"{self.checkpoint} keeps no state of the selection (an earlier version wrote "
                                 f"it): its selection cannot go on to --epochs {config.epochs}; resume with the "
                                 f"same --epochs and --patience, or start afresh with another --out")
            self.fit.load(state.select_fit)  # the selection goes on; its refit starts over after it
            state.phase, state.refit_epoch, state.select_fit = "select", 0, None
            self.log(f"resumed from {self.checkpoint}: the selection goes on from epoch {state.epoch}")
            return
        if state.phase == "refit":
            self.fit = self._refit_fit()
        self.fit.load(saved)
        at = state.epoch if state.phase == "select" else state.refit_epoch
        self.log(f"resumed from {self.checkpoint} at {state.phase} epoch {at}")

    def _elapsed(self) -> float:
        return self.resumed_at + time.perf_counter() - self.started

    def _save(self) -> None:
        snapshot = self.fit.state()  # on every rank: it gathers the ranks' generators
        self.state.backends = self._backends()
        if self.group.writer:
            # the state as a plain dict, so that a checkpoint names no class of this module
            checkpoint.save(self.checkpoint, self.config, self.fingerprint, snapshot, dict(vars(self.state)))

    def _kept(self) -> str:
        """What an interruption leaves to resume from."""
        state, out = self.state, self.out
        if state.phase == "refit":
            return f"the checkpoint of the refit is kept in {out} (--resume continues)"
        if state.history:
            return f"the checkpoint of epoch {state.history[-1]['epoch']} is kept in {out} (--resume continues)"
        return f"no checkpoint was written yet in {out}: nothing to resume"

    def _bar(self, **kwargs) -> tqdm:
        return tqdm(disable=not (self.config.progress and self.group.writer), dynamic_ncols=True, unit="epoch",
                    **kwargs)

    def _select(self) -> None:
        """Train on ``ds.train``, evaluate on the validation split every
        ``eval_every`` epochs (rank 0, whose metrics every rank then acts on), keep
        the best epoch's weights, stop early."""
        config, ds, state, fit = self.config, self.ds, self.state, self.fit
        with self._bar(total=config.epochs, initial=state.epoch, desc="training") as bar:
            while state.epoch < config.epochs and state.bad_evals < config.patience:
                epoch = state.epoch + 1
                epoch_started = time.perf_counter()
                loss = fit.epoch()
                state.train_seconds += time.perf_counter() - epoch_started
                state.epoch = epoch
                bar.update(1)
                if epoch % config.eval_every == 0 or epoch == config.epochs:
                    row = None
                    if self.group.writer:
                        metrics = self._evaluate(fit.model, "valid", [ds.train])
                        state.elapsed = self._elapsed()
                        row = {"epoch": epoch, "loss": loss, **metrics, "elapsed_s": state.elapsed}
                        if config.track_test:
                            test = self._evaluate(fit.model, "test", [ds.train, ds.valid])
                            row.update({f"test_{name}": value for name, value in test.items()})
                    row = self.group.broadcast(row)
                    state.history.append(row)
                    if state.best is None or row[SELECT_BY] > state.best[SELECT_BY]:
                        state.best = row
                        state.best_state = copy.deepcopy(fit.model.state_dict())
                        state.bad_evals = 0
                    else:
                        state.bad_evals += 1
                    bar.set_postfix({"valid recall@20": f"{row[SELECT_BY]:.4f}"})
                    self.log(f"validation metrics, epoch {epoch}:\n" + _table(
                        {k: v for k, v in row.items() if k != "elapsed_s"}))
                    self._save()
                    if self.group.writer:
                        outputs.write_history(self.out, state.history)

    def _refit(self) -> None:
        """Train the fresh fit on train + validation for the selected number of epochs."""
        state = self.state
        with self._bar(total=state.best["epoch"], initial=state.refit_epoch, desc="refit on train + validation") as bar:
            while state.refit_epoch < state.best["epoch"]:
                epoch_started = time.perf_counter()
                self.fit.epoch(loss=False)  # the refit records no loss
                state.train_seconds += time.perf_counter() - epoch_started
                state.refit_epoch += 1
                bar.update(1)
                if state.refit_epoch % self.config.eval_every == 0:
                    state.elapsed = self._elapsed()
                    self._save()

    def _backends(self) -> dict:
        """Each operator the run called -> the backend it ran on: this process's
        (:func:`registry.used`) over those recorded before a resume."""
        return {**self.state.backends, **registry.used()}

    def _report(self) -> dict:
        """Evaluate the reported model on the test split, write every output
        (again, when resumed), log the end; the ``metrics.json`` content."""
        final = self._final()
        result = self._compose(final)
        self._write(result, final)
        return result

    def _final(self) -> "_Final":
        """The evaluations of the end: the reported model's test metrics at every
        width, the selected model's before the refit, the hierarchy's purity."""
        config, ds, state = self.config, self.ds, self.state
        dims = list(config.dims)
        selected = BACKBONES[config.model](ds.train, dims[-1], config.layers, self.fit.sparse).to(self.device)
        selected.load_state_dict(state.best_state)
        held_out = [ds.train, ds.valid]
        model = self.fit.model if config.refit else selected
        tables = _finite_tables(model)
        prefix = self._evaluate(model, "test", held_out, dims)  # the test at every width, in one pass
        before_refit = self._evaluate(selected, "test", held_out) if config.refit else None
        hierarchy = None if ds.item_tree is None else \
            {str(n): hierarchy_purity(tables[1], ds.item_tree, n) for n in dims}
        return _Final(tables, prefix, before_refit, hierarchy)

    def _compose(self, final: "_Final") -> dict:
        """The ``metrics.json`` content."""
        config, ds, state, best = self.config, self.ds, self.state, self.state.best
        dims = list(config.dims)
        if state.bad_evals >= config.patience:
            stopped = (f"early stop at epoch {state.epoch}: {state.bad_evals} evaluations without a better "
                       f"validation Recall@20")
        else:
            stopped = f"reached --epochs {state.epoch}"
        full = final.prefix[str(dims[-1])]
        result = {
            "dataset": ds.name,
            "model": config.model,
            "method": config.method,
            "config": {**asdict(config), "dims": dims, "out": str(self.out), "threads": torch.get_num_threads(),
                       "world_size": self.group.world, "sparse": self.fit.sparse,
                       "evaluated_users": {split: len(users) for split, users in self.users.items()}},
            "versions": {"mrl_kernels": importlib.metadata.version("mrl_kernels"), "torch": torch.__version__,
                         "python": platform.python_version()},
            "test": full,  # the full width
            "valid": {name: best[name] for name in full},
            "prefix": final.prefix,
            "best_epoch": best["epoch"],
            "epochs_run": state.epoch,
            "stopped": stopped,
        }
        if config.refit:
            result["refit_epochs"] = state.refit_epoch
            result["test_before_refit"] = final.before_refit
        if final.hierarchy is not None:
            result["hierarchy"] = final.hierarchy
        result.update(seconds_per_epoch=state.train_seconds / max(state.epoch + state.refit_epoch, 1),
                      wall_seconds=self._elapsed(), backends=self._backends())
        return result

    def _write(self, result: dict, final: "_Final") -> None:
        """The outputs (history, model file, ``metrics.json``) and the closing log lines."""
        config, ds, state, out, best = self.config, self.ds, self.state, self.out, self.state.best
        outputs.write_history(out, state.history)
        save_model(out / MODEL_FILE, *final.tables, list(config.dims), CSR.union(ds.train, ds.valid, ds.test),
                   ds.user_ids, ds.item_ids, dataset=ds.name, method=config.method, model=config.model)
        outputs.write_metrics(out, result)
        refit = f", refit on train + validation for {state.refit_epoch} epochs" if config.refit else ""
        self.log(f"{result['stopped']}; best epoch {best['epoch']} (validation Recall@20 {best[SELECT_BY]:.4f})"
                 f"{refit}; wall time {result['wall_seconds']:.1f} s; outputs in {out}")
        self.log(f"test metrics of the {'refit' if config.refit else 'selected'} model:\n" + _table(result["test"]))


@dataclass
class _Final:
    """What :meth:`_Run._final` evaluates."""

    tables: tuple  # the reported model's (user, item) tables
    prefix: dict  # its test metrics at every width
    before_refit: dict | None  # the selected model's test metrics, with the refit
    hierarchy: dict | None  # the item table's hierarchy purity at every width, with a category tree


def _fit(config: TrainConfig, interactions: CSR, device: torch.device, group: Group) -> Fitter:
    """What fits ``config.method``: sweeps of least squares, or gradient steps."""
    return (AlsFit if METHODS[config.method].solved else Fit)(config, interactions, device, group)


def _table(row: dict) -> str:
    return pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _finite_tables(model) -> tuple:
    """``model.tables()``, which must hold finite numbers only: metrics of
    anything else would be a report of no model."""
    tables = model.tables()
    if not all(bool(torch.isfinite(t).all()) for t in tables):
        raise Diverged("the model's tables hold non-finite values")
    return tables
