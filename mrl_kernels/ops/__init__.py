"""The operators, one folder each (:data:`spec.PACKAGES`): ``mns`` (``mns_sample``,
``mrl_bpr_loss``, ``mns_bpr_loss``), ``softmax`` (``mrl_softmax_loss``),
``prefix_topk``, ``als`` (``nested_als_solve``). A folder holds everything of its operators: the spec entries
(``spec.py``), the reference (``reference.py``), the Triton kernels with their
launchers (``triton.py``), the C++ kernels (``*_cpu.cpp``) and the public
functions (``__init__.py``). Shared once beside them: argument checks
(``checks.py``), the references' common pieces (``common.py``), the Triton
helpers (``triton_common.py``) and the C++ ones (``common.h``).

Every function takes ``backend="auto" | "torch" | "triton" | "cpp"``: ``"torch"``
is the plain PyTorch reference (:mod:`mrl_kernels.reference`), ``"triton"`` the
fused GPU kernels, ``"cpp"`` the fused CPU kernels; ``"auto"`` follows the rule
of :mod:`mrl_kernels.registry` (Triton for CUDA tensors, C++ for CPU tensors,
the reference where those cannot run).
"""
from .als import nested_als_solve, nested_gram
from .checks import check_dims, check_positive, check_temperature
from .mns import mns_bpr_loss, mns_sample, mrl_bpr_loss
from .prefix_topk import exclusion, prefix_topk
from .softmax import mrl_softmax_loss

__all__ = ["mns_sample", "mrl_bpr_loss", "mns_bpr_loss", "mrl_softmax_loss", "prefix_topk", "exclusion", "nested_als_solve", "nested_gram",
           "check_dims", "check_positive", "check_temperature"]
