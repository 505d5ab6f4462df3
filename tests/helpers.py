"""What the tests share: the device they run on, the fast backends tested
against the reference, where the paper's datasets are, an assert_close
that names the worst mismatches, the operator tests' shapes, tolerances,
inputs and random problems, and a launcher of gloo process groups
(:func:`run_ranks`). Imported as ``from helpers import ...`` (the
tests folder is on pytest's pythonpath); conftest.py chooses Triton's
interpreter before anything imports Triton."""
import datetime
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import strategies as st

from mrl_kernels.ops import registry
from mrl_kernels.ops.testing import make_inputs
from mrl_kernels.training.methods import METHODS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the backends tested against the reference: every one that runs here but the reference itself
FAST = [name for name in registry.available_backends(DEVICE) if not registry.declared()[name].fallback]

# the methods trained by gradient steps (each with an objective)
GRADIENT_METHODS = [name for name, method in METHODS.items() if not method.solved]

# the settings of the training tests' small runs
SMALL = dict(dims=(4, 8, 16), batch_size=256, eval_every=2, progress=False)

def same_run(a: dict, b: dict) -> bool:
    """Equal metrics.json contents but for timings and the folder."""
    drop = ("seconds_per_epoch", "wall_seconds", "config")
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


# the paper's datasets: $MRL_DATA where the user set it, else ../shared/datasets beside the repo
DATA_PLACES = [Path(p) for p in (os.environ.get("MRL_DATA"),) if p] + \
    [Path(__file__).resolve().parents[2] / "shared" / "datasets"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """torch.testing.assert_close that also names the worst mismatches and any NaN/inf."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    bad = ~torch.isfinite(a) & torch.isfinite(e)
    assert not bad.any(), f"{name}: non-finite values at {bad.nonzero()[:5].tolist()}"
    err = (a - e).abs() - (atol + rtol * e.abs())
    if (err > 0).any():
        worst = err.flatten().topk(min(5, err.numel())).indices
        rows = [(tuple(torch.unravel_index(i, err.shape)[j].item() for j in range(err.dim())),
                 a.flatten()[i].item(), e.flatten()[i].item()) for i in worst]
        raise AssertionError(f"{name}: {int((err > 0).sum())} of {err.numel()} outside atol={atol}, rtol={rtol}; "
                             f"worst (index, actual, expected): {rows}")


# the operator tests: tolerances by dtype, awkward shapes, inputs on DEVICE, random problems
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 5e-2),
       torch.float16: (5e-3, 1e-2)}

# (B, D, N, M, dims): B, M, D that divide no block size, M = 1, one level, wide rows
SHAPES = [
    (7, 12, 20, 5, (3, 5, 12)),
    (33, 64, 50, 16, (4, 8, 16, 32, 64)),
    (5, 24, 9, 1, (3, 10, 24)),
    (3, 72, 11, 3, (8, 72)),
    (2, 130, 6, 2, (1, 129, 130)),
    (9, 8, 4, 6, (8,)),
]


# cases that take tens of seconds each in Triton's interpreter (a fraction of one on a GPU): with the slow tests there
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETED_HEAVY = [pytest.mark.slow] if INTERPRETED else []


def heavy_for_triton(backend: str, heavy: bool) -> list:
    return INTERPRETED_HEAVY if heavy and backend == "triton" else []


def gradcheck(fn, args, backend: str) -> bool:
    """float64 ``gradcheck``; in Triton's interpreter its fast mode (``v^T J u`` for
    random ``u``, ``v``: a few launches where the full Jacobian takes one a column)."""
    return torch.autograd.gradcheck(fn, args, fast_mode=backend == "triton" and INTERPRETED)


def make(B, D, N, M, dims, layout, dtype, seed, integer=False):
    return make_inputs(B, D, N, M, dims, layout, dtype, DEVICE, seed, integer)


def ref_inputs(x):
    """The reference runs on the same values, upcast to float64, on the CPU."""
    return {k: (v.double() if v.is_floating_point() else v).cpu() if isinstance(v, torch.Tensor) else v
            for k, v in x.items()}


def leaves(x, names):
    return [x[n].detach().clone().requires_grad_(True) for n in names]


@st.composite
def problems(draw):
    """Random sizes: widths that are not powers of two, any number of levels, M >= 1."""
    width = draw(st.integers(1, 40))
    dims = sorted(draw(st.sets(st.integers(1, width - 1), max_size=4)) | {width}) if width > 1 else [1]
    return (draw(st.integers(1, 9)), width, draw(st.integers(1, 12)), draw(st.integers(1, 6)), tuple(dims),
            draw(st.sampled_from(["shared", "per-level"])), draw(st.integers(0, 2 ** 16)))


# retrieval: every backend of prefix_topk with the reference
BACKENDS = ["torch", *FAST]


def exact(query, items, k, exclude):
    """Brute force: every item's full score, excluded ones dropped, ties to the lower id."""
    scores = query.double() @ items.double().T
    for row, ids in enumerate(exclude):
        scores[row, list(ids)] = -torch.inf
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


def integer_case(seed, B=5, N=37, D=12):
    g = torch.Generator().manual_seed(seed)
    query = torch.randint(-2, 3, (B, D), generator=g).float()
    items = torch.randint(-2, 3, (N, D), generator=g).float()
    items[N // 2:] = items[:N - N // 2].clone()  # repeated rows: exact ties between different items
    exclude = [torch.randperm(N, generator=g)[:int(torch.randint(0, 6, (1,), generator=g))].tolist()
               for _ in range(B)]
    return query.to(DEVICE), items.to(DEVICE), exclude


# NestedIndex: a FAISS first stage over the narrow prefix (the serve extra), reranked at full width
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None,
                                 reason='needs faiss, from the serve extra: pip install -e ".[serve]"')


def decaying(seed, n=2000, d=32, b=9):
    """Items and queries whose columns' scale decays, as a Matryoshka table's do."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(2.0, 0.2, d)
    return torch.randn(b, d, generator=g) * scale, torch.randn(n, d, generator=g) * scale


def run_ranks(world: int, tmp_path: Path, fn, timeout_s: float = 120) -> None:
    """``fn(rank, world)`` in ``world`` spawned processes joined in one gloo
    process group (a collective left waiting fails after ``timeout_s``)."""
    mp.spawn(_rank_main, args=(world, str(tmp_path / "store"), fn, timeout_s), nprocs=world, join=True)


def _rank_main(rank: int, world: int, store: str, fn, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        fn(rank, world)
        # every rank done with its collectives before any tears the group down: a rank that destroyed its
        # group while a peer still ran a collective with it could end that peer natively
        dist.barrier()
    finally:
        dist.destroy_process_group()
