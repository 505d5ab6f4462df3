"""The kernel layer: the operators, one folder each (:data:`spec.PACKAGES`):
``mns`` (``mns_sample``, ``mrl_bpr_loss``, ``mns_bpr_loss``), ``softmax``
(``mrl_softmax_loss``), ``full_softmax`` (``full_softmax_lse``: the softmax
over every item, ``mrl_softmax_loss(candidates=None)``), ``prefix_topk``,
``als`` (``nested_als_solve``), ``lazy_adam`` (LazyAdam's row pass). A folder holds everything of its
operators: the spec entries (``spec.py``), the reference (``reference.py``),
the Triton kernels with their launchers (``triton.py``), the C++ kernels
(``*_cpu.cpp``) and the public functions (``__init__.py``).

Shared once beside them: the spec table (``spec.py``), the ``torch.library``
glue (``library.py``), the backends (``backends/``) and the rule that picks one
(``registry.py``), the argument checks (``_checks.py``), the references' common
pieces (``common.py``), the Triton helpers (``triton_common.py``), the C++ ones
(``common.h``), the sparse matrix every layer passes (``csr.py``), candidate
draws with exclusion (``candidates.py``) and the random inputs tests and
benchmarks share (``testing.py``). Nothing here imports the rest of
``mrl_kernels``.

Every operator takes ``backend="auto" | "torch" | "triton" | "cpp"``:
``"torch"`` is the plain PyTorch reference (:mod:`mrl_kernels.reference`),
``"triton"`` the fused GPU kernels, ``"cpp"`` the fused CPU kernels; ``"auto"``
follows the rule of :mod:`mrl_kernels.ops.registry` (Triton for CUDA tensors,
C++ for CPU tensors, the reference where those cannot run).
"""
from .als import nested_als_solve, nested_gram
from .candidates import (Membership, Popularity, in_batch_candidates, mixed_candidates, popularity_candidates,
                         sample_candidates)
from .common import LAYOUTS
from .csr import CSR
from .full_softmax import full_softmax_lse
from .lazy_adam import lazy_adam
from .mns import mns_bpr_loss, mns_sample, mrl_bpr_loss
from .prefix_topk import exclusion, prefix_topk, ranked
from .registry import available_backends
from .softmax import mrl_softmax_loss

__all__ = ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss", "full_softmax_lse", "prefix_topk",
           "exclusion", "ranked", "nested_als_solve", "nested_gram", "lazy_adam", "CSR", "LAYOUTS", "Membership",
           "sample_candidates", "Popularity", "popularity_candidates", "in_batch_candidates", "mixed_candidates",
           "available_backends"]
