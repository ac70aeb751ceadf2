#!/usr/bin/env bash
# The GPU checks as one prepared run on a CUDA machine, within 10 minutes on one H100/H200 (the
# benchmark stops starting measurements after BENCH_BUDGET_S, default 270 s). Works on a fresh machine with a CUDA build of torch already installed (nothing is
# downloaded: the package is installed without dependencies and without build isolation, and the
# source tree is on PYTHONPATH in any case):
#   1. the CUDA-only tests: tests/training/test_cuda.py (resume on CUDA, bf16/fp16/auto training
#      steps, GroupNorm bf16 accuracy and memory, AMP training runs, GPU vs CPU prediction) and the
#      GPU sliding-window test;
#   2. benchmarks/gpu_paper_epoch.py: the paper step in each precision / layout / cudnn.benchmark /
#      torch.compile setting and one epoch on phantoms, with peak memory (JSON with the device name).
# Results and logs go to $OUT (default benchmarks/results). Prints a summary at the end.
#   bash benchmarks/gpu_checks.sh            # tests + benchmark (key settings, epoch, then what fits)
#   QUICK=1 bash benchmarks/gpu_checks.sh    # benchmark --quick (a shorter, extrapolated epoch)
#   BENCH_BUDGET_S=420 BENCH_EPOCH_S=240 ...  # every setting (about 8-10 min for the benchmark alone)
#   CPU_DRY_RUN=1 bash benchmarks/gpu_checks.sh  # the script itself on a CPU: no pip, tests skip,
#                                                # benchmark --device cpu --tiny
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 KIDNEYSSL_NO_PROGRESS=1
py=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu_env.log"
dry=${CPU_DRY_RUN:-}
if [[ -z "$dry" ]] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$py" -c "import torch; print('torch', torch.__version__, 'without a usable CUDA device')" 2>&1 | tee -a "$out/gpu_env.log"
  echo "gpu checks: no CUDA device (or no torch); nothing run"
  exit 2
fi
if [[ -z "$dry" ]]; then
  "$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip_install.log" 2>&1 \
    || echo "pip install -e . failed (see $out/pip_install.log); running from src/ on PYTHONPATH"
fi
"$py" - <<'PY' 2>&1 | tee -a "$out/gpu_env.log"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      *(("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
        if torch.cuda.is_available() else ("no CUDA device",)))
missing = [m for m in ("numpy", "scipy", "nibabel", "SimpleITK", "monai", "yaml", "tqdm", "matplotlib", "pytest")
           if importlib.util.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
PY

timeout 200 "$py" -m pytest -q -p no:cacheprovider -rs tests/training/test_cuda.py \
  "tests/inference/test_sliding_window.py::test_windows_on_gpu_stitching_on_cpu" 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

budget=${BENCH_BUDGET_S:-270}
bench_args=(--out "$out/gpu_paper_epoch.json" --budget-s "$budget" --epoch-s "${BENCH_EPOCH_S:-150}")
[[ -n "${QUICK:-}" ]] && bench_args+=(--quick)
[[ -n "$dry" ]] && bench_args+=(--device cpu --tiny)
timeout $(( ${budget%.*} + 180 )) "$py" benchmarks/gpu_paper_epoch.py "${bench_args[@]}" >"$out/gpu_paper_epoch.log" 2>&1
bench_rc=$?
tail -n 5 "$out/gpu_paper_epoch.log" | grep -iE "error|Traceback" || true

echo "================ summary ================"
grep -E "passed|failed|error|skipped" "$out/gpu_tests.log" | tail -n 1 | sed 's/^/tests: /'
"$py" - "$out/gpu_paper_epoch.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as err:
    print("benchmark: no result", err)
    sys.exit(0)
print(f"benchmark on {r['device']} (torch {r['torch']}, CUDA {r['cuda']}), {r.get('elapsed_s')} s")
for s in r["steps"]:
    if "step_s" in s:
        print(f"  step {s['name']:<26} {s['step_s']:.3f} s   peak {s['peak_mb'] or 0:8.0f} MiB"
              f"   first step {s['first_step_s']:.1f} s")
    else:
        print(f"  step {s['name']:<26} {s.get('error', '?')}")
e = r.get("epoch") or {}
if "epoch_s" in e:
    print(f"  epoch ({e['precision']}, channels_last={e['channels_last']}): {e['epoch_s']} s as measured "
          f"({e['train_halves']} halves {e['train_s']} s + {e['val_cases']} validations {e['val_s']} s), "
          f"{e['epoch_tuned_s']} s with every shape tuned; KiTS19-size estimate {e['kits19_epoch_tuned_s_estimate']} s")
elif e:
    print("  epoch:", e.get("error"))
for s in r.get("siamese", []):
    print(f"  siamese {s['precision']}: {s['step_s']:.3f} s/step, pretraining epoch {s['pretrain_epoch_s']} s")
for k, v in (r.get("summary") or {}).items():
    print(f"  {k}: {v}")
for s in r.get("skipped", []):
    print("  skipped:", s)
PY
echo "gpu tests exit $tests_rc, benchmark exit $bench_rc"
exit $(( tests_rc || bench_rc ))
