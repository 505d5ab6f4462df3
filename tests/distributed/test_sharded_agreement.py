"""Item 9 of issue 28: ranks out of step in a sharded call (a bad id on one rank,
another number of levels, width, dims or local batch size, an optional argument
on one rank only) all raise the same ValueError before any collective that
cannot match: no hang, no native abort, no loss from mismatched inputs. Two gloo
processes, a collective left waiting fails after 30 s."""
import re

import pytest
import torch
import torch.distributed as dist

from mrl_kernels.distributed import sharded
from mrl_kernels.distributed.full_softmax import mrl_full_softmax_loss

from helpers import run_ranks

ROWS, ITEMS, CUT = 3, 20, 9  # rows a rank, the table's rows, rank 1's first row


def problem(rank: int, dims=(2, 4, 8), rows: int = ROWS, bad_id: bool = False) -> dict:
    """This rank's share: users, positives, its table rows and candidates (per level)."""
    g = torch.Generator().manual_seed(rank)
    width = dims[-1]
    lo, hi = (0, CUT) if rank == 0 else (CUT, ITEMS)
    candidates = torch.randint(lo, hi, (2 * rows, len(dims), 3), generator=g)
    if bad_id:
        candidates[1, 0, 0] = hi  # the next rank's row
    return dict(user=torch.randn(rows, width, generator=g), pos=torch.randn(rows, width, generator=g),
                shard=torch.randn(hi - lo, width, generator=g), candidates=candidates, dims=list(dims), offset=lo)


def mns(p: dict, **kwargs):
    return sharded.mns_sample(p["user"], p["shard"], p["candidates"], p["dims"], offset=p["offset"], **kwargs)


def softmax(p: dict, **kwargs):
    return sharded.mrl_softmax_loss(p["user"], p["pos"], p["shard"], p["candidates"], p["dims"], offset=p["offset"],
                                    **kwargs)


def every_item(p: dict, **kwargs):
    pos_ids = kwargs.pop("pos_ids", torch.zeros(p["user"].shape[0], dtype=torch.long))
    return mrl_full_softmax_loss(p["user"], p["pos"], p["shard"], p["dims"], offset=p["offset"], pos_ids=pos_ids,
                                 **kwargs)


def bpr(p: dict, **kwargs):
    return sharded.mns_bpr_loss(p["user"], p["pos"], p["shard"], p["candidates"], p["dims"], offset=p["offset"],
                                **kwargs)


# (name, what each rank calls, the common error): rank 1 is the one out of step
CASES = [
    ("a bad id on one rank", lambda r: mns(problem(r, bad_id=r == 1)),
     r"a sharded call failed on rank 1: ValueError: candidates must"),
    ("a bad id on one rank, the softmax", lambda r: softmax(problem(r, bad_id=r == 1)),
     r"a sharded call failed on rank 1: ValueError: candidates must"),
    ("a bad id on one rank, the fused loss", lambda r: bpr(problem(r, bad_id=r == 1)),
     r"a sharded call failed on rank 1: ValueError: candidates must"),
    ("another number of levels", lambda r: mns(problem(r, dims=(2, 4, 8) if r == 0 else (4, 8))),
     r"every rank must call with the same number of levels; got 3 on rank 0, 2 on rank 1"),
    ("another number of levels, the softmax", lambda r: softmax(problem(r, dims=(2, 4, 8) if r == 0 else (4, 8))),
     r"every rank must call with the same number of levels; got 3 on rank 0, 2 on rank 1"),
    ("the same levels, other dims", lambda r: softmax(problem(r, dims=(2, 4, 8) if r == 0 else (1, 4, 8))),
     r"every rank must call with the same dims; got \[2, 4, 8\] on rank 0, \[1, 4, 8\] on rank 1"),
    ("the same levels, other dims, MNS", lambda r: bpr(problem(r, dims=(2, 4, 8) if r == 0 else (1, 4, 8))),
     r"every rank must call with the same dims"),
    ("another width", lambda r: mns(problem(r, dims=(2, 4, 8) if r == 0 else (2, 4, 16))),
     r"every rank must call with the same width; got 8 on rank 0, 16 on rank 1"),
    ("another local batch size", lambda r: mns(problem(r, rows=3 if r == 0 else 4)),
     r"every rank must call with the same local batch size; got 3 on rank 0, 4 on rank 1"),
    ("another local batch size, the softmax", lambda r: softmax(problem(r, rows=3 if r == 0 else 4)),
     r"every rank must call with the same local batch size"),
    ("pos_ids on one rank only", lambda r: softmax(problem(r), pos_ids=torch.zeros(ROWS, dtype=torch.long)
                                                    if r == 0 else None),
     r"every rank must call with the same pos_ids given; got True on rank 0, False on rank 1"),
    ("another number of ids", lambda r: sharded.batch_rows(problem(r)["shard"], torch.arange(4 + r),
                                                           offset=problem(r)["offset"]),
     r"every rank must call with the same number of ids; got 4 on rank 0, 5 on rank 1"),
    ("a bad argument on one rank", lambda r: softmax(problem(r), temperature=1.0 if r == 0 else -1.0),
     r"a sharded call failed on rank 1: ValueError: temperature must be a finite number >= 5.42101e-20 in float32"),
    ("another local batch size, the softmax over every item",
     lambda r: every_item(problem(r, rows=3 if r == 0 else 4)),
     r"every rank must call with the same local batch size; got 3 on rank 0, 4 on rank 1"),
    ("a bad positive id on one rank, the softmax over every item",
     lambda r: every_item(problem(r), pos_ids=torch.tensor([0, 1, -1 if r else 2])),
     r"a sharded call failed on rank 1: ValueError: pos_ids must be >= 0; got ids in \[-1, 1\]"),
    ("log_q on one rank only, the softmax over every item",
     lambda r: every_item(problem(r), **({} if r else dict(log_q=torch.zeros(CUT), pos_log_q=torch.zeros(ROWS)))),
     r"every rank must call with the same log_q given; got True on rank 0, False on rank 1"),
]


def check_cases(rank: int, world: int) -> None:
    for name, call, words in CASES:
        with pytest.raises(ValueError) as raised:
            call(rank)
        messages = [None] * world
        dist.all_gather_object(messages, str(raised.value))
        assert messages[0] == messages[1], (name, messages)  # the same error on every rank
        assert re.search(words, messages[0]), (name, messages[0])
    # and in step again, the calls go through
    p = problem(rank)
    assert mns(p).negatives.shape == (2 * ROWS, 3)
    assert torch.isfinite(softmax(p)).all()
    assert torch.isfinite(every_item(p)).all()


def test_ranks_out_of_step_raise_the_same_error(tmp_path):
    run_ranks(2, tmp_path, check_cases, timeout_s=30)
