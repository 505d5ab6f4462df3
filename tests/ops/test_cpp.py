"""The C++ backend: thread-count independence, build paths, dtype refusal."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.ops import registry
from mrl_kernels.ops.backends import cpp
from mrl_kernels.ops.spec import OPS
from mrl_kernels.ops.testing import make_inputs


def test_the_cpp_backend_loads_with_every_operator_of_the_spec():
    assert "cpp" in mk.available_backends("cpu"), registry._UNAVAILABLE.get("cpp")
    for spec in OPS.values():
        assert str(getattr(torch.ops.mrl_kernels, f"{spec.name}_cpp").default._schema) == \
            str(torch._C.parse_schema(f"mrl_kernels::{spec.name}_cpp{spec.schema}"))


def test_the_cpp_sources_define_no_schema_of_their_own():
    # every schema is written once, in the spec: the C++ only implements (TORCH_LIBRARY_IMPL)
    sources = cpp.sources()
    assert {p.name for p in sources} >= {"mns_cpu.cpp", "softmax_cpu.cpp", "prefix_topk_cpu.cpp", "lazy_adam_cpu.cpp"}
    for path in sources:
        text = path.read_text()
        assert "TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m)" in text and "m.def(" not in text, path
        assert "TORCH_LIBRARY(" not in text and "TORCH_LIBRARY_FRAGMENT(" not in text, path


MISMATCHED = """
#include <torch/library.h>
// takes one argument fewer than the spec's mns_sample
at::Tensor mns_sample(const at::Tensor& user, const at::Tensor& item_weight, const at::Tensor& candidates) {
  return candidates;
}
TORCH_LIBRARY_IMPL(mrl_kernels, CPU, m) { m.impl("mns_sample_mismatched", &mns_sample); }
"""


@pytest.mark.slow
def test_a_cpp_kernel_whose_signature_differs_from_the_spec_is_refused(tmp_path):
    # the schemas come from the spec (library.define_schemas); loading a C++ kernel whose signature differs is
    # refused by the dispatcher, which ends the process naming the operator, both schemas and the difference
    run = _python(f"""
        from torch.utils import cpp_extension
        from mrl_kernels.ops import library
        library.define_schemas("mismatched")
        cpp_extension.load_inline("mismatched", cpp_sources=[{MISMATCHED!r}], is_python_module=False)
        print("loaded")
    """, tmp_path)
    assert run.returncode != 0 and "loaded" not in run.stdout
    for words in ("Inferred operator schema for a C++ kernel function doesn't match the expected function schema",
                  "operator: mrl_kernels::mns_sample_mismatched", "int[] dims", "The number of arguments is different"):
        assert words in run.stderr, run.stderr[:3000]


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


def test_without_the_built_library_every_source_is_handed_to_the_compiler(monkeypatch):
    # the wiring of the first-use build (the compile itself runs with the slow tests, below): the sources setup.py
    # builds, with its flags
    import importlib.util
    from pathlib import Path

    from torch.utils import cpp_extension

    find, calls = importlib.util.find_spec, []
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mrl_kernels._C" else find(name, *a))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs))
    cpp._load_library()
    package = Path(mk.__file__).parent
    assert len(calls) == 1 and calls[0]["name"] == "mrl_kernels_cpu" and not calls[0]["is_python_module"]
    assert calls[0]["sources"] == sorted(str(p) for p in package.glob("**/*_cpu.cpp"))
    assert {p.name for p in map(Path, calls[0]["sources"])} >= {"mns_cpu.cpp", "softmax_cpu.cpp", "als_cpu.cpp"}
    assert "-O3" in calls[0]["extra_cflags"] and "-fopenmp" in calls[0]["extra_ldflags"]


@pytest.mark.slow
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


def test_a_library_built_from_older_sources_is_refused_by_name_and_auto_falls_back():
    # a mrl_kernels/_C built before an operator was added loads without it: here the dispatcher is made to
    # report no CPU kernel for the softmax over every item, as such a library's does
    run = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import warnings, torch
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        torch._C._dispatch_has_kernel_for_dispatch_key = lambda name, key: (
            "full_softmax" not in name and has_kernel(name, key))
        import mrl_kernels as mk
        torch.manual_seed(0)
        user, items = torch.randn(3, 8), torch.randn(11, 8)
        pos_ids = torch.tensor([1, 5, 10])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = mk.mrl_softmax_loss(user, items[pos_ids], items, None, [4, 8], pos_ids=pos_ids)
        print("warning:", *[w.message for w in caught])
        expected = mk.mrl_softmax_loss(user, items[pos_ids], items, None, [4, 8], pos_ids=pos_ids, backend="torch")
        print("equal:", torch.equal(loss, expected))
        try:
            mk.mrl_softmax_loss(user, items[pos_ids], items, None, [4, 8], pos_ids=pos_ids, backend="cpp")
        except RuntimeError as e:
            print("error:", e)
    """)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "has no kernel for full_softmax_lse, full_softmax_lse_backward" in run.stdout
    assert "rebuild it: pip install --no-build-isolation -e ." in run.stdout
    assert "equal: True" in run.stdout
    assert "error: backend='cpp' is not available here" in run.stdout
