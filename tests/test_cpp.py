"""The C++ backend: thread-count independence, build paths, dtype refusal."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mrl_kernels as mk

pytest.importorskip("mrl_kernels.cpp", reason="the C++ kernels are not built here")


def _run(threads):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(n, 64, generator=g).requires_grad_() for n in (300, 300, 40)]
    # few items and many rows: every item is chosen many times by rows of both threads
    cand = torch.randint(0, 40, (300, 5, 16), generator=g)
    loss, negs = mk.mns_bpr_loss(*leaves[:2], leaves[2], cand, (4, 8, 16, 32, 64), backend="cpp")
    loss.backward()
    return [loss.detach(), negs] + [t.grad for t in leaves]


def test_one_and_two_threads_give_identical_results():
    before = torch.get_num_threads()
    try:
        one, two = _run(1), _run(2)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_half_precision_is_refused_by_name_and_auto_falls_back():
    u = torch.randn(3, 8).half()
    with pytest.raises(ValueError, match="backend='cpp' takes float32 and float64, got torch.float16"):
        mk.mrl_bpr_loss(u, u, u[:, None], [8], backend="cpp")
    assert mk.mrl_bpr_loss(u, u, u[:, None], [8]).dtype == torch.float16


HIDE_BUILT = """
import importlib.util
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "mrl_kernels._C" else _find(name, *a)
"""


def _python(code, tmp_path, **env):
    return subprocess.run([sys.executable, "-c", HIDE_BUILT + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), **env})


def test_compiled_on_first_use_when_not_built(tmp_path):
    run = _python("""
        import torch, mrl_kernels as mk
        u = torch.randn(4, 8)
        print(mk.available_backends("cpu"), float(mk.mrl_bpr_loss(u, u, u[:, None], [8], backend="cpp")))
    """, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'cpp'" in run.stdout and "0.693" in run.stdout  # softplus(0)
    assert list(tmp_path.glob("mrl_kernels_cpu/*.so"))


def test_without_a_compiler_auto_warns_once_and_cpp_raises(tmp_path):
    run = _python("""
        import warnings, torch, mrl_kernels as mk
        u = torch.randn(4, 8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mk.mrl_bpr_loss(u, u, u[:, None], [8])
            mk.mrl_bpr_loss(u, u, u[:, None], [8])
        print("warnings:", len([w for w in caught if "cpp backend is not available" in str(w.message)]))
        try:
            mk.mrl_bpr_loss(u, u, u[:, None], [8], backend="cpp")
        except RuntimeError as e:
            print("error:", e)
    """, tmp_path, CXX="/nonexistent/c++", PATH="/nonexistent")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "warnings: 1" in run.stdout
    assert "error: backend='cpp' is not available here" in run.stdout
