"""``torch.library`` glue: what a backend declares, and the registration of its
operators from the spec table (:mod:`mrl_kernels.ops.spec`).

A backend module in :mod:`mrl_kernels.ops.backends` sets ``BACKEND = Backend(...)``:
its name, where it runs, what it takes, and a ``load`` function that registers
its operators and returns them: :func:`define` for Python implementations
(gathered from one module of every operator folder by :func:`implementations`),
or :func:`define_schemas` then :func:`register` for a compiled library that only
implements them (``TORCH_LIBRARY_IMPL``). Every schema is written once, in the
spec. Importing a backend module must stay cheap: heavy imports go inside ``load``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import torch
from torch import Tensor

from .spec import NAMESPACE, OPS, OpSpec, package_modules, qualified_name

__all__ = ["Backend", "Operators", "implementations", "define", "define_schemas", "register"]

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


def implementations(module: str) -> dict[str, Callable]:
    """Op name -> function, from ``IMPLEMENTATIONS`` of ``mrl_kernels.ops.<folder>.<module>``
    of every operator folder (``module``: ``"reference"``, ``"triton"``, ...)."""
    found = {}
    for imported in package_modules(module):
        found.update(imported.IMPLEMENTATIONS)
    return found


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
        decorator(qualified_name(spec.name, backend), implementations[spec.name], mutates_args=spec.mutated,
                  schema=spec.schema)
    return register(backend, with_fake=with_fake)


_SCHEMAS = torch.library.Library(NAMESPACE, "FRAGMENT")  # the definitions of compiled backends' operators


def define_schemas(backend: str) -> None:
    """Define ``backend``'s operators from the spec, for a compiled library that
    implements them (``TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m)``, no ``m.def``):
    the dispatcher refuses a kernel whose C++ signature differs from its schema."""
    for spec in OPS.values():
        name = f"{spec.name}_{backend}"
        if not hasattr(torch.ops.mrl_kernels, name):
            _SCHEMAS.define(f"{name}{spec.schema}")


def register(backend: str, with_fake: bool = True) -> Operators:
    """Register the fakes (unless ``with_fake`` is False) and autograd of
    ``backend``'s operators (defined by :func:`define` or :func:`define_schemas`)
    and return them."""
    ops = {name: getattr(torch.ops.mrl_kernels, f"{name}_{backend}").default for name in OPS}
    for spec in OPS.values():
        if with_fake:
            torch.library.register_fake(qualified_name(spec.name, backend), spec.fake)
        if spec.backward is not None:
            _register_autograd(spec, backend, ops[spec.backward])
    return ops


def _register_autograd(spec: OpSpec, backend: str, backward) -> None:
    """Autograd of ``spec`` by its backward operator: save, by name, the forward
    inputs and outputs the backward takes; route its results to ``spec.grads``.
    Its ``output_mask`` says which of them autograd needs (``needs_input_grad``):
    a frozen table gets no gradient buffer."""
    needed = OPS[spec.backward].inputs[1:-1]  # after the incoming gradient, before output_mask
    positions = [spec.inputs.index(name) for name in spec.grads]

    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        values = {**dict(zip(spec.inputs, inputs)), **dict(zip(spec.outputs, outputs))}
        ctx.tensor_names = [name for name in needed if isinstance(values[name], Tensor)]
        ctx.save_for_backward(*(values[name] for name in ctx.tensor_names))
        ctx.others = {name: values[name] for name in needed if name not in ctx.tensor_names}

    def grad(ctx, grad_output, *_unused):
        values = {**dict(zip(ctx.tensor_names, ctx.saved_tensors)), **ctx.others}
        mask = [ctx.needs_input_grad[i] for i in positions]
        computed = backward(grad_output.contiguous(), *(values[name] for name in needed), mask)
        grads = {name: g for name, g, wanted in zip(spec.grads, computed, mask) if wanted}
        return tuple(grads.get(name) for name in spec.inputs)

    torch.library.register_autograd(qualified_name(spec.name, backend), grad, setup_context=setup_context)
