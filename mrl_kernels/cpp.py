"""The C++ CPU backend (``backend="cpp"``): fused kernels from ``csrc/``.

The library is built with the package (``setup.py``, as ``mrl_kernels._C``) when
torch is importable at install time; otherwise it is compiled on first use with
``torch.utils.cpp_extension.load`` (ninja, cached under
``$TORCH_EXTENSIONS_DIR``). Its ``TORCH_LIBRARY_FRAGMENT`` registration defines the
operators; this module adds their fake and autograd functions.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from . import dispatch

SOURCE = Path(__file__).resolve().parent.parent / "csrc" / "mrl_kernels_cpu.cpp"
CFLAGS = ["-O3", "-fopenmp"]  # at::parallel_for runs on OpenMP: without it, one thread


def _load_library() -> None:
    built = importlib.util.find_spec(f"{__package__}._C")
    if built is not None and built.origin:
        torch.ops.load_library(built.origin)
        return
    if not SOURCE.is_file():
        raise ImportError(f"the C++ kernels were not built with the package and {SOURCE} is missing")
    from torch.utils import cpp_extension

    cpp_extension.load(name="mrl_kernels_cpu", sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                       is_python_module=False, verbose=False)


_load_library()
BACKEND = dispatch.register("cpp", with_fake=True, dtypes=(torch.float32, torch.float64))
