"""Candidate draws, in one place: uniform ids with exclusion
(:func:`sample_candidates`), the membership structure they exclude with
(:class:`Membership`), and the candidate sources of large-scale trainers, each
with the log of its candidates' expected counts for the sampled softmax's logQ
correction (:func:`popularity_candidates` with :class:`Popularity`,
:func:`in_batch_candidates`, :func:`mixed_candidates`)."""
from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor

from ._checks import check_generator, check_id_tensor, check_ids, check_int
from .csr import CSR

__all__ = ["Membership", "sample_candidates", "uniform_draw", "Popularity", "popularity_candidates", "in_batch_candidates",
           "mixed_candidates"]


class Membership:
    """Which (row, column) pairs a :class:`CSR` holds, on one device, for
    vectorised lookups. Up to ``BITMAP_MAX_BITS`` (row, column) pairs (64 MiB), an
    exact bitmap of all pairs; above it, a 64 MiB bitmap of the stored keys
    hashed modulo the prime ``FILTER_MODULUS`` (a one-hash Bloom filter), and a
    binary search over the sorted keys for the queries the filter lets through
    (the stored pairs and about ``nnz / FILTER_MODULUS`` of the others). On
    phone-sized data the bitmap is about 8x faster than searching every query;
    at 10^6 items the filter saves the search for nearly all candidate draws."""

    BITMAP_MAX_BITS = 1 << 29
    FILTER_MODULUS = 536_870_909  # the largest prime below 2^29
    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, csr: CSR, device: torch.device | str):
        device = torch.device(device)
        self.n_cols = csr.n_cols
        self.lengths = csr.row_lengths().to(device)
        self.keys = csr.keys.to(device)
        self.exact = csr.n_rows * csr.n_cols <= self.BITMAP_MAX_BITS
        keys = csr.keys.numpy()
        self.bitmap = self._bits(keys if self.exact else keys % self.FILTER_MODULUS,
                                 csr.n_rows * csr.n_cols if self.exact else self.FILTER_MODULUS).to(device)

    @staticmethod
    def _bits(positions: np.ndarray, size: int) -> Tensor:
        bits = np.zeros(size // 8 + 1, dtype=np.uint8)
        np.bitwise_or.at(bits, positions >> 3, (1 << (positions & 7)).astype(np.uint8))
        return torch.from_numpy(bits)

    @classmethod
    def of(cls, csr: CSR, device: torch.device | str) -> "Membership":
        """The membership of ``csr`` on ``device``, made there once (kept while ``csr`` lives)."""
        device = torch.device(device)
        per_device = cls._cache.setdefault(csr, {})
        if device not in per_device:
            per_device[device] = cls(csr, device)
        return per_device[device]

    def _bit(self, positions: Tensor) -> Tensor:
        return ((self.bitmap[positions >> 3] >> (positions & 7).to(torch.uint8)) & 1).bool()

    def contains(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Whether each ``(rows[..], cols[..])`` is stored."""
        query = rows * self.n_cols + cols
        if self.exact:
            return self._bit(query)
        found = self._bit(query % self.FILTER_MODULUS)
        maybe = found.nonzero(as_tuple=True)
        if maybe[0].numel():
            candidates = query[maybe]
            at = torch.searchsorted(self.keys, candidates).clamp_(max=self.keys.numel() - 1)
            found[maybe] = self.keys[at] == candidates
        return found


def sample_candidates(
    users: Tensor,
    num: int,
    n_items: int,
    exclude: CSR | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(B, num)`` int64 item ids drawn uniformly from ``[0, n_items)`` on ``users``'
    device, skipping each user's items in ``exclude`` (e.g. the training
    interactions). Users with at least half of the items left are drawn by
    vectorised rejection (every round redraws all rejected ids of the batch at
    once, two draws per id expected); a user with fewer left is drawn exactly from
    the items left, so the cost stays bounded however few remain. ``users``: a
    1-D tensor or array-like of ids (rows of ``exclude``); ``generator`` a
    ``torch.Generator`` on ``users``' device.

    Raises ValueError for an empty batch and for a user who has every item
    (nothing is left to draw)."""
    users = _check_users(users, exclude)
    num, n_items = check_int("num", num), check_int("n_items", n_items)
    generator = check_generator(generator, users.device)
    if exclude is None:
        return uniform_draw(users, (num,), 0, n_items, generator=generator)
    if exclude.n_cols != n_items:
        raise ValueError(f"exclude has {exclude.n_cols} columns but n_items is {n_items}")
    seen = Membership.of(exclude, users.device)
    full = seen.lengths[users] >= n_items
    if bool(full.any()):
        raise ValueError(f"users {users[full].unique().tolist()[:10]} have every item; no negative can be sampled")
    few_left = (n_items - seen.lengths[users]) * 2 < n_items
    out = uniform_draw(users, (num,), 0, n_items, exclude, generator, keep=few_left)
    if bool(few_left.any()):
        for user in users[few_left].unique().tolist():
            at = torch.nonzero(users == user).flatten()
            left = _items_left(exclude, user, n_items).to(users.device)
            out[at] = left[torch.randint(0, len(left), (len(at), num), generator=generator, device=users.device)]
    return out


def uniform_draw(users: Tensor, shape: tuple[int, ...], low: int, high: int, exclude: CSR | None = None,
                 generator: torch.Generator | None = None, max_rounds: int | None = None,
                 keep: Tensor | None = None) -> Tensor:
    """``(B, *shape)`` int64 ids drawn uniformly from ``[low, high)`` on ``users``'
    device, every id its row's user has in ``exclude`` redrawn (vectorised
    rejection, :func:`_redraw_seen`; rows where ``keep`` is set are left as
    drawn): the one uniform draw of :func:`sample_candidates` and of a rank's
    share of the items (``[low, high)`` its rows)."""
    def draw(size):
        return torch.randint(low, high, size, generator=generator, device=users.device)

    out = draw((users.shape[0], *shape)).view(users.shape[0], -1)
    if exclude is not None:
        out = _redraw_seen(users, out, Membership.of(exclude, users.device), draw, keep, max_rounds)
    return out.view(users.shape[0], *shape)


def _check_users(users, exclude: CSR | None) -> Tensor:
    """``users`` (a 1-D tensor, or an array-like) as int64 ids, at least one,
    each >= 0 and, with ``exclude`` (a :class:`CSR`), one of its rows: every
    candidate source checks them so."""
    users = check_id_tensor("users", users, ndim=1)
    if users.numel() == 0:
        raise ValueError("users must hold at least one user id (an empty batch has nothing to sample)")
    if exclude is not None and not isinstance(exclude, CSR):
        raise TypeError(f"exclude must be None or a CSR (build one with CSR.from_scipy or CSR.from_pairs), "
                        f"got {type(exclude).__name__}")
    return check_ids("users", users, None if exclude is None else exclude.n_rows, users.device, rows_of="exclude")


def _check_pos_ids(pos_ids, users: Tensor, n_items: int | None, items_of: str) -> Tensor:
    """``pos_ids`` (a tensor or an array-like), one item id per user, in ``[0, n_items)``
    (the items of ``items_of``; any id >= 0 if ``n_items`` is None), as int64."""
    pos_ids = check_ids("pos_ids", pos_ids, n_items, users.device, rows_of=items_of, rows="items")
    if pos_ids.shape != users.shape:
        raise ValueError(f"pos_ids must have shape {tuple(users.shape)} (one per user), got {tuple(pos_ids.shape)}")
    return pos_ids


def _check_popularity(popularity, users: Tensor) -> "Popularity":
    if not isinstance(popularity, Popularity):
        raise TypeError(f"popularity must be a Popularity, got {type(popularity).__name__}")
    if popularity.probs.device != users.device:
        raise ValueError(f"popularity is on {popularity.probs.device} but users are on {users.device}")
    return popularity


def _redraw_seen(users: Tensor, out: Tensor, seen: Membership, draw, keep: Tensor | None = None,
                 max_rounds: int | None = None) -> Tensor:
    """``out`` with every id its row's user has in ``seen`` redrawn by ``draw``
    until none is left (rows where ``keep`` is set stay as they are); after
    ``max_rounds`` rounds a ValueError names the users still drawing their own items."""
    rows = users[:, None].expand_as(out)
    rejected = seen.contains(rows, out)
    if keep is not None:
        rejected &= ~keep[:, None]
    rounds = 0
    while bool(rejected.any()):
        if max_rounds is not None and rounds == max_rounds:
            stuck = rows[rejected].unique().tolist()[:10]
            raise ValueError(f"users {stuck} still drew their own items after {max_rounds} rounds "
                             "(their items hold nearly all of the sampling mass)")
        redraw = draw((int(rejected.sum()),))
        out[rejected] = redraw
        still = seen.contains(rows[rejected], redraw)
        rejected[rejected.clone()] = still
        rounds += 1
    return out


class Popularity:
    """Item sampling probabilities proportional to ``counts`` (e.g. each
    item's training interactions, :meth:`of`), drawn by binary search over
    their cumulative sum: ``O(log N)`` a draw, whatever the catalogue. It
    lives on ``counts``' device."""

    def __init__(self, counts: Tensor):
        if not isinstance(counts, Tensor) or counts.dim() != 1 or counts.numel() == 0:
            raise ValueError("counts must be a non-empty 1-D tensor (one count per item)")
        counts = counts.double()
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()) or float(counts.sum()) <= 0:
            raise ValueError("counts must be finite and >= 0, with a positive sum")
        self.probs = counts / counts.sum()
        self.cumulative = self.probs.cumsum(0)
        self.n_items = counts.numel()

    @classmethod
    def of(cls, interactions: CSR, smoothing: float = 0.0) -> "Popularity":
        """Each item's interactions in ``interactions`` (plus ``smoothing``, e.g.
        1 so that every item can be drawn)."""
        counts = torch.bincount(interactions.indices, minlength=interactions.n_cols).double()
        return cls(counts + smoothing)

    def draw(self, shape, generator: torch.Generator | None = None) -> Tensor:
        """int64 ids of ``shape``, each item with probability ``probs[item]``."""
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=self.cumulative.device)
        return torch.searchsorted(self.cumulative, u * self.cumulative[-1], right=True).clamp_(max=self.n_items - 1)

    def log_expected(self, ids: Tensor, draws: int) -> Tensor:
        """``log(draws * probs[ids])``: the log of each id's expected count in
        ``draws`` draws (``-inf`` for an item never drawn, 0 at padding ids < 0),
        the logQ correction. :func:`mrl_kernels.mrl_softmax_loss` refuses ``-inf``
        at a candidate: smooth the counts (``Popularity.of(csr, smoothing=1)``)
        where candidates may come from elsewhere (e.g. in-batch positives)."""
        return torch.log(draws * self.probs[ids.clamp(min=0)]).masked_fill(ids < 0, 0.0)


def popularity_candidates(users: Tensor, num: int, popularity: Popularity, exclude: CSR | None = None,
                          generator: torch.Generator | None = None, max_rounds: int = 64) -> tuple[Tensor, Tensor]:
    """``(ids, log_q)``: ``(B, num)`` ids drawn with replacement in proportion
    to ``popularity`` (on its device), each user's items in ``exclude``
    redrawn, and ``log_q = log(num * p_id)``, each id's expected count in the
    row's pool (before exclusion), for :func:`mrl_kernels.mrl_softmax_loss`'s ``log_q``.
    Raises ValueError when a user still draws their own items after
    ``max_rounds`` rounds of redraws. ``users`` and ``generator`` as in
    :func:`sample_candidates`."""
    users = _check_users(users, exclude)
    popularity = _check_popularity(popularity, users)
    num = check_int("num", num)
    generator = check_generator(generator, users.device)
    out = popularity.draw((users.shape[0], num), generator)
    if exclude is not None:
        if exclude.n_cols != popularity.n_items:
            raise ValueError(f"exclude has {exclude.n_cols} columns but popularity has {popularity.n_items} items")
        seen = Membership.of(exclude, users.device)
        out = _redraw_seen(users, out, seen, lambda shape: popularity.draw(shape, generator), max_rounds=max_rounds)
    return out, popularity.log_expected(out, num)


def in_batch_candidates(users: Tensor, pos_ids: Tensor, exclude: CSR | None = None,
                        popularity: Popularity | None = None) -> tuple[Tensor, Tensor | None]:
    """``(ids, log_q)``: every row's candidates are the batch's positives,
    ``(B, B)``, with -1 (padding) where a candidate is the row's own positive
    (its own column, or another row's equal positive) or, with ``exclude``,
    one of the row's user's items. ``log_q = log(B * p_id)`` with
    ``popularity`` (a positive enters a batch of B interactions drawn from
    the training data about ``B * p_id`` times), else None. The ids < 0 are
    padding for :func:`mrl_kernels.mrl_softmax_loss` (MNS takes no padding).
    ``users`` as in :func:`sample_candidates`; ``pos_ids`` (a tensor or an
    array-like) item ids, columns of ``exclude`` and items of ``popularity``."""
    users = _check_users(users, exclude)
    if popularity is not None:
        popularity = _check_popularity(popularity, users)
    if exclude is not None and popularity is not None and popularity.n_items != exclude.n_cols:
        raise ValueError(f"exclude has {exclude.n_cols} columns but popularity has {popularity.n_items} items")
    n_items = exclude.n_cols if exclude is not None else popularity.n_items if popularity is not None else None
    pos_ids = _check_pos_ids(pos_ids, users, n_items, "exclude" if exclude is not None else "popularity")
    ids = pos_ids[None, :].expand(users.shape[0], -1)
    own = ids == pos_ids[:, None]
    if exclude is not None:
        own |= Membership.of(exclude, users.device).contains(users[:, None].expand_as(ids), ids)
    ids = ids.masked_fill(own, -1)
    log_q = None if popularity is None else popularity.log_expected(ids, users.shape[0])
    return ids, log_q


def mixed_candidates(users: Tensor, pos_ids: Tensor, num: int, n_items: int, popularity: Popularity,
                     exclude: CSR | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(ids, log_q)``: mixed negative sampling, the in-batch candidates
    (:func:`in_batch_candidates`) and ``num`` uniform draws
    (:func:`sample_candidates`), ``(B, B + num)``; ``log_q`` is the log of each
    id's expected count in that pool, ``B * p_id + num / n_items``, ``p`` the
    in-batch positives' ``popularity``."""
    users = _check_users(users, exclude)
    popularity = _check_popularity(popularity, users)
    n_items = check_int("n_items", n_items)
    if popularity.n_items != n_items:
        raise ValueError(f"popularity has {popularity.n_items} items but n_items is {n_items}")
    pos_ids = _check_pos_ids(pos_ids, users, n_items, "popularity")
    batch, _ = in_batch_candidates(users, pos_ids, exclude)
    ids = torch.cat([batch, sample_candidates(users, num, n_items, exclude, generator)], dim=1)
    expected = users.shape[0] * popularity.probs[ids.clamp(min=0)] + num / n_items
    return ids, torch.log(expected).masked_fill(ids < 0, 0.0)


def _items_left(exclude: CSR, user: int, n_items: int) -> Tensor:
    """The items ``user`` does not have in ``exclude``, sorted."""
    keep = torch.ones(n_items, dtype=torch.bool)
    keep[exclude.indices[exclude.indptr[user]:exclude.indptr[user + 1]]] = False
    return torch.nonzero(keep).flatten()
