"""MNS + the MRL loss, and the Matryoshka sampled softmax, over a torchrec
``EmbeddingCollection`` sharded row-wise by ``DistributedModelParallel``,
without moving candidate rows (:mod:`mrl_kernels.distributed.sharded`), the tables
updated by torchrec's fused optimizer. Needs torchrec and FBGEMM, the pair
built for the installed torch (:data:`mrl_kernels.distributed.TORCHREC_INSTALL`:
the pair with ``--no-deps``, then the ``torchrec`` extra; in a checkout, ``make
install``).

One collection holds the user table (feature ``user``) and the item table
(features ``pos`` and ``neg``): :func:`embedding_collection` builds it,
:func:`shard` shards both row-wise over the process group with a fused
optimizer. A step of :class:`ShardedMRL`:

1. the batch's user vectors read from the user table's local shards
   (:func:`mrl_kernels.distributed.sharded.batch_rows`: one all-reduce, no lookup);
2. each rank's candidate share drawn from its own item rows
   (:meth:`ShardedMRL.draw`) and scored on the rank's local shard, read in
   place (:func:`mrl_kernels.distributed.sharded.mns_sample`);
3. one lookup through the collection, with gradient: this rank's users, its
   positives and the winners it owns (those ids stay on their rank);
4. :func:`mrl_kernels.distributed.sharded.mrl_bpr_loss`; ``loss.backward()`` applies the
   fused optimizer to the rows looked up.

The loss each rank returns is its share of the global batch's mean (the ranks'
losses sum to the one-process loss), so the rows' gradients equal the
one-process gradients: no division by the world size is needed.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from . import TORCHREC_INSTALL, sharded
from ..ops import CSR
from ..ops.candidates import uniform_draw
from ..ops.common import l2_term

try:
    import torchrec
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
    from torchrec.distributed.types import ShardingPlan
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
except ImportError as error:  # the extra is not installed
    raise ImportError(f"mrl_kernels.distributed.torchrec_sharded needs torchrec and fbgemm-gpu: {TORCHREC_INSTALL} "
                      "(in a checkout: make install)") from error

__all__ = ["USERS", "ITEMS", "embedding_collection", "shard", "ShardedMRL"]

USERS, ITEMS = "user_table", "item_table"  # torchrec refuses a table named "items" (a module attribute)
FEATURES = ("user", "pos", "neg")


def embedding_collection(n_users: int, n_items: int, width: int) -> "torchrec.EmbeddingCollection":
    """The user table (feature ``user``) and item table (``pos``, ``neg``) on
    the meta device, for :func:`shard` to place."""
    return torchrec.EmbeddingCollection(tables=[
        torchrec.EmbeddingConfig(name=USERS, embedding_dim=width, num_embeddings=n_users, feature_names=["user"]),
        torchrec.EmbeddingConfig(name=ITEMS, embedding_dim=width, num_embeddings=n_items,
                                 feature_names=["pos", "neg"]),
    ], device=torch.device("meta"))


def shard(collection, optimizer=None, optimizer_kwargs: dict | None = None,
          device: torch.device | str = "cpu") -> DistributedModelParallel:
    """Both tables sharded row-wise over the default process group, updated in
    the backward by ``optimizer`` (default torchrec's ``RowWiseAdagrad``; on the
    CPU torchrec takes SGD, Adagrad and RowWiseAdagrad)."""
    if optimizer is None:
        from torchrec.optim import RowWiseAdagrad as optimizer
    apply_optimizer_in_backward(optimizer, collection.parameters(), optimizer_kwargs or {"lr": 0.05})
    plan = construct_module_sharding_plan(collection, {USERS: row_wise(), ITEMS: row_wise()},
                                          world_size=dist.get_world_size(), device_type=torch.device(device).type)
    return DistributedModelParallel(collection, device=torch.device(device), plan=ShardingPlan({"": plan}))


class ShardedMRL:
    """The MRL losses over ``model`` (from :func:`shard`), with nested widths ``dims``."""

    def __init__(self, model: DistributedModelParallel, dims: Sequence[int]):
        self.model, self.dims = model, tuple(dims)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._local: dict[str, tuple[Tensor, int]] = {}

    def local(self, table: str = ITEMS) -> tuple[Tensor, int]:
        """``(rows, offset)``: this rank's shard of ``table``, a view of the
        fused optimizer's weights (read in place, no gradient), and the
        global id of its first row. Found once (a state dict builds every table's sharded tensor)."""
        if table not in self._local:
            local = self.model.state_dict()[f"embeddings.{table}.weight"].local_shards()[0]
            self._local[table] = local.tensor, int(local.metadata.shard_offsets[0])
        return self._local[table]

    def lookup(self, users: Tensor | None = None, pos: Tensor | None = None,
                neg: Tensor | None = None, batch: int = 1) -> dict[str, Tensor]:
        """``{"user": .., "pos": .., "neg": ..}``: the rows of the given ids of
        each feature through the collection, in their order (with gradient: the
        fused optimizer steps them in the backward; call it under
        ``torch.no_grad()`` to read rows only). ``users`` and ``pos`` hold one id
        for each of the ``batch`` rows, ``neg`` any number."""
        empty = torch.zeros(0, dtype=torch.long)
        values, lengths = [], []
        for ids, one_per_row in ((users, True), (pos, True), (neg, False)):
            ids = empty if ids is None else ids.long()
            values.append(ids)
            if one_per_row and ids.numel():
                lengths.append(torch.ones(batch, dtype=torch.long))
            else:
                lengths.append(torch.tensor([ids.numel()] + [0] * (batch - 1), dtype=torch.long))
        kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(keys=list(FEATURES), values=torch.cat(values),
                                                           lengths=torch.cat(lengths))
        return {k: v.values() for k, v in self.model(kjt).items()}

    def draw(self, users: Tensor, num: int, exclude: CSR | None = None, generator: torch.Generator | None = None,
             max_rounds: int = 64) -> Tensor:
        """This rank's share of every row's pool: ``(B, *num)`` ids (``num`` an int
        or a shape such as ``(L, m)``) drawn uniformly from this rank's item rows,
        for the batch's ``users`` (``(B,)``, every rank's, in rank order), each
        user's items in ``exclude`` redrawn."""
        local, offset = self.local()
        shape = (num,) if isinstance(num, int) else tuple(num)
        return uniform_draw(users, shape, offset, offset + local.shape[0], exclude, generator, max_rounds)

    def mns_bpr_loss(self, users: Tensor, pos: Tensor, candidates: Tensor, weights=None, l2: float = 0.0,
                     backend: str = "auto", every_user: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, negatives)`` for this rank's batch rows ``users``, ``pos``
        (``(B_r,)`` ids), ``candidates`` this rank's share of every row's pool
        (:meth:`draw`, ``(B, m)`` or ``(B, L, m)``); the negatives ``(B, L)``
        global ids of the whole batch. ``l2`` adds the trainer's term
        ``l2 * (|u|^2 + |i|^2 + |negatives|^2) / 2 / B`` (each negative on its owner).
        ``every_user``: the whole batch's user ids ``(B,)`` (every rank's rows
        in rank order, as :meth:`draw` takes them) where the caller has them;
        otherwise they are gathered."""
        user_rows, user_offset = self.local(USERS)
        if every_user is None:
            every_user = sharded.gather_rows(users.long())
        elif every_user.shape != (users.shape[0] * self.world,) or \
                not torch.equal(every_user[self.rank * users.shape[0]:(self.rank + 1) * users.shape[0]], users):
            raise ValueError(f"every_user must be the whole batch's {users.shape[0] * self.world} user ids, this "
                             f"rank's users at rows [{self.rank * users.shape[0]}, "
                             f"{(self.rank + 1) * users.shape[0]})")
        every_user = sharded.batch_rows(user_rows, every_user.long(), offset=user_offset)
        shard_rows, offset = self.local()
        choice = sharded.mns_sample(every_user, shard_rows, candidates, self.dims, offset=offset, gathered=True,
                                    backend=backend)
        rows = self.lookup(users=users, pos=pos, neg=choice.owned_ids, batch=users.shape[0])
        loss = sharded.mrl_bpr_loss(rows["user"], rows["pos"], rows["neg"], choice, self.dims, weights)
        if l2:
            norms = rows["user"].square().sum() + rows["pos"].square().sum() + rows["neg"].square().sum()
            loss = loss + l2_term(l2, norms, choice.users.shape[0])
        return loss, choice.negatives

    def softmax_loss(self, users: Tensor, pos: Tensor, candidates: Tensor, temperature: float = 1.0,
                     log_q: Tensor | None = None, weights=None) -> Tensor:
        """The sampled softmax over every row's pool (this rank's share
        ``candidates``, ids < 0 padding; ``log_q`` its logQ correction), the
        candidates' rows looked up once each through the collection (on this
        rank) and the positives masked among them."""
        user = self.lookup(users=users, batch=users.shape[0])["user"]
        shard_rows, offset = self.local()
        # the candidates' unique ids and the positives through one lookup
        valid = candidates >= 0
        ids = torch.unique(candidates[valid])
        rows = self.lookup(pos=pos, neg=ids, batch=users.shape[0])
        def lookup(wanted: Tensor) -> Tensor:  # rows of sorted unique ids among ``ids``
            return rows["neg"][torch.searchsorted(ids, wanted)]

        return sharded.mrl_softmax_loss(user, rows["pos"], shard_rows, candidates, self.dims, weights, temperature,
                                        offset=offset, log_q=log_q, pos_ids=pos, lookup=lookup)

    def gather(self, table: str) -> Tensor:
        """The whole ``table`` on every rank (for evaluation): the local shards all-gathered."""
        rows, _ = self.local(table)
        sizes = [None] * self.world
        dist.all_gather_object(sizes, rows.shape[0])
        padded = rows.new_zeros(max(sizes), rows.shape[1])  # gloo gathers equal shapes
        padded[:rows.shape[0]] = rows.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])
