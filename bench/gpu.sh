#!/usr/bin/env bash
# One command for a CUDA machine (under 8 minutes): every Triton kernel's tests (every
# operator folder's tests in tests/ops: MNS, the BPR and sampled-softmax losses, the softmax
# over every item, prefix_topk, nested ALS, lazy Adam, the generated autograd and opcheck; the
# exact index, the LightGCN step) compiled on the GPU against the reference, then the kernel
# benchmark and the softmax over every item against its materialised form (N up to 10^7, at
# most 2 minutes). Results go to ${1:-bench/results} (markdown + JSON), to be committed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
status=0
python3 -m pytest -q -p no:cacheprovider -m "not slow" tests/ops tests/serving/test_exact_index.py tests/training/test_backbones.py 2>&1 | tee "$out/gpu-tests.log" || status=1
python3 -m bench.triton_bench --out "$out" || status=1
timeout 120 python3 -m bench.full_softmax --out "$out" --sizes 100000 1000000 10000000 --batches 1024 8192 || status=1
exit $status
