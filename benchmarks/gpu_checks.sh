#!/usr/bin/env bash
# The GPU checks, as one prepared run on a CUDA machine (a few minutes on an H100/H200):
#   1. the CUDA-only tests: AMP segmentation training, AMP pretraining + MwS, GPU vs CPU
#      prediction, sliding windows on the GPU with stitching on the CPU;
#   2. benchmarks/gpu_paper_epoch.py: the paper preset's seconds per epoch and peak GPU memory.
# Results go to $OUT (or benchmarks/results). Needs torch with CUDA plus the package's dependencies.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KIDNEYSSL_NO_PROGRESS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider -rs tests/training/test_cuda.py \
  "tests/inference/test_sliding_window.py::test_windows_on_gpu_stitching_on_cpu" 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
python3 benchmarks/gpu_paper_epoch.py --out "$out/gpu_paper_epoch.json"
bench_rc=$?
echo "gpu tests exit $tests_rc, benchmark exit $bench_rc"
exit $(( tests_rc || bench_rc ))
