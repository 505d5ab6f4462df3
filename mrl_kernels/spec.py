"""The operators, each defined once: name, schema, shape (fake) function and
gradient rule. Every backend's ``torch.library`` registration is made from this
table (:mod:`mrl_kernels.library`); a backend only supplies implementations.

==========================  ==============================================================
``mns_sample``              ``(user, item_weight, candidates, dims) -> negatives (B, L)``
``mrl_bpr_loss``            ``(user, pos, neg, dims, weights) -> (loss (B,), coef (B, L))``
``mrl_bpr_loss_backward``   ``(grad, user, pos, neg, coef, dims) -> (d user, d pos, d neg)``
``mns_bpr_loss``            ``(user, pos, item_weight, candidates, dims, weights)
                            -> (loss (B,), negatives (B, L), coef (B, L))``
``mns_bpr_loss_backward``   ``(grad, user, pos, item_weight, negatives, coef, dims)
                            -> (d user, d pos, d item_weight)``
``prefix_topk``             ``(query, narrow, item_weight, k, shortlist, exclude_offsets,
                            exclude_ids) -> (scores (B, k), ids (B, k))``
``mrl_softmax_loss``        ``(user, pos, item_weight, candidates, dims, weights, temperature,
                            cosine) -> (loss (B,), lse (B, L))``
``mrl_softmax_loss_backward`` ``(grad, user, pos, item_weight, candidates, lse, dims, weights,
                            temperature, cosine) -> (d user, d pos, d item_weight)``
==========================  ==============================================================

``coef[b, l] = w_l * sigmoid(margin_l)`` is what a BPR loss's forward saves for
its backward; ``lse[b, l]`` (the log-sum-exp of level l's scores over the
temperature) is what the softmax loss's forward saves, its backward recomputing
the candidates' scores. Candidate ids < 0 in ``mrl_softmax_loss`` are padding.
Every output is contiguous.

A differentiable operator names its backward operator and the inputs that get
gradients; the backward operator's first argument is the gradient of the first
output, the others are named after the forward's inputs and outputs, which is
how the autograd glue knows what to save. Adding an operator = one entry here
plus one implementation per backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from .reference import acc_dtype

__all__ = ["NAMESPACE", "OpSpec", "OPS", "qualified_name"]

NAMESPACE = "mrl_kernels"


def qualified_name(op: str, backend: str) -> str:
    """``mrl_kernels::<op>_<backend>``: every backend has its own operators."""
    return f"{NAMESPACE}::{op}_{backend}"


@dataclass(frozen=True)
class OpSpec:
    name: str
    schema: str  # "(args) -> returns" in torch's schema language, returns named
    fake: Callable  # output shapes, dtypes and devices from the inputs
    backward: str | None = None  # the operator that computes the gradients
    grads: tuple[str, ...] = ()  # the inputs that get gradients, in the order the backward returns them

    @cached_property
    def parsed(self) -> torch._C.FunctionSchema:
        return torch._C.parse_schema(f"{NAMESPACE}::{self.name}{self.schema}")

    @property
    def inputs(self) -> list[str]:
        return [a.name for a in self.parsed.arguments]

    @property
    def outputs(self) -> list[str]:
        return [r.name for r in self.parsed.returns]


def _fake_mns_sample(user, item_weight, candidates, dims):
    return user.new_empty((user.shape[0], len(dims)), dtype=torch.int64)


def _fake_mrl_bpr_loss(user, pos, neg, dims, weights):
    coef = user.new_empty((user.shape[0], len(dims)), dtype=acc_dtype(user.dtype))
    return user.new_empty(user.shape[0]), coef


def _fake_mns_bpr_loss(user, pos, item_weight, candidates, dims, weights):
    loss, coef = _fake_mrl_bpr_loss(user, pos, None, dims, weights)
    return loss, _fake_mns_sample(user, item_weight, candidates, dims), coef


def _fake_prefix_topk(query, narrow, item_weight, k, shortlist, exclude_offsets, exclude_ids):
    return (query.new_empty((query.shape[0], k), dtype=acc_dtype(query.dtype)),
            query.new_empty((query.shape[0], k), dtype=torch.int64))


def _fake_mrl_softmax_loss(user, pos, item_weight, candidates, dims, weights, temperature, cosine):
    return _fake_mrl_bpr_loss(user, pos, None, dims, weights)


def _fake_gradients(grad, *inputs_then_saved):
    """The gradients of the first three tensors after ``grad`` (the differentiable
    inputs of the bpr losses), each shaped like its input."""
    return tuple(t.new_empty(t.shape) for t in inputs_then_saved[:3])


OPS: dict[str, OpSpec] = {spec.name: spec for spec in (
    OpSpec("mns_sample",
           "(Tensor user, Tensor item_weight, Tensor candidates, int[] dims) -> Tensor negatives",
           _fake_mns_sample),
    OpSpec("mrl_bpr_loss",
           "(Tensor user, Tensor pos, Tensor neg, int[] dims, Tensor weights) -> (Tensor loss, Tensor coef)",
           _fake_mrl_bpr_loss, backward="mrl_bpr_loss_backward", grads=("user", "pos", "neg")),
    OpSpec("mrl_bpr_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor neg, Tensor coef, int[] dims)"
           " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_neg)",
           _fake_gradients),
    OpSpec("mns_bpr_loss",
           "(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, Tensor weights)"
           " -> (Tensor loss, Tensor negatives, Tensor coef)",
           _fake_mns_bpr_loss, backward="mns_bpr_loss_backward", grads=("user", "pos", "item_weight")),
    OpSpec("mns_bpr_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor negatives, Tensor coef, int[] dims)"
           " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)",
           _fake_gradients),
    OpSpec("prefix_topk",
           "(Tensor query, Tensor narrow, Tensor item_weight, int k, int shortlist, Tensor exclude_offsets, "
           "Tensor exclude_ids) -> (Tensor scores, Tensor ids)",
           _fake_prefix_topk),
    OpSpec("mrl_softmax_loss",
           "(Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, int[] dims, Tensor weights, "
           "float temperature, bool cosine) -> (Tensor loss, Tensor lse)",
           _fake_mrl_softmax_loss, backward="mrl_softmax_loss_backward", grads=("user", "pos", "item_weight")),
    OpSpec("mrl_softmax_loss_backward",
           "(Tensor grad, Tensor user, Tensor pos, Tensor item_weight, Tensor candidates, Tensor lse, int[] dims, "
           "Tensor weights, float temperature, bool cosine)"
           " -> (Tensor grad_user, Tensor grad_pos, Tensor grad_item_weight)",
           _fake_gradients),
)}
