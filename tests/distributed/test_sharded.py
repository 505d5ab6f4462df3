"""The vocabulary-parallel operators (mrl_kernels.distributed.sharded) in 2 and 3 gloo
processes give the one-process operators' negatives and losses on the same
candidates (the ranks' shares concatenated in rank order), and their gradients,
each table row's on its owner alone."""
import pytest
import torch
import torch.distributed as dist

import mrl_kernels as mk
from mrl_kernels.distributed import sharded

from helpers import assert_close, run_ranks

DIMS = (2, 4, 8)


def split(n: int, world: int) -> list[int]:
    """Uneven row ranges: the boundaries of ``world`` shards of ``n`` rows."""
    cuts = torch.linspace(0, n, world + 1).round().long().tolist()
    cuts[1] = max(1, cuts[1] - 1)  # the first shard smaller than the others
    return cuts


def inputs(world: int, dtype, seed: int, layout: str = "per-level", tie: bool = False, padding: bool = False):
    """The whole problem, the same on every rank: users, positives, table,
    the row ranges and each rank's candidate share (global ids in its range)."""
    g = torch.Generator().manual_seed(seed)
    per_rank, n, width = 3, 29, DIMS[-1]
    batch = per_rank * world
    users = torch.randn(batch, width, generator=g, dtype=torch.float64).to(dtype)
    pos = torch.randn(batch, width, generator=g, dtype=torch.float64).to(dtype)
    table = torch.randn(n, width, generator=g, dtype=torch.float64).to(dtype)
    if tie:
        table[:] = table[0]  # every score of a row ties: the first candidate of rank 0 wins
    cuts = split(n, world)
    shares = []
    for r in range(world):
        m = 2 + r  # the ranks draw different numbers
        shape = (batch, len(DIMS), m) if layout == "per-level" else (batch, m)
        share = torch.randint(cuts[r], cuts[r + 1], shape, generator=g)
        if padding:
            share[torch.rand(shape, generator=g) < 0.3] = -1
            share[0, ..., :] = -1  # a share that is all padding
        shares.append(share)
    return users, pos, table, cuts, shares


def check_mns(rank: int, world: int) -> None:
    for dtype, layout, tie, seed in ((torch.float64, "per-level", False, 0), (torch.float32, "shared", False, 1),
                                     (torch.float64, "shared", True, 2), (torch.float32, "per-level", False, 3)):
        users, pos, table, cuts, shares = inputs(world, dtype, seed, layout, tie)
        pool = torch.cat(shares, dim=-1)
        rows = slice(rank * 3, rank * 3 + 3)
        lo, hi = cuts[rank], cuts[rank + 1]
        # the one process: torch backend (the specification), gradients of the mean loss
        u, p, t = (x.clone().requires_grad_() for x in (users, pos, table))
        want_loss, want_neg = mk.mns_bpr_loss(u, p, t, pool, DIMS, reduction="none", layout=layout, backend="torch")
        want_loss.mean().backward()
        # this rank
        su, sp, st = users[rows].clone().requires_grad_(), pos[rows].clone().requires_grad_(), \
            table[lo:hi].clone().requires_grad_()
        loss, negatives = sharded.mns_bpr_loss(su, sp, st, shares[rank], DIMS, reduction="none", offset=lo,
                                               backend="torch")
        assert torch.equal(negatives, want_neg), (dtype, layout, tie)
        # the same sums; softplus may round the last bit differently where a row falls in the
        # vectorised loop's tail in one tensor and not in the other
        eps = torch.finfo(dtype).eps
        assert_close(loss, want_loss[rows], 0, 4 * eps, "loss")
        if tie:
            first = pool[..., 0] if layout == "shared" else pool[:, :, 0]
            assert torch.equal(negatives, first[:, None].expand_as(negatives) if layout == "shared" else first)
        (loss.sum() / users.shape[0]).backward()
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(su.grad, u.grad[rows], tol, tol, "d user")
        assert_close(sp.grad, p.grad[rows], tol, tol, "d pos")
        assert_close(st.grad, t.grad[lo:hi], tol, tol, "d shard")
        chosen = torch.zeros(hi - lo, dtype=torch.bool)
        mine = negatives[(negatives >= lo) & (negatives < hi)] - lo
        chosen[mine] = True
        assert not st.grad[~chosen].any()  # only the chosen rows this rank owns
        # the fast backend of this machine picks the same (no near-ties in these draws)
        fast_loss, fast_neg = sharded.mns_bpr_loss(users[rows], pos[rows], table[lo:hi], shares[rank], DIMS,
                                                   offset=lo)
        assert torch.equal(fast_neg, want_neg)
        total = fast_loss.detach().clone()
        dist.all_reduce(total)  # the ranks' shares sum to the one-process mean
        assert_close(total, want_loss.mean(), tol, tol, "mean loss")


def check_softmax(rank: int, world: int) -> None:
    for dtype, layout, seed, corrected in ((torch.float64, "per-level", 0, False), (torch.float64, "shared", 1, True),
                                           (torch.float32, "per-level", 2, True)):
        users, pos, table, cuts, shares = inputs(world, dtype, seed, layout, padding=True)
        pool = torch.cat(shares, dim=-1)
        g = torch.Generator().manual_seed(seed + 100)
        log_q = torch.rand(pool.shape, generator=g, dtype=torch.float64).log() if corrected else None
        pos_log_q = torch.rand(pool.shape[0], generator=g, dtype=torch.float64).log() if corrected else None
        pos_ids = torch.randint(0, table.shape[0], (pool.shape[0],), generator=g)
        pos_ids[1] = pool[1].flatten()[0].clamp(min=0)  # a candidate equal to its row's positive is masked
        rows = slice(rank * 3, rank * 3 + 3)
        lo, hi = cuts[rank], cuts[rank + 1]
        u, p, t = (x.clone().requires_grad_() for x in (users, pos, table))
        want = mk.mrl_softmax_loss(u, p, t, pool, DIMS, temperature=0.5, reduction="none", pos_ids=pos_ids,
                                   log_q=log_q, pos_log_q=pos_log_q, layout=layout, backend="torch")
        want.mean().backward()
        widths = [s.shape[-1] for s in shares]
        share_log_q = log_q.split(widths, dim=-1)[rank] if corrected else None
        su, sp, st = users[rows].clone().requires_grad_(), pos[rows].clone().requires_grad_(), \
            table[lo:hi].clone().requires_grad_()
        loss = sharded.mrl_softmax_loss(su, sp, st, shares[rank], DIMS, temperature=0.5, reduction="none",
                                        offset=lo, log_q=share_log_q,
                                        pos_log_q=pos_log_q[rows] if corrected else None, pos_ids=pos_ids[rows])
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert_close(loss, want[rows], tol, tol, "loss")
        (loss.sum() / users.shape[0]).backward()
        assert_close(su.grad, u.grad[rows], tol, tol, "d user")
        assert_close(sp.grad, p.grad[rows], tol, tol, "d pos")
        assert_close(st.grad, t.grad[lo:hi], tol, tol, "d shard")
        # through a lookup (each id once): the same loss and gradient
        lt = table[lo:hi].clone().requires_grad_()
        seen = []

        def lookup(ids):
            seen.append(ids)
            return lt[ids - lo]

        again = sharded.mrl_softmax_loss(users[rows], pos[rows], table[lo:hi], shares[rank], DIMS,
                                         temperature=0.5, reduction="none", offset=lo, log_q=share_log_q,
                                         pos_log_q=pos_log_q[rows] if corrected else None,
                                         pos_ids=pos_ids[rows], lookup=lookup)
        assert torch.equal(seen[0], seen[0].unique()) and bool(((seen[0] >= lo) & (seen[0] < hi)).all())
        assert_close(again, loss, tol, tol, "loss through lookup")
        (again.sum() / users.shape[0]).backward()
        assert_close(lt.grad, t.grad[lo:hi], tol, tol, "d shard through lookup")


def check_bad_input(rank: int, world: int) -> None:
    users, pos, table, cuts, shares = inputs(world, torch.float32, 0)
    lo, hi = cuts[rank], cuts[rank + 1]
    other = shares[(rank + 1) % world]  # ids of another rank's rows
    with pytest.raises(ValueError, match="candidates must"):
        sharded.mns_sample(users[:3], table[lo:hi], other, DIMS, offset=lo)
    with pytest.raises(ValueError, match="offset"):
        sharded.mns_sample(users[:3], table[lo:hi], shares[rank], DIMS, offset=-1)
    with pytest.raises(ValueError, match="log_q"):
        sharded.mrl_softmax_loss(users[:3], pos[:3], table[lo:hi], shares[rank], DIMS, offset=lo,
                                 log_q=torch.zeros(2))


def check_batch_rows(rank: int, world: int) -> None:
    # the batch's users read from a row-sharded table on every rank, then MNS and the loss on them: as from the
    # gathered vectors, the users' gradient summed to their ranks
    users, pos, table, cuts, shares = inputs(world, torch.float64, 4)
    lo, hi = cuts[rank], cuts[rank + 1]
    ids = torch.randint(0, table.shape[0], (users.shape[0],), generator=torch.Generator().manual_seed(9))
    ids[0] = ids[1]  # a repeated id
    read = sharded.batch_rows(table[lo:hi], ids, offset=lo)
    assert torch.equal(read, table[ids])
    rows = slice(rank * 3, rank * 3 + 3)
    pool = torch.cat(shares, dim=-1)
    u, p, t = (x.clone().requires_grad_() for x in (table[ids], pos, table))
    want_loss, want_neg = mk.mns_bpr_loss(u, p, t, pool, DIMS, reduction="none", backend="torch")
    want_loss.mean().backward()
    choice = sharded.mns_sample(read, table[lo:hi], shares[rank], DIMS, offset=lo, gathered=True)
    assert torch.equal(choice.negatives, want_neg)
    su, sp, st = read[rows].clone().requires_grad_(), pos[rows].clone().requires_grad_(), \
        table[lo:hi].clone().requires_grad_()
    loss = sharded.mrl_bpr_loss(su, sp, st[choice.owned_ids - lo], choice, DIMS, reduction="none")
    assert_close(loss, want_loss[rows], 1e-12, 1e-12, "loss")
    (loss.sum() / users.shape[0]).backward()
    assert_close(su.grad, u.grad[rows], 1e-12, 1e-12, "d user")
    assert_close(sp.grad, p.grad[rows], 1e-12, 1e-12, "d pos")
    assert_close(st.grad, t.grad[lo:hi], 1e-12, 1e-12, "d shard")
    with pytest.raises(ValueError, match="user must equal this rank's rows of choice.users"):
        sharded.mrl_bpr_loss(su + 1, sp, st[choice.owned_ids - lo], choice, DIMS)
    with pytest.raises(ValueError, match="neg_rows must be the rows of choice.owned_ids"):
        sharded.mrl_bpr_loss(su, sp, st[choice.owned_ids - lo] + 1, choice, DIMS)
    with pytest.raises(ValueError, match="ids must be rows of the table, each held by one rank: id 29"):
        sharded.batch_rows(table[lo:hi], torch.tensor([0, 29]), offset=lo)
    with pytest.raises(ValueError, match="ids must be a one-dimensional integer tensor"):
        sharded.batch_rows(table[lo:hi], ids.double(), offset=lo)


def check_all(rank: int, world: int) -> None:
    check_batch_rows(rank, world)
    check_mns(rank, world)
    check_softmax(rank, world)
    check_bad_input(rank, world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_operators_equal_one_process(world, tmp_path):
    """MNS (negatives, loss, gradients), the softmax (padding, pos_ids, logQ,
    through a lookup) and bad input, in one group of ``world`` processes."""
    run_ranks(world, tmp_path, check_all)


def test_needs_a_process_group():
    table = torch.randn(5, 8)
    with pytest.raises(RuntimeError, match="process group"):
        sharded.mns_sample(torch.randn(2, 8), table, torch.zeros(2, 3, dtype=torch.long), DIMS, offset=0)
