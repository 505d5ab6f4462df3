"""The training loop: Adam, per-epoch shuffled (user, positive) batches, validation
every few epochs with early stopping, final test metrics from the best epoch.

Outputs in the run folder (``out``; by default a new ``runs/<time>-<dataset>-<method>``
with ``runs/latest`` pointing at it), each written atomically:
``checkpoint.pt`` (everything needed to resume, with a checksum of itself and of
the data), ``model.pt`` (the reported model's tables, id maps and the
interactions seen: what :func:`mrl_kernels.load_run` serves), ``history.csv``
(one row per evaluation), ``metrics.json`` and
``curves.png`` (with matplotlib, the ``plot`` extra). A lock keeps a second run
out of a folder in use; a folder that holds a run is only continued
(``resume=True``), never overwritten.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import filelock
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import data as data_module
from ._io import atomic_write, atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from .backbones import BACKBONES
from .metrics import evaluate, hierarchy_purity, prefix_evaluate
from .objectives import OBJECTIVES
from .ops import check_dims, check_temperature
from .optim import LazyAdam
from .registry import names as backend_names
from .sampling import LAYOUTS, sample_candidates
from .serving import MODEL_FILE, save_model

__all__ = ["TrainConfig", "PAPER_RECIPE", "RECIPES", "recipe", "train", "Interrupted", "request_stop", "CHECKPOINT",
           "RUNS"]

CHECKPOINT = "checkpoint.pt"
OUTPUTS = ("metrics.json", "history.csv", CHECKPOINT, "model.pt")  # a folder holding any of these holds a run
RUNS = Path("runs")  # where runs go without --out
SELECT_BY = "recall@20"
# items from which mf trains row-sparse by default: there a dense step took 421 ms and a
# sparse one 29 ms (bench/results/scale-*); below, the sparse path's lazy Adam costs
# quality (test Recall@20 -6% on phone, -5% on tool) for a smaller gain (10^5 items: 38 -> 25 ms)
SPARSE_FROM = 1_000_000
MAGIC = b"mrl-train checkpoint 1\n"  # then the payload's SHA-256 (hex) and a newline, then the payload


# The paper's recipe (MF, Adam lr 1e-3, batch 2048, L2 1e-4, 16 candidates a pool,
# one pool per level): every method's default unless RECIPES says otherwise.
PAPER_RECIPE = {"candidates": 16, "layout": "per-level", "batch_size": 2048, "lr": 1e-3, "l2": 1e-4,
                "temperature": 1.0, "cosine": False}
# Per-method defaults chosen on the validation split of tool by python -m bench.tune
# (runs/tune, docs/reproduction.md); the same for every dataset. mrl-m: L2 1e-2 (the
# paper's 1e-4 under-regularises: validation Recall@20 0.0788 against 0.0676, best of
# 45 trials over lr, L2, batch size, candidates and layout).
RECIPES: dict[str, dict] = {"mrl-m": {"l2": 1e-2}}


def recipe(method: str) -> dict:
    """The default settings of ``method``: the paper's, with its tuned ones over them."""
    return {**PAPER_RECIPE, **RECIPES.get(method, {})}


@dataclass
class TrainConfig:
    """A training run. The settings left None (candidates, layout, batch size, lr,
    L2, temperature, cosine) take the method's defaults, :func:`recipe`."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    synthetic_size: tuple[int, int, int] | None = None  # (users, items, interactions) of synthetic data
    model: str = "mf"
    layers: int = 1  # LightGCN's propagation layers
    method: str = "mrl-m"
    dims: tuple[int, ...] = (4, 8, 16, 32, 64)
    candidates: int | None = None
    layout: str | None = None
    epochs: int = 300
    batch_size: int | None = None
    lr: float | None = None
    l2: float | None = None
    temperature: float | None = None  # the softmax objectives' (mrl-s)
    cosine: bool | None = None  # mrl-s: cosine scores instead of inner products
    seed: int = 0
    eval_every: int = 5
    patience: int = 10
    device: str = "cpu"
    backend: str = "auto"
    out: str | None = None  # None: a new folder under runs/
    progress: bool = True
    track_test: bool = False  # also record test metrics at each evaluation (never used for selection)
    refit: bool = True  # after selection, train afresh on train + validation for the selected epochs
    # row-sparse lookups and lazy Adam (step cost flat in the table sizes); None: on for
    # mf from SPARSE_FROM items
    sparse: bool | None = None

    def __post_init__(self):
        for name, value in recipe(self.method).items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name, allowed in (("model", BACKBONES), ("method", OBJECTIVES), ("layout", LAYOUTS),
                              ("backend", ("auto", *backend_names()))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        check_dims(self.dims, self.dims[-1] if self.dims else 0)  # the last width is the embedding's
        for name in ("candidates", "epochs", "batch_size", "eval_every", "patience", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        check_temperature(self.temperature)
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0; got {self.l2}")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a torch device: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available here (torch {torch.__version__})")


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT / SIGTERM; the message says what was kept."""


_STOP = threading.Event()


def request_stop(signum=None, frame=None) -> None:
    """A signal handler: the training loop stops cleanly after the current step
    (raising :class:`Interrupted`); a second request interrupts at once."""
    if _STOP.is_set():
        raise KeyboardInterrupt
    _STOP.set()


def _write_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    """The state saved by :func:`_write_checkpoint`; ValueError naming what is wrong."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint")
    if not path.is_file():
        raise ValueError(f"--resume: there is no checkpoint to resume at {path}")
    blob = path.read_bytes()
    if not blob.startswith(MAGIC):
        what = "empty" if not blob else "not a checkpoint written by mrl-train"
        raise ValueError(f"{path} is {what}; remove it, or use another --out")
    digest, _, payload = blob[len(MAGIC):].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError(f"{path} is damaged (its checksum does not match); remove it, or use another --out")
    return torch.load(io.BytesIO(payload), map_location=device, weights_only=False)


def _metrics_table(row: dict) -> str:
    return pd.DataFrame([row]).to_string(index=False, float_format=lambda v: f"{v:.4f}")


def _run_folder(config: TrainConfig, ds: data_module.Dataset, resume: bool) -> Path:
    """``config.out``, or a new folder under ``runs/`` that ``runs/latest`` then
    points at (``runs/latest`` itself with ``resume=True``)."""
    if config.out is not None:
        return Path(config.out)
    latest = RUNS / "latest"
    if resume:
        return latest
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RUNS / f"{stamp}-{ds.name}-{config.method}"
    for n in range(1, 1000):
        if not out.exists():
            break
        out = RUNS / f"{stamp}-{ds.name}-{config.method}-{n}"
    out.mkdir(parents=True)
    link = RUNS / f".latest.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(out.name)
    os.replace(link, latest)
    return out


def _plot(history: pd.DataFrame, path: Path) -> None:
    """Training loss and validation Recall@20 / NDCG@20 against epochs, if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history.epoch, history.loss, marker="o")
    left.set(xlabel="epoch", ylabel="training loss")
    for name in ("recall@20", "ndcg@20"):
        right.plot(history.epoch, history[name], marker="o", label=f"validation {name}")
    right.set(xlabel="epoch")
    right.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _write_history(out: Path, history: list[dict]) -> None:
    table = pd.DataFrame(history)
    atomic_write(out / "history.csv", lambda tmp: table.to_csv(tmp, index=False))
    _plot(table, out / "curves.png")


def train(config: TrainConfig, log: Callable[[str], None] = tqdm.write,
          dataset: data_module.Dataset | None = None, resume: bool = False) -> dict:
    """Train ``config.method`` on ``config.model`` and return the ``metrics.json`` content.

    With ``resume=True`` training continues from the checkpoint in the run
    folder (same settings and data required) and every output is written again.
    Raises ValueError / RuntimeError / OSError with a one-line message for bad
    settings, data, folders and checkpoints; :class:`Interrupted` on SIGINT."""
    config.check()
    device = torch.device(config.device)
    group = _Group.start(device)
    try:
        ds = dataset or data_module.load(config.dataset, config.data_dir, seed=config.seed,
                                         synthetic_size=config.synthetic_size)
        if group.writer:
            log(ds.summary())
        out = group.broadcast(_run_folder(config, ds, resume) if group.writer else None)
        if not group.writer:  # rank 0 reads, writes and reports; the others train their shards
            result = _train(config, ds, device, out, lambda _: None, resume, group)
        else:
            out.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(out / ".lock", timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise RuntimeError(f"another mrl-train run is writing to {out}; wait for it to end, or use another "
                                   "--out") from None
            try:
                remove_stale_temporaries(out)
                result = _train(config, ds, device, out, log, resume, group)
            finally:
                lock.release()
        group.barrier()  # every rank done before any tears the process group down
        return result
    finally:
        group.stop()


class _Group:
    """The processes of a run: one, or ``torchrun``'s (``WORLD_SIZE`` > 1), joined
    in a ``torch.distributed`` process group (gloo on the CPU, NCCL on CUDA).
    Every rank trains its shard of each batch and ``DistributedDataParallel``
    averages the gradients; rank 0 evaluates, writes every output and broadcasts
    its decisions, so all ranks stop together."""

    def __init__(self, rank: int = 0, world: int = 1, started: bool = False):
        self.rank, self.world, self.started = rank, world, started

    @classmethod
    def start(cls, device: torch.device) -> "_Group":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), started=True)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order (on every rank)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the steps call: the model, or ``DistributedDataParallel`` over it."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model)

    def stop(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Fit:
    """A model, its objective, optimizer and sampling generator, trained on ``interactions``
    (made afresh from the seed, so the selection run and the refit start alike)."""

    def __init__(self, config: TrainConfig, interactions: data_module.CSR, device: torch.device,
                 group: _Group | None = None):
        torch.manual_seed(config.seed)
        self.config, self.interactions, self.group = config, interactions, group or _Group()
        self.sparse = _sparse(config, interactions.n_cols)
        self.model = BACKBONES[config.model](interactions, config.dims[-1], config.layers, self.sparse).to(device)
        self.step_model = self.group.wrap(self.model)
        self.objective = OBJECTIVES[config.method].build(config)
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
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"].cpu())
        if self.sampler is not self.generator:
            if len(saved["samplers"]) != self.group.world:
                raise ValueError(f"the checkpoint was written by {len(saved['samplers'])} processes, not "
                                 f"{self.group.world}; resume with as many")
            self.sampler.set_state(saved["samplers"][self.group.rank].cpu())

    def step(self, rows: Tensor) -> float:
        """One optimizer step on the interactions ``rows``; their mean loss."""
        per_row = self.objective.candidate_shape
        users, pos = self.users[rows], self.items[rows]
        cand = sample_candidates(users, math.prod(per_row), self.interactions.n_cols, self.interactions, self.sampler)
        loss = self.objective(self.step_model(users, pos), cand.view(len(rows), *per_row))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def epoch(self) -> float:
        """One pass over the shuffled interactions; the mean training loss. Stops
        after the current step when a stop was requested (:func:`request_stop`)."""
        order = torch.randperm(len(self.users), generator=self.generator, device=self.users.device)
        rank, world = self.group.rank, self.group.world
        total, count = 0.0, 0
        for start in range(0, len(order), self.config.batch_size):
            rows = order[start:start + self.config.batch_size]
            if len(rows) < world:  # a last batch too small for every rank to get a row
                break
            rows = rows[rank::world]  # this rank's shard (all of it in one process)
            total, count = total + self.step(rows) * len(rows), count + len(rows)
            if _STOP.is_set():
                raise KeyboardInterrupt
        if world > 1:
            import torch.distributed as dist

            sums = torch.tensor([total, count], dtype=torch.float64)
            dist.all_reduce(sums)
            total, count = sums.tolist()
        return total / count


def _train(config: TrainConfig, ds: data_module.Dataset, device: torch.device, out: Path,
           log: Callable[[str], None], resume: bool, group: _Group) -> dict:
    started = time.perf_counter()
    dims = list(config.dims)
    fit = _Fit(config, ds.train, device, group)
    fingerprint = ds.fingerprint()
    state = {"phase": "select", "epoch": 0, "history": [], "best": None, "best_state": None, "bad_evals": 0,
             "train_seconds": 0.0, "elapsed": 0.0, "refit_epoch": 0}
    checkpoint = out / CHECKPOINT
    if resume:
        saved = _read_checkpoint(checkpoint, device)
        if not isinstance(saved, dict) or "config" not in saved or "data" not in saved:
            raise ValueError(f"{checkpoint} was not written by this version of mrl-train; use another --out")
        changed = sorted(k for k in set(saved["config"]) | set(_comparable(config))
                         if saved["config"].get(k) != _comparable(config).get(k))
        if changed:
            raise ValueError(f"{checkpoint} was written with other settings ("
                             + ", ".join(f"{k}: {saved['config'].get(k)!r} there, {_comparable(config).get(k)!r} now"
                                         for k in changed) + "); drop --resume or use another --out")
        if saved["data"] != fingerprint:
            raise ValueError(f"{checkpoint} was trained on other data than {ds.name} as loaded now; "
                             "drop --resume or use another --out")
        state = saved["state"]
        if state["phase"] == "refit":
            fit = _Fit(config, data_module.CSR.union(ds.train, ds.valid), device, group)
        fit.load(saved)
        log(f"resumed from {checkpoint} at {state['phase']} epoch "
            f"{state['epoch'] if state['phase'] == 'select' else state['refit_epoch']}")
    elif group.writer:
        held = [name for name in OUTPUTS if (out / name).exists()]
        if held:
            raise ValueError(f"{out} already holds a run ({', '.join(held)}); --resume continues it, "
                             "or choose another --out")

    def save():
        snapshot = fit.state()  # on every rank: it gathers the ranks' generators
        if group.writer:
            _write_checkpoint(checkpoint, {"config": _comparable(config), "data": fingerprint, **snapshot,
                                           "state": state})

    resumed_at = state["elapsed"]
    _STOP.clear()
    try:
        if state["phase"] == "select":
            _select(config, ds, fit, state, out, log, save, started, resumed_at, group)
            if config.refit:
                state.update(phase="refit", refit_epoch=0)
                fit = _Fit(config, data_module.CSR.union(ds.train, ds.valid), device, group)
        if state["phase"] == "refit":
            bar = tqdm(total=state["best"]["epoch"], initial=state["refit_epoch"], unit="epoch",
                       desc="refit on train + validation", disable=not (config.progress and group.writer),
                       dynamic_ncols=True)
            with bar:
                while state["refit_epoch"] < state["best"]["epoch"]:
                    epoch_started = time.perf_counter()
                    fit.epoch()
                    state["train_seconds"] += time.perf_counter() - epoch_started
                    state["refit_epoch"] += 1
                    bar.update(1)
                    if state["refit_epoch"] % config.eval_every == 0:
                        state["elapsed"] = resumed_at + time.perf_counter() - started
                        save()
    except KeyboardInterrupt:
        kept = (f"the checkpoint of epoch {state['history'][-1]['epoch']} is kept in {out} (--resume continues)"
                if state["history"] else f"no checkpoint was written yet in {out}: nothing to resume")
        if state["phase"] == "refit":
            kept = f"the checkpoint of the refit is kept in {out} (--resume continues)"
        raise Interrupted(f"interrupted; {kept}") from None

    if not group.writer:
        return group.broadcast(None)
    best = state["best"]
    selected = BACKBONES[config.model](ds.train, dims[-1], config.layers, fit.sparse).to(device)
    selected.load_state_dict(state["best_state"])
    held_out = [ds.train, ds.valid]
    model = fit.model if config.refit else selected
    user_table, item_table = model.tables()
    prefix = prefix_evaluate(user_table, item_table, dims, ds.test, held_out)
    if state["bad_evals"] >= config.patience:
        stopped = (f"early stop at epoch {state['epoch']}: {config.patience} evaluations without a better "
                   f"validation Recall@20")
    else:
        stopped = f"reached --epochs {config.epochs}"
    result = {
        "dataset": ds.name,
        "model": config.model,
        "method": config.method,
        "config": {**asdict(config), "dims": dims, "out": str(out), "threads": torch.get_num_threads(),
                   "sparse": fit.sparse},
        "versions": {"mrl_kernels": importlib.metadata.version("mrl_kernels"), "torch": torch.__version__,
                     "python": platform.python_version()},
        "test": prefix[str(dims[-1])],  # the full width
        "valid": {name: best[name] for name in prefix[str(dims[-1])]},
        "prefix": prefix,
        "best_epoch": best["epoch"],
        "epochs_run": state["epoch"],
        "stopped": stopped,
    }
    if config.refit:
        result["refit_epochs"] = state["refit_epoch"]
        result["test_before_refit"] = evaluate(*selected.tables(), ds.test, held_out)
    if ds.item_tree is not None:
        result["hierarchy"] = {str(n): hierarchy_purity(item_table, ds.item_tree, n) for n in dims}
    wall = resumed_at + time.perf_counter() - started
    result.update(seconds_per_epoch=state["train_seconds"] / max(state["epoch"] + state["refit_epoch"], 1),
                  wall_seconds=wall)
    _write_history(out, state["history"])  # again: a resumed run rewrites every output
    save_model(out / MODEL_FILE, user_table, item_table, dims, data_module.CSR.union(ds.train, ds.valid, ds.test),
               ds.user_ids, ds.item_ids, dataset=ds.name, method=config.method, model=config.model)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    refit = f", refit on train + validation for {state['refit_epoch']} epochs" if config.refit else ""
    log(f"{stopped}; best epoch {best['epoch']} (validation Recall@20 {best[SELECT_BY]:.4f}){refit}; "
        f"wall time {wall:.1f} s; outputs in {out}")
    log(f"test metrics of the {'refit' if config.refit else 'selected'} model:\n" + _metrics_table(result["test"]))
    return group.broadcast(result)


def _select(config: TrainConfig, ds: data_module.Dataset, fit: _Fit, state: dict, out: Path,
            log: Callable[[str], None], save: Callable[[], None], started: float, resumed_at: float,
            group: _Group) -> None:
    """Train on ``ds.train``, evaluate on the validation split every
    ``eval_every`` epochs (rank 0, whose metrics every rank then acts on), keep
    the best epoch's weights, stop early."""
    bar = tqdm(total=config.epochs, initial=state["epoch"], desc="training", unit="epoch",
               disable=not (config.progress and group.writer), dynamic_ncols=True)
    with bar:
        while state["epoch"] < config.epochs and state["bad_evals"] < config.patience:
            epoch = state["epoch"] + 1
            epoch_started = time.perf_counter()
            loss = fit.epoch()
            state["train_seconds"] += time.perf_counter() - epoch_started
            state["epoch"] = epoch
            bar.update(1)
            if epoch % config.eval_every == 0 or epoch == config.epochs:
                row = None
                if group.writer:
                    metrics = evaluate(*fit.model.tables(), ds.valid, [ds.train])
                    state["elapsed"] = resumed_at + time.perf_counter() - started
                    row = {"epoch": epoch, "loss": loss, **metrics, "elapsed_s": state["elapsed"]}
                    if config.track_test:
                        test = evaluate(*fit.model.tables(), ds.test, [ds.train, ds.valid])
                        row.update({f"test_{name}": value for name, value in test.items()})
                metrics = row = group.broadcast(row)
                state["history"].append(row)
                if state["best"] is None or metrics[SELECT_BY] > state["best"][SELECT_BY]:
                    state["best"] = row
                    state["best_state"] = copy.deepcopy(fit.model.state_dict())
                    state["bad_evals"] = 0
                else:
                    state["bad_evals"] += 1
                bar.set_postfix({"valid recall@20": f"{metrics[SELECT_BY]:.4f}"})
                log(f"validation metrics, epoch {epoch}:\n" + _metrics_table(
                    {k: v for k, v in row.items() if k != "elapsed_s"}))
                save()
                if group.writer:
                    _write_history(out, state["history"])


def _sparse(config: TrainConfig, n_items: int) -> bool:
    """Whether to train row-sparse: as set, else mf from SPARSE_FROM items."""
    return config.sparse if config.sparse is not None else config.model == "mf" and n_items >= SPARSE_FROM


def _comparable(config: TrainConfig) -> dict:
    """The settings that define a run (what a resumed run must share)."""
    settings = asdict(config)
    for key in ("progress", "out", "epochs", "patience", "device", "backend", "data_dir", "track_test"):
        settings.pop(key)
    settings["dims"] = list(settings["dims"])
    return settings
