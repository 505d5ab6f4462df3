"""MRL-M (MNS + the MRL loss) over torchrec tables sharded row-wise, without
moving candidate rows: each rank draws its share of every pool from its own
item rows and scores it on its local shard (:mod:`mrl_kernels.distributed.sharded`); the
tables are updated by torchrec's fused RowWiseAdagrad.

Needs torchrec and FBGEMM (``mrl_kernels.distributed.TORCHREC_INSTALL``; in a
checkout, ``make install``). Run, e.g.
``python examples/torchrec_training.py --world 2 --dataset tool --data-dir ../shared/datasets``
(it starts ``--world`` gloo processes itself).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrl_kernels.training import data
from mrl_kernels.atomic import atomic_write_text
from mrl_kernels.training.metrics import evaluate
from mrl_kernels.distributed.torchrec_sharded import ITEMS, USERS, ShardedMRL, embedding_collection, shard


def train(dataset: data.Dataset, dims=(4, 8, 16, 32, 64), epochs: int = 20, batch_size: int = 2048,
          candidates: int = 16, lr: float = 0.05, l2: float = 0.0, seed: int = 0, log=print) -> dict:
    """Trains in the current process group; every rank returns the test metrics
    (and the epochs' mean losses) of the final tables."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)  # the same initial tables whatever the world size
    collection = embedding_collection(dataset.n_users, dataset.n_items, dims[-1])
    model = shard(collection, optimizer_kwargs={"lr": lr, "eps": 1e-8})
    mrl = ShardedMRL(model, dims)
    for table, n in ((USERS, dataset.n_users), (ITEMS, dataset.n_items)):  # xavier-uniform, as the trainer
        rows, offset = mrl.local(table)
        bound = math.sqrt(6.0 / (n + dims[-1]))
        full = torch.empty(n, dims[-1]).uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed + 1))
        rows.copy_(full[offset:offset + rows.shape[0]])
    users_all, items_all = (torch.from_numpy(a) for a in dataset.train.pairs())
    order_gen = torch.Generator().manual_seed(seed)  # the same order on every rank
    draw_gen = torch.Generator().manual_seed(seed + 1000 * (rank + 1))
    per_rank = batch_size // world
    # each rank's share of the pools: about candidates / world rows of its own per level
    share = max(1, round(candidates * mrl.local()[0].shape[0] / dataset.n_items))
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(users_all), generator=order_gen)
        total, steps, started = 0.0, 0, time.perf_counter()
        for start in range(0, len(order) - per_rank * world + 1, per_rank * world):
            rows = order[start:start + per_rank * world]
            users, pos = users_all[rows], items_all[rows]
            mine = slice(rank * per_rank, (rank + 1) * per_rank)
            cand = mrl.draw(users, (len(dims), share), exclude=dataset.train, generator=draw_gen)
            loss, _ = mrl.mns_bpr_loss(users[mine], pos[mine], cand, l2=l2, every_user=users)
            loss.backward()  # the fused optimizer updates the rows looked up
            total += float(loss.detach())
            steps += 1
        summed = torch.tensor([total])
        dist.all_reduce(summed)  # the ranks' shares sum to the batch's loss
        losses.append(float(summed) / max(steps, 1))
        if rank == 0:
            log(f"epoch {epoch + 1}: loss {losses[-1]:.4f} ({time.perf_counter() - started:.1f} s)")
    user_table, item_table = mrl.gather(USERS), mrl.gather(ITEMS)
    metrics = evaluate(user_table, item_table, dataset.test, [dataset.train, dataset.valid])
    return {"test": metrics, "losses": losses, "world": world, "share": share}


def _rank(rank: int, world: int, store: str, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        dataset = data.load(args.pop("dataset"), args.pop("data_dir"))
        result = train(dataset, **args)
        if rank == 0:
            Path(out).write_text(json.dumps(result, indent=2))
    finally:
        dist.destroy_process_group()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="gloo processes to start")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--candidates", type=int, default=16, help="per level, over all ranks")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--l2", type=float, default=0.0, help="the trainer's L2 term on the batch's rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result here (JSON)")
    args = vars(parser.parse_args(argv))
    world, out = args.pop("world"), args.pop("out")
    with tempfile.TemporaryDirectory() as scratch:
        result_file = str(Path(scratch) / "result.json")
        mp.spawn(_rank, args=(world, str(Path(scratch) / "store"), args, result_file), nprocs=world, join=True)
        result = json.loads(Path(result_file).read_text())
    print(json.dumps(result["test"]))
    if out:
        atomic_write_text(out, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
