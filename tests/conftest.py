import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
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
from mrl_kernels.training import TrainConfig, train  # noqa: E402


@pytest.fixture
def shared_datasets() -> Path:
    for place in DATA_PLACES:
        if (place / "tool" / "train.txt").is_file():
            return place
    pytest.skip(f"the paper's datasets are in none of {', '.join(map(str, DATA_PLACES))} (set $MRL_DATA)")


def pytest_configure(config):
    os.environ.setdefault("MRL_DATA", str(Path(config.rootpath) / ".pytest_cache" / "data"))

@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run trained on a table with string ids."""
    folder = tmp_path_factory.mktemp("run")
    g = torch.Generator().manual_seed(0)
    users = [f"user-{u}" for u in torch.randint(0, 60, (1500,), generator=g).tolist()]
    items = [f"item-{i}" for i in torch.randint(0, 80, (1500,), generator=g).tolist()]
    pd.DataFrame({"user": users, "item": items}).to_csv(folder / "table.csv", index=False)
    train(TrainConfig(dataset=str(folder / "table.csv"), dims=(4, 8, 16), epochs=2, eval_every=1,
                      batch_size=256, progress=False, out=str(folder / "run")), log=lambda _: None)
    return folder
