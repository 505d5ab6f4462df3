"""Serving: one model at any nested width. :class:`MatryoshkaIndex` (exact
narrow shortlist, reranked at full width), :class:`NestedIndex` (a FAISS index
over a narrow prefix, reranked at full width; the ``serve`` extra), both with
FAISS's ``search(query, k, *, shortlist=None, exclude=None)``; :func:`load_run`
reads a trained run's model file and recommends with original ids
(:class:`LoadedRun`, ``mrl-recommend``)."""
from .exact import MatryoshkaIndex
from .nested import NestedIndex
from .run import LoadedRun, load_run

__all__ = ["MatryoshkaIndex", "NestedIndex", "LoadedRun", "load_run"]
