"""The ``"cpp"`` backend: fused CPU kernels from ``csrc/``, float32 and float64.

The library is built with the package (``setup.py``, as ``mrl_kernels._C``) when
torch is importable at install time; otherwise it is compiled on first use with
``torch.utils.cpp_extension.load`` (ninja, cached under
``$TORCH_EXTENSIONS_DIR``). Its ``TORCH_LIBRARY_FRAGMENT`` defines the operators;
loading checks their schemas against :mod:`mrl_kernels.spec` and adds the fake
and autograd functions.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .. import library

SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "mrl_kernels_cpu.cpp"
CFLAGS = ["-O3", "-fopenmp"]  # at::parallel_for runs on OpenMP: without it, one thread


def _load_library() -> None:
    built = importlib.util.find_spec("mrl_kernels._C")
    if built is not None and built.origin:
        torch.ops.load_library(built.origin)
        return
    if not SOURCE.is_file():
        raise ImportError(f"the C++ kernels were not built with the package and {SOURCE} is missing")
    from torch.utils import cpp_extension

    cpp_extension.load(name="mrl_kernels_cpu", sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                       is_python_module=False, verbose=False)


def _load() -> library.Operators:
    _load_library()
    return library.register("cpp")


BACKEND = library.Backend(name="cpp", load=_load, devices=lambda: ("cpu",), preferred_on=("cpu",),
                          dtypes=(torch.float32, torch.float64))
