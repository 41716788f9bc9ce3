#!/usr/bin/env bash
# A short training run on the GPU: it must finish, lower the loss, and follow the CPU run of the
# same config step by step (same data, noise and initial parameters; float summation order and
# device math functions differ, hence the tolerance). Skips (77) without a CUDA device, but fails
# when nvidia-smi lists a GPU that elbo cannot use (a driver too old, a broken install).
# Usage: cuda_train_test.sh <elbo> <work-dir>
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 2
common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test train.max_steps=100
        output.log_every=1)

timeout 300 "$elbo" "${common[@]}" device=cuda output.dir=runs/gpu >gpu.log 2>&1
rc=$?
skip_without_cuda gpu.log
[ "$rc" -eq 0 ] || { echo "FAIL - the CUDA run exited $rc:"; cat gpu.log; exit 1; }
timeout 300 "$elbo" "${common[@]}" device=cpu output.dir=runs/cpu >cpu.log 2>&1 || {
  echo "FAIL - the CPU run failed:"; cat cpu.log; exit 1; }
grep -m1 "device cuda" gpu.log
/usr/bin/python3 - runs/gpu/metrics.jsonl runs/cpu/metrics.jsonl <<'PY'
import json, sys
gpu, cpu = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
g = [r["loss"] for r in gpu if r["type"] == "step"]
c = [r["loss"] for r in cpu if r["type"] == "step"]
assert len(g) == len(c) == 100, (len(g), len(c))
worst = max(abs(a - b) / abs(b) for a, b in zip(g, c))
drop = 1 - sum(g[-5:]) / 5 / g[0]
print(f"gpu loss {g[0]:.3f} -> {g[-1]:.3f} ({drop:.0%} lower), worst step difference to cpu {worst:.2e}")
# Relu units near zero may flip between backends and Adam moves every parameter by ~lr, so the
# runs drift apart slowly: 1e-3 relative over 100 steps still catches any real error.
sys.exit(0 if drop > 0.2 and worst < 1e-3 else 1)
PY
