"""The sparse 0/1 matrix every layer passes around: :class:`CSR` (a user's
items for exclusion, the interactions least squares solves over)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

__all__ = ["CSR"]


@dataclass(eq=False)
class CSR:
    """A sparse 0/1 matrix in compressed rows: row r's columns are
    ``indices[indptr[r]:indptr[r + 1]]``, sorted, without repeats. Both int64.
    Compared (and hashed) by identity."""

    indptr: torch.Tensor
    indices: torch.Tensor
    n_cols: int

    @classmethod
    def from_pairs(cls, rows, cols, n_rows: int, n_cols: int) -> "CSR":
        """From (row, col) pairs; repeated pairs are kept once."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        keys = np.unique(rows * n_cols + cols)
        rows, cols = keys // n_cols, keys % n_cols
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        return cls(torch.from_numpy(indptr), torch.from_numpy(cols), n_cols)

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
