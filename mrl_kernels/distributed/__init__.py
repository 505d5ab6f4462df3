"""The operators over a process group: :mod:`.sharded` (MNS, the MRL loss and
the sampled softmax over an item table sharded by row ranges, without moving
candidate rows), :mod:`.agreement` (what every rank checks before their
collectives) and :mod:`.torchrec_sharded` (over torchrec's row-wise sharded
tables: it needs torchrec, installed by :data:`TORCHREC_INSTALL`)."""

__all__ = ["TORCHREC_INSTALL"]

# torchrec and FBGEMM built for torch 2.13 (mixed pairs fail at import), installed without their own
# requirements, which pull FBGEMM's CUDA build; then what they import, the torchrec extra. The Makefile's
# TORCHREC holds the same pins (`make install` runs both steps); the messages about a missing torchrec give this.
TORCHREC_INSTALL = 'pip install --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 && pip install "mrl_kernels[torchrec]"'
