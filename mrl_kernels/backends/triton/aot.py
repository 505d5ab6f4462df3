"""Compile-only check of the Triton kernels, no GPU needed.

``python -m mrl_kernels.backends.triton.aot`` compiles every kernel variant, for
every block configuration the launchers can pick and for float32 and bfloat16
inputs, for ``GPUTarget("cuda", 80, 32)`` (A100) and ``("cuda", 90, 32)`` (H100),
reads each cubin's resource usage (``cuobjdump``), prints a table (kernel,
config, arch, registers, spilled bytes, shared memory) and exits non-zero if a
compile fails or anything spills beyond its allowance (``SPILL_ALLOWANCE``).

Written for the Triton version in ``TRITON_VERSION``, which the ``test`` extra
pins (``ASTSource`` and ``triton.compile``'s arguments change between releases);
on another version it says so and still tries.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import kernels

TRITON_VERSION = "3.9"
ARCHS = (80, 90)
DTYPES = {"fp32": "*fp32", "bf16": "*bf16"}

# (kernel name, kernel, its constexpr flags)
VARIANTS = [
    ("mns_bpr_loss.shared", kernels._mrl_forward_kernel, dict(GATHER=True, PER_LEVEL=False, COMPUTE_LOSS=True)),
    ("mns_bpr_loss.per_level", kernels._mrl_forward_kernel, dict(GATHER=True, PER_LEVEL=True, COMPUTE_LOSS=True)),
    ("mns_sample.shared", kernels._mrl_forward_kernel, dict(GATHER=True, PER_LEVEL=False, COMPUTE_LOSS=False)),
    ("mns_sample.per_level", kernels._mrl_forward_kernel, dict(GATHER=True, PER_LEVEL=True, COMPUTE_LOSS=False)),
    ("mrl_bpr_loss", kernels._mrl_forward_kernel, dict(GATHER=False, PER_LEVEL=True, COMPUTE_LOSS=True)),
    ("mns_bpr_loss.backward", kernels._mrl_backward_kernel, dict(GATHER=True)),
    ("mrl_bpr_loss.backward", kernels._mrl_backward_kernel, dict(GATHER=False)),
    *((f"mrl_softmax_loss{part}.{layout}{'.cosine' * cosine}", kernel, dict(PER_LEVEL=layout == "per_level",
                                                                               COSINE=cosine))
      for part, kernel in (("", kernels._softmax_forward_kernel), (".backward", kernels._softmax_backward_kernel))
      for layout in ("shared", "per_level") for cosine in (False, True)),
]
# Stack bytes a kernel may use (the others: none). The softmax kernels keep 8 to 32
# bytes of stack in 9 to 15 of their 224 configurations, about as often with 128- to
# 512-element tiles and 1 to 8 warps (measured with this check).
SPILL_ALLOWANCE = {"mrl_softmax_loss": 32}

# kernels with one fixed tile (not the launchers' per-width configs): name, kernel, constexprs
FIXED = [
    ("prefix_topk.scores", kernels._prefix_score_kernel,
     dict(FP64=False, BLOCK_B=kernels.TOPK_BLOCK_B, BLOCK_N=kernels.TOPK_BLOCK_N, stride_qd=1, stride_nd=1)),
]


def _example_dims(width: int) -> tuple[int, ...]:
    """Five nested widths ending at ``width`` (fewer for narrow rows)."""
    return tuple(sorted({max(1, width >> shift) for shift in (4, 3, 2, 1, 0)}))


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """The argument types the launchers (``kernels.forward`` / ``kernels.backward``
    and the softmax ones) pass with ``dtype`` inputs: float tensors, the loss and
    its incoming gradient in ``dtype``; ids int64; weights, coef, lse and the
    gathered item gradient in float32; the inverse temperature a float; an unused
    pointer gets the tensor the launcher passes in its place (the backward of
    ``mrl_bpr_loss`` passes coef for the negatives)."""
    gather = constexprs.get("GATHER", fn is kernels._softmax_backward_kernel)
    acc = "*fp32"
    pointers = {
        "cand_ptr": "*i64",
        "negatives_ptr": "*i64" if gather or fn is kernels._mrl_forward_kernel else acc,
        "weight_ptr": acc,
        "coef_ptr": acc,
        "lse_ptr": acc,
        "grad_item_ptr": acc if gather else dtype,
        "grad_neg_ptr": acc if gather else dtype,
        "out_ptr": acc,
    }
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = pointers.get(name, dtype)
        elif name == "inv_t":
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


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


def compile_one(job: tuple) -> dict:
    name, dtype, cfg, arch = job
    fixed = {n: (f, c) for n, f, c in FIXED}
    if name in fixed:
        fn, constexprs = fixed[name]
        width = constexprs["BLOCK_N"]
    else:
        fn, flags = next((f, fl) for n, f, fl in VARIANTS if n == name)
        width = cfg["BLOCK_D"]
        dims = _example_dims(width)
        constexprs = dict(flags, DIMS=dims, L=len(dims), FP64=False, BLOCK_B=cfg["BLOCK_B"], BLOCK_D=width,
                          BLOCK_L=max(2, triton.next_power_of_2(len(dims))), stride_ud=1, stride_pd=1,
                          stride_id=1, stride_nd=1)
        constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    row = {"kernel": name, "dtype": dtype, "BLOCK_B": constexprs["BLOCK_B"], "BLOCK_D": width,
           "num_warps": cfg["num_warps"], "arch": f"sm_{arch}"}
    try:
        src = ASTSource(fn=fn, signature=_signature(fn, DTYPES[dtype], constexprs), constexprs=constexprs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": cfg["num_warps"]})
        row.update(_resource_usage(compiled.asm["cubin"]), shared=compiled.metadata.shared, error="")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.update(registers=-1, spills=-1, shared=-1, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return row


def jobs() -> list[tuple]:
    tiled = [(name, dtype, cfg, arch) for name, _, _ in VARIANTS for dtype in DTYPES
             for cfg in kernels.configs() for arch in ARCHS]
    return tiled + [(name, dtype, {"num_warps": kernels.WARPS}, arch) for name, _, _ in FIXED for dtype in DTYPES
                    for arch in ARCHS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrl_kernels.backends.triton.aot", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if not triton.__version__.startswith(TRITON_VERSION):
        print(f"note: written for Triton {TRITON_VERSION}.x, running {triton.__version__}", file=sys.stderr)
    with ProcessPoolExecutor(args.workers) as pool:
        table = pd.DataFrame(list(pool.map(compile_one, jobs())))
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(table.drop(columns="error").to_string(index=False))
    allowed = table.kernel.map(lambda name: SPILL_ALLOWANCE.get(name.split(".")[0], 0))
    failed, spilled = table[table.error != ""], table[table.spills > allowed]
    for _, row in failed.iterrows():
        print(f"FAILED {row.kernel} {row.dtype} BLOCK_D={row.BLOCK_D} {row.arch}: {row.error}", file=sys.stderr)
    for _, row in spilled.iterrows():
        print(f"SPILLS {row.kernel} {row.dtype} BLOCK_D={row.BLOCK_D} {row.arch}: {row.spills} bytes", file=sys.stderr)
    print(f"{len(table)} compiles, {len(failed)} failed, {len(spilled)} spilled (beyond allowances: "
          f"{int((table.spills > 0).sum())} use some stack); max registers {table.registers.max()}")
    return 1 if len(failed) or len(spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
