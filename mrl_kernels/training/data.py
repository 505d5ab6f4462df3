"""Interaction data: the authors' text format, user/item tables, a planted-hierarchy
synthetic set, seeded validation splits, and downloads of the paper's data.

Every loader returns a :class:`Dataset` whose ``train``, ``valid`` and ``test``
are :class:`CSR` matrices of (user, item) interactions. ``train`` is what a model
learns from; ``valid`` (a seeded 10% of each user's training interactions) picks
epochs and hyper-parameters; ``test`` is only reported.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_write_bytes
from ..ops import CSR

__all__ = ["CSR", "Dataset", "load", "read_authors", "read_table", "synthetic", "split_per_user",
           "dataset_dir", "download", "DataError"]

PAPER_DATASETS = ("phone", "tool", "sport", "ml100k")
BASE_URL = "https://raw.githubusercontent.com/Riwei-HEU/MRL/main/data/"
# SHA-256 of the authors' files (as published in their repository, data/<name>/).
# `sport` is listed by the paper but no checksum is pinned for it here yet.
SHA256 = {
    "ml100k/test.txt": "5ec57f9322280fe1c5dfe5746773f2c5108aaedd11d1f2d55f52119a8a266dd4",
    "ml100k/train.txt": "771e3bcf49f18f877d4d2157ae30c4d91c0e1df80fd00d2cf3b5def821fb6ac5",
    "phone/test.txt": "ba6429e11f526416cc941bd1f58b892a586641c27a1084c63e1da78eb1592724",
    "phone/train.txt": "fce5cf288e50c3710401c17f507db293e526f5b398992c80042dbfe65cddc2e1",
    "tool/test.txt": "3ba5f318520b55790e9e44a55e8dfb996328bc682a5fbb49f9a8a97a34fbc879",
    "tool/train.txt": "f59f810f2aaafe20814d9f16ff193bd571dfe3c4706fd29cf5352cc419c045bb",
}


class DataError(ValueError):
    """Data that cannot be found, fetched or parsed; the message says which and why."""


@dataclass
class Dataset:
    """Interactions split into train / valid / test over ``n_users`` x ``n_items``.

    ``user_ids`` / ``item_ids`` map the 0-based ids back to a table's original
    ids (None for the authors' files, whose ids are already 0-based).
    ``item_tree`` / ``user_path`` (synthetic data only) give the planted category
    of every item and the preferred category of every user at each tree level."""

    name: str
    n_users: int
    n_items: int
    train: CSR
    valid: CSR
    test: CSR
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    item_tree: np.ndarray | None = None
    user_path: np.ndarray | None = None

    def fingerprint(self) -> str:
        """SHA-256 of the sizes and every split's interactions: a run resumes only on the same data."""
        digest = hashlib.sha256(f"{self.n_users},{self.n_items}".encode())
        for split in (self.train, self.valid, self.test):
            digest.update(split.indptr.numpy().tobytes())
            digest.update(split.indices.numpy().tobytes())
        return digest.hexdigest()

    def summary(self) -> str:
        return (f"{self.name}: {self.n_users} users, {self.n_items} items, "
                f"{self.train.nnz} train / {self.valid.nnz} valid / {self.test.nnz} test interactions")


# ---------------------------------------------------------------- splitting
def split_per_user(data: CSR, fraction: float, seed: int) -> tuple[CSR, CSR]:
    """Hold out a seeded ``fraction`` of each row's entries: ``(kept, held_out)``.

    Row r with n entries holds out ``floor(fraction * n + U)`` of them, U uniform
    in [0, 1) (so ``fraction * n`` on average, also for short rows), at most n - 1:
    a row with one entry keeps it."""
    rng = np.random.default_rng(seed)
    rows, cols = data.pairs()
    lengths = data.row_lengths().numpy()
    n_out = np.minimum(np.floor(fraction * lengths + rng.random(len(lengths))), np.maximum(lengths - 1, 0))
    order = np.lexsort((rng.random(len(rows)), rows))  # rows stay grouped, shuffled inside
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows)) - np.repeat(data.indptr[:-1].numpy(), lengths)
    out = rank < n_out[rows]
    n_rows = data.n_rows
    return (CSR.from_pairs(rows[~out], cols[~out], n_rows, data.n_cols),
            CSR.from_pairs(rows[out], cols[out], n_rows, data.n_cols))


def _with_validation(name, train, test, n_users, n_items, valid_fraction, seed, **extra) -> Dataset:
    train_csr = CSR.from_pairs(*train, n_users, n_items)
    fit, valid = split_per_user(train_csr, valid_fraction, seed)
    return Dataset(name, n_users, n_items, fit, valid, CSR.from_pairs(*test, n_users, n_items), **extra)


# ---------------------------------------------------------------- readers
# 0-based ids make tables of (largest id + 1) rows: refuse ids that would need
# more than 16 GiB for the row index of the interaction matrix alone (8 bytes a row)
MAX_ID = (16 << 30) // 8


def _read_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            fields = line.split()
            if not fields:
                continue
            try:
                ids = [int(x) for x in fields]
            except ValueError:
                raise DataError(f"{path}:{number}: expected 'user item item ...' integer ids, got {line.strip()[:60]!r}")
            if min(ids) < 0:
                raise DataError(f"{path}:{number}: ids must be >= 0")
            if max(ids) >= MAX_ID:
                raise DataError(f"{path}:{number}: id {max(ids)} is too large: 0-based ids make tables of (largest id "
                                f"+ 1) rows, and ids must stay below {MAX_ID} (16 GiB of row index); renumber them")
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def read_authors(directory, valid_fraction: float = 0.1, seed: int = 0, name: str | None = None) -> Dataset:
    """A folder with the authors' ``train.txt`` and ``test.txt`` (``user item item ...``
    per line, 0-based ids; ``n_users``/``n_items`` are the largest ids seen plus one)."""
    directory = Path(directory)
    missing = [f for f in ("train.txt", "test.txt") if not (directory / f).is_file()]
    if missing:
        raise DataError(f"{directory} lacks {', '.join(missing)} (the authors' format needs train.txt and test.txt)")
    train, test = _read_lines(directory / "train.txt"), _read_lines(directory / "test.txt")
    if len(train[0]) == 0:
        raise DataError(f"{directory / 'train.txt'} holds no interactions")
    n_users = int(max(train[0].max(), test[0].max(initial=-1))) + 1
    n_items = int(max(train[1].max(), test[1].max(initial=-1))) + 1
    return _with_validation(name or directory.name, train, test, n_users, n_items, valid_fraction, seed)


def _text_ids(column: pd.Series) -> pd.Series:
    """Ids read as text: int64 where every one is a plain integer ("7", "-3", not
    "007", "+7" or "-0", which would not read back as written), else the text as is."""
    if column.str.fullmatch(r"0|-?[1-9][0-9]{0,17}").all():
        return column.astype("int64")
    return column


# a line of a table of ids longer than this is not one (a file of NUL bytes, or without line breaks, is read
# by pandas as one field of the whole file: several times its size in memory)
MAX_LINE = 1 << 20


def _check_text(path: Path) -> None:
    """DataError, before pandas reads ``path``, if it holds a NUL byte (not text)
    or a line longer than :data:`MAX_LINE` bytes; one pass, reading
    ``MAX_LINE`` bytes at a time (a line inside one read is shorter)."""
    offset, line, line_start = 0, 1, 0
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        while chunk := f.read(MAX_LINE):
            nul = chunk.find(b"\0")
            end = len(chunk) if nul < 0 else nul
            first = chunk.find(b"\n", 0, end)  # where the line open at the read's start ends
            if offset + (end if first < 0 else first) - line_start > MAX_LINE:
                raise DataError(f"{path}:{line}: a line longer than {MAX_LINE} bytes; not a table of ids")
            if first >= 0:
                line += chunk.count(b"\n", 0, end)
                line_start = offset + chunk.rindex(b"\n", 0, end) + 1
            if nul >= 0:
                raise DataError(f"{path}:{line}: a NUL byte (at byte {offset + nul}); not UTF-8 text")
            offset += len(chunk)


def read_table(path, valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A CSV or Parquet table with columns ``user`` and ``item`` (any hashable ids,
    remapped to 0..n-1; the maps are kept in ``user_ids`` / ``item_ids``; a CSV
    column's ids are its text, or ints where all are plain integers, so every id
    reads back as written). The test
    split is a seeded ``test_fraction`` of each user's interactions, then the
    validation split a ``valid_fraction`` of what is left."""
    path = Path(path)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    if not parquet:
        _check_text(path)
    try:
        # CSV ids are read as text (only an empty cell is missing), so "007" and "7" stay two ids
        frame = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=str, keep_default_na=False,
                                                                  na_values=[""])
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        raise
    except Exception as exc:  # noqa: BLE001 - pandas raises many types
        raise DataError(f"cannot read {path}: {str(exc) or type(exc).__name__}") from exc
    missing = {"user", "item"} - set(frame.columns)
    if missing:
        raise DataError(f"{path} needs columns 'user' and 'item'; missing {sorted(missing)}")
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first of too many fields as the index
        raise DataError(f"{path}: its rows have more fields than its header ({', '.join(map(str, frame.columns))});"
                        " quote ids that contain commas")
    if frame.empty:
        raise DataError(f"{path} holds no interactions")
    for column in ("user", "item"):
        absent = frame[column].isna().to_numpy()
        if absent.any():
            row = int(np.flatnonzero(absent)[0])
            raise DataError(f"{path}: row {row + 1} of the table (counting from 1, header excluded) has no {column} "
                            f"id ({int(absent.sum())} such rows); remove or fill them")
        mixed = pd.api.types.infer_dtype(frame[column], skipna=False) in ("mixed", "unknown-array")
        row, value = next(((row, v) for row, v in enumerate(frame[column]) if not pd.api.types.is_scalar(v)),
                          (None, None)) if mixed else (None, None)
        if row is not None:  # a list, an array, a struct: not an id
            raise DataError(f"{path}: row {row + 1} of the table has a {type(value).__name__} as its {column} id "
                            f"({str(value)[:60]}); ids are ints or strings, one a cell")
    if not parquet:
        frame = frame.assign(user=_text_ids(frame["user"]), item=_text_ids(frame["item"]))
    users, user_ids = pd.factorize(frame["user"], sort=True)
    items, item_ids = pd.factorize(frame["item"], sort=True)
    n_users, n_items = len(user_ids), len(item_ids)
    everything = CSR.from_pairs(users, items, n_users, n_items)
    rest, test = split_per_user(everything, test_fraction, seed + 1)
    return _with_validation(path.stem, rest.pairs(), test.pairs(), n_users, n_items, valid_fraction, seed,
                            user_ids=np.asarray(user_ids), item_ids=np.asarray(item_ids))


# ---------------------------------------------------------------- synthetic
SYNTHETIC_USERS, SYNTHETIC_ITEMS, SYNTHETIC_PER_USER = 3000, 2000, 25  # the built-in data's size


def synthetic(
    seed: int = 0,
    n_users: int = SYNTHETIC_USERS,
    n_items: int = SYNTHETIC_ITEMS,
    branching: tuple[int, ...] = (4, 4, 4),
    mean_interactions: float = SYNTHETIC_PER_USER,
    level_probs: tuple[float, ...] = (0.2, 0.3, 0.4),
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Dataset:
    """Interactions with a planted item hierarchy.

    Items sit at the leaves of a category tree (``branching`` children per level;
    ``item_tree[i, k]`` is item i's category at depth k). Each user prefers one
    category per depth along one root-to-leaf path (``user_path``). An
    interaction picks depth k with probability ``level_probs[k]`` and then an item
    of the user's depth-k category (popularity-skewed), or, with the remaining
    probability, any item (noise). Coarse levels therefore explain most of the
    signal and fine levels refine it."""
    if sum(level_probs) >= 1 or len(level_probs) != len(branching):
        raise ValueError("level_probs needs one probability per tree level, summing to less than 1")
    rng = np.random.default_rng(seed)
    n_leaves = int(np.prod(branching))
    sizes = np.cumprod(branching)  # categories at each depth
    leaf = rng.integers(0, n_leaves, n_items)
    item_tree = np.stack([leaf // (n_leaves // s) for s in sizes], axis=1)
    user_leaf = rng.integers(0, n_leaves, n_users)
    user_path = np.stack([user_leaf // (n_leaves // s) for s in sizes], axis=1)
    popularity = rng.pareto(1.5, n_items) + 1.0

    counts = np.maximum(rng.poisson(mean_interactions, n_users), 5)
    users = np.repeat(np.arange(n_users), counts)
    depth = rng.choice(len(branching) + 1, size=len(users), p=[*level_probs, 1 - sum(level_probs)])
    items = np.empty(len(users), dtype=np.int64)
    # group the draws by (depth, category) so each group samples in one call
    for k in range(len(branching) + 1):
        at_depth = np.flatnonzero(depth == k)
        if k == len(branching):  # noise: any item
            items[at_depth] = rng.choice(n_items, size=len(at_depth), p=popularity / popularity.sum())
            continue
        category = user_path[users[at_depth], k]
        for c in np.unique(category):
            members = np.flatnonzero(item_tree[:, k] == c)
            draws = at_depth[category == c]
            if len(members) == 0:
                members = np.arange(n_items)
            p = popularity[members] / popularity[members].sum()
            items[draws] = rng.choice(members, size=len(draws), p=p)
    everything = CSR.from_pairs(users, items, n_users, n_items)
    rest, test = split_per_user(everything, test_fraction, seed + 1)
    return _with_validation("synthetic", rest.pairs(), test.pairs(), n_users, n_items, valid_fraction, seed,
                            item_tree=item_tree, user_path=user_path)


# ---------------------------------------------------------------- names and downloads
def dataset_dir(data_dir=None) -> Path:
    """Where named datasets live: ``data_dir``, else ``$MRL_DATA``, else
    ``~/.cache/mrl_kernels``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("MRL_DATA"):
        return Path(os.environ["MRL_DATA"]).expanduser()
    return Path.home() / ".cache" / "mrl_kernels"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download(name: str, data_dir=None, base_url: str | None = None) -> Path:
    """Fetch ``<name>/train.txt`` and ``test.txt`` from ``base_url`` (default: the
    authors' repository; ``$MRL_DATA_URL`` overrides) into the dataset folder,
    checking SHA-256 and writing each file atomically. Returns the folder."""
    base_url = base_url or os.environ.get("MRL_DATA_URL") or BASE_URL
    target = dataset_dir(data_dir) / name
    for filename in ("train.txt", "test.txt"):
        key = f"{name}/{filename}"
        url = base_url.rstrip("/") + "/" + key
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(f"cannot download {url}: {exc}. Put {name}'s train.txt and test.txt in {target} "
                            f"yourself, or point --data-dir (or $MRL_DATA) at a folder that holds {name}/") from exc
        expected = SHA256.get(key)
        if expected is None:
            warnings.warn(f"no SHA-256 is pinned for {key}; its content is not verified", stacklevel=2)
        elif _sha256(payload) != expected:
            raise DataError(f"{url} has SHA-256 {_sha256(payload)}, expected {expected}; not saved")
        atomic_write_bytes(target / filename, payload)
    return target


def load(name_or_path: str, data_dir=None, seed: int = 0, valid_fraction: float = 0.1,
         base_url: str | None = None, synthetic_size: tuple[int, int, int] | None = None) -> Dataset:
    """A dataset by name (``synthetic``, or one of the paper's: ``phone``, ``tool``,
    ``sport``, ``ml100k``, downloaded when missing) or by path (a folder in the
    authors' format, or a ``.csv`` / ``.parquet`` table of ``user,item``).
    ``synthetic_size``: ``(users, items, interactions)`` of the synthetic data,
    each None for its default (``SYNTHETIC_USERS`` users, ``SYNTHETIC_ITEMS``
    items, ``SYNTHETIC_PER_USER`` interactions a user)."""
    if synthetic_size is not None and name_or_path != "synthetic":
        raise DataError(f"synthetic sizes (--users, --items, --interactions) apply to the synthetic data only, "
                        f"not to {name_or_path!r}")
    if name_or_path == "synthetic":
        if synthetic_size is None:
            return synthetic(seed=seed, valid_fraction=valid_fraction)
        users, items, interactions = synthetic_size
        users = SYNTHETIC_USERS if users is None else users
        items = SYNTHETIC_ITEMS if items is None else items
        interactions = SYNTHETIC_PER_USER * users if interactions is None else interactions
        if min(users, items, interactions) < 1:
            raise DataError(f"synthetic sizes must be positive, got users {users}, items {items}, "
                            f"interactions {interactions}")
        return synthetic(seed=seed, n_users=users, n_items=items, mean_interactions=interactions / users,
                         valid_fraction=valid_fraction)
    if name_or_path in PAPER_DATASETS:
        folder = dataset_dir(data_dir) / name_or_path
        if not all((folder / f).is_file() for f in ("train.txt", "test.txt")):
            folder = download(name_or_path, data_dir, base_url)
        return read_authors(folder, valid_fraction, seed, name=name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return read_authors(path, valid_fraction, seed)
    if path.is_file():
        return read_table(path, valid_fraction, seed=seed)
    raise DataError(f"unknown dataset {name_or_path!r}: not 'synthetic', one of {', '.join(PAPER_DATASETS)}, "
                    "a folder with train.txt/test.txt, or a .csv/.parquet file")
