#!/usr/bin/env bash
# `elbo eval` and `elbo encode` on the GPU give the CPU's figures and latents (same data, noise and
# parameters; float summation order and device math functions differ, hence the tolerance).
# Skips (77) without a CUDA device, but fails when nvidia-smi lists a GPU that elbo cannot use.
# Usage: cuda_eval_test.sh <elbo> <work-dir>
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 1
# 300 test images: the emulator runs every CUDA thread on the CPU.
"$PY" - /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz <<'PY' || exit 1
import gzip, struct, sys
raw = gzip.open(sys.argv[1]).read()
with open("few.idx", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 300, 28, 28) + raw[16:16 + 300 * 784])
PY
"$elbo" prepare --images few.idx --out data/few >/dev/null || exit 1
timeout 300 "$elbo" train "$configs/smoke.yaml" data.train=data/train data.test=data/few \
  train.max_steps=30 device=cpu output.dir=runs/a >train.log 2>&1 ||
  { echo "FAIL - training failed:"; cat train.log; exit 1; }
ck=runs/a/checkpoints/step-000000030.h5
args=(--data data/few --iw-samples 8 --batch 128)
timeout 600 "$elbo" eval "$ck" "${args[@]}" --json --device cuda >gpu.json 2>gpu.log
rc=$?
skip_without_cuda gpu.log
[ "$rc" -eq 0 ] || { echo "FAIL - eval on cuda exited $rc:"; cat gpu.log; exit 1; }
timeout 300 "$elbo" eval "$ck" "${args[@]}" --json --device cpu >cpu.json 2>cpu.log ||
  { echo "FAIL - eval on cpu:"; cat cpu.log; exit 1; }
timeout 600 "$elbo" encode "$ck" "${args[@]}" --out gpu.h5 --device cuda >gpu_encode.log 2>&1 ||
  { echo "FAIL - encode on cuda:"; cat gpu_encode.log; exit 1; }
timeout 300 "$elbo" encode "$ck" "${args[@]}" --out cpu.h5 --device cpu >cpu_encode.log 2>&1 ||
  { echo "FAIL - encode on cpu:"; cat cpu_encode.log; exit 1; }
# Two ranks, each on its GPU (or both on the one there is: eval needs no NCCL), count every sample once.
if command -v mpirun >/dev/null; then
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 600 mpirun -np 2 --oversubscribe \
    --mca mpi_yield_when_idle 1 "$elbo" eval "$ck" "${args[@]}" --json --device cuda >gpu2.json 2>gpu2.log ||
    { echo "FAIL - eval on cuda at 2 ranks:"; cat gpu2.log; exit 1; }
else
  cp gpu.json gpu2.json
  echo "note - no mpirun: the 2-rank case is not run"
fi
"$PY" - <<'PY'
import json, sys
gpu2 = json.loads(open("gpu2.json").readline())
gpu, cpu = (json.loads(open(f"{d}.json").readline()) for d in ("gpu", "cpu"))
ok = gpu["device"].startswith("cuda") and cpu["device"] == "cpu" and gpu["samples"] == cpu["samples"] == 300
for key in ("neg_elbo", "recon", "kl", "iw_nll"):
    rel = abs(gpu[key] - cpu[key]) / abs(cpu[key])
    rel2 = abs(gpu2[key] - gpu[key]) / abs(gpu[key])
    print(f"{key}: cuda {gpu[key]:.6f}, cpu {cpu[key]:.6f}, relative difference {rel:.1e}; "
          f"2 ranks on cuda {rel2:.1e} from 1")
    ok = ok and rel < 1e-5 and rel2 < 1e-9
ok = ok and gpu2["samples"] == 300
try:
    import h5py, numpy as np
except ImportError:
    print("note - no h5py: the latents files are not compared")
    sys.exit(0 if ok else 1)
g, c = h5py.File("gpu.h5", "r"), h5py.File("cpu.h5", "r")
for key in ("mu", "logvar", "neg_elbo", "iw_nll"):
    worst = float(np.max(np.abs(g[key][:] - c[key][:]) / (np.abs(c[key][:]) + 1e-3)))
    print(f"latents {key}: worst relative difference {worst:.1e}")
    ok = ok and worst < 1e-4
sys.exit(0 if ok else 1)
PY
