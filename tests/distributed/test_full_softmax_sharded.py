"""The vocabulary-parallel softmax over every item
(mrl_kernels.distributed.full_softmax) in 2 and 3 gloo processes gives the
one-process ``mrl_softmax_loss(candidates=None)`` and its gradients, each
table row's on its owner."""
import pytest
import torch
import torch.distributed as dist

import mrl_kernels as mk
from mrl_kernels.distributed.full_softmax import mrl_full_softmax_loss

from helpers import assert_close
from test_sharded import DIMS, run_ranks, split


def problem(world: int, dtype, seed: int):
    """The whole problem, the same on every rank: 3 users a rank, an uneven split of the table."""
    g = torch.Generator().manual_seed(seed)
    batch, n = 3 * world, 29
    users, pos_table = (torch.randn(k, DIMS[-1], generator=g, dtype=torch.float64).to(dtype) for k in (batch, n))
    pos_ids = torch.randint(0, n, (batch,), generator=g)
    pos_ids[0] = pos_ids[1]  # two users with one positive
    log_q = torch.rand(n, generator=g, dtype=torch.float64).log()
    return users, pos_table, pos_ids, log_q, split(n, world)


def check_full_softmax(rank: int, world: int) -> None:
    for dtype, seed, corrected, backend in ((torch.float64, 0, False, "torch"), (torch.float64, 1, True, "torch"),
                                            (torch.float32, 2, True, "auto")):
        users, table, pos_ids, log_q, cuts = problem(world, dtype, seed)
        rows, (lo, hi) = slice(rank * 3, rank * 3 + 3), (cuts[rank], cuts[rank + 1])
        u, t = users.clone().requires_grad_(), table.clone().requires_grad_()
        p = t[pos_ids]  # the positives from the table: the one-process loss is cross entropy over all rows
        want = mk.mrl_softmax_loss(u, p, t, None, DIMS, temperature=0.5, reduction="none", pos_ids=pos_ids,
                                   log_q=log_q if corrected else None, backend="torch")
        want.mean().backward()
        su, st = users[rows].clone().requires_grad_(), table[lo:hi].clone().requires_grad_()
        sp = table[pos_ids[rows]].clone().requires_grad_()
        loss = mrl_full_softmax_loss(su, sp, st, DIMS, temperature=0.5, reduction="none", offset=lo,
                                     pos_ids=pos_ids[rows], log_q=log_q[lo:hi] if corrected else None,
                                     pos_log_q=log_q[pos_ids[rows]] if corrected else None, backend=backend)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(loss, want[rows], tol, tol, "loss")
        (loss.sum() / users.shape[0]).backward()
        assert_close(su.grad, u.grad[rows], tol, tol, "d user")
        # the table's gradient: this rank's rows as items, plus the positives' rows of every rank's users
        pos_grads = torch.zeros_like(table)
        pos_grads.index_add_(0, pos_ids[rows], sp.grad)
        dist.all_reduce(pos_grads)
        assert_close(st.grad + pos_grads[lo:hi], t.grad[lo:hi], tol, tol, "d shard")
        total = mrl_full_softmax_loss(su, sp, st, DIMS, temperature=0.5, offset=lo, pos_ids=pos_ids[rows],
                                      log_q=log_q[lo:hi] if corrected else None,
                                      pos_log_q=log_q[pos_ids[rows]] if corrected else None).detach()
        dist.all_reduce(total)  # the ranks' shares sum to the one-process mean
        assert_close(total, want.mean(), tol, tol, "mean loss")
    users, table, pos_ids, log_q, cuts = problem(world, torch.float32, 3)
    lo, hi = cuts[rank], cuts[rank + 1]
    with pytest.raises(ValueError, match="log_q and pos_log_q go together"):
        mrl_full_softmax_loss(users[:3], table[:3], table[lo:hi], DIMS, offset=lo, pos_ids=pos_ids[:3],
                              log_q=log_q[lo:hi].float())
    with pytest.raises(ValueError, match=r"log_q must have shape \(%d,\)" % (hi - lo)):
        mrl_full_softmax_loss(users[:3], table[:3], table[lo:hi], DIMS, offset=lo, pos_ids=pos_ids[:3],
                              log_q=log_q.float(), pos_log_q=log_q[:3].float())
    with pytest.raises(ValueError, match="pos_ids must have shape"):
        mrl_full_softmax_loss(users[:3], table[:3], table[lo:hi], DIMS, offset=lo, pos_ids=pos_ids[:2])


@pytest.mark.parametrize("world", [2, 3])
def test_full_softmax_over_shards_equals_one_process(world, tmp_path):
    run_ranks(world, tmp_path, check_full_softmax)
