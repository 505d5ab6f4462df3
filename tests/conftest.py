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

from helpers import DATA_PLACES  # noqa: E402 - after TRITON_INTERPRET is chosen


@pytest.fixture
def shared_datasets() -> Path:
    for place in DATA_PLACES:
        if (place / "tool" / "train.txt").is_file():
            return place
    pytest.skip(f"the paper's datasets are in none of {', '.join(map(str, DATA_PLACES))} (set $MRL_DATA)")


def pytest_configure(config):
    os.environ.setdefault("MRL_DATA", str(Path(config.rootpath) / ".pytest_cache" / "data"))
