"""``mrl_kernels.MatryoshkaALS``: nested (Matryoshka) iALS with the interface of
implicit's ``AlternatingLeastSquares`` (implicit 0.7; implicit is the ``als``
extra, imported when this module is).

It is implicit's CPU model with the fit replaced: the constructor takes the same
arguments plus ``dims`` (the nested widths, the last ``factors``),
``level_weights``, ``width`` (the prefix served, default all of ``factors``),
``cg_steps`` and ``rotations`` (how many of the first sweeps end by turning both
tables to the singular basis of their product, as ``mrl-train``'s 3);
``alpha`` and ``regularization`` take one value or one per width. ``fit`` sweeps
with :class:`~mrl_kernels.training.als.Sweeps`, the code path of ``mrl-train
--method mrl-als``, from implicit's initialisation (the same random draws), so
with the weight on the full width only (``level_weights=(0, ..., 0, 1)``, which
is never rotated) it is implicit's model. Everything else (``recommend`` for one
user or a batch, with its filters, ``similar_items`` / ``similar_users``, ``partial_fit_users`` /
``partial_fit_items``, ``save`` / ``load``, pickling) is implicit's, served at
``width``: ``user_factors`` / ``item_factors`` are the first ``width`` columns
(set ``model.width`` to serve another prefix of the same fit).

Unlike implicit, every observed pair weighs alike (``alpha_l`` at width ``l``):
``user_items`` must hold ones (binarize it first); other values are refused
rather than read as confidences."""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse
import torch
from implicit.cpu.als import AlternatingLeastSquares
from implicit.utils import check_csr, check_random_state
from tqdm.auto import tqdm

from ..ops import CSR
from ..ops._checks import check_int
from .als import Sweeps

__all__ = ["MatryoshkaALS"]


def _csr(matrix: scipy.sparse.csr_matrix) -> CSR:
    """``matrix``'s pattern as a :class:`~mrl_kernels.ops.CSR`, after checking its values are ones."""
    if matrix.nnz and not np.all(matrix.data == 1):
        raise ValueError(f"user_items must hold ones (MatryoshkaALS weighs an observed pair by the width's alpha, "
                         f"not by its value); got values in [{matrix.data.min():g}, {matrix.data.max():g}]: "
                         f"binarize it first, e.g. m.data[:] = 1")
    matrix = matrix.copy()
    matrix.sum_duplicates()  # also sorts the indices
    return CSR(torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
               matrix.shape[1])


class _Served:
    """A table served at the model's ``width``: the first ``width`` columns of the
    full-width one (``full``); setting it sets the full-width one and clears the
    caches computed from it."""

    def __init__(self, full: str, *caches: str):
        self.full, self.caches = full, caches

    def __get__(self, model, owner=None):
        return self if model is None else model._served(getattr(model, self.full))

    def __set__(self, model, value):
        model.__dict__.update({self.full: value, **dict.fromkeys(self.caches)})


class MatryoshkaALS(AlternatingLeastSquares):
    """Nested iALS: one fit whose every prefix ``dims[l]`` of the factors is an
    iALS model of that width (each with its ``alpha_l`` and ``regularization_l``).
    See the module for what differs from implicit's ``AlternatingLeastSquares``."""

    def __init__(self, factors=64, regularization=0.01, alpha=1.0, dtype=np.float32, iterations=15,
                 calculate_training_loss=False, num_threads=0, random_state=None, dims=None, level_weights=None,
                 width=None, cg_steps=3, rotations=3, backend="auto"):
        super().__init__(factors=factors, regularization=regularization, alpha=alpha, dtype=dtype, use_native=True,
                         use_cg=True, iterations=iterations, calculate_training_loss=calculate_training_loss,
                         num_threads=num_threads, random_state=random_state)
        self.dims = tuple(dims) if dims is not None else (factors,)
        self.level_weights = level_weights
        self.cg_steps = cg_steps
        self.rotations = rotations
        self.backend = backend
        self.width = width
        self.sweeps  # noqa: B018 - the settings are checked now, not at the first fit

    # the tables, full width; user_factors / item_factors serve the first `width` columns
    _user_full = _item_full = None

    @property
    def sweeps(self) -> Sweeps:
        """The checked settings of the sweeps."""
        check_int("factors", self.factors)
        if self.dims[-1] != self.factors:
            raise ValueError(f"dims must end at factors ({self.factors}), got dims={list(self.dims)}")
        return Sweeps.of(self.dims, self.level_weights, self.alpha, self.regularization, self.cg_steps, self.backend,
                         self.rotations)

    def _served(self, table):
        if table is None or self.width is None or self.width == table.shape[1]:
            return table
        width = check_int("width", self.width)
        if width > table.shape[1]:
            raise ValueError(f"width must be at most factors ({table.shape[1]}), got {width}")
        return np.ascontiguousarray(table[:, :width])

    user_factors = _Served("_user_full", "_user_norms", "_XtX")
    item_factors = _Served("_item_full", "_item_norms", "_YtY")

    def __setattr__(self, name, value):
        if name == "width":  # the norms are of the served prefix
            self.__dict__.update(_user_norms=None, _item_norms=None)
        super().__setattr__(name, value)

    def fit(self, user_items, show_progress=True, callback=None):
        """Fit on ``user_items`` (users x items; CSR, or COO / LIL / any scipy
        sparse matrix, converted with implicit's warning), ``iterations`` sweeps.
        As implicit's ``fit``; ``callback(iteration, seconds, loss)`` after each."""
        sweeps = self.sweeps
        random_state = check_random_state(self.random_state)
        user_items = check_csr(user_items)
        interactions = _csr(user_items)
        transposed = _csr(user_items.T.tocsr())
        users, items = user_items.shape
        if self._user_full is None:  # implicit's initialisation, draw for draw
            self.user_factors = random_state.random((users, self.factors), dtype=self.dtype) * 0.01
        if self._item_full is None:
            self.item_factors = random_state.random((items, self.factors), dtype=self.dtype) * 0.01
        self.user_factors, self.item_factors = self._user_full, self._item_full  # clears the caches
        user, item = torch.from_numpy(self._user_full), torch.from_numpy(self._item_full)  # in place
        callback = callback or self.fit_callback
        loss = None
        with tqdm(total=self.iterations, disable=not show_progress) as progress, _threads(self.num_threads):
            for iteration in range(self.iterations):
                started = time.time()
                sweeps.sweep(user, item, interactions, transposed, iteration)
                progress.update(1)
                if self.calculate_training_loss:
                    loss = sweeps.objective(user, item, interactions)
                    progress.set_postfix({"loss": loss})
                if callback:
                    callback(iteration, time.time() - started, loss)
        self._check_fit_errors()

    def _recalculate(self, ids, rows, other):
        """The rows' vectors solved to convergence (``4 factors`` conjugate-gradient steps from
        zero) against ``other`` (full width), served at ``width``."""
        rows = check_csr(rows)
        count = 1 if np.isscalar(ids) else len(ids)
        if rows.shape[0] != count:
            raise ValueError(f"the interactions must have one row per id ({count}), got {rows.shape[0]}")
        with _threads(self.num_threads):
            solved = self.sweeps.solve(torch.zeros((count, self.factors), dtype=torch.from_numpy(other).dtype),
                                       torch.from_numpy(other), _csr(rows), cg_steps=4 * self.factors).numpy()
        solved = self._served(solved)
        return solved[0] if np.isscalar(ids) else solved

    def recalculate_user(self, userid, user_items):
        """The vectors of ``userid`` (one id or several) from ``user_items`` (a row
        each), not stored (``partial_fit_users`` stores them)."""
        return self._recalculate(userid, user_items, self._item_full)

    def recalculate_item(self, itemid, item_users):
        """The vectors of ``itemid`` from ``item_users`` (a row each), not stored."""
        return self._recalculate(itemid, item_users, self._user_full)

    def _full_width(self, update, ids, rows):
        width, self.width = self.width, None  # store full-width vectors
        try:
            update(ids, rows)
        finally:
            self.width = width

    def partial_fit_users(self, userids, user_items):
        self._full_width(super().partial_fit_users, userids, user_items)

    def partial_fit_items(self, itemids, item_users):
        self._full_width(super().partial_fit_items, itemids, item_users)

    partial_fit_users.__doc__ = AlternatingLeastSquares.partial_fit_users.__doc__
    partial_fit_items.__doc__ = AlternatingLeastSquares.partial_fit_items.__doc__

    def explain(self, *args, **kwargs):
        raise NotImplementedError("explain is iALS's closed form at one width; MatryoshkaALS has none")

    def to_gpu(self):
        raise NotImplementedError("MatryoshkaALS has no implicit GPU model; pass backend='triton' for the "
                                  "Triton kernels")

    def save(self, fileobj_or_path):
        """As implicit's ``save`` (``.npz``), the full-width tables and the nested settings included."""
        args = {"user_factors": self._user_full, "item_factors": self._item_full, "factors": self.factors,
                "regularization": self.regularization, "alpha": self.alpha, "iterations": self.iterations,
                "num_threads": self.num_threads, "cg_steps": self.cg_steps, "rotations": self.rotations,
                "dims": np.asarray(self.dims),
                "calculate_training_loss": self.calculate_training_loss, "dtype": self.dtype.name,
                "random_state": self.random_state, "level_weights": self.level_weights, "width": self.width,
                "backend": self.backend}
        np.savez(fileobj_or_path, **{k: v for k, v in args.items() if v is not None})

    @classmethod
    def load(cls, fileobj_or_path) -> "MatryoshkaALS":
        model = super().load(fileobj_or_path)
        model.dims = tuple(int(d) for d in np.atleast_1d(model.dims))
        return model


class _threads:
    """``torch``'s intra-op threads set to ``num_threads`` (0: left as they are) inside the block."""

    def __init__(self, num_threads: int):
        self.num_threads, self.previous = num_threads, torch.get_num_threads()

    def __enter__(self):
        if self.num_threads:
            torch.set_num_threads(self.num_threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)
