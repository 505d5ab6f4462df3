"""The C++ backend: thread-count independence, build paths, dtype refusal."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import library, registry
from mrl_kernels.spec import OPS
from mrl_kernels.testing import make_inputs


def test_the_cpp_backend_loads_and_its_schemas_match_the_spec():
    # loading checks every C++ schema against mrl_kernels/spec.py
    assert "cpp" in mk.available_backends("cpu"), registry._UNAVAILABLE.get("cpp")


def test_a_schema_that_differs_from_the_spec_is_refused():
    lib = torch.library.Library("mrl_kernels", "FRAGMENT")  # noqa: F841 - keeps the definitions alive
    for spec in OPS.values():
        schema = spec.schema.replace("int[] dims", "int[] widths") if spec.name == "mns_sample" else spec.schema
        lib.define(f"{spec.name}_mismatched{schema}")
    with pytest.raises(RuntimeError, match=r"backend 'mismatched' defines .*mns_sample_mismatched.* int\[\] widths"
                                           r".* but the operator spec"):
        library.check_schemas("mismatched")
    with pytest.raises(RuntimeError, match="backend 'absent' defines no operator mrl_kernels::mns_sample_absent"):
        library.check_schemas("absent")


def _run(threads):
    torch.set_num_threads(threads)
    # few items and many rows: every item is chosen many times by rows of both threads
    x = make_inputs(300, 64, 40, 16, (4, 8, 16, 32, 64), requires_grad=True)
    leaves = [x["user"], x["pos"], x["item_weight"]]
    loss, negs = mk.mns_bpr_loss(*leaves, x["candidates"], x["dims"], backend="cpp")
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
