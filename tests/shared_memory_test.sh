#!/usr/bin/env bash
# Node-shared memory (distributed.shared_memory) on MPI: the ranks of one node keep one copy of
# the parameters and their gradients in memory they share; each rank sums its ZeRO-1 slice of
# everyone's gradients where they lie and updates that slice. What must hold:
#   - 2 ranks give ZeRO-1's parameters (and so the plain all-reduce's) bit for bit, with and
#     without clipping: the sum of two is the same in either order and Adam is elementwise;
#   - 3 ranks with an uneven batch, and 3 ranks clipping by the global norm, give the step losses
#     of 1 rank within mpi_test.sh's tolerance;
#   - checkpoints keep today's layout: stop at 50 and resume to 120 equals the uninterrupted run bit
#     for bit, and the checkpoint of 2 sharing ranks resumes on 3 and on 1 within 1e-4 of the
#     1-rank run;
#   - bucket_mb and grad_compression, which it makes pointless, are ignored with a note (the
#     parameters stay bit for bit the same); on 1 rank it changes nothing; without MPI shared
#     windows training goes on with the all-reduce, after a note;
#   - a rank stalled in its step ends the job through the watchdog (distributed.timeout_s);
#   - `elbo bench` runs with it, and its roofline counts the gradients the optimizer reads; a
#     value that is not a boolean is a config error.
# Usage: shared_memory_test.sh <elbo> <work-dir>; exits 77 (skip) without mpirun or Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 3 mpi
common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test train.threads=1
        output.log_every=1)
shm=(distributed.shared_memory=true)
shares() {  # shares <run> <ranks>: the run says its ranks share memory (it did not fall back)
  grep -q "parameters and gradients in memory shared by the $2 ranks of this node" "$1.log" ||
    { fail "$1 does not say that its $2 ranks share memory"; show "$1.log"; }
}

run zero2 2 train.max_steps=50 distributed.shard_optimizer=true
run shm2 2 train.max_steps=50 "${shm[@]}"
shares shm2 2
grep -q "shared_memory: true" runs/shm2/config.yaml 2>/dev/null ||
  fail "runs/shm2/config.yaml does not record shared_memory: true"
same_params shm2 zero2 "2 ranks sharing memory equal 2 ranks of ZeRO-1 bit for bit"
run zero2_clip 2 train.max_steps=50 train.grad_clip=5 distributed.shard_optimizer=true
run shm2_clip 2 train.max_steps=50 train.grad_clip=5 "${shm[@]}"
shares shm2_clip 2
same_params shm2_clip zero2_clip "2 ranks sharing memory, clipped, equal ZeRO-1 clipped bit for bit"

run one 1 train.max_steps=50 train.batch_size=100
run shm3 3 train.max_steps=50 train.batch_size=100 "${shm[@]}"
shares shm3 3
compare_runs shm3 one 50 test
run one_clip 1 train.max_steps=50 train.grad_clip=5
run shm3_clip 3 train.max_steps=50 train.grad_clip=5 "${shm[@]}"
shares shm3_clip 3
compare_runs shm3_clip one_clip 50 test
# Clipping must have acted, or the clipped comparisons say nothing about the global norm.
run one_b64 1 train.max_steps=50
if "$PY" - runs/one_clip/metrics.jsonl runs/one_b64/metrics.jsonl <<'PY'; then
import json, sys
a, b = ([r["loss"] for r in map(json.loads, open(p)) if r["type"] == "step"] for p in sys.argv[1:])
sys.exit(0 if a[-1] != b[-1] else 1)
PY
  ok "grad_clip=5 changes training (so the clipped runs test the global norm)"
else
  fail "grad_clip=5 changed nothing"
fi

# An MPI without shared windows (Open MPI's osc/sm excluded; as when /dev/shm has no room): a
# note, and the all-reduce, whose parameters at 2 ranks are ZeRO-1's bit for bit.
plain_mpi=("${mpi[@]}")
mpi+=(--mca osc ^sm)
run no_windows 2 train.max_steps=50 "${shm[@]}"
mpi=("${plain_mpi[@]}")
if grep -q "note: distributed.shared_memory needs .* room in its shared memory" no_windows.log; then
  ok "no shared windows: $(grep -m1 'note:' no_windows.log)"
else
  fail "no note when MPI has no shared windows"; show no_windows.log
fi
same_params no_windows zero2 "and training goes on with the all-reduce"

run one_shm 1 train.max_steps=50 "${shm[@]}"
same_params one_shm one_b64 "1 rank with shared_memory equals 1 rank without it bit for bit"
grep -q "shared by" one_shm.log && fail "1 rank says it shares memory"

# The choices it makes pointless: a note, and nothing changes.
run shm2_bf16_buckets 2 train.max_steps=50 "${shm[@]}" distributed.grad_compression=bf16 \
  distributed.bucket_mb=0.001
shares shm2_bf16_buckets 2
if grep -q "note: distributed.bucket_mb and grad_compression have no effect" shm2_bf16_buckets.log; then
  ok "bucket_mb and grad_compression with shared_memory: $(grep -m1 'note:' shm2_bf16_buckets.log)"
else
  fail "no note that bucket_mb and grad_compression have no effect"; show shm2_bf16_buckets.log
fi
same_params shm2_bf16_buckets shm2 "and the parameters are those of shm2 bit for bit"

# Checkpoints: rank 0 writes the node's parameters and the gathered moments.
ck=(checkpoint.every_steps=50 checkpoint.keep=3 output.log_every=10)
run ref1 1 train.max_steps=120 "${ck[@]}"
run shm2_ref 2 train.max_steps=120 "${ck[@]}" "${shm[@]}"
shares shm2_ref 2
run shm2_resumed 2 train.max_steps=50 "${ck[@]}" "${shm[@]}"
run shm2_resumed 2 train.max_steps=120 "${ck[@]}" "${shm[@]}" --resume auto
same_params shm2_resumed shm2_ref "stop at 50 + resume to 120 equals the uninterrupted run bit for bit"
for to in 3 1; do
  name=shm2_to_$to
  run "$name" 2 train.max_steps=50 "${ck[@]}" "${shm[@]}"
  run "$name" "$to" train.max_steps=120 "${ck[@]}" "${shm[@]}" --resume auto
  [ "$to" -gt 1 ] && shares "$name" "$to"
  if [ "$(info "runs/$name/checkpoints/last.h5" step)" = 120 ] && params_close "$name" ref1; then
    ok "2 sharing ranks to 50, resumed on $to to 120: within 1e-4 of the 1-rank run"
  else
    fail "2 sharing ranks to 50, resumed on $to"; show "$name.log"
  fi
done

# A stalled rank: its peer waits in a fence (a barrier), or in the step's stop-flag all-reduce,
# whichever comes first, and the watchdog ends the job.
timeout 120 "${mpi[@]}" -np 2 "$elbo" "${common[@]}" "${shm[@]}" output.dir=runs/stall \
  train.max_steps=0 train.epochs=100 output.log_every=1000 distributed.timeout_s=3 >stall.log 2>&1 &
launcher=$!
for _ in $(seq 100); do  # at most 20 s for training to start: the checkpoint directory
  [ -d runs/stall/checkpoints ] && break; sleep 0.2
done
sleep 1
victim=""  # rank 1, told apart from mpirun and timeout by the rank in its environment
for pid in $(pgrep -f "output.dir=runs/stall"); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=1$'; then
    victim=$pid
  fi
done
stopped_ms=$(( $(date +%s%N) / 1000000 ))
[ -n "$victim" ] && kill -STOP "$victim"
wait "$launcher"; rc=$?
took_ms=$(( $(date +%s%N) / 1000000 - stopped_ms ))
[ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
shares stall 2
if [ -n "$victim" ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] &&
    grep -qE "rank 0 waited .* in (a barrier|an all-reduce)" stall.log && [ "$took_ms" -lt 33000 ]; then
  ok "a stalled rank ends the job ${took_ms} ms after SIGSTOP (timeout 3 s): $(grep -m1 -o 'rank 0 waited [^:]*' stall.log)"
else
  fail "stalled rank (pid '$victim'): exit $rc after ${took_ms} ms"; show stall.log
fi

# elbo bench: the step's phases add up; the roofline's optimizer reads both ranks' gradients of
# rank 0's slice (51408 of the 102816 parameters): (6 + 2) floats per parameter, against
# adam_step's 7; it writes nothing.
if timeout 300 "${mpi[@]}" -np 2 "$elbo" bench "$configs/smoke.yaml" data.train=data/train \
    data.test=data/test train.threads=1 output.dir=runs/bench "${shm[@]}" --roofline --warmup-steps 2 \
    --windows 3 --window-steps 4 --breakdown-steps 5 >bench.json 2>bench.err &&
    "$PY" - bench.json <<'PY'; then
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ranks"] == 2 and d["gradients"] == "shared_memory", (d["ranks"], d["gradients"])
assert d["roofline"]["optimizer_bytes_per_step"] == 4 * 8 * 51408, d["roofline"]
for b in d["breakdown_ms_by_rank"]:
    parts = sum(b[k] for k in ("data_wait", "input", "forward", "backward", "allreduce", "optimizer"))
    print(f"  step {b['step']:.3f} ms, phases {parts + b['other']:.3f} ms, "
          f"fences {b['allreduce']:.3f} ms, optimizer {b['optimizer']:.3f} ms")
    assert b["allreduce"] > 0 and b["optimizer"] > 0, b
    assert abs(parts + b["other"] - b["step"]) <= 0.05 * b["step"] + 0.1, b
PY
  if [ -e runs/bench ]; then fail "elbo bench wrote runs/bench"; else ok "elbo bench with shared_memory"; fi
else
  fail "elbo bench with shared_memory"; show bench.err bench.json
fi

expect_error bad_value 2 "shared_memory" "$elbo" "${common[@]}" output.dir=runs/bad \
  distributed.shared_memory=sometimes
[ -e runs/bad ] && fail "the refused run wrote runs/bad"
exit $failed
