"""The generated autograd of the differentiable operators: needs_input_grad
reaches the backward operator (output_mask), for every backend."""
import pytest
import torch

import mrl_kernels as mk

from helpers import DEVICE, FAST, make


def _largest_allocation(step) -> int:
    """The most bytes ``step()`` allocated at once on DEVICE: the largest single CPU
    allocation (the profiler's), or the CUDA peak above what was allocated before."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return max(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("op", ["mns_bpr_loss", "mrl_softmax_loss"])
def test_a_frozen_item_table_gets_no_gradient_buffer(backend, op):
    # autograd's needs_input_grad reaches the backward operator (output_mask): no (N, D) buffer is formed
    N, D = 50_000, 32
    largest = {}
    for frozen in (True, False):
        x = make(8, D, N, 4, (8, 16, 32), "per-level", torch.float32, seed=5)
        user = x["user"].requires_grad_()
        x["item_weight"].requires_grad_(not frozen)

        def step():
            out = getattr(mk, op)(user, x["pos"], x["item_weight"], x["candidates"], x["dims"], backend=backend)
            (out[0] if isinstance(out, tuple) else out).backward()
        largest[frozen] = _largest_allocation(step)
        assert user.grad is not None and (x["item_weight"].grad is None) == frozen
    table = N * D * 4
    assert largest[False] >= table, "the profiler sees the item gradient of a table that needs one"
    assert largest[True] < table / 100, f"a frozen table still cost {largest[True]} bytes in one allocation"


@pytest.mark.parametrize("backend", ["torch", *FAST])
@pytest.mark.parametrize("op", ["mns_bpr_loss", "mrl_softmax_loss", "mrl_bpr_loss"])
def test_each_gradient_alone_equals_its_part_of_all_gradients(backend, op):
    x = make(9, 16, 30, 4, (4, 8, 16), "per-level", torch.float32, seed=12)
    third = "neg" if op == "mrl_bpr_loss" else "item_weight"
    names = ("user", "pos", third)

    def gradients(wanted):
        inputs = {n: x[n].detach().clone().requires_grad_(n in wanted) for n in names}
        args = [inputs["user"], inputs["pos"], inputs[third]] + ([] if op == "mrl_bpr_loss" else [x["candidates"]])
        out = getattr(mk, op)(*args, x["dims"], backend=backend)
        loss = out[0] if isinstance(out, tuple) else out
        return dict(zip(wanted, torch.autograd.grad(loss, [inputs[n] for n in wanted])))

    every = gradients(names)
    for name in names:
        assert torch.equal(gradients((name,))[name], every[name]), name
