#!/usr/bin/env bash
# Data parallelism changes nothing but summation order: 50 steps of the smoke config give the same
# global loss at every step with 1, 2 and 3 ranks (3 with a batch that does not divide evenly).
# Usage: mpi_test.sh <elbo> <work-dir>; exits 77 (skip) without mpirun or Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 3 mpi
src=/usr/share/datasets/fashion-mnist  # for the uneven shards below
run() {  # run <name> <ranks> <batch>
  local name=$1 np=$2 batch=$3 cmd=()
  [ "$np" -gt 1 ] && cmd=(mpirun -np "$np" --oversubscribe --mca mpi_yield_when_idle 1)
  if ! timeout 300 "${cmd[@]}" "$elbo" train "$configs/smoke.yaml" data.train=data/train \
      data.test=data/test "output.dir=runs/$name" train.max_steps=50 output.log_every=1 \
      "train.batch_size=$batch" train.threads=1 >"$name.log" 2>&1; then
    echo "FAIL - $name ($np ranks) did not finish:"; cat "$name.log"; failed=1
  fi
}
run one 1 64
run two 2 64
run three 3 64
run one_b 1 100
run three_b 3 100
# Ranks that disagree, or that cannot talk, stop with a message before writing anything.
expect_refusal() {  # expect_refusal <name> <message> <mpirun args...>
  local name=$1 msg=$2; shift 2
  timeout 120 mpirun "$@" >"$name.log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "$msg" "$name.log" && [ ! -e "runs/$name" ]; then
    echo "ok - $name refused: $msg"
  else
    echo "FAIL - $name (exit $rc):"; cat "$name.log"; failed=1
  fi
}
common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test)
expect_refusal disagree "ranks disagree on the config" \
  -np 1 "$elbo" "${common[@]}" output.dir=runs/disagree model.latent=8 : \
  -np 1 "$elbo" "${common[@]}" output.dir=runs/disagree model.latent=9
expect_refusal isolated "started as one of several MPI ranks" -np 2 --oversubscribe \
  "$elbo" "${common[@]}" output.dir=runs/isolated distributed.backend=none

# Shards of uneven sizes (1000, 1000 and 37 rows), and a test set of 37 rows that 3 ranks split
# unevenly: every rank runs the same steps and the job ends.
/usr/bin/python3 - "$src/train-images-idx3-ubyte.gz" <<'PY' || exit 1
import gzip, struct, sys
raw = gzip.open(sys.argv[1]).read()
for name, first, count in (("a", 0, 1000), ("b", 1000, 1000), ("c", 2000, 37)):
    with open(f"uneven_{name}.idx", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, count, 28, 28))
        f.write(raw[16 + first * 784:16 + (first + count) * 784])
PY
mkdir -p data/uneven data/uneven_test
for n in a b c; do
  "$elbo" prepare --images "uneven_$n.idx" --out "prep_$n" >/dev/null || exit 1
  mv "prep_$n/shard-00000-of-00001.h5" "data/uneven/$n.h5"
done
cp data/uneven/c.h5 data/uneven_test/
uneven=(train "$configs/smoke.yaml" data.train=data/uneven data.test=data/uneven_test train.epochs=2
        train.max_steps=0 output.log_every=1 train.batch_size=64 train.threads=1)
timeout 120 "$elbo" "${uneven[@]}" output.dir=runs/uneven1 >uneven1.log 2>&1 || { echo "FAIL - uneven, 1 rank"; cat uneven1.log; failed=1; }
if timeout 120 mpirun -np 3 --oversubscribe --mca mpi_yield_when_idle 1 "$elbo" "${uneven[@]}" \
    output.dir=runs/uneven3 >uneven3.log 2>&1; then
  echo "ok - uneven shards (1000, 1000, 37) on 3 ranks finish"
else
  echo "FAIL - uneven shards on 3 ranks (exit $?)"; cat uneven3.log; failed=1
fi

# A rank that stalls (SIGSTOP) must not hang the others: the watchdog ends the job after
# distributed.timeout_s (3 s here) with a message.
timeout 120 mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 "$elbo" "${common[@]}" \
  output.dir=runs/stall train.max_steps=0 train.epochs=100 train.threads=1 output.log_every=1000 \
  distributed.timeout_s=3 >stall.log 2>&1 &
launcher=$!
for _ in $(seq 100); do  # wait (at most 20 s) for training to start: the first checkpoint dir
  [ -d runs/stall/checkpoints ] && break; sleep 0.2
done
sleep 1
victim=""  # a rank, told apart from mpirun and timeout by the rank number in its environment
for pid in $(pgrep -f "output.dir=runs/stall"); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=1$'; then
    victim=$pid
  fi
done
[ -n "$victim" ] || { echo "FAIL - no rank 1 process found for the stall test"; failed=1; victim=0; }
stopped_ms=$(( $(date +%s%N) / 1000000 ))
[ "$victim" -gt 0 ] && kill -STOP "$victim"
wait "$launcher"; rc=$?
took_ms=$(( $(date +%s%N) / 1000000 - stopped_ms ))
[ "$victim" -gt 0 ] && kill -KILL "$victim" 2>/dev/null
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -q "waited .* in an all-reduce" stall.log && \
   [ "$took_ms" -lt 33000 ]; then
  echo "ok - a stalled rank ends the job ${took_ms} ms after SIGSTOP (timeout 3 s)"
else
  echo "FAIL - stalled rank: exit $rc after ${took_ms} ms"; cat stall.log; failed=1
fi

compare_runs two one 50 test
compare_runs three one 50 test
compare_runs three_b one_b 50 test
compare_runs uneven3 uneven1 62 test
exit $failed
