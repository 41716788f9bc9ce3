# Shared by the integration scripts (sourced): arguments, skips, a fresh work directory with
# Fashion-MNIST shards, and the ok/fail reporting. After `setup_integration_test <elbo> <work>
# <train shards> [mpi]`: $elbo, $work (absolute, the current directory), $configs, $PY,
# data/train and data/test, failed=0, and with mpi the launcher ${mpi[@]} (add -np N). Exits 77
# (skip) when a requirement is missing.

setup_integration_test() {
  elbo=$(realpath "$1")
  work=$2
  configs=$(cd "$(dirname "${BASH_SOURCE[0]}")/../configs" && pwd)
  local src=/usr/share/datasets/fashion-mnist shards=$3
  if [ "${4:-}" = mpi ]; then
    command -v mpirun >/dev/null || { echo "skip - no mpirun"; exit 77; }
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    mpi=(mpirun --oversubscribe --mca mpi_yield_when_idle 1)
  fi
  [ -f "$src/train-images-idx3-ubyte.gz" ] || { echo "skip - no $src"; exit 77; }
  if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
  rm -rf "$work" && mkdir -p "$work" && work=$(realpath "$work") && cd "$work" || exit 1
  "$elbo" prepare --images "$src/train-images-idx3-ubyte.gz" --out data/train --shards "$shards" \
    >/dev/null || exit 1
  "$elbo" prepare --images "$src/t10k-images-idx3-ubyte.gz" --out data/test >/dev/null || exit 1
  failed=0
}

# skip_without_cuda <log>: after an elbo run with device=cuda whose output is in <log>, exits 77
# (skip) when it found no CUDA device, or 1 when nvidia-smi lists a GPU all the same (a driver too
# old for the build must not pass as "no GPU").
skip_without_cuda() {
  grep -qE "no CUDA device is visible|no CUDA backend" "$1" || return 0
  if command -v nvidia-smi >/dev/null && timeout 60 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "FAIL - nvidia-smi lists a GPU, but elbo finds no usable CUDA device:"
    cat "$1"; timeout 60 nvidia-smi -L; exit 1
  fi
  echo "skip - $(tail -n 1 "$1")"; exit 77
}

# compare_runs <a> <b> <steps> [test]: runs/<a> and runs/<b> have <steps> step records whose
# losses agree within 1e-5 relative, and with `test` so do their last test figures. Sets failed=1
# when not.
compare_runs() {
  if "$PY" - "runs/$1/metrics.jsonl" "runs/$2/metrics.jsonl" "$3" "${4:-}" <<'PY'; then echo "ok - $1 vs $2"; else echo "FAIL - $1 vs $2"; failed=1; fi
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
sa = [r["loss"] for r in a if r["type"] == "step"]
sb = [r["loss"] for r in b if r["type"] == "step"]
assert len(sa) == len(sb) == int(sys.argv[3]), (len(sa), len(sb))
worst = max(abs(x - y) / abs(y) for x, y in zip(sa, sb))
test = 0.0
if sys.argv[4] == "test":
    ea = [r for r in a if r["type"] == "epoch"][-1]
    eb = [r for r in b if r["type"] == "epoch"][-1]
    test = abs(ea["test_neg_elbo"] - eb["test_neg_elbo"]) / eb["test_neg_elbo"]
tested = f", test_neg_elbo {test:.2e}" if sys.argv[4] == "test" else ""
print(f"  worst step-loss relative difference {worst:.2e}{tested}, "
      f"first loss {sa[0]:.3f}, last {sa[-1]:.3f}")
sys.exit(0 if worst <= 1e-5 and test <= 1e-5 else 1)
PY
}

# tree_digest <dir>: every path (sorted) and the md5 of every file under dir, but for the
# contents of .elbo.lock, which names the last process that took the directory's lock.
tree_digest() {
  (cd "$1" && find . -print | LC_ALL=C sort &&
   find . -type f ! -name .elbo.lock -print0 | LC_ALL=C sort -z | xargs -0 -r md5sum)
}

# expect_error <name> <exit code> <text> <command...>: the command exits with that code and
# prints exactly one stderr line, `elbo: error: <what> (<where>)`, containing <text>. Its output
# is in <name>.out and <name>.err. Sets failed=1 when not.
expect_error() {
  local name=$1 code=$2 text=$3; shift 3
  "$@" >"$name.out" 2>"$name.err"
  local rc=$? lines; lines=$(awk 'END { print NR }' "$name.err")
  if [ "$rc" -eq "$code" ] && [ "$lines" -eq 1 ] && grep -qE '^elbo: error: .+ \(.+\)$' "$name.err" &&
      grep -qF -- "$text" "$name.err"; then
    ok "$name: exit $rc, $(cat "$name.err")"
  else
    fail "$name: exit $rc (want $code), $lines stderr line(s), want one mentioning '$text'"
    show "$name.err" "$name.out"
  fi
}

ok() { echo "ok - $*"; }
fail() { echo "FAIL - $*"; failed=1; }
show() { for f in "$@"; do [ -s "$f" ] && sed "s/^/    | /" "$f"; done; return 0; }

# run <name> <ranks> <overrides...>: `elbo ${common[@]} output.dir=runs/<name> <overrides>` on
# that many ranks (under ${mpi[@]} -np when more than 1), output in <name>.log; fail when it does
# not finish.
run() {
  local name=$1 np=$2 cmd=(); shift 2
  [ "$np" -gt 1 ] && cmd=("${mpi[@]}" -np "$np")
  if ! timeout -k 5 300 "${cmd[@]}" "$elbo" "${common[@]}" "output.dir=runs/$name" "$@" \
      >"$name.log" 2>&1; then
    fail "$name ($np ranks) did not finish (exit $?)"; show "$name.log"
  fi
}

# same_params <run> <reference run> <what>: their last checkpoints' parameters are equal bit for
# bit (their hashes).
same_params() {
  local h1 h2
  h1=$(info "runs/$2/checkpoints/last.h5" params_fnv1a64) h2=$(info "runs/$1/checkpoints/last.h5" params_fnv1a64)
  if [ -n "$h1" ] && [ "$h1" = "$h2" ]; then ok "$3 (parameters $h2)"; else fail "$3: '$h2' against '$h1'"; fi
}

# params_close <run> <reference run>: every parameter of their last checkpoints within 1e-4
# (resume_test.sh's bound for a resume at another world size); prints the largest difference.
params_close() {
  timeout 30 "$elbo" info "runs/$2/checkpoints/last.h5" --params >"$2.params" 2>/dev/null &&
    timeout 30 "$elbo" info "runs/$1/checkpoints/last.h5" --params >"$1.params" 2>/dev/null &&
    "$PY" - "$2.params" "$1.params" <<'PY'
import sys
def load(p):
    return {n: [float(v) for v in vs] for n, *vs in (l.split() for l in open(p).read().splitlines()[1:])}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a and a.keys() == b.keys() and all(len(a[k]) == len(b[k]) for k in a), "tensors differ"
worst = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
print(f"  max |difference| from the reference {worst:.3g}")
sys.exit(0 if worst <= 1e-4 else 1)
PY
}

# info <checkpoint> <field>: one field of `elbo info`, empty when it fails.
info() {
  timeout 30 "$elbo" info "$1" 2>/dev/null | head -n 1 |
    "$PY" -c 'import json, sys; print(json.loads(sys.stdin.readline())[sys.argv[1]])' "$2" 2>/dev/null
}
