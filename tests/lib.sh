# Shared by the integration scripts (sourced): arguments, skips, a fresh work directory with
# Fashion-MNIST shards, and the ok/fail reporting. After `setup_integration_test <elbo> <work>
# <train shards> [mpi]`: $elbo, $work (absolute, the current directory), $configs, $PY,
# data/train and data/test, and failed=0. Exits 77 (skip) when a requirement is missing.

setup_integration_test() {
  elbo=$(realpath "$1")
  work=$2
  configs=$(cd "$(dirname "${BASH_SOURCE[0]}")/../configs" && pwd)
  local src=/usr/share/datasets/fashion-mnist shards=$3
  if [ "${4:-}" = mpi ]; then
    command -v mpirun >/dev/null || { echo "skip - no mpirun"; exit 77; }
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  [ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "skip - no $src"; exit 77; }
  if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
  rm -rf "$work" && mkdir -p "$work" && work=$(realpath "$work") && cd "$work" || exit 1
  "$elbo" prepare --images "$src/train-images-idx3-ubyte.gz" --out data/train --shards "$shards" \
    >/dev/null || exit 1
  "$elbo" prepare --images "$src/t10k-images-idx3-ubyte.gz" --out data/test >/dev/null || exit 1
  failed=0
}

ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; failed=1; }
show() { for f in "$@"; do [ -s "$f" ] && sed "s/^/    | /" "$f"; done; return 0; }

# info <checkpoint> <field>: one field of `elbo info`, empty when it fails.
info() {
  timeout 30 "$elbo" info "$1" 2>/dev/null | head -n 1 |
    "$PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$2" 2>/dev/null
}
