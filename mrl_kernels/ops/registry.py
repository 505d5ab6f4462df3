"""Which backend runs a call.

The registry knows only where backends live: every module of the
:mod:`mrl_kernels.ops.backends` package that declares ``BACKEND`` (a
:class:`mrl_kernels.ops.library.Backend`). Everything else (name, devices, dtypes,
widths, how to load) is the backend's own declaration.

``backend="auto"`` is a rule, not a measurement: the backend that declares
itself preferred on the tensors' device type (``preferred_on``), if it loads here
and takes the tensors' width and dtype; otherwise the fallback backend (the
PyTorch reference). A preferred backend that fails to load is reported by one
warning.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
import torch

from . import backends as _package
from .library import Backend, Operators

__all__ = ["declared", "names", "operator", "operator_for", "used", "available_backends"]


def _discover() -> dict[str, Backend]:
    found = []
    for module in pkgutil.iter_modules(_package.__path__):
        backend = getattr(importlib.import_module(f"{_package.__name__}.{module.name}"), "BACKEND", None)
        if isinstance(backend, Backend):
            found.append(backend)
    found.sort(key=lambda b: (not b.fallback, b.name))
    return {b.name: b for b in found}


# found once, at import (backend modules are cheap to import), so that resolving
# a backend inside torch.compile reads a dict and touches no file
_DECLARED = _discover()


def declared() -> dict[str, Backend]:
    """Every backend declared in :mod:`mrl_kernels.ops.backends`, the fallback first."""
    return _DECLARED


def names() -> tuple[str, ...]:
    return tuple(declared())


_LOADED: dict[str, Operators] = {}
_UNAVAILABLE: dict[str, str] = {}
_WARNED: set[str] = set()


def _load(name: str) -> Operators | None:
    """The operators of ``name``, loaded on first use; None (the reason kept in
    ``_UNAVAILABLE``) when it cannot be loaded here."""
    if name not in _LOADED and name not in _UNAVAILABLE:
        try:
            _LOADED[name] = declared()[name].load()
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            _UNAVAILABLE[name] = f"{type(exc).__name__}: {exc}"
    return _LOADED.get(name)


def _fallback() -> Backend:
    return next(b for b in declared().values() if b.fallback)


def _choose(backend: str, device: torch.device, width: int, dtype: torch.dtype) -> str:
    """The name of the backend that runs ``width``-wide ``dtype`` tensors on
    ``device`` (``backend="auto"``: see the module's docstring), loaded."""
    if backend == "auto":
        for found in declared().values():
            if device.type in found.preferred_on and found.runs_on(device.type):
                if _load(found.name) is None:
                    _warn_fallback(found.name)
                elif found.misfit(width, dtype) is None:
                    return found.name
        _load(_fallback().name)
        return _fallback().name
    if backend not in declared():
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, names()))}; got {backend!r}")
    found = declared()[backend]
    if not found.runs_on(device.type):
        raise ValueError(f"backend={backend!r} does not run on {device.type} tensors")
    if _load(backend) is None:
        raise RuntimeError(f"backend={backend!r} is not available here: {_UNAVAILABLE[backend]}")
    misfit = found.misfit(width, dtype)
    if misfit is not None:
        raise ValueError(f"backend={backend!r} {misfit}")
    return backend


_USED: dict[str, str] = {}


def operator(op: str, backend: str, device: torch.device, width: int, dtype: torch.dtype):
    """Operator ``op`` of the backend that runs these tensors, recording which
    backend that was (:func:`used`)."""
    name = _choose(backend, device, width, dtype)
    _USED[op] = name
    return _LOADED[name][op]


def operator_for(op: str, backend: str, rows: torch.Tensor):
    """:func:`operator` for ``rows``' device, width and dtype (``rows``: the
    call's user, query or parameter rows)."""
    return operator(op, backend, rows.device, rows.shape[1], rows.dtype)


def used() -> dict[str, str]:
    """Each public operator called in this process -> the backend its latest call ran on."""
    return dict(_USED)


def _warn_fallback(name: str) -> None:
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"mrl_kernels: the {name} backend is not available ({_UNAVAILABLE[name]}); "
            f"backend='auto' uses the {_fallback().name} backend instead",
            RuntimeWarning,
            stacklevel=5,  # the caller of the public operator
        )


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` here (loading each once)."""
    device = torch.device(device)
    return [name for name, b in declared().items() if b.runs_on(device.type) and _load(name) is not None]
