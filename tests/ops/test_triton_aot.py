"""The Triton kernels compile for sm_80 and sm_90 without a GPU, without spills:
every kernel once in the default suite, the full sweep (every configuration,
float32 and bfloat16, both architectures) in the slow one."""
import os
import subprocess
import sys

import pytest

from mrl_kernels.ops.backends.triton import MAX_WIDTH
from mrl_kernels.ops.spec import OPS

triton_common = pytest.importorskip("mrl_kernels.ops.triton_common")
aot = pytest.importorskip("mrl_kernels.ops.backends.triton.aot")


def test_every_width_maps_to_a_checked_config():
    checked = {(c["BLOCK_B"], c["BLOCK_D"], c["num_warps"]) for c in triton_common.configs()}
    for width in range(1, MAX_WIDTH + 1):
        c = triton_common.config(width)
        assert (c["BLOCK_B"], c["BLOCK_D"], c["num_warps"]) in checked
        assert c["BLOCK_D"] >= width


def test_the_checked_launches_are_every_operators_own():
    # the cases come from the spec, the kernels and their arguments from the launchers themselves
    launches = aot.launches(quick=True)
    assert {op for _, op, *_ in aot.cases()} == set(OPS)
    assert {job["case"].split(".")[0] for job in launches} == set(OPS)
    kernels = {job["kernel"][1] for job in launches}
    assert kernels == {"_mrl_forward_kernel", "_mrl_backward_kernel", "_softmax_forward_kernel",
                       "_softmax_backward_kernel", "_prefix_score_kernel", "_cg_kernel", "_lazy_adam_kernel",
                       "_lse_kernel", "_user_grad_kernel", "_item_grad_kernel"}
    backward = next(job for job in launches if job["case"] == "mns_bpr_loss_backward")
    assert backward["constexprs"]["GATHER"] is True and backward["constexprs"]["ROWS_GRAD"] is True
    assert backward["signature"]["grad_item_ptr"] == "*fp32" and backward["signature"]["negatives_ptr"] == "*i64"


def _check(*args):
    run = subprocess.run([sys.executable, "-m", "mrl_kernels.ops.backends.triton.aot", *args], capture_output=True,
                         text=True, timeout=1800, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " 0 failed, 0 spilled" in run.stdout
    for name in ("mns_bpr_loss.per-level", "mns_sample.shared", "mrl_bpr_loss_backward", "prefix_topk",
                 "mrl_softmax_loss_backward.shared.cosine", "full_softmax_lse_backward.log-q", "nested_als_solve",
                 "lazy_adam"):
        assert name in run.stdout
    return run.stdout


def test_every_kernel_compiles_once_without_spills():
    out = _check("--quick")
    assert "sm_90" in out
    assert f"of {len(aot.cases())} cases" in out


@pytest.mark.slow
def test_compile_only_sweep_passes():
    out = _check()
    assert "sm_80" in out and "sm_90" in out and "bf16" in out
