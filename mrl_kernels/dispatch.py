"""Operator registration and backend choice.

Each backend provides the same five ``torch.library`` operators, named
``mrl_kernels::<op>_<backend>``:

==========================  ==============================================================
``mns_sample``              ``(user, item_weight, candidates, dims) -> negatives (B, L)``
``mrl_bpr_loss``            ``(user, pos, neg, dims, weights) -> (loss (B,), coef (B, L))``
``mrl_bpr_loss_backward``   ``(grad, user, pos, neg, coef, dims) -> (d user, d pos, d neg)``
``mns_bpr_loss``            ``(user, pos, item_weight, candidates, dims, weights)
                            -> (loss (B,), negatives (B, L), coef (B, L))``
``mns_bpr_loss_backward``   ``(grad, user, pos, item_weight, negatives, coef, dims)
                            -> (d user, d pos, d item_weight)``
==========================  ==============================================================

``coef[b, l] = w_l * sigmoid(margin_l)`` is what the forward saves for the
backward. Every output is contiguous. The fake (shape) functions and the autograd formulas are shared by all
backends and registered here, so ``torch.compile`` traces any of them without a
graph break. ``"torch"`` (the reference) is defined here; ``mrl_kernels.triton``
and ``mrl_kernels.cpp`` register the others when they are importable.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import reference

NAMESPACE = "mrl_kernels"
BACKENDS = ("torch", "triton", "cpp")
OP_NAMES = ("mns_sample", "mrl_bpr_loss", "mrl_bpr_loss_backward", "mns_bpr_loss", "mns_bpr_loss_backward")


@dataclass(frozen=True)
class Backend:
    """The registered operators of one backend (``torch.ops.mrl_kernels.*``)."""

    name: str
    mns_sample: Callable
    mrl_bpr_loss: Callable
    mns_bpr_loss: Callable
    max_width: int | None = None  # the widest D its kernels take
    dtypes: tuple[torch.dtype, ...] | None = None  # the float dtypes it takes (None: all)


# ---------------------------------------------------------------- shared fakes
def _fake_mns_sample(user, item_weight, candidates, dims):
    return user.new_empty((user.shape[0], len(dims)), dtype=torch.int64)


def _fake_mrl_bpr_loss(user, pos, neg, dims, weights):
    coef = user.new_empty((user.shape[0], len(dims)), dtype=reference.acc_dtype(user.dtype))
    return user.new_empty(user.shape[0]), coef


def _fake_mrl_bpr_loss_backward(grad, user, pos, neg, coef, dims):
    return user.new_empty(user.shape), pos.new_empty(pos.shape), neg.new_empty(neg.shape)


def _fake_mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
    loss, coef = _fake_mrl_bpr_loss(user, pos, None, dims, weights)
    return loss, _fake_mns_sample(user, item_weight, candidates, dims), coef


def _fake_mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims):
    return user.new_empty(user.shape), pos.new_empty(pos.shape), item_weight.new_empty(item_weight.shape)


FAKES = {
    "mns_sample": _fake_mns_sample,
    "mrl_bpr_loss": _fake_mrl_bpr_loss,
    "mrl_bpr_loss_backward": _fake_mrl_bpr_loss_backward,
    "mns_bpr_loss": _fake_mns_bpr_loss,
    "mns_bpr_loss_backward": _fake_mns_bpr_loss_backward,
}


# ------------------------------------------------------------ typed op bodies
def typed_op_functions(impl) -> dict[str, Callable]:
    """Functions with the annotations ``torch.library.custom_op`` / ``triton_op``
    read the schema from, each calling ``impl.<op>``."""

    def mns_sample(user: Tensor, item_weight: Tensor, candidates: Tensor, dims: list[int]) -> Tensor:
        return impl.mns_sample(user, item_weight, candidates, dims)

    def mrl_bpr_loss(
        user: Tensor, pos: Tensor, neg: Tensor, dims: list[int], weights: Tensor
    ) -> tuple[Tensor, Tensor]:
        return impl.mrl_bpr_loss(user, pos, neg, dims, weights)

    def mrl_bpr_loss_backward(
        grad: Tensor, user: Tensor, pos: Tensor, neg: Tensor, coef: Tensor, dims: list[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return impl.mrl_bpr_loss_backward(grad, user, pos, neg, coef, dims)

    def mns_bpr_loss(
        user: Tensor, pos: Tensor, item_weight: Tensor, candidates: Tensor, dims: list[int], weights: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return impl.mns_bpr_loss(user, pos, item_weight, candidates, dims, weights)

    def mns_bpr_loss_backward(
        grad: Tensor, user: Tensor, pos: Tensor, item_weight: Tensor, negatives: Tensor, coef: Tensor, dims: list[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        return impl.mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims)

    return {
        "mns_sample": mns_sample,
        "mrl_bpr_loss": mrl_bpr_loss,
        "mrl_bpr_loss_backward": mrl_bpr_loss_backward,
        "mns_bpr_loss": mns_bpr_loss,
        "mns_bpr_loss_backward": mns_bpr_loss_backward,
    }


def op_name(op: str, backend: str) -> str:
    return f"{NAMESPACE}::{op}_{backend}"


def define_ops(backend: str, impl, decorator=torch.library.custom_op, with_fake: bool = True,
               max_width: int | None = None, dtypes: tuple[torch.dtype, ...] | None = None) -> Backend:
    """Define the five operators of ``backend`` from ``impl`` (an object with one
    function per operator) with ``decorator`` (``custom_op`` or ``triton_op``),
    then register their fakes and autograd. ``with_fake=False`` for decorators
    that trace the body themselves (``triton_op``)."""
    for op, fn in typed_op_functions(impl).items():
        decorator(op_name(op, backend), mutates_args=())(fn)
    return register(backend, with_fake=with_fake, max_width=max_width, dtypes=dtypes)


def register(backend: str, with_fake: bool = True, max_width: int | None = None,
             dtypes: tuple[torch.dtype, ...] | None = None) -> Backend:
    """Register fakes (unless ``with_fake`` is False) and autograd for the five
    operators of ``backend``, which must already exist (defined in Python by
    :func:`define_ops` or in C++ by ``TORCH_LIBRARY_FRAGMENT``)."""
    ops = {op: getattr(torch.ops.mrl_kernels, f"{op}_{backend}").default for op in OP_NAMES}
    if with_fake:
        for op, fake in FAKES.items():
            torch.library.register_fake(op_name(op, backend), fake)

    mrl_backward, mns_backward = ops["mrl_bpr_loss_backward"], ops["mns_bpr_loss_backward"]

    def mrl_setup(ctx, inputs, output):
        user, pos, neg, dims, _ = inputs
        ctx.save_for_backward(user, pos, neg, output[1])
        ctx.dims = dims

    def mrl_grad(ctx, grad_loss, _grad_coef):
        user, pos, neg, coef = ctx.saved_tensors
        return (*mrl_backward(grad_loss.contiguous(), user, pos, neg, coef, ctx.dims), None, None)

    def mns_setup(ctx, inputs, output):
        user, pos, item_weight, _, dims, _ = inputs
        ctx.save_for_backward(user, pos, item_weight, output[1], output[2])
        ctx.dims = dims

    def mns_grad(ctx, grad_loss, _grad_negatives, _grad_coef):
        user, pos, item_weight, negatives, coef = ctx.saved_tensors
        grads = mns_backward(grad_loss.contiguous(), user, pos, item_weight, negatives, coef, ctx.dims)
        return (*grads, None, None, None)

    torch.library.register_autograd(op_name("mrl_bpr_loss", backend), mrl_grad, setup_context=mrl_setup)
    torch.library.register_autograd(op_name("mns_bpr_loss", backend), mns_grad, setup_context=mns_setup)
    return Backend(backend, ops["mns_sample"], ops["mrl_bpr_loss"], ops["mns_bpr_loss"], max_width, dtypes)


# ------------------------------------------------------------- torch backend
class TorchImpl:
    """The reference backend: the functions of :mod:`mrl_kernels.reference`."""

    mns_sample = staticmethod(reference.mns_sample)

    @staticmethod
    def mrl_bpr_loss(user, pos, neg, dims, weights):
        return reference.mrl_bpr_loss(user, pos, neg, dims, weights), reference.mrl_bpr_coef(
            user, pos, neg, dims, weights
        )

    mrl_bpr_loss_backward = staticmethod(reference.mrl_bpr_loss_backward)

    @staticmethod
    def mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
        negatives = reference.mns_sample(user, item_weight, candidates, dims)
        loss, coef = TorchImpl.mrl_bpr_loss(user, pos, item_weight[negatives], dims, weights)
        return loss, negatives, coef

    @staticmethod
    def mns_bpr_loss_backward(grad, user, pos, item_weight, negatives, coef, dims):
        grad_user, grad_pos, grad_neg = reference.mrl_bpr_loss_backward(
            grad, user, pos, item_weight[negatives], coef, dims
        )
        grad_items = item_weight.new_zeros(item_weight.shape).index_add_(
            0, negatives.reshape(-1), grad_neg.reshape(-1, item_weight.shape[1])
        )
        return grad_user, grad_pos, grad_items


_REGISTERED: dict[str, Backend] = {"torch": define_ops("torch", TorchImpl)}
_UNAVAILABLE: dict[str, str] = {}


def _load(name: str) -> Backend | None:
    """The backend ``name``, importing its module on first use; None (and the
    reason in ``_UNAVAILABLE``) when it cannot run here."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _UNAVAILABLE:
        return None
    try:
        if name == "triton":
            from .triton import ops as module
        else:
            from . import cpp as module
        _REGISTERED[name] = module.BACKEND
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        _UNAVAILABLE[name] = f"{type(exc).__name__}: {exc}"
        return None
    return _REGISTERED[name]


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _runs_on(name: str, device: torch.device) -> bool:
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())
    if name == "cpp":
        return device.type == "cpu"
    return True


def _misfit(found: Backend, width: int, dtype: torch.dtype) -> str | None:
    """Why ``found`` cannot take ``width``-wide ``dtype`` tensors (None if it can)."""
    if found.max_width is not None and width > found.max_width:
        return f"takes embedding widths up to {found.max_width}, got {width}"
    if found.dtypes is not None and dtype not in found.dtypes:
        return f"takes {' and '.join(str(d).replace('torch.', '') for d in found.dtypes)}, got {dtype}"
    return None


def resolve(backend: str, device: torch.device, width: int, dtype: torch.dtype) -> Backend:
    """The backend for ``width``-wide ``dtype`` tensors on ``device``. ``"auto"``:
    Triton on CUDA, the C++ kernels on the CPU, each falling back to ``"torch"``
    when it cannot be loaded (with one warning) or does not take such tensors."""
    if backend == "auto":
        preferred = "triton" if device.type == "cuda" else "cpp" if device.type == "cpu" else "torch"
        if preferred != "torch":
            found = _load(preferred)
            if found is None:
                _warn_fallback(preferred)
            elif _misfit(found, width, dtype) is None:
                return found
        return _REGISTERED["torch"]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if not _runs_on(backend, device):
        raise ValueError(f"backend={backend!r} does not run on {device.type} tensors")
    found = _load(backend)
    if found is None:
        raise RuntimeError(f"backend={backend!r} is not available here: {_UNAVAILABLE[backend]}")
    misfit = _misfit(found, width, dtype)
    if misfit is not None:
        raise ValueError(f"backend={backend!r} {misfit}")
    return found


_WARNED: set[str] = set()


def _warn_fallback(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"mrl_kernels: the {name} backend is not available ({_UNAVAILABLE[name]}); "
            "backend='auto' uses the PyTorch reference instead",
            RuntimeWarning,
            stacklevel=3,
        )


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` here."""
    device = torch.device(device)
    return [name for name in BACKENDS if _runs_on(name, device) and _load(name) is not None]
