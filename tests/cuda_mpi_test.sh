#!/usr/bin/env bash
# NCCL between GPUs (real ones, or the CUDA emulator's): 2 and 3 ranks with device=cuda, CUDA
# graphs off and on, ZeRO-1 (distributed.shard_optimizer) with graphs, and the bucketed all-reduce
# (distributed.bucket_mb) with graphs, give the step losses of 1 CPU rank within the tolerance of
# mpi_test.sh (distributed.shared_memory, for CPUs only, is set aside with a note); a stalled
# NCCL peer ends the job within distributed.timeout_s + 30 s with the rank named, graphs off and
# on. Skips (77) without a CUDA device, fails when nvidia-smi lists one that is unusable.
# Usage: cuda_mpi_test.sh <elbo> <work-dir>
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 3 mpi
# Under the emulator each rank needs a device of its own (ranks may not share a GPU); a real
# machine ignores this.
export ELBO_EMU_DEVICES=${ELBO_EMU_DEVICES:-3}
# No test set: evaluation is not what is compared here, and it is slow under the emulator.
common=(train "$configs/smoke.yaml" data.train=data/train 'data.test=""' train.threads=1
        train.batch_size=64)

timeout 120 "$elbo" "${common[@]}" train.max_steps=1 device=cuda output.dir=runs/probe >probe.log 2>&1
skip_without_cuda probe.log
emulated=0
grep -q "emulated GPU" probe.log && emulated=1

run() {  # run <name> <ranks> <device> [overrides...]
  local name=$1 np=$2 device=$3; shift 3
  if ! timeout 600 "${mpi[@]}" -np "$np" "$elbo" "${common[@]}" "output.dir=runs/$name" \
      train.max_steps=30 output.log_every=1 "device=$device" "$@" >"$name.log" 2>&1; then
    echo "FAIL - $name ($np ranks) did not finish:"; show "$name.log"; failed=1
  fi
}

run cpu1 1 cpu
for np in 2 3; do
  run "gpu$np" "$np" cuda
  run "gpu${np}_graphs" "$np" cuda train.cuda_graphs=true
  grep -q "communicator nccl" "gpu$np.log" || { echo "FAIL - gpu$np did not use NCCL"; failed=1; }
  grep -q "cannot be captured" "gpu${np}_graphs.log" &&
    { echo "FAIL - gpu${np}_graphs fell back to plain steps"; failed=1; }
  compare_runs "gpu$np" cpu1 30
  compare_runs "gpu${np}_graphs" cpu1 30
  # ZeRO-1 on NCCL (reduce-scatter, a slice's Adam, all-gather), captured in graphs.
  run "gpu${np}_zero" "$np" cuda train.cuda_graphs=true distributed.shard_optimizer=true
  grep -q "cannot be captured" "gpu${np}_zero.log" &&
    { echo "FAIL - gpu${np}_zero fell back to plain steps"; failed=1; }
  compare_runs "gpu${np}_zero" cpu1 30
  # The bucketed all-reduce (5 buckets) on NCCL's second stream, forked from and joined to the
  # compute stream inside the captured graph.
  run "gpu${np}_buckets" "$np" cuda train.cuda_graphs=true distributed.bucket_mb=0.001
  grep -q "cannot be captured" "gpu${np}_buckets.log" &&
    { echo "FAIL - gpu${np}_buckets fell back to plain steps"; failed=1; }
  compare_runs "gpu${np}_buckets" cpu1 30
done
# bfloat16 gradients over NCCL (ncclBfloat16), with ZeRO-1 and graphs, and in buckets with graphs:
# within 2e-3 of the float32 run, and not equal to it.
run gpu2_bf16 2 cuda train.cuda_graphs=true distributed.shard_optimizer=true \
  distributed.grad_compression=bf16
run gpu2_bf16_buckets 2 cuda train.cuda_graphs=true distributed.grad_compression=bf16 \
  distributed.bucket_mb=0.001
for name in gpu2_bf16 gpu2_bf16_buckets; do
  if "$PY" - "runs/$name/metrics.jsonl" runs/gpu2/metrics.jsonl <<'PY'; then echo "ok - $name vs gpu2"; else echo "FAIL - $name vs gpu2"; failed=1; fi
import json, sys
a, b = ([r["loss"] for r in map(json.loads, open(p)) if r["type"] == "step"] for p in sys.argv[1:])
assert len(a) == len(b) == 30, (len(a), len(b))
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"  worst step-loss relative difference {worst:.2e} (bfloat16 against float32 gradients)")
sys.exit(0 if 1e-7 < worst <= 2e-3 else 1)
PY
done
# distributed.shared_memory is for CPU ranks: on GPUs it is set aside with a note, and NCCL's
# all-reduce carries the gradients.
run gpu2_shm 2 cuda distributed.shared_memory=true
if grep -q "note: distributed.shared_memory needs every rank on the CPU of one node" gpu2_shm.log; then
  echo "ok - shared_memory on GPUs: $(grep -m1 'note: distributed.shared_memory' gpu2_shm.log)"
else
  echo "FAIL - no note that shared_memory does not apply to GPUs"; show gpu2_shm.log; failed=1
fi
compare_runs gpu2_shm cpu1 30

# Ranks may not share a GPU; a launcher that gives each rank its own (one visible GPU each, as
# srun --gpus-per-task=1 does) is fine. Under the emulator only, where the devices are made up.
if [ "$emulated" = 1 ]; then
  ELBO_EMU_DEVICES=1 timeout 120 "${mpi[@]}" -np 2 "$elbo" "${common[@]}" output.dir=runs/shared \
    train.max_steps=2 device=cuda >shared.log 2>&1
  if [ $? -ne 0 ] && grep -q "share the GPU" shared.log && [ ! -e runs/shared ]; then
    echo "ok - two ranks on one GPU refused: $(grep -m1 -o 'ranks [0-9] and [0-9] share the GPU [^ ]*' shared.log)"
  else
    echo "FAIL - two ranks on one GPU were not refused:"; show shared.log; failed=1
  fi
  one_each=("${common[@]}" train.max_steps=2 device=cuda output.dir=runs/own)
  if ELBO_EMU_DEVICES=2 timeout 120 "${mpi[@]}" -np 1 -x CUDA_VISIBLE_DEVICES=0 "$elbo" "${one_each[@]}" : \
      -np 1 -x CUDA_VISIBLE_DEVICES=1 "$elbo" "${one_each[@]}" >own.log 2>&1; then
    echo "ok - one visible GPU per rank (CUDA_VISIBLE_DEVICES=0 and 1) trains"
  else
    echo "FAIL - one visible GPU per rank:"; show own.log; failed=1
  fi
fi

# A stalled peer: the emulator stalls rank 1 in its 20th collective (a replayed graph step with
# graphs on); on a GPU, rank 1 is stopped with SIGSTOP. The watchdog must end the job.
stall() {  # stall <name> [overrides...]
  local name=$1; shift
  local start_ms rc took_ms victim=""
  start_ms=$(( $(date +%s%N) / 1000000 ))
  ELBO_EMU_NCCL_STALL=1:20 timeout 90 "${mpi[@]}" -np 2 "$elbo" "${common[@]}" \
    "output.dir=runs/$name" train.max_steps=0 train.epochs=100 output.log_every=1000 \
    distributed.timeout_s=5 device=cuda "$@" >"$name.log" 2>&1 &
  local launcher=$!
  if [ "$emulated" = 0 ]; then
    sleep 15
    for pid in $(pgrep -f "output.dir=runs/$name"); do
      tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=1$' && victim=$pid
    done
    [ -n "$victim" ] && kill -STOP "$victim"
    start_ms=$(( $(date +%s%N) / 1000000 ))
  fi
  wait "$launcher"; rc=$?
  took_ms=$(( $(date +%s%N) / 1000000 - start_ms ))
  [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$took_ms" -lt 35000 ] &&
     grep -qE "elbo: error: rank [01]: NCCL collective .*unfinished after" "$name.log"; then
    echo "ok - $name: the job ended ${took_ms} ms after the stall (timeout_s 5): $(grep -m1 -oE 'rank [01]: NCCL collective [a-z -]+' "$name.log")"
  else
    echo "FAIL - $name: exit $rc after ${took_ms} ms"; show "$name.log"; failed=1
  fi
}
stall stall
stall stall_graphs train.cuda_graphs=true
stall stall_buckets distributed.bucket_mb=0.001  # collectives on the second stream
exit $failed
