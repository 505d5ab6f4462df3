"""``torch.library`` glue: what a backend declares, and the registration of its
operators from the spec table (:mod:`mrl_kernels.spec`).

A backend module in :mod:`mrl_kernels.backends` sets ``BACKEND = Backend(...)``:
its name, where it runs, what it takes, and a ``load`` function that registers
its operators (with :func:`define` for Python implementations, or
:func:`register` for operators a compiled library defined) and returns them.
Importing a backend module must stay cheap: heavy imports go inside ``load``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import torch
from torch import Tensor

from .spec import OPS, OpSpec, qualified_name

__all__ = ["Backend", "Operators", "define", "register", "check_schemas"]

Operators = Mapping[str, "torch._ops.OpOverload"]  # op name -> this backend's operator


@dataclass(frozen=True)
class Backend:
    """What a backend module declares about itself."""

    name: str
    load: Callable[[], Operators]  # registers the operators (once) and returns them; raises if it cannot run here
    devices: Callable[[], Collection[str]] | None = None  # device types it runs on now (None: any)
    preferred_on: tuple[str, ...] = ()  # device types for which backend="auto" picks it
    fallback: bool = False  # what backend="auto" uses where no preferred backend fits (the reference)
    dtypes: tuple[torch.dtype, ...] | None = None  # float dtypes it takes (None: all)
    max_width: int | None = None  # widest embedding it takes (None: any)

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices()

    def misfit(self, width: int, dtype: torch.dtype) -> str | None:
        """Why it cannot take ``width``-wide ``dtype`` tensors (None if it can)."""
        if self.max_width is not None and width > self.max_width:
            return f"takes embedding widths up to {self.max_width}, got {width}"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"takes {' and '.join(str(d).replace('torch.', '') for d in self.dtypes)}, got {dtype}"
        return None


def define(backend: str, implementations: Mapping[str, Callable], decorator=torch.library.custom_op,
           with_fake: bool = True) -> Operators:
    """Define every operator of the spec for ``backend`` from ``implementations``
    (op name -> function taking the schema's arguments in order) with
    ``decorator`` (``custom_op``, or ``triton_op`` which traces the body and needs
    no fake: ``with_fake=False``), then register fakes and autograd."""
    missing = set(OPS) - set(implementations)
    if missing:
        raise NotImplementedError(f"backend {backend!r} implements no {', '.join(sorted(missing))}")
    for spec in OPS.values():
        decorator(qualified_name(spec.name, backend), implementations[spec.name], mutates_args=(),
                  schema=spec.schema)
    return register(backend, with_fake=with_fake)


def check_schemas(backend: str) -> None:
    """Raise RuntimeError if an operator ``backend`` defines differs from the spec."""
    for spec in OPS.values():
        name = qualified_name(spec.name, backend)
        expected = torch._C.parse_schema(f"{name}{spec.schema}")
        try:
            found = getattr(torch.ops.mrl_kernels, f"{spec.name}_{backend}").default._schema
        except AttributeError:
            raise RuntimeError(f"backend {backend!r} defines no operator {name}") from None
        if str(found) != str(expected):
            raise RuntimeError(f"backend {backend!r} defines {found}, but the operator spec "
                               f"(mrl_kernels/spec.py) says {expected}")


def register(backend: str, with_fake: bool = True) -> Operators:
    """Check the schemas of ``backend``'s operators (already defined, in Python by
    :func:`define` or in C++) against the spec, register their fakes (unless
    ``with_fake`` is False) and autograd, and return them."""
    check_schemas(backend)
    ops = {name: getattr(torch.ops.mrl_kernels, f"{name}_{backend}").default for name in OPS}
    for spec in OPS.values():
        if with_fake:
            torch.library.register_fake(qualified_name(spec.name, backend), spec.fake)
        if spec.backward is not None:
            _register_autograd(spec, backend, ops[spec.backward])
    return ops


def _register_autograd(spec: OpSpec, backend: str, backward) -> None:
    """Autograd of ``spec`` by its backward operator: save, by name, the forward
    inputs and outputs the backward takes; route its results to ``spec.grads``."""
    needed = OPS[spec.backward].inputs[1:]  # after the incoming gradient

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        values = {**dict(zip(spec.inputs, inputs)), **dict(zip(spec.outputs, outputs))}
        ctx.tensor_names = [name for name in needed if isinstance(values[name], Tensor)]
        ctx.save_for_backward(*(values[name] for name in ctx.tensor_names))
        ctx.others = {name: values[name] for name in needed if name not in ctx.tensor_names}

    def grad(ctx, grad_output, *_unused):
        values = {**dict(zip(ctx.tensor_names, ctx.saved_tensors)), **ctx.others}
        grads = dict(zip(spec.grads, backward(grad_output.contiguous(), *(values[name] for name in needed))))
        return tuple(grads.get(name) for name in spec.inputs)

    torch.library.register_autograd(qualified_name(spec.name, backend), grad, setup_context=setup_context)
