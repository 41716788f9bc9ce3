#!/usr/bin/env bash
# ZeRO-1 (distributed.shard_optimizer) on MPI: each rank keeps Adam's moments for its slice only,
# reduce-scatters the gradients and all-gathers the parameters. What must hold:
#   - 2 ranks sharded give the parameters of 2 ranks unsharded bit for bit (a sum of two is the
#     same either way, and Adam is elementwise); 3 ranks with an uneven batch, and clipping by the
#     global norm, give the step losses of 1 rank within mpi_test.sh's tolerance;
#   - checkpoints hold the whole moment vectors: stop at 50 and resume to 120, sharded, equals
#     the uninterrupted sharded run bit for bit, and a checkpoint of 2 sharded ranks resumes on 3
#     sharded ranks and on 1 rank within 1e-4 of the 1-rank reference (resume_test.sh's bound).
# And bfloat16 gradient compression (distributed.grad_compression: bf16), alone and with ZeRO-1:
#   - the step losses stay within 2e-3 relative of the uncompressed run, yet differ from it (the
#     compression acted); one rank compresses nothing; an unknown choice is a config error.
# And the bucketed all-reduce under the backward pass (distributed.bucket_mb; 5 buckets of the
# smoke model at 0.001 MB): 2 ranks give the plain all-reduce's parameters bit for bit, in float32
# and in bfloat16; 3 ranks with clipping give the step losses of 1 rank; a negative size is a
# config error.
# Usage: zero_test.sh <elbo> <work-dir>; exits 77 (skip) without mpirun or Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 3 mpi
common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test train.threads=1
        output.log_every=1)
zero=(distributed.shard_optimizer=true)

# The resolved config records the choice, so a resume sees it.
run plain2 2 train.max_steps=50
run zero2 2 train.max_steps=50 "${zero[@]}"
if grep -q "shard_optimizer: true" runs/zero2/config.yaml 2>/dev/null; then
  ok "the resolved config records shard_optimizer: true"
else
  fail "runs/zero2/config.yaml does not record shard_optimizer: true"
fi
same_params zero2 plain2 "2 ranks sharded equal 2 ranks unsharded bit for bit"

run one 1 train.max_steps=50 train.batch_size=100
run zero3 3 train.max_steps=50 train.batch_size=100 "${zero[@]}"
compare_runs zero3 one 50 test
run one_clip 1 train.max_steps=50 train.grad_clip=5
run zero2_clip 2 train.max_steps=50 train.grad_clip=5 "${zero[@]}"
run zero3_clip 3 train.max_steps=50 train.grad_clip=5 "${zero[@]}"
compare_runs zero2_clip one_clip 50 test
compare_runs zero3_clip one_clip 50 test
# Clipping must have acted, or the comparison above says nothing about it.
if "$PY" - runs/one_clip/metrics.jsonl runs/one/metrics.jsonl <<'PY'; then
import json, sys
a, b = ([r["loss"] for r in map(json.loads, open(p)) if r["type"] == "step"] for p in sys.argv[1:])
sys.exit(0 if a[-1] != b[-1] else 1)
PY
  ok "grad_clip=5 changes training (so the clipped runs test the global norm)"
else
  fail "grad_clip=5 changed nothing"
fi

# Checkpoints: the whole moments, whatever the world size.
ck=(checkpoint.every_steps=50 checkpoint.keep=3 output.log_every=10)
run ref1 1 train.max_steps=120 "${ck[@]}"
run zero2_ref 2 train.max_steps=120 "${ck[@]}" "${zero[@]}"
run zero2_resumed 2 train.max_steps=50 "${ck[@]}" "${zero[@]}"
run zero2_resumed 2 train.max_steps=120 "${ck[@]}" "${zero[@]}" --resume auto
same_params zero2_resumed zero2_ref \
  "sharded, stop at 50 + resume to 120 equals the uninterrupted sharded run bit for bit"
for to in 3 1; do
  name=zero2_to_$to
  run "$name" 2 train.max_steps=50 "${ck[@]}" "${zero[@]}"
  run "$name" "$to" train.max_steps=120 "${ck[@]}" "${zero[@]}" --resume auto
  if [ "$(info "runs/$name/checkpoints/last.h5" step)" = 120 ] && params_close "$name" ref1; then
    ok "2 sharded ranks to 50, resumed on $to to 120: within 1e-4 of the reference"
  else
    fail "2 sharded ranks to 50, resumed on $to"; show "$name.log"
  fi
done
# bfloat16 gradients: close to float32, but not equal to it.
close_not_equal() {  # close_not_equal <run> <reference run>
  if "$PY" - "runs/$1/metrics.jsonl" "runs/$2/metrics.jsonl" <<'PY'; then ok "$1 vs $2"; else fail "$1 vs $2"; fi
import json, sys
a, b = ([r["loss"] for r in map(json.loads, open(p)) if r["type"] == "step"] for p in sys.argv[1:])
assert len(a) == len(b) == 50, (len(a), len(b))
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"  worst step-loss relative difference {worst:.2e} (bfloat16 against float32 gradients)")
sys.exit(0 if 1e-7 < worst <= 2e-3 else 1)
PY
}
run bf16_2 2 train.max_steps=50 distributed.grad_compression=bf16
close_not_equal bf16_2 plain2
run bf16_zero3 3 train.max_steps=50 train.batch_size=100 distributed.grad_compression=bf16 "${zero[@]}"
close_not_equal bf16_zero3 one
run bf16_one 1 train.max_steps=50 train.batch_size=100 distributed.grad_compression=bf16
if "$PY" - runs/bf16_one/metrics.jsonl runs/one/metrics.jsonl <<'PY'; then
import json, sys
a, b = ([(r["loss"], r["recon"], r["kl"]) for r in map(json.loads, open(p)) if r["type"] == "step"]
        for p in sys.argv[1:])
sys.exit(0 if len(a) == 50 and a == b else 1)
PY
  ok "one rank compresses nothing: its losses equal the uncompressed run's"
else
  fail "one rank with grad_compression=bf16 differs from the uncompressed run"
fi
# Buckets: a sum of two is the same whichever way the buffer is cut.
buckets=(distributed.bucket_mb=0.001)
run buckets2 2 train.max_steps=50 "${buckets[@]}"
grep -q "all-reduced in 5 buckets" buckets2.log || fail "buckets2 does not report its 5 buckets"
same_params buckets2 plain2 "2 ranks, bucketed all-reduce, equal the single all-reduce bit for bit"
grep -q "bucket_mb: 0.001" runs/buckets2/config.yaml 2>/dev/null ||
  fail "runs/buckets2/config.yaml does not record bucket_mb: 0.001"
run bf16_buckets2 2 train.max_steps=50 distributed.grad_compression=bf16 "${buckets[@]}"
same_params bf16_buckets2 bf16_2 "2 ranks, bfloat16 gradients in buckets, equal them unbucketed bit for bit"
run buckets3_clip 3 train.max_steps=50 train.grad_clip=5 "${buckets[@]}"
compare_runs buckets3_clip one_clip 50 test
timeout 60 "$elbo" "${common[@]}" output.dir=runs/bad distributed.bucket_mb=-1 >bad.log 2>&1
rc=$?
if [ "$rc" -eq 2 ] && grep -q "bucket_mb" bad.log && [ "$(wc -l <bad.log)" -eq 1 ] && [ ! -e runs/bad ]; then
  ok "bucket_mb=-1 refused: $(cat bad.log)"
else
  fail "bucket_mb=-1 (exit $rc)"; show bad.log
fi

timeout 60 "$elbo" "${common[@]}" output.dir=runs/bad distributed.grad_compression=fp8 >bad.log 2>&1
rc=$?
if [ "$rc" -eq 2 ] && grep -q "grad_compression" bad.log && [ "$(wc -l <bad.log)" -eq 1 ] && [ ! -e runs/bad ]; then
  ok "grad_compression=fp8 refused: $(cat bad.log)"
else
  fail "grad_compression=fp8 (exit $rc)"; show bad.log
fi
exit $failed
