"""The one timer of bench/: the median wall time of a call, the device
synchronised around each run (CUDA events on a GPU); and what a call adds to
the peak memory (:func:`peak_growth`)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, device: str, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return statistics.median(times)


@functools.cache
def _libc() -> tuple[str | None, object]:
    """The C library's name and its ``malloc_trim`` (None where it has none), looked
    up once (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    return name, getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def _malloc_trim() -> None:
    """glibc's ``malloc_trim(0)``: the memory the C allocator kept, handed back."""
    name, trim = _libc()
    if trim is None or not Path("/proc/self/clear_refs").exists():
        raise RuntimeError(f"peak_growth on the CPU needs Linux's /proc/self/clear_refs and glibc's malloc_trim "
                           f"(the C library found: {name})")
    trim(0)


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_growth(fn, device: str) -> tuple[float, int]:
    """``(seconds, bytes)``: the wall time of ``fn()`` and how far it raised the
    peak memory over what was in use before it: on the CPU the process's peak
    resident set (``VmHWM``, reset through ``/proc/self/clear_refs``, Linux) over
    its resident set before the call, the memory the C allocator kept from earlier
    calls handed back first (``malloc_trim``: a call reusing it would not raise the
    resident set, and would show no growth); on CUDA
    ``torch.cuda.max_memory_allocated`` over the bytes allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        _malloc_trim()
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from the current one
        before = _status("VmRSS")
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _status("VmHWM")
    return seconds, peak - before
