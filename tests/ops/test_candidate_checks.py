"""Every candidate source checks its users against the exclusion CSR's rows,
its positives' ids and its generator alike, and names the argument: no wrong
or missing exclusion, no raw torch error."""
import numpy as np
import pytest
import torch

import mrl_kernels as mk
from mrl_kernels import ops

N_USERS, N_ITEMS = 4, 9
TRAIN = ops.CSR.from_pairs([0, 0, 1, 2, 3], [1, 2, 3, 4, 8], N_USERS, N_ITEMS)
POPULARITY = ops.Popularity(torch.arange(1.0, N_ITEMS + 1))


def sources(users=torch.tensor([0, 1, 2, 3]), pos_ids=torch.tensor([5, 6, 7, 0]), exclude=TRAIN, generator=None):
    """Every candidate source, called with these arguments."""
    return {
        "sample_candidates": lambda: mk.sample_candidates(users, 3, N_ITEMS, exclude, generator),
        "popularity_candidates": lambda: ops.popularity_candidates(users, 3, POPULARITY, exclude, generator),
        "in_batch_candidates": lambda: ops.in_batch_candidates(users, pos_ids, exclude, POPULARITY),
        "mixed_candidates": lambda: ops.mixed_candidates(users, pos_ids, 3, N_ITEMS, POPULARITY, exclude, generator),
    }


SOURCES = list(sources())


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("bad", [-1, N_USERS])
def test_users_outside_the_exclusion_rows_are_refused_by_every_source(source, bad):
    users = torch.tensor([0, bad, 2, 3])
    with pytest.raises(ValueError, match=f"users must lie in \\[0, {N_USERS}\\) \\(the rows of exclude\\); "
                                         f"got ids in \\[{min(bad, 0)}, {max(bad, 3)}\\]"):
        sources(users=users)[source]()


@pytest.mark.parametrize("source", SOURCES)
def test_users_are_checked_alike_without_exclusion_too(source):
    with pytest.raises(ValueError, match="users must be >= 0"):
        sources(users=torch.tensor([0, -1, 2, 3]), exclude=None)[source]()
    with pytest.raises(TypeError, match="users must hold integer ids, got dtype torch.bool"):
        sources(users=torch.tensor([True, False, True, True]))[source]()
    with pytest.raises(TypeError, match="exclude must be None or a CSR \\(build one with CSR.from_scipy"):
        sources(exclude=TRAIN.dense_rows(torch.arange(N_USERS)).numpy())[source]()


@pytest.mark.parametrize("source", ["in_batch_candidates", "mixed_candidates"])
@pytest.mark.parametrize("pos_ids, error, words", [
    (torch.tensor([5, -1, 7, 0]), ValueError, f"pos_ids must lie in \\[0, {N_ITEMS}\\) \\(the items of"),
    (torch.tensor([5, N_ITEMS, 7, 0]), ValueError, f"pos_ids must lie in \\[0, {N_ITEMS}\\)"),
    (torch.tensor([True, False, True, True]), TypeError, "pos_ids must hold integer ids, got dtype torch.bool"),
    (torch.tensor([5.0, 6.0, 7.0, 0.0]), TypeError, "pos_ids must hold integer ids"),
    (torch.tensor([5, 6, 7]), ValueError, "pos_ids must have shape \\(4,\\) \\(one per user\\)"),
])
def test_positives_are_checked(source, pos_ids, error, words):
    with pytest.raises(error, match=words):
        sources(pos_ids=pos_ids)[source]()


def test_in_batch_positives_without_an_item_count_are_ids_all_the_same():
    with pytest.raises(ValueError, match="pos_ids must be >= 0"):
        ops.in_batch_candidates(torch.tensor([0, 1]), torch.tensor([3, -1]))


@pytest.mark.parametrize("source", ["sample_candidates", "popularity_candidates", "mixed_candidates"])
@pytest.mark.parametrize("generator", [np.random.default_rng(0), 0, "cpu"])
def test_a_generator_that_is_not_torch_s_is_refused_by_name(source, generator):
    with pytest.raises(TypeError, match="generator must be None or a torch.Generator \\(on cpu\\), got"):
        sources(generator=generator)[source]()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a generator on another device than the users)")
def test_a_generator_on_another_device_is_refused_by_name():
    with pytest.raises(ValueError, match="generator is on cuda"):
        sources(generator=torch.Generator("cuda"))["sample_candidates"]()


def test_popularity_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="popularity must be a Popularity, got Tensor"):
        ops.popularity_candidates(torch.tensor([0]), 3, torch.ones(N_ITEMS))


def test_nested_als_weights_that_are_no_numbers_are_named():
    x, y = torch.randn(N_USERS, 4), torch.randn(N_ITEMS, 4)
    for weights in ("abc", [1.0, "a"], {"a": 1}):
        with pytest.raises(TypeError, match="weights must be a sequence, array or tensor of 2 numbers"):
            mk.nested_als_solve(x, y, TRAIN, [2, 4], weights, alpha=1.0, reg=0.1)
