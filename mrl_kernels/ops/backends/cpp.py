"""The ``"cpp"`` backend: fused CPU kernels, float32 and float64, from one C++
source per operator folder (``mrl_kernels/ops/<operator>/*_cpu.cpp``, sharing
``mrl_kernels/ops/common.h``), LazyAdam's row pass among them
(``mrl_kernels/ops/lazy_adam/lazy_adam_cpu.cpp``).

The library is built with the package (``setup.py``, as ``mrl_kernels._C``) when
torch is importable at install time; otherwise it is compiled on first use with
``torch.utils.cpp_extension.load`` (ninja, cached under
``$TORCH_EXTENSIONS_DIR``). The sources only implement operators
(``TORCH_LIBRARY_IMPL``); their schemas are defined here from
:mod:`mrl_kernels.ops.spec`, so each is written once, and the dispatcher
refuses a kernel whose C++ signature does not match its schema (loading such
a library ends the process with the operator and both schemas named: a build
from this package's own sources never does, which the test suite checks).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .. import library
from ..spec import OPS, qualified_name

PACKAGE = Path(__file__).resolve().parents[1]
CFLAGS = ["-O3", "-fopenmp"]  # at::parallel_for runs on OpenMP: without it, one thread


def sources() -> list[Path]:
    """The C++ sources of the library: every ``*_cpu.cpp`` of the package."""
    return sorted(PACKAGE.glob("**/*_cpu.cpp"))


def _load_library() -> str:
    """Load the library (the built one, else compiled from the sources now); its path."""
    built = importlib.util.find_spec("mrl_kernels._C")
    if built is not None and built.origin:
        torch.ops.load_library(built.origin)
        return built.origin
    found = sources()
    if not found:
        raise ImportError(f"the C++ kernels were not built with the package and no *_cpu.cpp source is in {PACKAGE}")
    from torch.utils import cpp_extension

    cpp_extension.load(name="mrl_kernels_cpu", sources=[str(p) for p in found], extra_cflags=CFLAGS,
                       extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    return "the library compiled from " + str(PACKAGE)


def _load() -> library.Operators:
    library.define_schemas("cpp")
    origin = _load_library()
    # a library built before an operator was added loads, but has no kernel for it: refused here (the
    # backend is then unavailable, and backend="auto" says so once), not at the operator's first call
    missing = [name for name in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(
        qualified_name(name, "cpp"), "CPU")]
    if missing:
        raise ImportError(f"{origin} has no kernel for {', '.join(missing)}: it was built from older sources than "
                          "this package's; rebuild it: pip install --no-build-isolation -e . (or python setup.py "
                          "build_ext --inplace)")
    return library.register("cpp")


BACKEND = library.Backend(name="cpp", load=_load, devices=lambda: ("cpu",), preferred_on=("cpu",),
                          dtypes=(torch.float32, torch.float64))
