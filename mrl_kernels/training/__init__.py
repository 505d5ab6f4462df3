"""Training: the trainer behind ``mrl-train`` (:func:`train` runs a
:class:`TrainConfig`) and what it is built from, each usable in a trainer of
one's own.

Adam (or lazy Adam, row-sparse), per-epoch shuffled (user, positive) batches,
validation every few epochs with early stopping, then by default the refit on
train + validation; final test metrics. In parts:

- :mod:`~.data`: the datasets (the authors' files, tables, synthetic data), splits, downloads;
- :mod:`~.backbones`: MF and LightGCN (``BACKBONES``);
- :mod:`~.selectors`: how a batch's negatives come from its candidates (uniform, DNS, MNS);
- :mod:`~.objectives`: the objectives (a frozen type each), their losses and L2 term;
- :mod:`~.methods`: the method table ``METHODS`` (objective, settings, recipe of each ``--method``);
- :mod:`~.metrics`: Recall / NDCG by full ranking, every prefix width in one pass;
- :mod:`~.optim`: :class:`LazyAdam`, Adam for row-sparse gradients;
- :mod:`~.als`: ``mrl-als``, nested least squares solved in sweeps;
- :mod:`~.search`: ``mrl-train --tune``, the built-in search of ``mrl-als``'s per-width settings;
- :mod:`~.estimator`: ``MatryoshkaALS``, nested iALS with implicit's interface (the ``als`` extra; imported on
  demand);
- :mod:`~.config`: :class:`TrainConfig` and its checks;
- :mod:`~.fit`: :class:`Fitter`, what every fit provides; :class:`Fit`, a model with its objective, optimizer and
  generators, by step and epoch;
- :mod:`~.loop`: :func:`train`, the selection and the refit, resumable (:class:`RunState`);
- :mod:`~.checkpoint`: the checkpoint format (checksums of itself and of the data);
- :mod:`~.outputs`: the run folder (``runs/latest``, the lock), ``history.csv``, ``curves.png``, ``metrics.json``;
- :mod:`~.group`: the processes under ``torchrun`` (DDP; rank 0 evaluates and writes).

Outputs in the run folder (``out``; by default a new ``runs/<time>-<dataset>-<method>``
with ``runs/latest`` pointing at it), each written atomically:
``checkpoint.pt`` (everything needed to resume), ``model.pt`` (the reported
model's tables, id maps and the interactions seen: what
:func:`mrl_kernels.load_run` serves), ``history.csv`` (one row per evaluation),
``metrics.json`` and ``curves.png`` (with matplotlib, the ``plot`` extra). A lock
keeps a second run out of a folder in use; a folder that holds a run is only
continued (``resume=True``), never overwritten.
"""
from .checkpoint import CHECKPOINT
from .optim import LazyAdam
from .config import TrainConfig
from .fit import Fit, Fitter, request_stop
from .group import Group
from .loop import Interrupted, RunState, train
from .methods import METHODS, PAPER_RECIPE, recipe
from .outputs import RUNS

__all__ = ["TrainConfig", "METHODS", "PAPER_RECIPE", "recipe", "train", "Interrupted", "request_stop", "CHECKPOINT",
           "RUNS", "Fit", "Fitter", "Group", "RunState", "LazyAdam"]
