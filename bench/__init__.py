"""Benchmarks and the reproduction scripts; ``pip install -e ".[bench]"`` adds what they need."""
from __future__ import annotations

import datetime as dt
import glob
import importlib.util
import platform
from pathlib import Path


def require(command: str, *modules: str) -> None:
    """End ``command`` with one line naming the ``bench`` extra when a module it
    needs is not installed (instead of an ImportError traceback, even for --help)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{command}: needs {', '.join(missing)}, from the bench extra: "
                         "pip install -e \".[bench]\"")


def result_name(out, prefix: str) -> str:
    """``<prefix>-<today>``, or ``<prefix>-<today>-2``, ``-3``, ... where ``out``
    already holds files of that name (an earlier run's results): a bench run never
    overwrites another's. ``out`` is created."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = name = f"{prefix}-{dt.date.today().isoformat()}"
    n = 1
    while any(out.glob(glob.escape(name) + ".*")):
        n += 1
        name = f"{base}-{n}"
    return name


def cpu_name() -> str:
    """The CPU's model as the kernel reports it (``/proc/cpuinfo``'s "model name",
    e.g. "AMD EPYC"), else ``platform.processor()`` or the architecture: the
    hardware a CPU timing was made on (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
