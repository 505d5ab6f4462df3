"""Compile-only check of the Triton kernels, no GPU needed.

``python -m mrl_kernels.ops.backends.triton.aot`` calls every operator's Triton
launcher (the backend's ``IMPLEMENTATIONS``, every spec entry, each candidate
layout and score where the operator has them) for float32 and bfloat16 inputs
at one width per block configuration the launchers can pick, inside
:func:`~mrl_kernels.ops.triton_common.captured_launches`: nothing runs, and each
recorded launch gives its kernel, signature and constants exactly as the
launcher passes them. Each distinct launch is compiled for
``GPUTarget("cuda", 80, 32)`` (A100) and ``("cuda", 90, 32)`` (H100); the check
reads each cubin's resource usage (``cuobjdump``), prints a table (case, kernel,
config, arch, registers, spilled bytes, shared memory) and exits non-zero if a
compile fails or anything spills beyond its allowance (``SPILL_ALLOWANCE``).
``--quick``: one width, float32, sm_90: every kernel variant once.

Written for the Triton version in ``TRITON_VERSION``, which the ``test`` extra
pins (``ASTSource`` and ``triton.compile``'s arguments change between releases);
on another version it says so and still tries.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ... import library
from ...common import LAYOUTS, acc_dtype
from ...spec import OPS
from ...testing import make_inputs
from ...triton_common import captured_launches, configs

TRITON_VERSION = "3.9"
ARCHS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float64: "*fp64",
                 torch.int64: "*i64", torch.int32: "*i32"}
# Stack bytes the kernels of a case may use (the others: none), by case-name prefix. The
# softmax kernels keep 8 to 32 bytes of stack in 9 to 15 of their 224 configurations,
# about as often with 128- to 512-element tiles and 1 to 8 warps (measured with this check).
# The per-level MNS + loss forward keeps 8 bytes in one of its 28: bfloat16, BLOCK_D 64, sm_80
# (seen once the check took the launchers' own specialisation, the candidates' unit stride a
# constant as a real launch makes it; 128 registers, the cap at 4 warps).
# The softmax backward over per-level pools with cosine scores and the logQ correction (one load a
# candidate more than the 243 registers it holds without) keeps 8 to 96 bytes in 14 of its 28
# (float32, BLOCK_D 128, sm_90: 96).
# The forward of the softmax over every item (three-TF32 tl.dot scores) keeps 48 to 112 bytes in float32 on
# sm_80 at widths 128 to 1024 (none on sm_90, none in bfloat16, none at width 64; no tile and warp count of
# five tried is spill-free on both architectures).
SPILL_ALLOWANCE = {"mrl_softmax_loss_backward.per-level.cosine.log-q": 96, "mrl_softmax_loss": 32,
                   "mns_bpr_loss.per-level": 8, "full_softmax_lse_backward": 0, "full_softmax_lse": 112}
QUICK_WIDTH = 64
NUM_STAGES = 3  # Triton's software-pipelining stages on CUDA where a launch sets none


def cases() -> list[tuple[str, str, str | None, bool | None, bool]]:
    """``(case name, op, layout, cosine, corrected)`` for every operator of the
    spec, each candidate layout and score it takes, with and without the logQ
    corrections where it takes them."""
    found = []
    for spec in OPS.values():
        layouts = LAYOUTS if "candidates" in spec.inputs else (None,)
        scores = (False, True) if "cosine" in spec.inputs else (None,)
        corrections = (False, True) if "log_q" in spec.inputs else (False,)
        for layout in layouts:
            for cosine in scores:
                for corrected in corrections:
                    name = spec.name + (f".{layout}" if layout else "") + (".cosine" if cosine else "") + \
                        (".log-q" if corrected else "")
                    found.append((name, spec.name, layout, cosine, corrected))
    return found


def _example_dims(width: int) -> list[int]:
    """Five nested widths ending at ``width`` (fewer for narrow rows)."""
    return sorted({max(1, width >> shift) for shift in (4, 3, 2, 1, 0)})


def example_arguments(op: str, width: int, dtype: torch.dtype, layout: str | None, cosine: bool | None,
                      corrected: bool = False) -> list:
    """Arguments of ``op`` (by the spec's argument names) at ``width`` in ``dtype``
    (with the logQ corrections if ``corrected``): small, well-formed, never read
    (the launches are only captured)."""
    dims = _example_dims(width)
    x = make_inputs(4, width, 20, 3, dims, layout or "per-level", dtype=dtype)
    levels, acc = len(dims), acc_dtype(dtype)
    # per candidate, or per item for an operator over every item (no candidates)
    log_q = torch.zeros(x["candidates"].shape if "candidates" in OPS[op].inputs else (20,), dtype=acc) \
        if corrected else None
    values = {**x, "grad": torch.ones(4, dtype=dtype), "weights": torch.ones(levels),
              "coef": torch.ones(4, levels, dtype=acc), "lse": torch.ones(4, levels, dtype=acc),
              "negatives": torch.zeros(4, levels, dtype=torch.int64), "temperature": 1.0, "cosine": cosine,
              "output_mask": [True, True, True], "query": x["user"], "narrow": x["item_weight"][:, :dims[0]],
              "k": 2, "shortlist": 5, "exclude_offsets": torch.zeros(5, dtype=torch.int64),
              "exclude_ids": torch.zeros(0, dtype=torch.int64), "exclude": x["candidates"].flatten(1)[:, 0],
              "factors": x["user"], "other": x["item_weight"],
              "gram": torch.eye(width, dtype=dtype), "indptr": torch.tensor([0, 2, 2, 3, 3]),
              "indices": torch.tensor([1, 5, 0]), "alphas": torch.full((levels,), 2.0), "cg_steps": 1,
              "log_q": log_q, "pos_log_q": None if log_q is None else torch.zeros(4, dtype=acc),
              "param": x["item_weight"], "exp_avg": torch.zeros_like(x["item_weight"]),
              "exp_avg_sq": torch.zeros_like(x["item_weight"]), "values": torch.ones(3, width, dtype=dtype),
              "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step_size": 0.1}
    return [values[name] for name in OPS[op].inputs]


def _signature(kernel, arguments: dict) -> tuple[dict, dict]:
    """The ``(signature, constexprs)`` Triton's JIT would specialise ``kernel`` to
    for these launch ``arguments``: constexpr parameters and ints equal to 1 are
    constants, tensors pointers of their dtype, other ints i32 (i64 if large),
    floats fp32."""
    signature, constexprs = {}, {}
    for name, param in inspect.signature(kernel.fn).parameters.items():
        value = arguments[name]
        declared = param.annotation in (tl.constexpr, "tl.constexpr")  # a string under postponed annotations
        if declared or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    return signature, constexprs


def launches(quick: bool = False) -> list[dict]:
    """Every distinct kernel launch of the launchers, as compile jobs."""
    implementations = library.implementations("triton")
    widths = [QUICK_WIDTH] if quick else [cfg["BLOCK_D"] for cfg in configs()]
    dtypes = {"fp32": DTYPES["fp32"]} if quick else DTYPES
    jobs, seen = [], set()
    for name, op, layout, cosine, corrected in cases():
        for dtype_name, dtype in dtypes.items():
            for width in widths:
                with captured_launches() as captured:
                    implementations[op](*example_arguments(op, width, dtype, layout, cosine, corrected))
                for kernel, arguments in captured:
                    signature, constexprs = _signature(kernel, arguments)
                    key = (kernel.fn.__name__, tuple(signature.items()), tuple(constexprs.items()),
                           arguments.get("num_warps"), arguments.get("num_stages"))
                    if key in seen:
                        continue
                    seen.add(key)
                    jobs.append(dict(case=name, kernel=(kernel.fn.__module__, kernel.fn.__name__), dtype=dtype_name,
                                     signature=signature,
                                     constexprs=constexprs, num_warps=arguments.get("num_warps", 4),
                                     num_stages=arguments.get("num_stages", NUM_STAGES)))
    return jobs


def _resource_usage(cubin: bytes) -> dict:
    """Registers, spilled bytes (stack frame + local memory) from ``cuobjdump``."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        report = subprocess.run([cuobjdump, "--dump-resource-usage", f.name],
                                capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    usage = {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", report)}
    return {"registers": usage["REG"], "spills": usage["STACK"] + usage["LOCAL"]}


def compile_one(job: dict) -> dict:
    module, name = job["kernel"]
    kernel = getattr(importlib.import_module(module), name)
    constexprs = job["constexprs"]
    row = {"case": job["case"], "kernel": name, "dtype": job["dtype"],
           "BLOCK_B": constexprs.get("BLOCK_B"), "BLOCK_D": constexprs.get("BLOCK_D", constexprs.get("BLOCK_N")),
           "num_warps": job["num_warps"], "arch": f"sm_{job['arch']}"}
    try:
        src = ASTSource(fn=kernel, signature=job["signature"], constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32),
                                  options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
        row.update(_resource_usage(compiled.asm["cubin"]), shared=compiled.metadata.shared, error="")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.update(registers=-1, spills=-1, shared=-1, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return row


def jobs(quick: bool = False) -> list[dict]:
    archs = (90,) if quick else ARCHS
    return [dict(launch, arch=arch) for launch in launches(quick) for arch in archs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrl_kernels.ops.backends.triton.aot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="one width, float32, sm_90: every kernel variant once")
    args = parser.parse_args(argv)
    if not triton.__version__.startswith(TRITON_VERSION):
        print(f"note: written for Triton {TRITON_VERSION}.x, running {triton.__version__}", file=sys.stderr)
    with ProcessPoolExecutor(args.workers) as pool:
        table = pd.DataFrame(list(pool.map(compile_one, jobs(args.quick))))
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(table.drop(columns="error").to_string(index=False))
    allowed = table.case.map(lambda case: next((b for p, b in SPILL_ALLOWANCE.items() if case.startswith(p)), 0))
    failed, spilled = table[table.error != ""], table[table.spills > allowed]
    for _, row in failed.iterrows():
        print(f"FAILED {row.case} {row['dtype']} BLOCK_D={row.BLOCK_D} {row.arch}: {row.error}", file=sys.stderr)
    for _, row in spilled.iterrows():
        print(f"SPILLS {row.case} {row['dtype']} BLOCK_D={row.BLOCK_D} {row.arch}: {row.spills} bytes", file=sys.stderr)
    print(f"{len(table)} compiles of {table.case.nunique()} cases, {len(failed)} failed, {len(spilled)} spilled "
          f"(beyond allowances: {int((table.spills > 0).sum())} use some stack); max registers {table.registers.max()}")
    return 1 if len(failed) or len(spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
