"""What the tests share: the device they run on, the fast backends tested
against the reference, where the paper's datasets are, and an assert_close
that names the worst mismatches, and a launcher of gloo process groups
(:func:`run_ranks`). Imported as ``from helpers import ...`` (the
tests folder is on pytest's pythonpath); conftest.py chooses Triton's
interpreter before anything imports Triton."""
import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrl_kernels.ops import registry
from mrl_kernels.training.methods import METHODS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the backends tested against the reference: every one that runs here but the reference itself
FAST = [name for name in registry.available_backends(DEVICE) if not registry.declared()[name].fallback]

# the methods trained by gradient steps (each with an objective)
GRADIENT_METHODS = [name for name, method in METHODS.items() if not method.solved]

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
