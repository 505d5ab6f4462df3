"""``--method mrl-s-all``: the softmax over every item as a training objective
(no candidates drawn, every item a negative, no row-sparse path)."""
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels.ops import CSR
from mrl_kernels.training import Fit, TrainConfig, data, train
from mrl_kernels.training import config as trainer_config
from mrl_kernels.training.backbones import MF, LightGCN
from mrl_kernels.training.methods import METHODS

from helpers import DEVICE, SMALL

INTERACTIONS = CSR.from_pairs(range(20), range(0, 40, 2), 30, 50)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_the_objective_is_the_softmax_over_every_item_plus_l2(model):
    config = TrainConfig(method="mrl-s-all", model=model, dims=(4, 8), l2=1e-2, temperature=0.5, backend="torch")
    objective = METHODS["mrl-s-all"].objective(config, INTERACTIONS)
    assert objective.candidate_shape == (0,)  # nothing drawn
    torch.manual_seed(0)
    backbone = (MF(30, 50, 8) if model == "mf" else LightGCN(INTERACTIONS, 8)).to(DEVICE)
    users, pos = torch.tensor([3, 0, 7, 3], device=DEVICE), torch.tensor([2, 9, 49, 2], device=DEVICE)
    batch = backbone(users, pos)
    got = objective(batch, users.new_empty(4, 0))
    # the cross entropy of each positive over all 50 items at widths 4 and 8, averaged over levels and rows
    _, items = (backbone.user_weight, backbone.item_weight) if model == "mf" else backbone.propagate()
    logits = [batch.user[:, :d] @ items[:, :d].T / 0.5 for d in (4, 8)]
    expected = sum(torch.nn.functional.cross_entropy(z, pos) for z in logits) / 2
    regulariser = 1e-2 * (batch.reg_user.square().sum() + batch.reg_pos.square().sum()) / 2 / 4
    torch.testing.assert_close(got, expected + regulariser)
    assert torch.equal(got, mk.mrl_softmax_loss(batch.user, batch.pos, batch.items, None, (4, 8), temperature=0.5,
                                                pos_ids=pos, backend="torch") + regulariser)


def test_trains_end_to_end_without_candidates(tmp_path, small):
    result = train(TrainConfig(method="mrl-s-all", epochs=2, out=str(tmp_path), **SMALL), log=lambda _: None,
                   dataset=small)
    assert "full_softmax_lse" in result["backends"] and 0 < result["test"]["recall@20"] <= 1


def test_has_no_row_sparse_path(monkeypatch):
    ds = data.synthetic(seed=0, n_users=200, n_items=150)
    config = dict(method="mrl-s-all", dims=(4, 8), epochs=1, eval_every=1, batch_size=256, progress=False)
    with pytest.raises(ValueError, match="mrl-s-all gives every item a gradient each step: it has no row-sparse"):
        TrainConfig(sparse=True, **config).check()
    monkeypatch.setattr(trainer_config, "SPARSE_FROM", 150)  # mf from this many items trains sparse: not this method
    assert not Fit(TrainConfig(**config), ds.train, torch.device("cpu")).sparse
    assert Fit(TrainConfig(**{**config, "method": "mrl-s"}), ds.train, torch.device("cpu")).sparse


def test_cosine_scores_are_refused():
    with pytest.raises(ValueError, match="cosine scores need candidate pools"):
        METHODS["mrl-s-all"].objective(TrainConfig(method="mrl-s-all", cosine=True), INTERACTIONS)
