"""A run's settings (:class:`TrainConfig`), filled where unset by the method's
recipe (:func:`~mrl_kernels.training.methods.recipe`), and their checks: a
setting the run does not read is refused, and a real number must keep the
training, which computes in float32, finite and non-degenerate."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import LAYOUTS
from ..ops._checks import check_dims, check_int, check_real
from ..ops.registry import names as backend_names
from .backbones import BACKBONES
from .methods import METHODS, ONLY_SOME, recipe

__all__ = ["TrainConfig", "SPARSE_FROM", "LAYERS"]

# items from which mf trains row-sparse by default: there a dense step took 421 ms and a
# sparse one 29 ms (bench/results/scale-*); below, the sparse path's lazy Adam costs
# quality (test Recall@20 -6% on phone, -5% on tool) for a smaller gain (10^5 items: 38 -> 25 ms)
SPARSE_FROM = 1_000_000
LAYERS = 1  # LightGCN's propagation layers by default
# The training computes in float32: a positive setting must be a normal float32 (one that
# rounds to 0, or to a subnormal, trains nothing or loses its precision) and finite there.
FLOAT32 = torch.finfo(torch.float32)
# the largest weight of a squared error in nested least squares (alpha times the level
# weights' sum): 2^64, so that weight times any squared error below 2^64 (scores under
# 2^32) stays finite in float32
MAX_ERROR_WEIGHT = 2.0 ** 64


@dataclass
class TrainConfig:
    """A training run. The settings left None (candidates, layout, batch size, lr,
    L2, temperature, cosine, eval_every, patience, alpha, cg_steps, rotations) take the
    method's defaults, :func:`recipe`, where the method reads them; ``layers``
    :data:`LAYERS` with ``model="lightgcn"``. A setting the run does not read
    stays None (:meth:`unread`); given, :meth:`check` refuses it."""

    dataset: str = "synthetic"
    data_dir: str | None = None
    synthetic_size: tuple[int, int, int] | None = None  # (users, items, interactions) of synthetic data
    model: str = "mf"
    layers: int | None = None  # LightGCN's propagation layers
    method: str = "mrl-m"
    dims: tuple[int, ...] = (4, 8, 16, 32, 64)
    candidates: int | None = None
    layout: str | None = None
    epochs: int = 300
    batch_size: int | None = None
    lr: float | None = None
    l2: float | tuple[float, ...] | None = None  # mrl-als: one per width allowed
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
    # mrl-als only: the weight of an observed pair (implicit's alpha; one or one per width), the
    # per-level weights of the nested objective (None: 1 each), conjugate-gradient steps per solve
    alpha: float | tuple[float, ...] | None = None
    level_weights: tuple[float, ...] | None = None
    cg_steps: int | None = None
    # mrl-als only: how many of a fit's first sweeps end by turning both tables to the singular basis
    # of their product (als.Sweeps)
    rotations: int | None = None

    def __post_init__(self):
        for name, value in recipe(self.method if self.method in METHODS else "mrl-m").items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.model == "lightgcn" and self.layers is None:
            self.layers = LAYERS

    def unread(self) -> frozenset[str]:
        """The settings this run does not read: those of other methods (and
        ``layers`` but with ``model="lightgcn"``)."""
        method = METHODS.get(self.method)
        return (ONLY_SOME - method.takes if method else frozenset()) | \
            (frozenset() if self.model == "lightgcn" else {"layers"})

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        for name, allowed in (("model", BACKBONES), ("method", METHODS), ("backend", ("auto", *backend_names()))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        check_dims(self.dims, self.dims[-1] if self.dims else 0)  # the last width is the embedding's
        unread = self.unread()
        if "layout" not in unread and self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")
        for name in sorted(unread):
            if getattr(self, name) is not None:
                if name == "layers":
                    raise ValueError(f"layers only applies to --model lightgcn, not --model {self.model}")
                takers = [m for m, found in METHODS.items() if name in found.takes]
                raise ValueError(f"{name} only applies to {', '.join(takers)}, not --method {self.method}")
        for name in ("candidates", "epochs", "batch_size", "eval_every", "patience", "layers"):
            if name not in unread:
                check_int(name, getattr(self, name))
        if self.eval_users is not None:
            check_int("eval_users", self.eval_users)
        # every generator takes it: numpy's are >= 0, torch's take the seed plus the rank (at most 2**64 - 1)
        if check_int("seed", self.seed, minimum=0) >= 2 ** 63:
            raise ValueError(f"seed must be an int in [0, 2**63 - 1], got {self.seed!r}")
        for name, low_open in (("lr", True), ("temperature", True)):
            if name not in unread:
                _check_float32(name, getattr(self, name), low_open)
        if isinstance(self.l2, (tuple, list)) and METHODS[self.method].solved:  # mrl-als: one per width allowed
            _float32_per_level("l2", self.l2, len(self.dims), low_open=False)
        else:
            _check_float32("l2", self.l2, low_open=False)
        if "alpha" not in unread:
            self._check_least_squares()
        if self.sparse and METHODS[self.method].every_item:
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
            check_int("rotations", self.rotations, 0)
        alphas = _float32_per_level("alpha", self.alpha, len(self.dims), low_open=True)
        weights = [1.0] * len(self.dims) if self.level_weights is None else list(self.level_weights)
        if self.level_weights is not None:
            if len(weights) != len(self.dims):
                raise ValueError(f"level_weights must have one weight per width of dims {list(self.dims)}; "
                                 f"got {weights}")
            for w in weights:
                _check_float32("level_weights", w, low_open=False)
            if not sum(weights) > 0:
                raise ValueError(f"level_weights must be finite, >= 0 and not all 0; got {weights}")
        # what the objective weighs a squared error by: alpha_l times each level's weight, and the sum
        weighted = [a * w for a, w in zip(alphas, weights)]
        smallest = min(x for x, w in zip(weighted, weights) if w > 0)
        if smallest < FLOAT32.tiny or sum(weighted) > MAX_ERROR_WEIGHT:
            raise ValueError(f"alpha x level_weights must lie in [{FLOAT32.tiny:.3g}, {MAX_ERROR_WEIGHT:.3g}] "
                             f"in float32, the dtype training computes in (each positive weight times alpha at "
                             f"least the smallest normal float32, else that level trains nothing; alpha times the "
                             f"weights' sum at most 2^64, else the objective overflows); got alpha {self.alpha!r}, "
                             f"level_weights {weights}")

    def sparse_for(self, n_items: int) -> bool:
        """Whether to train row-sparse on ``n_items`` items: as set, else mf from
        :data:`SPARSE_FROM` items (never a method whose steps touch every item)."""
        if self.sparse is not None:
            return self.sparse
        return self.model == "mf" and n_items >= SPARSE_FROM and not METHODS[self.method].every_item


def _float32_per_level(name: str, value, num_levels: int, low_open: bool) -> list[float]:
    """``value``, one number or one per level, as a list of ``num_levels``
    floats, each checked by :func:`_check_float32` (named ``name[l]``)."""
    if isinstance(value, (tuple, list)):
        if len(value) != num_levels:
            raise ValueError(f"{name} must be a number or one per level ({num_levels}), got {len(value)} values")
        return [_check_float32(f"{name}[{level}]", v, low_open) for level, v in enumerate(value)]
    return [_check_float32(name, value, low_open)] * num_levels


def _check_float32(name: str, value, low_open: bool) -> float:
    """``value`` as a float: a finite real >= 0 (> 0 with ``low_open``) that
    float32 neither overflows nor rounds to 0 or a subnormal; else ValueError
    naming ``name`` and float32's range."""
    value = check_real(name, value, low=0.0, low_open=low_open, high=FLOAT32.max)
    if 0 < value < FLOAT32.tiny:
        raise ValueError(f"{name} must be {'' if low_open else '0 or '}at least {FLOAT32.tiny:.3g}, the smallest "
                         f"normal float32 (training computes in float32, where it rounds to 0 or loses its "
                         f"precision), got {value!r}")
    return value
