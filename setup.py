"""Package build; the metadata lives in pyproject.toml.

When torch is importable during the build (``pip install --no-build-isolation``)
the C++ CPU kernels (one ``*_cpu.cpp`` source per operator folder of
``mrl_kernels/ops/``, LazyAdam's included) are compiled into
``mrl_kernels._C``. Otherwise the package installs without them and compiles
them on first use (see mrl_kernels/ops/backends/cpp.py); the build never installs
torch itself.
"""
from pathlib import Path

from setuptools import setup

SOURCES = sorted(str(p) for p in Path("mrl_kernels").glob("**/*_cpu.cpp"))

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    ext_modules, cmdclass = [], {}
else:
    ext_modules = [CppExtension("mrl_kernels._C", SOURCES, extra_compile_args=["-O3", "-fopenmp"],
                                extra_link_args=["-fopenmp"], py_limited_api=False)]
    cmdclass = {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
