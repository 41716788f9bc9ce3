#!/usr/bin/env bash
# Training throughput on one GPU, elbo against the PyTorch peer on the same card: the 784-400-20
# model, Fashion-MNIST, batch 128. Runs each side alternately, prints one JSON line per run and a
# summary with the medians. Needs python3 with torch (CUDA) and numpy for the peer.
#
#   bench/gpu_vs_torch.sh [--elbo build/elbo] [--idx DIR] [--epochs 3] [--repeats 3] [--graphs]
#
# DIR holds the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist); shards are
# prepared from them into a temporary directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
elbo=$ROOT/build/elbo idx=/usr/share/datasets/fashion-mnist epochs=3 repeats=3 graphs=false
python=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case $1 in
    --elbo) elbo=$2; shift 2 ;;
    --idx) idx=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --graphs) graphs=true; shift ;;
    *) echo "usage: $0 [--elbo PATH] [--idx DIR] [--epochs N] [--repeats N] [--graphs]" >&2; exit 2 ;;
  esac
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$elbo" prepare --images "$idx/train-images-idx3-ubyte.gz" --out "$tmp/train" --shards 4 >/dev/null
"$elbo" prepare --images "$idx/t10k-images-idx3-ubyte.gz" --out "$tmp/test" >/dev/null
best() { "$python" -c 'import json,sys; print(round(max(r["samples_per_s"] for r in map(json.loads, open(sys.argv[1])) if r["type"] == "epoch")))' "$1"; }
elbo_runs=() torch_runs=()
for r in $(seq "$repeats"); do
  "$elbo" train "$ROOT/configs/fashion_mnist.yaml" device=cuda "train.epochs=$epochs" \
    "data.train=$tmp/train" "data.test=$tmp/test" "output.dir=$tmp/run$r" \
    "train.cuda_graphs=$graphs" output.log_every=1000 >"$tmp/elbo$r.log"
  e=$(best "$tmp/run$r/metrics.jsonl")
  t=$("$python" "$ROOT/bench/torch_vae.py" --device cuda --epochs "$epochs" --data "$idx" | tail -n 1 |
      "$python" -c 'import json,sys; print(json.load(sys.stdin)["best_train_samples_per_s"])')
  echo "{\"run\": $r, \"elbo_samples_per_s\": $e, \"pytorch_samples_per_s\": $t}"
  elbo_runs+=("$e") torch_runs+=("$t")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
me=$(median "${elbo_runs[@]}") mt=$(median "${torch_runs[@]}")
gpu=$(grep -m1 "device cuda" "$tmp/elbo1.log" | sed 's/.*device \(cuda:[0-9]* ([^)]*)\).*/\1/')
echo "{\"bench\": \"gpu_vs_torch\", \"epochs\": $epochs, \"graphs\": $graphs, \"elbo_median\": $me," \
     "\"pytorch_median\": $mt, \"ratio\": $(awk "BEGIN {printf \"%.2f\", $me / $mt}"), \"gpu\": \"$gpu\"}"
