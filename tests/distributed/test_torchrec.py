"""The torchrec integration (mrl_kernels.distributed.torchrec_sharded) in 2 gloo processes:
row-wise sharded tables, the fused RowWiseAdagrad; the negatives, loss and the
updated tables equal the one-process operators and a by-hand RowWiseAdagrad
step on the same candidates, and the example trains."""
import importlib.util
from pathlib import Path

import pytest

from mrl_kernels.distributed import TORCHREC_INSTALL  # noqa: E402

pytest.importorskip("torchrec", reason=f"torchrec is not installed: {TORCHREC_INSTALL} (in a checkout: make install)")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import mrl_kernels as mk  # noqa: E402
from mrl_kernels.training import data  # noqa: E402
from mrl_kernels.distributed.torchrec_sharded import ITEMS, USERS, ShardedMRL, embedding_collection, shard  # noqa: E402

from helpers import assert_close, run_ranks  # noqa: E402

DIMS = (2, 4, 8)
LR, EPS = 0.1, 1e-8


def rowwise_adagrad(table: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One exact RowWiseAdagrad step from a zero state: each row's step
    divided by the root of its squared gradient's mean."""
    state = grad.square().mean(1, keepdim=True)
    return table - LR * grad / (state.sqrt() + EPS)


def everyone(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Each rank's ``x`` (shapes may differ along ``dim``) concatenated in rank order."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x)
    return torch.cat(parts, dim=dim)


def step_and_compare(rank: int, world: int, loss_name: str) -> None:
    torch.manual_seed(0)
    mrl = ShardedMRL(shard(embedding_collection(11, 17, DIMS[-1]), optimizer_kwargs={"lr": LR, "eps": EPS}), DIMS)
    user_table, item_table = mrl.gather(USERS), mrl.gather(ITEMS)
    g = torch.Generator().manual_seed(3)
    users, pos = torch.randint(0, 11, (6,), generator=g), torch.randint(0, 17, (6,), generator=g)
    mine = slice(rank * 3, rank * 3 + 3)
    cand = mrl.draw(users, (len(DIMS), 2 + rank), generator=torch.Generator().manual_seed(rank))
    _, offset = mrl.local()
    assert bool(((cand >= offset) & (cand < offset + mrl.local()[0].shape[0])).all())
    pool = everyone(cand)
    u, t = user_table.clone().requires_grad_(), item_table.clone().requires_grad_()
    if loss_name == "mns":
        with pytest.raises(ValueError, match="every_user must be the whole batch's 6 user ids"):
            mrl.mns_bpr_loss(users[mine], pos[mine], cand, every_user=users[:3])
        loss, negatives = mrl.mns_bpr_loss(users[mine], pos[mine], cand)  # the example passes every_user
        want, want_neg = mk.mns_bpr_loss(u[users], t[pos], t, pool, DIMS, backend="torch")
        assert torch.equal(negatives, want_neg)
    else:
        cand[0, 0, 0] = pos[0] if rank == 0 and offset <= pos[0] < offset + mrl.local()[0].shape[0] else -1
        pool = everyone(cand)
        loss = mrl.softmax_loss(users[mine], pos[mine], cand, temperature=0.5)
        want = mk.mrl_softmax_loss(u[users], t[pos], t, pool, DIMS, temperature=0.5, pos_ids=pos, backend="torch")
    total = loss.detach().clone()
    dist.all_reduce(total)
    assert_close(total, want, 1e-6, 1e-6, "loss")
    loss.backward()  # the fused optimizer steps the rows looked up
    want.backward()
    assert_close(mrl.gather(USERS), rowwise_adagrad(user_table, u.grad), 1e-5, 1e-5, "users after the step")
    assert_close(mrl.gather(ITEMS), rowwise_adagrad(item_table, t.grad), 1e-5, 1e-5, "items after the step")


def check(rank: int, world: int) -> None:
    step_and_compare(rank, world, "mns")
    step_and_compare(rank, world, "softmax")
    example = _example()
    result = example.train(data.synthetic(n_users=300, n_items=120, mean_interactions=20), dims=DIMS, epochs=4,
                           batch_size=256, lr=0.05, l2=1e-2, log=lambda _: None)
    assert result["losses"][-1] < result["losses"][0]
    assert result["test"]["recall@20"] > 2 * 20 / 120  # well above chance


def _example():
    path = Path(__file__).resolve().parents[2] / "examples" / "torchrec_training.py"
    spec = importlib.util.spec_from_file_location("torchrec_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torchrec_row_wise_two_processes(tmp_path):
    run_ranks(2, tmp_path, check)
