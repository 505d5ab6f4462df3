import math

import pytest
import torch

from mrl_kernels.data import CSR
from mrl_kernels.metrics import evaluate, prefix_evaluate


def test_recall_and_ndcg_by_hand():
    # one user, 6 items; item scores = item_weight[:, 0] (user vector [1, 0])
    user = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[6.0, 0], [5.0, 0], [4.0, 0], [3.0, 0], [2.0, 0], [1.0, 0]])
    train = CSR.from_pairs([0], [0], 2, 6)       # item 0 is excluded from user 0's ranking
    heldout = CSR.from_pairs([0, 0], [2, 5], 2, 6)  # user 1 has none: not averaged
    m = evaluate(user, items, heldout, [train], ks=(2, 3, 5))
    # ranking without item 0: 1, 2, 3, 4, 5 -> hits at ranks 1 (item 2) and 4 (item 5), 0-based
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    d = lambda r: 1 / math.log2(r + 2)  # noqa: E731
    assert m["ndcg@2"] == pytest.approx(d(1) / (d(0) + d(1)))  # IDCG with min(2, 2) hits
    assert m["ndcg@5"] == pytest.approx((d(1) + d(4)) / (d(0) + d(1)))


def test_idcg_uses_min_k_heldout():
    user = torch.tensor([[1.0]])
    items = torch.tensor([[3.0], [2.0], [1.0]])
    heldout = CSR.from_pairs([0, 0, 0], [0, 1, 2], 1, 3)
    m = evaluate(user, items, heldout, ks=(1, 2))
    assert m["ndcg@1"] == pytest.approx(1.0) and m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx(1.0) and m["recall@2"] == pytest.approx(2 / 3)


def test_batches_do_not_change_the_result():
    torch.manual_seed(0)
    u, i = torch.randn(50, 8), torch.randn(30, 8)
    held = CSR.from_pairs(torch.randint(0, 50, (80,)), torch.randint(0, 30, (80,)), 50, 30)
    train = CSR.from_pairs(torch.randint(0, 50, (80,)), torch.randint(0, 30, (80,)), 50, 30)
    assert evaluate(u, i, held, [train], batch_size=7) == pytest.approx(evaluate(u, i, held, [train]))


def test_prefix_metrics_use_only_the_first_columns():
    torch.manual_seed(1)
    u, i = torch.randn(20, 8), torch.randn(15, 8)
    held = CSR.from_pairs(torch.arange(20), torch.randint(0, 15, (20,)), 20, 15)
    out = prefix_evaluate(u, i, [2, 8], held)
    assert out["2"] == pytest.approx(evaluate(u[:, :2], i[:, :2], held))
    assert out["8"] == pytest.approx(evaluate(u, i, held))


def test_excluded_items_are_never_hits_when_k_exceeds_the_items_left():
    # 40 items; user 0 trained on items 0..34; its held-out items: 3 (a repeat of a
    # training interaction) and 36; K = 50 ranks all 40 items, the excluded ones last
    train = CSR.from_pairs([0] * 35, list(range(35)), 1, 40)
    heldout = CSR.from_pairs([0, 0], [3, 36], 1, 40)
    g = torch.Generator().manual_seed(0)
    result = evaluate(torch.randn(1, 4, generator=g), torch.randn(40, 4, generator=g), heldout, [train], ks=(50,))
    assert result["recall@50"] == 0.5
