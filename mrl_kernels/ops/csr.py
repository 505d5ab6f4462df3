"""The sparse 0/1 matrix every layer passes around: :class:`CSR` (a user's
items for exclusion, the interactions least squares solves over)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ._checks import check_csr, check_id_tensor, check_int

__all__ = ["CSR"]

CPU = torch.device("cpu")


@dataclass(eq=False)
class CSR:
    """A sparse 0/1 matrix in compressed rows: row r's columns are
    ``indices[indptr[r]:indptr[r + 1]]``, sorted, without repeats, in
    ``[0, n_cols)``. Built from tensors or array-likes (copied where they are
    numpy arrays with negative strides), held as int64 CPU tensors; a
    malformed one is refused by name. Compared (and hashed) by identity.

    Build one from pairs (:meth:`from_pairs`) or from a scipy sparse matrix
    (:meth:`from_scipy`); :meth:`to_scipy` gives implicit's ``csr_matrix``."""

    indptr: torch.Tensor
    indices: torch.Tensor
    n_cols: int

    def __post_init__(self):
        self.n_cols = check_int("n_cols", self.n_cols, 0)
        self.indptr, self.indices = check_csr("CSR", self.indptr, self.indices, CPU)
        if self.nnz and (int(self.indices.min()) < 0 or int(self.indices.max()) >= self.n_cols):
            raise ValueError(f"CSR.indices must lie in [0, n_cols) = [0, {self.n_cols}); got ids in "
                             f"[{int(self.indices.min())}, {int(self.indices.max())}]")
        starts = torch.zeros(self.nnz, dtype=torch.bool)
        starts[self.indptr[:-1][self.row_lengths() > 0]] = True
        if bool(((self.indices[1:] <= self.indices[:-1]) & ~starts[1:]).any()):
            raise ValueError("CSR.indices must be sorted without repeats within each row (CSR.from_pairs and "
                             "CSR.from_scipy sort them and keep repeats once)")

    @classmethod
    def from_pairs(cls, rows, cols, n_rows: int, n_cols: int) -> "CSR":
        """From (row, col) pairs (1-D tensors or array-likes of ids, rows in
        ``[0, n_rows)``, columns in ``[0, n_cols)``); repeated pairs are kept once."""
        n_rows, n_cols = check_int("n_rows", n_rows, 0), check_int("n_cols", n_cols, 0)
        rows, cols = (check_id_tensor(name, ids, ndim=1).to(CPU, torch.int64).numpy()
                      for name, ids in (("rows", rows), ("cols", cols)))
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols must pair up: got {rows.shape[0]} rows and {cols.shape[0]} cols")
        for name, ids, n in (("rows", rows, n_rows), ("cols", cols, n_cols)):
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"{name} must lie in [0, {n}); got ids in [{ids.min()}, {ids.max()}]")
        keys = np.unique(rows * n_cols + cols)
        rows, cols = keys // max(n_cols, 1), keys % max(n_cols, 1)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return cls(torch.from_numpy(indptr), torch.from_numpy(cols), n_cols)

    @classmethod
    def from_scipy(cls, matrix) -> "CSR":
        """From a 2-D scipy sparse matrix or array of any format (users x
        items, say): its stored entries, whatever their values (an explicitly
        stored 0 counts too: ``matrix.eliminate_zeros()`` drops those first),
        repeated entries kept once."""
        try:
            from scipy import sparse
        except ImportError:  # then it cannot be a scipy matrix
            sparse = None
        if sparse is None or not sparse.issparse(matrix):
            raise TypeError(f"matrix must be a scipy.sparse matrix or array, got {type(matrix).__name__}")
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D (rows x columns), got shape {matrix.shape}")
        coo = matrix.tocoo()
        return cls.from_pairs(coo.row, coo.col, *matrix.shape)

    def to_scipy(self):
        """A ``scipy.sparse.csr_matrix`` of ones, ``(n_rows, n_cols)``, float32 (what
        implicit's ``fit`` takes), sharing no memory with this CSR."""
        from scipy import sparse
        return sparse.csr_matrix((np.ones(self.nnz, dtype=np.float32), self.indices.numpy().copy(),
                                  self.indptr.numpy().copy()), shape=(self.n_rows, self.n_cols))

    @classmethod
    def union(cls, *parts: "CSR") -> "CSR":
        """The entries of all ``parts`` (same shape), each once."""
        rows, cols = (np.concatenate(a) for a in zip(*(p.pairs() for p in parts)))
        return cls.from_pairs(rows, cols, parts[0].n_rows, parts[0].n_cols)

    @property
    def n_rows(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def row_lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def rows(self) -> torch.Tensor:
        """The row id of each stored entry."""
        return torch.repeat_interleave(torch.arange(self.n_rows), self.row_lengths())

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rows().numpy(), self.indices.numpy()

    def transpose(self) -> "CSR":
        """The same entries with rows and columns swapped (items x users)."""
        rows, cols = self.pairs()
        return CSR.from_pairs(cols, rows, self.n_cols, self.n_rows)

    @cached_property
    def keys(self) -> torch.Tensor:
        """``row * n_cols + col`` of every entry, sorted."""
        return self.rows() * self.n_cols + self.indices

    def dense_rows(self, rows: torch.Tensor, device=None) -> torch.Tensor:
        """Boolean ``(len(rows), n_cols)`` of the given rows."""
        lengths = self.row_lengths()[rows]
        starts = self.indptr[rows]
        local = torch.repeat_interleave(torch.arange(len(rows)), lengths)
        offsets = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        cols = self.indices[torch.repeat_interleave(starts, lengths) + offsets]
        out = torch.zeros((len(rows), self.n_cols), dtype=torch.bool)
        out[local, cols] = True
        return out.to(device) if device is not None else out
