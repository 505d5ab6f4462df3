"""A run's settings (:class:`TrainConfig`), filled where unset by the method's
recipe (:func:`~mrl_kernels.training.methods.recipe`), and their checks."""
from __future__ import annotations

import math

from dataclasses import dataclass

import torch

from ..ops import LAYOUTS
from ..ops._checks import check_dims, check_int, check_real
from ..ops.registry import names as backend_names
from .backbones import BACKBONES
from .methods import METHODS, ONLY_SOME, recipe

__all__ = ["TrainConfig", "SPARSE_FROM"]

# items from which mf trains row-sparse by default: there a dense step took 421 ms and a
# sparse one 29 ms (bench/results/scale-*); below, the sparse path's lazy Adam costs
# quality (test Recall@20 -6% on phone, -5% on tool) for a smaller gain (10^5 items: 38 -> 25 ms)
SPARSE_FROM = 1_000_000


@dataclass
class TrainConfig:
    """A training run. The settings left None (candidates, layout, batch size, lr,
    L2, temperature, cosine, eval_every, patience; alpha and cg_steps for mrl-als)
    take the method's defaults, :func:`recipe`."""

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
    eval_every: int | None = None  # epochs between validation evaluations
    patience: int | None = None  # evaluations without a better validation Recall@20 before the stop
    device: str = "cpu"
    backend: str = "auto"
    out: str | None = None  # None: a new folder under runs/
    progress: bool = True
    track_test: bool = False  # also record test metrics at each evaluation (never used for selection)
    # users evaluated (selection and reported metrics): a sample of this many of those with held-out
    # items, seeded by `seed` (metrics.sample_users); None: all of them
    eval_users: int | None = None
    refit: bool = True  # after selection, train afresh on train + validation for the selected epochs
    # row-sparse lookups and lazy Adam (step cost flat in the table sizes); None: on for
    # mf from SPARSE_FROM items
    sparse: bool | None = None
    # mrl-als only: the weight of an observed pair (implicit's alpha), the per-level weights
    # of the nested objective (None: 1 each), conjugate-gradient steps per solve
    alpha: float | None = None
    level_weights: tuple[float, ...] | None = None
    cg_steps: int | None = None

    def __post_init__(self):
        for name, value in recipe(self.method if self.method in METHODS else "mrl-m").items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name, allowed in (("model", BACKBONES), ("method", METHODS), ("layout", LAYOUTS),
                              ("backend", ("auto", *backend_names()))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        check_dims(self.dims, self.dims[-1] if self.dims else 0)  # the last width is the embedding's
        for name in ("candidates", "epochs", "batch_size", "eval_every", "patience", "layers"):
            check_int(name, getattr(self, name))
        if self.eval_users is not None:
            check_int("eval_users", self.eval_users)
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("temperature", self.temperature, low=0.0, low_open=True)
        check_real("l2", self.l2, low=0.0)
        method = METHODS[self.method]
        for name in sorted(ONLY_SOME - method.takes):
            if getattr(self, name) is not None:
                takers = [m for m, found in METHODS.items() if name in found.takes]
                raise ValueError(f"{name} only applies to {', '.join(takers)}, not --method {self.method}")
        if "alpha" in method.takes:
            self._check_least_squares()
        if self.sparse and method.every_item:
            raise ValueError(f"--method {self.method} gives every item a gradient each step: it has no row-sparse "
                             f"path (drop --sparse)")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device {self.device!r} is not a torch device: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r}: CUDA is not available here (torch {torch.__version__})")

    def _check_least_squares(self) -> None:
        if METHODS[self.method].solved:
            if self.model != "mf":
                raise ValueError(f"--method {self.method} solves matrix factorisation in closed form: it needs "
                                 f"--model mf, got {self.model}")
            if self.sparse:
                raise ValueError(f"--method {self.method} has no sparse path (its sweeps touch every row anyway)")
            check_int("cg_steps", self.cg_steps)
        check_real("alpha", self.alpha, low=0.0, low_open=True)
        if self.level_weights is not None:
            weights = tuple(self.level_weights)
            if len(weights) != len(self.dims):
                raise ValueError(f"level_weights must have one weight per width of dims {list(self.dims)}; "
                                 f"got {list(weights)}")
            if not all(0 <= w < math.inf for w in weights) or not sum(weights) > 0:
                raise ValueError(f"level_weights must be finite, >= 0 and not all 0; got {list(weights)}")

    def sparse_for(self, n_items: int) -> bool:
        """Whether to train row-sparse on ``n_items`` items: as set, else mf from
        :data:`SPARSE_FROM` items (never a method whose steps touch every item)."""
        if self.sparse is not None:
            return self.sparse
        return self.model == "mf" and n_items >= SPARSE_FROM and not METHODS[self.method].every_item
