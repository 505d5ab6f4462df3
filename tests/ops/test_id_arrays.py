"""Ids are taken as a tensor or as an array-like (a numpy array, a list) at
every public entry point that takes ids, with the same result; non-integer
ids are refused alike in either form."""
import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import ops
from mrl_kernels.ops.testing import make_inputs

B, D, N, M = 5, 8, 12, 3
DIMS = [2, 4, 8]


def seeded():
    return torch.Generator().manual_seed(7)


def _calls():
    """(name, id argument as a tensor, call(ids) -> outputs)."""
    x = make_inputs(B, D, N, M, DIMS, seed=3)
    user, pos, items, cand = x["user"], x["pos"], x["item_weight"], x["candidates"]
    pos_ids = torch.tensor([0, 3, 3, 7, 11])
    train = ops.CSR.from_pairs([0, 0, 1, 3, 4], [1, 2, 3, 0, 11], B, N)
    popularity = ops.Popularity(torch.arange(1.0, N + 1))
    users = torch.tensor([0, 1, 2, 3, 4])
    param = torch.randn(N, D)
    return [
        ("mns_sample candidates", cand, lambda c: mk.mns_sample(user, items, c, DIMS)),
        ("mns_bpr_loss candidates", cand, lambda c: mk.mns_bpr_loss(user, pos, items, c, DIMS, reduction="none")),
        ("mrl_softmax_loss candidates", cand, lambda c: mk.mrl_softmax_loss(user, pos, items, c, DIMS,
                                                                            reduction="none")),
        ("mrl_softmax_loss pos_ids", pos_ids, lambda p: mk.mrl_softmax_loss(user, pos, items, cand, DIMS, pos_ids=p,
                                                                            reduction="none")),
        ("sample_candidates users", users, lambda u: mk.sample_candidates(u, 4, N, train, seeded())),
        ("popularity_candidates users", users, lambda u: ops.popularity_candidates(u, 4, popularity, train,
                                                                                   seeded())),
        ("in_batch_candidates users", users, lambda u: ops.in_batch_candidates(u, pos_ids, train, popularity)),
        ("in_batch_candidates pos_ids", pos_ids, lambda p: ops.in_batch_candidates(users, p, train, popularity)),
        ("mixed_candidates pos_ids", pos_ids, lambda p: ops.mixed_candidates(users, p, 4, N, popularity, train,
                                                                             seeded())),
        ("CSR.from_pairs rows", torch.tensor([0, 4, 4]), lambda r: ops.CSR.from_pairs(r, [1, 0, 2], B, N).indices),
        ("CSR indices", train.indices, lambda i: ops.CSR(train.indptr, i, N).indices),
        ("nested_als_solve indices", train.indices,
         lambda i: mk.nested_als_solve(user, items, ops.CSR(train.indptr, i, N), DIMS, alpha=2.0, reg=0.1)),
        ("lazy_adam indices", torch.tensor([4, 0, 9]), lambda i: _lazy_adam(param, i)),
        ("prefix_topk exclude", train.indices, lambda i: mk.prefix_topk(user, items, 3, 4, N,
                                                                        ops.CSR(train.indptr, i, N))),
    ]


def _lazy_adam(param, indices):
    tables = [param.clone(), torch.zeros_like(param), torch.zeros_like(param)]
    ops.lazy_adam(*tables, indices, torch.ones(3, D), beta1=0.9, beta2=0.999, eps=1e-8, step_size=0.1)
    return tables[0]


CALLS = [name for name, _, _ in _calls()]


def _flat(outputs):
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("form", ["numpy", "list", "int32 numpy", "negative-stride numpy"])
def test_array_likes_of_ids_give_what_tensors_give(name, form):
    _, ids, call = next(c for c in _calls() if c[0] == name)
    array = ids.numpy()
    given = {"numpy": array, "list": ids.tolist(), "int32 numpy": array.astype(np.int32),
             "negative-stride numpy": array[::-1].copy()[::-1]}[form]
    for got, want in zip(_flat(call(given)), _flat(call(ids))):
        if got is not None:
            assert torch.equal(got, want), f"{name} as a {form} array"


@pytest.mark.parametrize("name", CALLS)
def test_non_integer_ids_are_refused_alike_in_either_form(name):
    _, ids, call = next(c for c in _calls() if c[0] == name)
    for bad in (ids.double(), ids.double().numpy(), ids.bool(), ids.bool().numpy()):
        with pytest.raises(TypeError, match="must hold integer ids"):
            call(bad)
    with pytest.raises(TypeError, match="array-like"):
        call("0 1 2")
