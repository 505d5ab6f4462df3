"""What an operator is, and the table of all of them.

Each operator folder (:data:`PACKAGES`) has a ``spec.py`` whose ``SPECS`` are
:class:`OpSpec` entries: name, schema, shape (fake) function and gradient
rule. Every backend's ``torch.library`` registration is made from :data:`OPS`
(:mod:`mrl_kernels.ops.library`); a backend only supplies implementations, one
module per operator folder (``reference.py`` for ``"torch"``, ``triton.py`` for
``"triton"``, a ``*_cpu.cpp`` source for ``"cpp"``).

A differentiable operator names its backward operator and the inputs that get
gradients; the backward operator's first argument is the gradient of the first
output, its last the ``output_mask`` (one bool per gradient, from autograd's
``needs_input_grad``: a gradient it masks is returned empty, never computed),
the others are named after the forward's inputs and outputs, which is how the
autograd glue knows what to save. Every output is contiguous.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

__all__ = ["NAMESPACE", "PACKAGES", "OpSpec", "OPS", "qualified_name", "fake_gradients", "package_modules"]

NAMESPACE = "mrl_kernels"
# the operator folders of mrl_kernels.ops, each with spec.py, reference.py, triton.py and a C++ source
PACKAGES = ("mns", "softmax", "full_softmax", "prefix_topk", "als", "lazy_adam")


def qualified_name(op: str, backend: str) -> str:
    """``mrl_kernels::<op>_<backend>``: every backend has its own operators."""
    return f"{NAMESPACE}::{op}_{backend}"


@dataclass(frozen=True)
class OpSpec:
    name: str
    schema: str  # "(args) -> returns" in torch's schema language, returns named
    fake: Callable  # output shapes, dtypes and devices from the inputs
    backward: str | None = None  # the operator that computes the gradients
    grads: tuple[str, ...] = ()  # the inputs that get gradients, in the order the backward returns them

    @cached_property
    def parsed(self) -> torch._C.FunctionSchema:
        return torch._C.parse_schema(f"{NAMESPACE}::{self.name}{self.schema}")

    @property
    def inputs(self) -> list[str]:
        return [a.name for a in self.parsed.arguments]

    @property
    def mutated(self) -> tuple[str, ...]:
        """The inputs it writes in place (``Tensor(a!)`` in the schema)."""
        return tuple(a.name for a in self.parsed.arguments if a.alias_info is not None and a.alias_info.is_write)

    @property
    def outputs(self) -> list[str]:
        return [r.name for r in self.parsed.returns]


def fake_gradients(grad, *inputs_then_saved):
    """The fake of a backward operator whose gradients are those of the first
    tensors after ``grad``, one per entry of the trailing ``output_mask``: each
    shaped like its input, or empty where masked."""
    mask = inputs_then_saved[-1]
    return tuple(t.new_empty(t.shape if needed else (0,)) for t, needed in zip(inputs_then_saved, mask))


def package_modules(module: str) -> list:
    """``mrl_kernels.ops.<package>.<module>`` of every operator folder, imported."""
    return [importlib.import_module(f"{__package__}.{package}.{module}") for package in PACKAGES]


OPS: dict[str, OpSpec] = {spec.name: spec for found in package_modules("spec") for spec in found.SPECS}
