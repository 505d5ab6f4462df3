"""Backbones: LightGCN's propagation against a dense hand computation, every
objective on LightGCN, and the operators on its propagated table."""
from dataclasses import replace

import pytest
import torch

from mrl_kernels.ops import registry
from mrl_kernels.training import data
from mrl_kernels.training.backbones import LightGCN, MF, normalized_adjacency
from mrl_kernels.training.methods import METHODS
from mrl_kernels.training import TrainConfig, train

from helpers import DEVICE, GRADIENT_METHODS


def tiny():
    # 3 users x 4 items: u0-{i0, i1}, u1-{i1}, u2-{i1, i2, i3}
    return data.CSR.from_pairs([0, 0, 1, 2, 2, 2], [0, 1, 1, 1, 2, 3], 3, 4)


def test_normalized_adjacency_by_hand():
    adjacency = normalized_adjacency(tiny()).to_dense()
    degree = torch.tensor([2, 1, 3, 1, 3, 1, 1], dtype=torch.float32)  # u0 u1 u2 i0 i1 i2 i3
    edges = [(0, 3), (0, 4), (1, 4), (2, 4), (2, 5), (2, 6)]
    expected = torch.zeros(7, 7)
    for a, b in edges:
        expected[a, b] = expected[b, a] = 1 / (degree[a] * degree[b]).sqrt()
    torch.testing.assert_close(adjacency, expected)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lightgcn_propagation_is_the_mean_of_dense_layer_outputs(layers):
    torch.manual_seed(0)
    model = LightGCN(tiny(), 5, layers)
    a = normalized_adjacency(tiny()).to_dense().double()
    x = torch.cat([model.user_weight, model.item_weight]).double()
    outputs = [x]
    for _ in range(layers):
        outputs.append(a @ outputs[-1])
    expected = torch.stack(outputs).mean(0)
    users, items = model.tables()
    torch.testing.assert_close(torch.cat([users, items]).double(), expected, rtol=1e-6, atol=1e-6)
    batch = model(torch.tensor([2, 0]), torch.tensor([3, 1]))
    torch.testing.assert_close(batch.user.double(), expected[[2, 0]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch.pos.double(), expected[[3 + 3, 3 + 1]], rtol=1e-6, atol=1e-6)
    # the L2 term covers the layer-0 rows
    assert torch.equal(batch.reg_user, model.user_weight[[2, 0]]) and batch.reg_items is model.item_weight


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_objective_trains_on_lightgcn(tmp_path, method):
    ds = data.synthetic(seed=0, n_users=200, n_items=150)
    result = train(TrainConfig(model="lightgcn", method=method, dims=(4, 8, 16), epochs=2, eval_every=1,
                               batch_size=256, progress=False, out=str(tmp_path)), log=lambda _: None, dataset=ds)
    assert result["model"] == "lightgcn" and result["refit_epochs"] == result["best_epoch"]
    assert 0 < result["test"]["recall@20"] <= 1


@pytest.mark.parametrize("backend", registry.available_backends(DEVICE))
def test_a_step_on_the_propagated_table_matches_every_backend_and_compiles(backend):
    torch._dynamo.reset()
    dims = [4, 8, 16]
    config = TrainConfig(method="mrl-m", dims=tuple(dims), candidates=5, layout="per-level", l2=1e-4)
    objectives = {name: METHODS["mrl-m"].objective(replace(config, backend=name)) for name in {backend, "torch"}}
    ds = data.synthetic(seed=0, n_users=60, n_items=40)
    users, pos = torch.randint(0, 60, (16,)), torch.randint(0, 40, (16,))
    cand = torch.randint(0, 40, (16, *objectives["torch"].candidate_shape))  # (16, 3, 5)

    def grads(step_of_batch):
        torch.manual_seed(0)
        model = LightGCN(ds.train, 16, 2).to(DEVICE)
        batch = model(users.to(DEVICE), pos.to(DEVICE))
        loss = step_of_batch(batch)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    def loss_of(batch, backend=backend):
        return objectives[backend](batch, cand.to(DEVICE))

    def checked(batch):
        weights = torch.full((3,), 1 / 3, device=DEVICE)
        values = [t.detach().requires_grad_() for t in (batch.user, batch.pos, batch.items)]
        torch.library.opcheck(getattr(torch.ops.mrl_kernels, f"mns_bpr_loss_{backend}"),
                              (*values, cand.to(DEVICE), dims, weights))
        return loss_of(batch)

    grads(checked)
    expected = grads(lambda b: loss_of(b, "torch"))
    for actual in (grads(loss_of), grads(torch.compile(loss_of, fullgraph=True))):
        torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-6)
        for a, e in zip(actual[1], expected[1]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_mf_and_lightgcn_are_registered():
    from mrl_kernels.training.backbones import BACKBONES
    assert isinstance(BACKBONES["mf"](tiny(), 8, 1), MF) and isinstance(BACKBONES["lightgcn"](tiny(), 8, 2), LightGCN)
