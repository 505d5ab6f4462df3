"""Approximate top-k for large catalogues: :class:`NestedIndex`, a FAISS index
over the items' narrow prefix that shortlists, reranked exactly at full width
(the ``serve`` extra)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_save
from ..ops import exclusion
from ..ops._checks import check_int, check_rows
from ..ops.prefix_topk import ranked
from .first_stage import FirstStage, parse_first_stage

__all__ = ["NestedIndex", "fingerprint"]

INDEX_FORMAT = "mrl_kernels nested index 2"  # 2: a sha256 over the whole content
OLD_FORMAT = "mrl_kernels nested index 1"
# what the sha256 covers besides the FAISS bytes
META = ("format", "width", "first_stage", "rerank_dtype", "params", "source")
# the FAISS storage of the rerank table per dtype (None: IndexFlatIP, float32)
RERANK_CODECS = {torch.float32: None, torch.float16: "QT_fp16", torch.bfloat16: "QT_bf16"}


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


def fingerprint(table: Tensor) -> str:
    """sha256 of a CPU table's bytes: which item table an index was built from."""
    return hashlib.sha256(memoryview(table.contiguous().view(torch.uint8).numpy())).hexdigest()


class NestedIndex:
    """Approximate top-k for large catalogues: an ANN index over the items'
    first ``width`` columns shortlists, the full width reranks, all in FAISS
    (an ``IndexRefine`` over an ``IndexPreTransform`` that keeps the first
    ``width`` columns).

    ``first_stage`` is a FAISS ``index_factory`` string for the narrow index
    (inner-product metric) of one of the forms
    :data:`~mrl_kernels.serving.first_stage.FORMS`: ``"HNSW32"``,
    ``"IVF4096,Flat"``, ``"IVF4096,SQfp16"``, ``"IVF4096,PQ8"``, ``"Flat"``
    (exact narrow scores, for checks), checked before FAISS sees it; indexes
    that need training are trained on the whole narrow table (FAISS k-means
    samples it with its own fixed seed). The rerank reads the full table stored
    in ``rerank_dtype`` (float16 / bfloat16 halve its bytes; scores are float32).
    ``params`` are the narrow index's FAISS search parameters (``{"efSearch":
    128}`` for HNSW, ``{"nprobe": 32}`` for IVF: FAISS ``ParameterSpace``
    names, ints), changeable with :meth:`set_params`.

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
        dim, width = table.shape[1], check_int("width", width)
        if width > dim:
            raise ValueError(f"width must be at most the table's width {dim}, got {width}")
        stage = parse_first_stage(first_stage, width, table.shape[0])
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
        self._setup(index, width, stage, rerank_dtype, fingerprint(table), params or {})

    def _setup(self, index, width: int, stage: FirstStage, rerank_dtype: torch.dtype, source: str, params: dict):
        self.index, self.width, self.stage, self.rerank_dtype = index, width, stage, rerank_dtype
        self.first_stage, self.source, self.params = stage.text, source, {}
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
        names): an HNSW's efSearch, an int in [1, N]; an IVF's nprobe, an int
        in [1, nlist]. ValueError naming one it does not have or a value out of
        range, before any is set."""
        params = self.stage.check_params(params, self.index.ntotal)
        space = _faiss().ParameterSpace()
        for name, value in params.items():
            space.set_index_parameter(self.index, name, value)
            self.params[name] = value

    def nbytes(self) -> int:
        """Bytes the index holds (its serialised size): the narrow FAISS index
        and the full-width rerank table."""
        return int(_faiss().serialize_index(self.index).nbytes)

    @torch.no_grad()
    def search(self, query: Tensor, k: int, *, shortlist: int | None = None, exclude=None,
               width: int | None = None) -> tuple[Tensor, Tensor]:
        """``(scores, ids)`` of the top ``k`` items by full-width inner product
        among the ``shortlist`` (default ``max(200, k)``) the narrow index
        returns, as :meth:`MatryoshkaIndex.search` (``width``, if given, must be
        the index's own; descending scores, float32;
        id -1 and score -inf where fewer than k are left). ``exclude`` (a CSR
        with one row per query, or B id collections) is never returned: the
        index is asked for ``k`` plus the batch's largest exclusion count, from
        a shortlist longer by as many, and the excluded ones are dropped, as
        FAISS's authors advise for per-query filters. Where that shortlist
        holds every item, every item is reranked: exact search, ties to the
        lower id."""
        faiss = _faiss()
        if width is not None and width != self.width:
            raise ValueError(f"width {width} is not the index's width {self.width}")
        batch, dim = check_rows("query", query)
        if dim != self.dim:
            raise ValueError(f"query has width {dim} but the index's items have width {self.dim}")
        k = check_int("k", k)
        shortlist = max(200, k) if shortlist is None else check_int("shortlist", shortlist)
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
        """Write the index to one file, atomically, with a sha256 over its whole
        content (:meth:`load` checks it); an existing file is replaced only with
        ``force`` (FileExistsError otherwise, also when another writer creates
        ``path`` first)."""
        path = Path(path)
        meta = {"format": INDEX_FORMAT, "width": self.width, "first_stage": self.first_stage,
                "rerank_dtype": str(self.rerank_dtype), "params": dict(self.params), "source": self.source}
        blob = _faiss().serialize_index(self.index)
        atomic_save(path, {**meta, "faiss": torch.from_numpy(blob), "sha256": _digest(meta, blob)}, force=force)

    @classmethod
    def load(cls, path: str | Path) -> "NestedIndex":
        """The index :meth:`save` wrote; ValueError naming the file if it is not
        one or its content is not what was saved (the sha256 differs)."""
        faiss, path = _faiss(), Path(path)
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: empty, truncated, garbage
            raise ValueError(f"{path} is not an index written by NestedIndex.save ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") not in (INDEX_FORMAT, OLD_FORMAT):
            raise ValueError(f"{path} is not an index written by NestedIndex.save")
        if state["format"] == OLD_FORMAT:
            raise ValueError(f"{path} is an index of an older mrl_kernels (without a checksum); build it again "
                             "(mrl-recommend --ann ... --save-index)")
        meta = {name: state.get(name) for name in META}
        blob = state.get("faiss")
        try:
            intact = isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1 \
                and state.get("sha256") == _digest(meta, blob.numpy())
        except TypeError:  # metadata that is not JSON
            intact = False
        if not intact:
            raise ValueError(f"{path} is damaged: its content does not match the sha256 saved with it")
        self = cls.__new__(cls)
        index = faiss.deserialize_index(blob.numpy())
        self._setup(index, meta["width"], parse_first_stage(meta["first_stage"], meta["width"], index.ntotal),
                    getattr(torch, meta["rerank_dtype"].replace("torch.", "")), meta["source"], meta["params"])
        return self


def _digest(meta: dict, blob: np.ndarray) -> str:
    """sha256 of the index's metadata (as sorted JSON) and its FAISS bytes."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    digest.update(memoryview(np.ascontiguousarray(blob)))
    return digest.hexdigest()
