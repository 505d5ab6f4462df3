"""MNS + the MRL loss inside your own training loop.

Your model keeps its own embedding tables; ``mrl_kernels`` supplies candidate
sampling and the fused loss. Run: ``python examples/own_training_loop.py``.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import mrl_kernels as mk
from mrl_kernels.training import data
from mrl_kernels.training.metrics import evaluate

DIMS = (4, 8, 16, 32, 64)


def main(epochs: int = 20, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    ds = data.synthetic(seed=seed)
    users_table = nn.Embedding(ds.n_users, DIMS[-1])
    items_table = nn.Embedding(ds.n_items, DIMS[-1])
    for table in (users_table, items_table):
        nn.init.xavier_uniform_(table.weight)
    optimizer = torch.optim.Adam([*users_table.parameters(), *items_table.parameters()], lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    train_users, train_items = (torch.from_numpy(a) for a in ds.train.pairs())

    for epoch in range(epochs):
        order = torch.randperm(len(train_users), generator=generator)
        for start in range(0, len(order), 2048):
            rows = order[start:start + 2048]
            users, pos = train_users[rows], train_items[rows]
            # 16 candidates per level, never one of the user's training items
            cand = mk.sample_candidates(users, len(DIMS) * 16, ds.n_items, ds.train, generator)
            loss, negatives = mk.mns_bpr_loss(users_table(users), items_table(pos), items_table.weight,
                                              cand.view(-1, len(DIMS), 16), DIMS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}")
    metrics = evaluate(users_table.weight, items_table.weight, ds.test, [ds.train, ds.valid])
    print({k: round(v, 4) for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    main(parser.parse_args().epochs)
