"""The training tests' shared data: a small synthetic dataset and a finished run of it."""
import pytest

from mrl_kernels.training import TrainConfig, data, train

from helpers import SMALL


@pytest.fixture(scope="module")
def small():
    return data.synthetic(seed=0, n_users=300, n_items=200)


@pytest.fixture(scope="module")
def finished(small, tmp_path_factory):
    """A finished 2-epoch run made without --out (runs/<time>-synthetic-mrl-m in a
    folder of its own): its folder and metrics. Tests copy it before changing it."""
    where = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(where)  # runs/ is relative to the working directory
        result = train(TrainConfig(epochs=2, **SMALL), log=lambda _: None, dataset=small)
    return where / result["config"]["out"], result
