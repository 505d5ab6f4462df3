import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it
# must be chosen before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's caches outlive a checkout, and the AOTAutograd cache does not key on custom
# operators' schemas: a backward compiled before a schema changed would be replayed. Each test
# session compiles into a fresh folder, removed at its end.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mrl-kernels-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

from mrl_kernels import registry  # noqa: E402 - after TRITON_INTERPRET is chosen

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the backends tested against the reference: every one that runs here but the reference itself
FAST = [name for name in registry.available_backends(DEVICE) if not registry.declared()[name].fallback]

# the paper's datasets: $MRL_DATA where the user set it, else ../shared/datasets beside the repo
DATA_PLACES = [Path(p) for p in (os.environ.get("MRL_DATA"),) if p] + \
    [Path(__file__).resolve().parents[2] / "shared" / "datasets"]


@pytest.fixture
def shared_datasets() -> Path:
    for place in DATA_PLACES:
        if (place / "tool" / "train.txt").is_file():
            return place
    pytest.skip(f"the paper's datasets are in none of {', '.join(map(str, DATA_PLACES))} (set $MRL_DATA)")


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


def pytest_configure(config):
    os.environ.setdefault("MRL_DATA", str(Path(config.rootpath) / ".pytest_cache" / "data"))
