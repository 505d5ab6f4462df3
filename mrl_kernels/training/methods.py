"""The methods (``--method``), in one table: :data:`METHODS` maps each name to
its :class:`Method`: the objective its gradient steps minimise (none for a
method solved in sweeps, ``mrl-als``), the settings only it takes and its
defaults over the paper's recipe. A method reads only the settings it
``takes`` (:data:`SETTINGS`); a run refuses one it does not read.

=========  ==========  ====  ==================================================
``bpr``    ``UNIFORM``  BPR   one uniform negative, BPR loss at full width
``bpr-d``  ``DNS``      BPR   the best of M candidates at full width
``bpr-m``  ``MNS``      BPR   one negative per level, ``log(1 + sum_l exp(s_{j_l} - s_i))``
                              at full width (the authors' code)
``mrl-d``  ``DNS``      MRL   the full-width DNS negative at every level of the MRL loss
``mrl-m``  ``MNS``      MRL   MNS + MRL loss (the method)
``mrl-s``  (all)       SSM   the Matryoshka sampled softmax over every candidate
``mrl-s-all`` (none)   SM    the Matryoshka softmax over every item, no candidates
``mrl-ls`` (none)      LS    nested least squares by gradient, any backbone
``mrl-als`` (none)     LS    nested least squares solved in sweeps (MF)
=========  ==========  ====  ==================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping

from ..ops import CSR
from .objectives import BPR, MRL, FullSoftmax, NestedLeastSquares, Objective, Ranking, SampledSoftmax, Settings
from .selectors import DNS, MNS, UNIFORM

__all__ = ["Method", "METHODS", "ONLY_SOME", "PAPER_RECIPE", "SETTINGS", "recipe"]

# The paper's recipe (MF, Adam lr 1e-3, batch 2048, L2 1e-4, 16 candidates a pool,
# one pool per level): every method's default for the settings it reads unless its
# own recipe says otherwise.
PAPER_RECIPE = {"candidates": 16, "layout": "per-level", "batch_size": 2048, "lr": 1e-3, "l2": 1e-4,
                "temperature": 1.0, "cosine": False, "eval_every": 5, "patience": 10}
# the settings a method may read (TrainConfig's fields that None leaves to its recipe)
SETTINGS = frozenset(PAPER_RECIPE) | {"alpha", "level_weights", "cg_steps", "rotations"}


@dataclass(frozen=True)
class Method:
    """A ``--method``: ``objective(settings, interactions)`` makes what its
    gradient steps minimise (None: fitted without gradients, by sweeps:
    :class:`~mrl_kernels.training.als.AlsFit`); ``takes``: the settings of
    :data:`SETTINGS` it reads; ``recipe``: its defaults over
    :data:`PAPER_RECIPE` (chosen on tool's validation split by ``bench.tune``);
    ``every_item``: its steps give every item a gradient (no row-sparse path)."""

    summary: str
    objective: Callable[[Settings, CSR | None], Objective] | None
    takes: frozenset[str]
    recipe: Mapping[str, object] = field(default_factory=dict)
    every_item: bool = False

    @property
    def solved(self) -> bool:
        return self.objective is None


_EVALUATED = frozenset({"l2", "eval_every", "patience"})  # every method's
_STEPS = _EVALUATED | {"batch_size", "lr"}  # a method trained by gradient steps
_LEAST_SQUARES = frozenset({"alpha", "level_weights"})
_POOLS = _STEPS | {"candidates", "layout"}  # one pool per level or one shared (MNS, the softmax)

METHODS: dict[str, Method] = {
    "bpr": Method("uniform negatives, BPR", partial(Ranking.of, UNIFORM, BPR), _STEPS),
    "bpr-d": Method("DNS, BPR", partial(Ranking.of, DNS, BPR), _STEPS | {"candidates"}),
    "bpr-m": Method("MNS, BPR", partial(Ranking.of, MNS, BPR), _POOLS),
    "mrl-d": Method("DNS, MRL loss", partial(Ranking.of, DNS, MRL), _STEPS | {"candidates"}),
    # L2 1e-2: the paper's 1e-4 under-regularises (validation Recall@20 0.0788 against 0.0676, best of 45 trials
    # over lr, L2, batch size, candidates and layout)
    "mrl-m": Method("MNS, MRL loss", partial(Ranking.of, MNS, MRL), _POOLS, recipe={"l2": 1e-2}),
    "mrl-s": Method("sampled softmax over every candidate at every width", SampledSoftmax.of,
                    _POOLS | {"temperature", "cosine"}),
    # not tuned: the paper's recipe
    "mrl-s-all": Method("softmax over every item at every width, no candidates (fused, no (B, N) logits)",
                        FullSoftmax.of, _STEPS | {"temperature"}, every_item=True),
    # mrl-als's alpha; not tuned
    "mrl-ls": Method("nested least squares (iALS's objective summed over the widths) by gradient, no negatives "
                     "sampled", NestedLeastSquares.of, _STEPS | _LEAST_SQUARES, recipe={"alpha": 40.0}),
    # implicit's width-64 iALS settings on tool (docs/baselines.json), equal level weights, its
    # conjugate-gradient steps; selection every sweep, stopped after 6 without a better one (3 stopped
    # tool's seed-1 defaults at 9 sweeps in --tune's trials, 6 at 30); l2 is implicit's regularization on
    # the tables
    "mrl-als": Method("the same objective solved by alternating least squares (mf), an epoch being one sweep",
                      None, _EVALUATED | _LEAST_SQUARES | {"cg_steps", "rotations"},
                      recipe={"l2": 100.0, "alpha": 40.0, "cg_steps": 3, "rotations": 3, "eval_every": 1,
                              "patience": 6}),
}
# the settings only some methods read (Method.takes); the others are every method's
ONLY_SOME = SETTINGS - frozenset.intersection(*(method.takes for method in METHODS.values()))


def recipe(method: str, paper: bool = False) -> dict:
    """The default of each setting ``method`` reads: the paper's, with its own
    over them (``paper``: the paper's alone, where it has one)."""
    takes = METHODS[method].takes
    defaults = {**PAPER_RECIPE, **({} if paper else METHODS[method].recipe)}
    return {name: value for name, value in defaults.items() if name in takes}
