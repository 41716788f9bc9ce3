#!/usr/bin/env bash
# One machine, 1 rank against 2 ranks and their ways of meeting, in alternating rounds so that
# every column sees the same drift of a noisy machine. Per round, `elbo bench CONFIG
# train.threads=1` for: 1 rank; 2 ranks (plain all-reduce); 2 ranks with
# distributed.shard_optimizer; 2 ranks with distributed.shared_memory; and "independent", two
# single processes at half the batch at once, with no communication (their samples/s added: the
# ceiling of any exchange of gradients). Prints each round's samples/s (median window), then the
# medians and each column's median ratio to 1 rank and shared_memory's per-round ratios.
#
#   bench/two_ranks.sh [ROUNDS]      env: ELBO=build-cpu/elbo CONFIG=configs/fashion_mnist.yaml
set -eu
rounds=${1:-5}
elbo=${ELBO:-build-cpu/elbo}
config=${CONFIG:-configs/fashion_mnist.yaml}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
half=$(( $(sed -n 's/^ *batch_size: *\([0-9]*\).*/\1/p' "$config" | head -n 1) / 2 ))
rate() { python3 -c 'import json, sys; print(round(json.load(sys.stdin)["samples_per_s"]["median"]))'; }
one() { "$elbo" bench "$config" train.threads=1 "$@" 2>/dev/null | rate; }
two() {
  mpirun -np 2 --oversubscribe --mca mpi_yield_when_idle 1 "$elbo" bench "$config" train.threads=1 \
    "$@" 2>/dev/null | rate
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for ((r = 1; r <= rounds; r++)); do
  a=$(one) b=$(two) c=$(two distributed.shard_optimizer=true) d=$(two distributed.shared_memory=true)
  one train.batch_size="$half" >"$tmp/i1" &
  one train.batch_size="$half" >"$tmp/i2"
  wait
  echo "round $r  one $a  two $b  zero1 $c  shared $d  independent $(( $(cat "$tmp/i1") + $(cat "$tmp/i2") ))"
done | tee "$tmp/rounds"
python3 - "$tmp/rounds" <<'PY'
import re, statistics, sys
rows = [dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+)", l)) for l in open(sys.argv[1])]
one = statistics.median(r["one"] for r in rows)
for k in ("one", "two", "zero1", "shared", "independent"):
    m = statistics.median(r[k] for r in rows)
    print(f"median {k:12s} {m:8.0f}  {m / one:.3f}x of 1 rank")
for k in ("zero1", "two", "independent"):
    ratios = [r["shared"] / r[k] for r in rows]
    print(f"shared / {k:12s} by round {' '.join(f'{x:.3f}' for x in ratios)}  median {statistics.median(ratios):.3f}")
PY
