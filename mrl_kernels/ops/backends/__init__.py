"""The backends: one module (or package) each, declaring ``BACKEND`` (a
:class:`mrl_kernels.ops.library.Backend`). :mod:`mrl_kernels.ops.registry` finds them
here; adding a backend = adding a module here with one implementation per
operator of :mod:`mrl_kernels.ops.spec`.

- :mod:`.pytorch`: ``"torch"``, the reference (:mod:`mrl_kernels.reference`), any device.
- :mod:`.cpp`: ``"cpp"``, fused C++/OpenMP kernels (each operator folder's ``*_cpu.cpp``), CPU.
- :mod:`.triton`: ``"triton"``, fused Triton kernels, CUDA (and the CPU under
  ``TRITON_INTERPRET=1``).
"""
