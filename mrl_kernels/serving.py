"""Serving at a narrow width: a Matryoshka index over an item table, and
recommendations from a trained run.

One model serves every prefix width: :class:`MatryoshkaIndex` keeps contiguous
copies of the narrow prefixes (a width-8 pass reads N x 8 values, not N x 64),
optionally in float16 / bfloat16, and searches with :func:`mrl_kernels.prefix_topk`
(shortlist at the narrow width, rerank at full width): exact narrow scores, a pass
over every item. :class:`NestedIndex` is the same funnel for large catalogues: the
shortlist comes from a FAISS index (HNSW, IVF, IVF-PQ, ...) over the narrow prefix,
the rerank is exact at full width. :func:`load_run` reads the
model a run of ``mrl-train`` keeps (``model.pt``: the reported model's tables,
the id maps and the interactions seen) and recommends with original ids.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .atomic import atomic_write_bytes
from .data import CSR
from .ops import exclusion, prefix_topk
from .ops.checks import check_positive, check_rows
from .ops.prefix_topk.reference import ranked

__all__ = ["MatryoshkaIndex", "NestedIndex", "Run", "load_run", "MODEL_FILE", "save_model"]

MODEL_FILE = "model.pt"
FORMAT = "mrl-train model 1"
INDEX_FORMAT = "mrl_kernels nested index 1"
# the FAISS storage of the rerank table per dtype (None: IndexFlatIP, float32)
RERANK_CODECS = {torch.float32: None, torch.float16: "QT_fp16", torch.bfloat16: "QT_bf16"}


class MatryoshkaIndex:
    """An item table searchable at any of ``widths`` (each <= D).

    ``shortlist_dtype`` stores the narrow copies in that dtype (e.g.
    ``torch.bfloat16``: half the bytes the shortlist pass reads); the rerank
    always uses the full table in its own dtype."""

    def __init__(self, item_weight: Tensor, widths: Iterable[int], shortlist_dtype: torch.dtype | None = None):
        if not isinstance(item_weight, Tensor) or item_weight.dim() != 2 or not item_weight.is_floating_point():
            what = f"shape {tuple(item_weight.shape)} {item_weight.dtype}" if isinstance(item_weight, Tensor) \
                else type(item_weight).__name__
            raise ValueError(f"item_weight must be an (N, D) float table, got {what}")
        self.items = item_weight.detach().contiguous()
        dim = self.items.shape[1]
        self.widths = sorted({int(w) for w in widths})
        if not self.widths or self.widths[0] < 1 or self.widths[-1] > dim:
            raise ValueError(f"widths must lie in [1, {dim}] (the table's width), got {list(widths)}")
        self.shortlist_dtype = shortlist_dtype or self.items.dtype
        self.narrow = {w: self.items[:, :w].to(self.shortlist_dtype).contiguous() for w in self.widths if w < dim}

    @property
    def dim(self) -> int:
        return self.items.shape[1]

    def search(self, query: Tensor, k: int, width: int | None = None, shortlist: int | None = None,
               exclude=None, backend: str = "auto") -> tuple[Tensor, Tensor]:
        """``(scores, ids)`` of the top ``k`` items by full-width inner product
        among the ``shortlist`` best at ``width`` (``width=None`` or the full
        width: exact search; ``shortlist`` defaults to ``max(200, k)``).
        ``exclude`` as for :func:`mrl_kernels.prefix_topk`."""
        width = self.dim if width is None else int(width)
        if width == self.dim:
            return prefix_topk(query, self.items, k, width, self.items.shape[0], exclude, backend=backend)
        if width not in self.narrow:
            raise ValueError(f"width must be one of the index's widths {self.widths}, got {width}")
        shortlist = max(200, k) if shortlist is None else shortlist
        return prefix_topk(query, self.items, k, width, shortlist, exclude, narrow=self.narrow[width],
                           backend=backend)

    def state(self) -> dict:
        return {"items": self.items, "widths": self.widths, "shortlist_dtype": str(self.shortlist_dtype)}

    def save(self, path: str | Path) -> None:
        """Write the index atomically (the narrow copies are rebuilt on load)."""
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "MatryoshkaIndex":
        """The index :meth:`save` wrote; ValueError naming the file if it is not one."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: empty, truncated, garbage
            raise ValueError(f"{path} is not an index written by MatryoshkaIndex.save "
                             f"({type(exc).__name__})") from None
        dtype = getattr(torch, str(state.get("shortlist_dtype", "")).replace("torch.", ""), None) \
            if isinstance(state, dict) else None
        if not isinstance(dtype, torch.dtype) or not isinstance(state.get("items"), Tensor) \
                or not isinstance(state.get("widths"), list):
            keys = f" with keys {', '.join(map(str, state))}" if isinstance(state, dict) else ""
            raise ValueError(f"{path} is not an index written by MatryoshkaIndex.save (it holds a "
                             f"{type(state).__name__}{keys})")
        return cls(state["items"], state["widths"], dtype)


def _faiss():
    """The ``faiss`` module; ImportError naming the ``serve`` extra when it is not installed."""
    try:
        import faiss
    except ImportError:
        raise ImportError('NestedIndex needs FAISS, from the serve extra: pip install "mrl_kernels[serve]" '
                          '(or pip install faiss-cpu)') from None
    return faiss


def _faiss_message(exc: Exception) -> str:
    """FAISS's own words, without its "Error in <function> at <file>:<line>:" prefix."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(exc).strip().splitlines()[-1])


def _fingerprint(table: Tensor) -> str:
    """sha256 of a CPU table's bytes: which item table an index was built from."""
    return hashlib.sha256(memoryview(table.contiguous().view(torch.uint8).numpy())).hexdigest()


class NestedIndex:
    """Approximate top-k for large catalogues: an ANN index over the items'
    first ``width`` columns shortlists, the full width reranks, all in FAISS
    (an ``IndexRefine`` over an ``IndexPreTransform`` that keeps the first
    ``width`` columns).

    ``first_stage`` is a FAISS ``index_factory`` string for the narrow index
    (inner-product metric): ``"HNSW32"``, ``"IVF4096,Flat"``, ``"IVF4096,SQfp16"``,
    ``"IVF4096,PQ8"``, ``"Flat"`` (exact narrow scores, for checks) ...; indexes
    that need training are trained on the whole narrow table (FAISS k-means
    samples it with its own fixed seed). The rerank reads the full table stored
    in ``rerank_dtype`` (float16 / bfloat16 halve its bytes; scores are float32).
    ``params`` are the narrow index's FAISS search parameters (``{"efSearch":
    128}``, ``{"nprobe": 32}``: FAISS ``ParameterSpace`` names), changeable with
    :meth:`set_params`.

    Search runs on the CPU, on FAISS's OpenMP threads. HNSW graphs built on
    several threads may differ between builds; a saved index loads equal."""

    def __init__(self, item_weight: Tensor, width: int, first_stage: str = "HNSW32",
                 rerank_dtype: torch.dtype = torch.float32, params: dict | None = None):
        faiss = _faiss()
        if not isinstance(item_weight, Tensor) or item_weight.dim() != 2 or not item_weight.is_floating_point() \
                or item_weight.shape[0] == 0:
            what = f"shape {tuple(item_weight.shape)} {item_weight.dtype}" if isinstance(item_weight, Tensor) \
                else type(item_weight).__name__
            raise ValueError(f"item_weight must be a non-empty (N, D) float table, got {what}")
        if rerank_dtype not in RERANK_CODECS:
            raise ValueError(f"rerank_dtype must be one of {', '.join(map(str, RERANK_CODECS))}, got {rerank_dtype}")
        table = item_weight.detach().cpu()
        if not bool(torch.isfinite(table).all()):
            raise ValueError("item_weight holds NaN or infinite values (an ANN index cannot rank them)")
        dim, width = table.shape[1], check_positive("width", width)
        if width > dim:
            raise ValueError(f"width must be at most the table's width {dim}, got {width}")
        if not isinstance(first_stage, str) or not first_stage:
            raise ValueError(f"first_stage must be a FAISS index_factory string like 'HNSW32' or 'IVF4096,Flat', "
                             f"got {first_stage!r}")
        try:
            narrow = faiss.index_factory(width, first_stage, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"first_stage {first_stage!r} is not a FAISS index_factory string for width "
                             f"{width}: {_faiss_message(exc)}") from None
        codec = RERANK_CODECS[rerank_dtype]
        full = faiss.IndexFlatIP(dim) if codec is None else \
            faiss.IndexScalarQuantizer(dim, getattr(faiss.ScalarQuantizer, codec), faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefine(faiss.IndexPreTransform(faiss.RemapDimensionsTransform(dim, width, False), narrow),
                                  full)
        vectors = table.float().contiguous().numpy()
        if not index.is_trained:
            try:
                index.train(vectors)
            except RuntimeError as exc:
                raise ValueError(f"first_stage {first_stage!r} cannot be trained on the {len(vectors)} items: "
                                 f"{_faiss_message(exc)}") from None
        index.add(vectors)
        self._setup(index, width, first_stage, rerank_dtype, _fingerprint(table), params or {})

    def _setup(self, index, width: int, first_stage: str, rerank_dtype: torch.dtype, source: str, params: dict):
        self.index, self.width, self.first_stage, self.rerank_dtype = index, width, first_stage, rerank_dtype
        self.source, self.params = source, {}
        self.set_params(**params)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def items(self) -> Tensor:
        """The full-width table the rerank reads, ``(N, D)`` in ``rerank_dtype``:
        a view of the FAISS index's storage, no copy."""
        faiss = _faiss()
        full = faiss.downcast_index(self.index.refine_index)
        codes = faiss.rev_swig_ptr(full.codes.data(), full.codes.size())
        view = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}[self.rerank_dtype]
        return torch.from_numpy(codes.view(view).reshape(self.index.ntotal, self.dim)).view(self.rerank_dtype)

    def set_params(self, **params) -> None:
        """Set the narrow index's search parameters (FAISS ``ParameterSpace``
        names: efSearch, nprobe, ...); ValueError naming one it does not have."""
        space = _faiss().ParameterSpace()
        for name, value in params.items():
            try:
                space.set_index_parameter(self.index, name, float(value))
            except (RuntimeError, TypeError, ValueError) as exc:
                raise ValueError(f"search parameter {name}={value!r} does not apply to a {self.first_stage!r} "
                                 f"first stage ({_faiss_message(exc)})") from None
            self.params[name] = value

    def nbytes(self) -> int:
        """Bytes the index holds (its serialised size): the narrow FAISS index
        and the full-width rerank table."""
        return int(_faiss().serialize_index(self.index).nbytes)

    @torch.no_grad()
    def search(self, query: Tensor, k: int, shortlist: int | None = None, exclude=None) -> tuple[Tensor, Tensor]:
        """``(scores, ids)`` of the top ``k`` items by full-width inner product
        among the ``shortlist`` (default ``max(200, k)``) the narrow index
        returns, as :meth:`MatryoshkaIndex.search` (descending scores, float32;
        id -1 and score -inf where fewer than k are left). ``exclude`` (a CSR
        with one row per query, or B id collections) is never returned: the
        index is asked for ``k`` plus the batch's largest exclusion count, from
        a shortlist longer by as many, and the excluded ones are dropped, as
        FAISS's authors advise for per-query filters. Where that shortlist
        holds every item, every item is reranked: exact search, ties to the
        lower id."""
        faiss = _faiss()
        batch, dim = check_rows("query", query)
        if dim != self.dim:
            raise ValueError(f"query has width {dim} but the index's items have width {self.dim}")
        k = check_positive("k", k)
        shortlist = max(200, k) if shortlist is None else check_positive("shortlist", shortlist)
        n_items = self.index.ntotal
        if shortlist < min(k, n_items):
            raise ValueError(f"shortlist must be >= k ({k}) or hold every item ({n_items}), got {shortlist}")
        query = query.detach().cpu().float().contiguous()
        offsets, excluded = exclusion(exclude, batch, n_items, query.device)
        extra = int((offsets[1:] - offsets[:-1]).max())
        fetch = min(k + extra, n_items)
        if shortlist + extra >= n_items:  # every item: exact search
            scores, ids = ranked(query @ self.items.float().T, torch.arange(n_items).expand(batch, -1), n_items)
        else:
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = (shortlist + extra + 0.5) / fetch  # FAISS truncates fetch * k_factor
            scores, ids = map(torch.from_numpy, self.index.search(query.numpy(), fetch, params=params))
        blocked = ids < 0
        if excluded.numel():
            rows = torch.repeat_interleave(torch.arange(batch), offsets[1:] - offsets[:-1])
            blocked |= torch.isin(torch.arange(batch)[:, None] * n_items + ids, rows * n_items + excluded)
        # the first k unblocked of each row, in order
        order = torch.sort(blocked.to(torch.int8), dim=1, stable=True).indices[:, :k]
        scores, ids = scores.gather(1, order), ids.gather(1, order).masked_fill(blocked.gather(1, order), -1)
        scores = scores.masked_fill(ids < 0, -torch.inf)
        if k > ids.shape[1]:
            scores = torch.cat([scores, scores.new_full((batch, k - ids.shape[1]), -torch.inf)], dim=1)
            ids = torch.cat([ids, ids.new_full((batch, k - ids.shape[1]), -1)], dim=1)
        return scores, ids

    def save(self, path: str | Path, force: bool = False) -> None:
        """Write the index to one file, atomically; an existing file is
        replaced only with ``force``."""
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists; force=True replaces it")
        state = {"format": INDEX_FORMAT, "width": self.width, "first_stage": self.first_stage,
                 "rerank_dtype": str(self.rerank_dtype), "params": dict(self.params), "source": self.source,
                 "faiss": torch.from_numpy(_faiss().serialize_index(self.index))}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "NestedIndex":
        """The index :meth:`save` wrote; ValueError naming the file if it is not one."""
        faiss, path = _faiss(), Path(path)
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: empty, truncated, garbage
            raise ValueError(f"{path} is not an index written by NestedIndex.save ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not an index written by NestedIndex.save")
        self = cls.__new__(cls)
        self._setup(faiss.deserialize_index(state["faiss"].numpy()), state["width"],
                    state["first_stage"], getattr(torch, state["rerank_dtype"].replace("torch.", "")),
                    state["source"], state["params"])
        return self


def save_model(path: Path, user_table: Tensor, item_table: Tensor, dims: Sequence[int], seen: CSR,
               user_ids=None, item_ids=None, **info) -> None:
    """Write what serving needs from a run: the tables, the nested widths, the
    interactions seen (excluded from recommendations) and the id maps."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "user": user_table.detach().cpu(), "item": item_table.detach().cpu(),
                "dims": list(dims), "seen_indptr": seen.indptr, "seen_indices": seen.indices,
                "user_ids": None if user_ids is None else [_plain(x) for x in user_ids],
                "item_ids": None if item_ids is None else [_plain(x) for x in item_ids], **info}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _plain(value):
    """numpy scalars as Python ints / floats / strs (what weights-only loading reads)."""
    return value.item() if hasattr(value, "item") else value


class Run:
    """A trained run, ready to recommend: :func:`load_run` makes one."""

    def __init__(self, state: dict, shortlist_dtype: torch.dtype | None = None):
        self.users = state["user"]
        self.dims = state["dims"]
        self.index = MatryoshkaIndex(state["item"], self.dims, shortlist_dtype)
        self.seen = CSR(state["seen_indptr"], state["seen_indices"], state["item"].shape[0])
        n_users, n_items = self.users.shape[0], state["item"].shape[0]
        self.user_ids = state["user_ids"] if state["user_ids"] is not None else list(range(n_users))
        self.item_ids = state["item_ids"] if state["item_ids"] is not None else list(range(n_items))
        self._row = {str(u): row for row, u in enumerate(self.user_ids)}
        self._source = None  # the item table's fingerprint, once a NestedIndex asks

    def rows(self, users: Iterable) -> list[int]:
        """The table rows of original user ids (or their text); ValueError naming unknown ones."""
        users = list(users)
        unknown = [u for u in users if str(u) not in self._row]
        if unknown:
            raise ValueError(f"unknown user ids {unknown[:10]}" + (f" and {len(unknown) - 10} more"
                                                                    if len(unknown) > 10 else "")
                             + f"; the run knows {len(self._row)} users, e.g. {self.user_ids[:3]}")
        return [self._row[str(u)] for u in users]

    def check_index(self, index: NestedIndex) -> None:
        """ValueError unless ``index`` was built from this run's item table."""
        if not isinstance(index, NestedIndex):
            raise ValueError(f"index must be a NestedIndex, got {type(index).__name__}")
        if self._source is None:
            self._source = _fingerprint(self.index.items)
        if index.source != self._source:
            raise ValueError(f"the index was built from another item table than this run's ({index.index.ntotal} "
                             f"x {index.dim} against {self.index.items.shape[0]} x {self.index.dim}, or other values)")

    def recommend(self, users: Iterable, k: int = 20, width: int | None = None, shortlist: int | None = None,
                  backend: str = "auto", index: NestedIndex | None = None) -> pd.DataFrame:
        """The top ``k`` items of each user (original ids), their seen items
        excluded: one row per (user, rank) with the item and its full-width score.
        ``width``: serve through a shortlist at that prefix width (default: exact).
        ``index``: serve through that :class:`NestedIndex` over this run's item
        table instead (``width``, if given, must be its width)."""
        users = list(users)
        if index is not None:
            self.check_index(index)
            if width is not None and width != index.width:
                raise ValueError(f"width {width} is not the index's width {index.width}")
        rows = torch.tensor(self.rows(users), dtype=torch.int64)
        exclude = [self.seen.indices[self.seen.indptr[r]:self.seen.indptr[r + 1]] for r in rows.tolist()]
        if index is None:
            scores, ids = self.index.search(self.users[rows], k, width, shortlist, exclude, backend=backend)
        else:
            scores, ids = index.search(self.users[rows], k, shortlist, exclude)
        out = []
        for user, user_scores, user_ids in zip(users, scores.tolist(), ids.tolist()):
            out += [{"user": user, "rank": rank + 1, "item": self.item_ids[i], "score": s}
                    for rank, (s, i) in enumerate(zip(user_scores, user_ids)) if i >= 0]
        return pd.DataFrame(out, columns=["user", "rank", "item", "score"])


def load_run(run_dir: str | Path, shortlist_dtype: torch.dtype | None = None) -> Run:
    """The model a run of ``mrl-train`` reported (``run_dir/model.pt``)."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a finished mrl-train run?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not a model written by mrl-train ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model written by mrl-train")
    return Run(state, shortlist_dtype)
