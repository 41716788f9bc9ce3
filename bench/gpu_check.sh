#!/usr/bin/env bash
# The day a GPU is lent: one call runs every check that needs real hardware and writes each figure
# and log to one folder (docs/EMULATOR.md says how to build and carry the binaries).
#   bench/gpu_check.sh [--build DIR] [--out DIR] [--idx DIR] [--quick]
# 1. the GPU tests (test_cuda, test_nccl, cuda_train): a skipped test is a failure here;
# 2. compute-sanitizer memcheck and racecheck over test_cuda, where the tool is present;
# 3. 1 vs 2 ranks with CUDA graphs off and on, and the stalled-peer case (tests/cuda_mpi_test.sh;
#    needs mpirun and two GPUs, else 1 rank graphs off vs on only);
# 4. bench/gpu_vs_torch.sh, where python3 has torch with CUDA.
# Exit status: 0 when every check that could run passed. summary.txt lists them all.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
build=$ROOT/build-gpu out=${OUT:-$ROOT/gpu-check} idx=/usr/share/datasets/fashion-mnist quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --idx) idx=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: $0 [--build DIR] [--out DIR] [--idx DIR] [--quick]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
status=0
note() { echo "$*" | tee -a "$summary"; }
check() {  # check <name> <command...>: runs it, logs to <name>.log, records pass/fail and time
  local name=$1; shift
  local t0 rc
  t0=$(date +%s)
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ] && grep -qE '^\[  SKIPPED \]|^skip - ' "$out/$name.log"; then rc=77; fi
  if [ "$rc" -eq 0 ]; then note "ok   $name ($(( $(date +%s) - t0 )) s)"
  else note "FAIL $name (exit $rc, $(( $(date +%s) - t0 )) s; see $name.log)"; status=1; fi
}

{ nvidia-smi; nvcc --version; } >"$out/machine.txt" 2>&1
note "machine: $(nvidia-smi -L 2>/dev/null | head -n 1)"
[ -x "$build/elbo" ] || { note "FAIL no $build/elbo (build with -DCMAKE_CUDA_ARCHITECTURES=90)"; exit 1; }

# 1. The GPU tests, real hardware: nothing may skip.
check test_cuda "$build/tests/test_cuda"
[ -x "$build/tests/test_nccl" ] && check test_nccl "$build/tests/test_nccl" --gtest_filter='Nccl*'
check cuda_train "$ROOT/tests/cuda_train_test.sh" "$build/elbo" "$out/work_cuda_train"

# 2. compute-sanitizer over the kernels.
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    check "sanitizer_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$build/tests/test_cuda" --gtest_filter='CudaVsCpu.*:CudaGraphs.*'
  done
else
  note "skip compute-sanitizer (not on PATH)"
fi

# 3. Ranks and graphs.
if command -v mpirun >/dev/null && [ "$(nvidia-smi -L 2>/dev/null | grep -c GPU)" -ge 2 ]; then
  check cuda_mpi "$ROOT/tests/cuda_mpi_test.sh" "$build/elbo" "$out/work_cuda_mpi"
else
  note "note: no mpirun or fewer than 2 GPUs: 1 rank, graphs off vs on only"
  work=$out/work_graphs
  rm -rf "$work" && mkdir -p "$work"
  "$build/elbo" prepare --images "$idx/train-images-idx3-ubyte.gz" --out "$work/train" >/dev/null
  for g in false true; do
    check "graphs_$g" "$build/elbo" train "$ROOT/configs/smoke.yaml" data.train="$work/train" \
      'data.test=""' train.max_steps=100 output.log_every=1 device=cuda train.cuda_graphs=$g \
      output.dir="$work/run_$g"
  done
  if python3 - "$work/run_false/metrics.jsonl" "$work/run_true/metrics.jsonl" >>"$summary" 2>&1 <<'PY'
import json, sys
a, b = ([r["loss"] for r in map(json.loads, open(p)) if r["type"] == "step"] for p in sys.argv[1:3])
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"graphs off vs on: {len(a)} steps, worst relative difference {worst:.2e}")
sys.exit(0 if len(a) == len(b) == 100 and worst <= 1e-5 else 1)
PY
  then note "ok   graphs off vs on"; else note "FAIL graphs off vs on"; status=1; fi
fi

# 4. Throughput against PyTorch on the same card.
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  repeats=3
  [ "$quick" = 1 ] && repeats=1
  check gpu_vs_torch "$ROOT/bench/gpu_vs_torch.sh" --elbo "$build/elbo" --idx "$idx" --repeats "$repeats"
  check gpu_vs_torch_graphs "$ROOT/bench/gpu_vs_torch.sh" --elbo "$build/elbo" --idx "$idx" \
    --repeats "$repeats" --graphs
  grep -h "median" "$out"/gpu_vs_torch*.log >>"$summary" 2>/dev/null
else
  note "skip gpu_vs_torch (python3 has no torch with CUDA)"
fi
note "figures and logs in $out"
exit $status
