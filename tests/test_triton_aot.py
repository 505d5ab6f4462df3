"""The Triton kernels compile for sm_80 and sm_90 without a GPU, without spills."""
import subprocess
import sys

import pytest

from mrl_kernels.backends.triton import MAX_WIDTH

kernels = pytest.importorskip("mrl_kernels.backends.triton.kernels")


def test_every_width_maps_to_a_checked_config():
    checked = {(c["BLOCK_B"], c["BLOCK_D"], c["num_warps"]) for c in kernels.configs()}
    for width in range(1, MAX_WIDTH + 1):
        c = kernels.config(width)
        assert (c["BLOCK_B"], c["BLOCK_D"], c["num_warps"]) in checked
        assert c["BLOCK_D"] >= width


def test_compile_only_check_passes():
    run = subprocess.run([sys.executable, "-m", "mrl_kernels.backends.triton.aot"], capture_output=True, text=True,
                         timeout=900, env={**__import__("os").environ, "TRITON_INTERPRET": "0"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 failed, 0 spilled" in run.stdout
    for name in ("mns_bpr_loss.per_level", "mns_sample.shared", "mrl_bpr_loss.backward", "prefix_topk.scores",
                 "mrl_softmax_loss.backward.shared.cosine"):
        assert name in run.stdout
    assert "sm_80" in run.stdout and "sm_90" in run.stdout
