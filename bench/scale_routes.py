"""The two routes over row-sharded tables, ``python -m bench.scale --routes`` (the
torchrec extra): over torchrec tables sharded row-wise in 1, 2 and 4 gloo
processes, 10^6 and 10^7 items, writes
``bench/results/scale-routes-<machine>-<date>.{md,json}``: the median time of one
MRL-M step (global batch B 2048, 5 levels x 16 candidates, D 64, fused
RowWiseAdagrad, one thread a process) and the bytes a rank receives per step,
for the **composed** route (the candidates' rows gathered through the sharded
lookup, ``mns_sample`` on them, the chosen rows looked up with gradient,
``mrl_bpr_loss``) and the **sharded** one (:mod:`mrl_kernels.distributed.sharded`:
each rank scores its own share of every pool on its local shard), and the
sharded route's two parts alone: its operators and collectives (without
torchrec), and its one torchrec lookup with gradient and the fused backward (the
batch's users and positives, and as many ids of the rank's own rows as the
winners it owns: ``B L / W``).
"""
from __future__ import annotations

from . import result_name

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrl_kernels.atomic import atomic_write_text

from .scale import BATCH, USERS

ROUTE_SIZES, ROUTE_WORLDS, LEVELS, PER_LEVEL, WIDTH = (1_000_000, 10_000_000), (1, 2, 4), 5, 16, 64


def route_bytes(route: str, world: int, batch: int = BATCH) -> int:
    """Bytes a rank receives per step, counting what crosses between ranks
    (a share ``(W - 1) / W`` of what it asks of the sharded tables, the rest
    being its own rows). Composed: the candidates' ids (int64) and rows, the
    chosen rows and the positives with their gradients, the users with theirs.
    Sharded: the batch's user rows read from the user shards (an all-reduce of
    ``B x (D + 1)``; an all-reduce moves about twice its size), every rank's
    (score, id) pairs (float64), the winners' score gradients gathered, the
    users' gradients reduce-scattered, and the one lookup's users and
    positives (the winners a rank owns stay on it)."""
    share, local = (world - 1) / world, batch // world
    lookups = 2 * (local + local) * WIDTH * 4  # users and positives, forward rows and backward gradients
    if route == "composed":
        candidates = local * LEVELS * PER_LEVEL * (8 + WIDTH * 4)
        chosen = 2 * local * LEVELS * (8 + WIDTH * 4)
        return int(share * (lookups + candidates + chosen))
    users = 2 * batch * (WIDTH + 1) * 4 + batch * WIDTH * 4
    pairs = batch * LEVELS * 16
    score_gradients = batch * LEVELS * 4
    return int(share * (lookups + users + pairs + score_gradients))


def _route_rank(rank: int, world: int, store: str, n_items: int, repeats: int, out: str) -> None:
    import torch.distributed as dist

    from mrl_kernels import mns_sample, mrl_bpr_loss
    from mrl_kernels.distributed import sharded
    from mrl_kernels.distributed.torchrec_sharded import USERS as USER_TABLE, ShardedMRL, embedding_collection, shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    dims = (4, 8, 16, 32, 64)
    mrl = ShardedMRL(shard(embedding_collection(USERS, n_items, WIDTH), optimizer_kwargs={"lr": 0.01}), dims)
    g = torch.Generator().manual_seed(rank)
    local = BATCH // world
    mine = slice(rank * local, (rank + 1) * local)
    batches = torch.Generator().manual_seed(7)  # the same batch on every rank

    def batch():
        return torch.randint(0, USERS, (BATCH,), generator=batches), torch.randint(0, n_items, (BATCH,), generator=batches)

    def composed():
        users, pos = batch()
        users, pos = users[mine], pos[mine]
        cand = torch.randint(0, n_items, (local, LEVELS, PER_LEVEL), generator=g)
        user = mrl.lookup(users=users, batch=local)["user"]
        with torch.no_grad():
            rows = mrl.lookup(neg=cand.flatten(), batch=local)["neg"]
            picked = mns_sample(user.detach(), rows, torch.arange(cand.numel()).view_as(cand), dims)
        negatives = cand.flatten()[picked]
        looked = mrl.lookup(pos=pos, neg=negatives.flatten(), batch=local)
        loss = mrl_bpr_loss(user, looked["pos"], looked["neg"].view(local, LEVELS, WIDTH), dims) / world
        loss.backward()

    def sharded_route():
        users, pos = batch()
        cand = mrl.draw(users, (LEVELS, max(1, PER_LEVEL // world)), generator=g)
        loss, _ = mrl.mns_bpr_loss(users[mine], pos[mine], cand, every_user=users)
        loss.backward()

    pos_rows = torch.randn(local, WIDTH, requires_grad=True)

    def operators_alone():  # the sharded route's own work: its operators and collectives, no torchrec lookup
        users, _ = batch()
        cand = mrl.draw(users, (LEVELS, max(1, PER_LEVEL // world)), generator=g)
        user_shard, user_offset = mrl.local(USER_TABLE)
        every_user = sharded.batch_rows(user_shard, users, offset=user_offset)
        shard_rows, offset = mrl.local()
        choice = sharded.mns_sample(every_user, shard_rows, cand, dims, offset=offset, gathered=True)
        neg_rows = shard_rows[choice.owned_ids - offset].detach().requires_grad_()
        user = every_user[mine].clone().requires_grad_()
        sharded.mrl_bpr_loss(user, pos_rows, neg_rows, choice, dims).backward()

    # the routes interleaved, each step after a barrier: a drift of the machine (2 processes sharing its cores with
    # gloo's threads) falls on all of them alike
    item_shard, item_offset = mrl.local()

    def lookup_alone():  # the sharded route's torchrec part: its one lookup with gradient and the fused backward
        users, pos = batch()
        owned = torch.randint(item_offset, item_offset + item_shard.shape[0], (BATCH * LEVELS // world,),
                              generator=g)
        rows = mrl.lookup(users=users[mine], pos=pos[mine], neg=owned, batch=local)
        sum(r.sum() for r in rows.values()).backward()

    steps = {"composed": composed, "sharded": sharded_route, "operators": operators_alone, "lookup": lookup_alone}
    times = {name: [] for name in steps}
    for repeat in range(3 + repeats):
        for name, step in steps.items():
            dist.barrier()
            started = time.perf_counter()
            step()
            if repeat >= 3:  # after 3 rounds of warm-up
                times[name].append((time.perf_counter() - started) * 1e3)
    result = {name: float(np.median(t)) for name, t in times.items()}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def routes(repeats: int, out_dir: str, sizes=ROUTE_SIZES, worlds=ROUTE_WORLDS) -> int:
    """The composed and sharded routes at every world size and catalogue size."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("torchrec") is None or importlib.util.find_spec("fbgemm_gpu") is None:
        raise SystemExit("python -m bench.scale --routes: needs torchrec and fbgemm-gpu, the torchrec extra "
                         "(make test installs it; see the Makefile's TORCHREC)")

    import torch.multiprocessing as mp

    rows = []
    for n_items in sizes:
        for world in worlds:
            with tempfile.TemporaryDirectory() as scratch:
                out = str(Path(scratch) / "result.json")
                mp.spawn(_route_rank, args=(world, str(Path(scratch) / "store"), n_items, repeats, out),
                         nprocs=world, join=True)
                times = json.loads(Path(out).read_text())
            rows.append({"N": n_items, "processes": world, "composed ms": times["composed"],
                         "sharded ms": times["sharded"], "sharded / composed": times["sharded"] / times["composed"],
                         "its operators alone ms": times["operators"], "its lookup alone ms": times["lookup"],
                         "composed MB": route_bytes("composed", world) / 1e6,
                         "sharded MB": route_bytes("sharded", world) / 1e6})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out = Path(out_dir)
    name = result_name(out, f"scale-routes-{platform.machine()}-1thread")
    text = (f"# Row-sharded tables: composed against sharded route\n\n{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores here, one torch thread a gloo process (4 processes share 2 cores "
            f"where the machine has 2); torchrec row-wise tables, fused RowWiseAdagrad; global B {BATCH}, "
            f"{LEVELS} levels x {PER_LEVEL} candidates, D {WIDTH}, {USERS} users; median of {repeats} steps "
            f"(rank 0, a barrier before each, the routes interleaved); MB: what a rank receives per step, "
            f"bench/scale.route_bytes.\n\n"
            + table.astype({"N": str, "processes": str}).to_markdown(index=False, floatfmt=".2f") + "\n")
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=2))
    print(text)
    return 0


