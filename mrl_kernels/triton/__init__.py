"""The Triton backend (``backend="triton"``): fused MNS + MRL-loss kernels.

Importing :mod:`mrl_kernels.triton.ops` registers the operators; Triton itself is
imported only then, so the package works without it.
"""
