"""Benchmarks and the reproduction scripts; ``pip install -e ".[bench]"`` adds what they need."""
from __future__ import annotations

import importlib.util


def require(command: str, *modules: str) -> None:
    """End ``command`` with one line naming the ``bench`` extra when a module it
    needs is not installed (instead of an ImportError traceback, even for --help)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{command}: needs {', '.join(missing)}, from the bench extra: "
                         "pip install -e \".[bench]\"")
