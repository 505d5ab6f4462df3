"""The selectors that turn a batch's candidates into its negatives, each with
the candidate shape it draws (:class:`Selector`).

=============  =====================================================================
``UNIFORM``    the draw itself: one candidate per row
``DNS``        dynamic negative sampling: the best of M candidates at full width
``MNS``        Matryoshka negative sampling: the best of a pool at every nested
               width, one pool per level (``(L, M)``) or one shared (``(M,)``)
=============  =====================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor

from ..ops import mns_sample

__all__ = ["Selector", "UNIFORM", "DNS", "MNS"]


@dataclass(frozen=True)
class Selector:
    """How a batch's negatives come from its candidates: ``scored`` selectors
    take the candidate with the largest score (at full width, or at every
    nested width when ``per_level``), the others take the draw itself."""

    name: str
    scored: bool
    per_level: bool

    def candidate_shape(self, num_levels: int, candidates: int, layout: str) -> tuple[int, ...]:
        """The per-row shape of the candidate ids to draw: ``(1,)`` unscored,
        ``(M,)`` for one pool, ``(L, M)`` for a pool per level (``layout="per-level"``)."""
        if not self.scored:
            return (1,)
        if not self.per_level or layout == "shared":
            return (candidates,)
        return (num_levels, candidates)

    def widths(self, dims: Sequence[int]) -> list[int]:
        """The nested widths it picks a negative at."""
        return list(dims) if self.per_level else [dims[-1]]

    def select(self, user: Tensor, items: Tensor, candidates: Tensor, dims: Sequence[int],
               backend: str = "auto") -> Tensor:
        """``(B, K)`` negative ids, K = L per level, else 1. Not differentiable."""
        if not self.scored:
            return candidates
        return mns_sample(user.detach(), items.detach(), candidates, self.widths(dims),
                          layout="shared" if candidates.dim() == 2 else "per-level", backend=backend)


UNIFORM = Selector("uniform", scored=False, per_level=False)
DNS = Selector("dns", scored=True, per_level=False)
MNS = Selector("mns", scored=True, per_level=True)
