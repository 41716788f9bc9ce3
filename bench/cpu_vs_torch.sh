#!/usr/bin/env bash
# Training throughput of one process, elbo against the PyTorch peer (the same model: the 784-400-20
# MLP, or with --model conv the conv VAE of configs/fashion_mnist_conv.yaml; Fashion-MNIST, global
# batch 128, the same thread count), run alternately, medians of the runs.
# Prints one JSON line per run and a summary line. Needs python3 with torch and numpy.
#
#   bench/cpu_vs_torch.sh [--model mlp|conv] [--threads 1] [--epochs 2] [--repeats 3] [--peer PATH]
#                         [--elbo PATH]
# --elbo: the elbo binary (default: build/elbo, else build-cpu/elbo); PYTHON: the python to run the
# peer with (default /usr/bin/python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
threads=1 epochs=2 repeats=3 peer="" python=${PYTHON:-/usr/bin/python3} model=mlp elbo=""
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --peer) peer=$2; shift 2 ;;
    --elbo) elbo=$2; shift 2 ;;
    *) echo "usage: $0 [--model mlp|conv] [--threads N] [--epochs N] [--repeats N] [--peer torch_vae.py] [--elbo PATH]" >&2; exit 2 ;;
  esac
done
case $model in
  mlp) config=configs/fashion_mnist.yaml; [ -n "$peer" ] || peer=$ROOT/bench/torch_vae.py ;;
  conv) config=configs/fashion_mnist_conv.yaml; [ -n "$peer" ] || peer=$ROOT/bench/torch_conv_vae.py ;;
  *) echo "bench: --model is mlp or conv" >&2; exit 2 ;;
esac
if [ -z "$elbo" ]; then
  elbo=$ROOT/build/elbo
  [ -x "$elbo" ] || elbo=$ROOT/build-cpu/elbo
fi
case $elbo in /*) ;; *) elbo=$PWD/$elbo ;; esac  # the runs start in $ROOT
[ -x "$elbo" ] || { echo "bench: no elbo binary at $elbo (build it, or use --elbo PATH)" >&2; exit 2; }
[ -f "$peer" ] || { echo "bench: PyTorch peer not found at $peer (use --peer)" >&2; exit 2; }
[ -d "$ROOT/data/fashion-mnist/train" ] || { echo "bench: run launch/quickstart.sh once to prepare data" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
elbo_runs=() torch_runs=()
for r in $(seq "$repeats"); do
  (cd "$ROOT" && "$elbo" train "$config" "train.epochs=$epochs" device=cpu \
     "train.threads=$threads" "output.dir=$tmp/run$r" >/dev/null)
  # Best epoch, as the peer reports it.
  e=$("$python" -c 'import json,sys; print(round(max(r["samples_per_s"] for r in map(json.loads, open(sys.argv[1])) if r["type"] == "epoch")))' "$tmp/run$r/metrics.jsonl")
  t=$(OMP_NUM_THREADS=$threads "$python" "$peer" --epochs "$epochs" --threads "$threads" | tail -n 1 |
      "$python" -c 'import json,sys; print(json.load(sys.stdin)["best_train_samples_per_s"])')
  echo "{\"run\": $r, \"elbo_samples_per_s\": $e, \"pytorch_samples_per_s\": $t}"
  elbo_runs+=("$e") torch_runs+=("$t")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
me=$(median "${elbo_runs[@]}") mt=$(median "${torch_runs[@]}")
echo "{\"bench\": \"cpu_vs_torch\", \"model\": \"$model\", \"threads\": $threads, \"epochs\": $epochs, \"repeats\": $repeats," \
     "\"elbo_median\": $me, \"pytorch_median\": $mt, \"ratio\": $(awk "BEGIN {printf \"%.3f\", $me / $mt}")," \
     "\"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\"}"
