"""The row-sparse path computes the dense path's loss and gradients, and keeps
its step cost to the rows a batch touches."""
import pytest
import torch

from mrl_kernels.training import data
from mrl_kernels.training.backbones import MF
from mrl_kernels.ops import CSR
from mrl_kernels.training.methods import METHODS
from mrl_kernels.training.optim import LazyAdam
from mrl_kernels.training import Fit, TrainConfig, train
from mrl_kernels.training import config as trainer_config

from helpers import DEVICE, GRADIENT_METHODS

# the training interactions an objective may read (least squares: their density)
INTERACTIONS = CSR.from_pairs(range(20), range(0, 40, 2), 30, 50)


@pytest.mark.parametrize("method", [m for m in GRADIENT_METHODS if not METHODS[m].every_item])
def test_sparse_lookups_give_the_dense_loss_and_gradients(method):
    objective = METHODS[method].objective(TrainConfig(method=method, dims=(4, 8, 16), candidates=6, layout="per-level",
                                                     l2=1e-2), INTERACTIONS)
    users, pos = torch.randint(0, 30, (24,)), torch.randint(0, 50, (24,))
    cand = torch.randint(0, 50, (24, *objective.candidate_shape))
    results = []
    for sparse in (False, True):
        torch.manual_seed(0)
        model = MF(30, 50, 16, sparse=sparse).to(DEVICE)
        loss = objective(model(users.to(DEVICE), pos.to(DEVICE)), cand.to(DEVICE))
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g.is_sparse == sparse for g in grads)
        results.append((loss.detach(), [g.to_dense() for g in grads]))
    (dense_loss, dense_grads), (sparse_loss, sparse_grads) = results
    torch.testing.assert_close(sparse_loss, dense_loss)
    for s, d in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(s, d)
    touched = set(users.tolist()) | set(pos.tolist()) | set(cand.flatten().tolist())
    assert set(torch.nonzero(sparse_grads[1].abs().sum(1)).flatten().tolist()) <= touched


def test_sparse_training_runs_end_to_end(tmp_path):
    ds = data.synthetic(seed=0, n_users=200, n_items=150)
    result = train(TrainConfig(sparse=True, dims=(4, 8, 16), epochs=2, eval_every=1, batch_size=256,
                               progress=False, out=str(tmp_path)), log=lambda _: None, dataset=ds)
    assert result["config"]["sparse"] and 0 < result["test"]["recall@20"] <= 1


def test_sparse_lightgcn_is_refused(tmp_path):
    ds = data.synthetic(seed=0, n_users=50, n_items=40)
    with pytest.raises(ValueError, match="sparse training needs the mf backbone"):
        train(TrainConfig(model="lightgcn", sparse=True, dims=(4, 8), epochs=1, progress=False, out=str(tmp_path)),
              log=lambda _: None, dataset=ds)


def test_mf_trains_sparse_by_default_from_the_documented_table_size(monkeypatch):
    ds = data.synthetic(seed=0, n_users=200, n_items=150)
    config = dict(dims=(4, 8), epochs=1, eval_every=1, batch_size=256, progress=False)
    cpu = torch.device("cpu")
    monkeypatch.setattr(trainer_config, "SPARSE_FROM", 150)
    fit = Fit(TrainConfig(**config), ds.train, cpu)
    assert fit.sparse and fit.model.sparse and isinstance(fit.optimizer, LazyAdam)
    assert not Fit(TrainConfig(model="lightgcn", **config), ds.train, cpu).sparse
    monkeypatch.setattr(trainer_config, "SPARSE_FROM", 151)
    assert not Fit(TrainConfig(**config), ds.train, cpu).sparse
