"""The ``"triton"`` backend: fused Triton kernels, one ``triton.py`` per operator
folder (``mrl_kernels/ops/<operator>/triton.py``, sharing
``mrl_kernels/ops/triton_common.py``).

On CUDA tensors; on CPU tensors too under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests without a GPU). Triton itself is imported only when the
backend is loaded, so the package works without it. On a GPU the operators are
``triton_op``\\ s whose launchers use ``wrap_triton``, so ``torch.compile`` traces
into them; ``wrap_triton`` refuses interpreted kernels, so under the interpreter
the same launchers are registered as plain ``custom_op``\\ s with the spec's fakes.
``python -m mrl_kernels.ops.backends.triton.aot`` compiles every kernel the
launchers can start for GPUs without one (:mod:`.aot`).
"""
from __future__ import annotations

import os

import torch

from ... import library

MAX_WIDTH = 1024  # largest D the kernels take (one row in registers)


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if interpreting() else ("cuda",)


def _load() -> library.Operators:
    implementations = library.implementations("triton")
    if interpreting():
        return library.define("triton", implementations)
    return library.define("triton", implementations, decorator=torch.library.triton_op, with_fake=False)


BACKEND = library.Backend(name="triton", load=_load, devices=_devices, preferred_on=("cuda",), max_width=MAX_WIDTH)
