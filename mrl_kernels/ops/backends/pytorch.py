"""The ``"torch"`` backend: the plain PyTorch reference (each operator folder's
``reference.py``), on any device; what ``backend="auto"`` falls back to."""
from __future__ import annotations

from .. import library

BACKEND = library.Backend(name="torch", load=lambda: library.define("torch", library.implementations("reference")),
                          fallback=True)
