#!/usr/bin/env bash
# `elbo eval` and `elbo encode` from the command line: eval repeats itself exactly (fixed noise),
# its neg_elbo is the test_neg_elbo its training run reported (a second implementation: the
# trainer's evaluation), the importance-weighted bound is tighter than the ELBO and tightens with
# K; 1, 2 and 3 ranks on uneven shards count every sample once and give the same figures, and the
# same latents file (bitwise), rows in input order with the data's labels, read by h5py; bad
# inputs are one error line, exit 2, and leave no file behind; an existing --out is kept unless
# --force. Usage: eval_test.sh <elbo> <work-dir>; exits 77 (skip) without Fashion-MNIST.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/lib.sh
. "$here/lib.sh"
setup_integration_test "$1" "$2" 2
src=/usr/share/datasets/fashion-mnist
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe --mca mpi_yield_when_idle 1)
have_mpi=0
command -v mpirun >/dev/null && have_mpi=1

# Test images with labels in shards of uneven sizes (700, 1000, 333 rows).
"$PY" - "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz" <<'PY' || exit 1
import gzip, struct, sys
images, labels = gzip.open(sys.argv[1]).read(), gzip.open(sys.argv[2]).read()
for name, first, count in (("a", 0, 700), ("b", 700, 1000), ("c", 1700, 333)):
    with open(f"eval_{name}.idx", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, count, 28, 28))
        f.write(images[16 + first * 784:16 + (first + count) * 784])
    with open(f"eval_{name}_labels.idx", "wb") as f:
        f.write(struct.pack(">II", 0x801, count))
        f.write(labels[8 + first:8 + first + count])
# A data set of another sample shape: 4x4 images.
with open("small.idx", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 20, 4, 4) + bytes(i % 256 for i in range(20 * 16)))
PY
mkdir -p data/uneven
for n in a b c; do
  "$elbo" prepare --images "eval_$n.idx" --labels "eval_${n}_labels.idx" --out "prep_$n" >/dev/null || exit 1
  mv "prep_$n/shard-00000-of-00001.h5" "data/uneven/$n.h5"
done
"$elbo" prepare --images small.idx --out data/small >/dev/null || exit 1

timeout 300 "$elbo" train "$configs/smoke.yaml" data.train=data/train data.test=data/uneven \
  train.max_steps=150 output.dir=runs/a train.threads=1 >train.log 2>&1 ||
  { echo "FAIL - training did not finish:"; cat train.log; exit 1; }
ck=runs/a/checkpoints/step-000000150.h5
[ -f "$ck" ] || { echo "FAIL - no checkpoint $ck"; ls -R runs; exit 1; }

evaluate() {  # evaluate <name> <ranks> <elbo eval args...>: JSON into <name>.json
  local name=$1 np=$2 cmd=(); shift 2
  [ "$np" -gt 1 ] && cmd=("${mpi[@]}" -np "$np")
  if ! timeout 300 "${cmd[@]}" "$elbo" eval "$ck" --json "$@" >"$name.json" 2>"$name.err"; then
    fail "$name ($np ranks) failed:"; show "$name.err" "$name.json"
  fi
}
evaluate k1 1 --iw-samples 1
evaluate k10 1 --iw-samples 10
evaluate k100 1 --iw-samples 100 --batch 100
evaluate k100_again 1 --iw-samples 100 --batch 100
evaluate k100_other_seed 1 --iw-samples 100 --batch 100 --seed 5
ranks=(1)
if [ "$have_mpi" -eq 1 ]; then
  evaluate k100_two 2 --iw-samples 100 --batch 100
  evaluate k100_three 3 --iw-samples 100 --batch 100
  ranks=(1 2 3)
else
  echo "note - no mpirun: the 2- and 3-rank cases are not run"
fi
if "$PY" - runs/a/metrics.jsonl "$have_mpi" <<'PY'; then ok "eval figures"; else fail "eval figures"; fi
import json, sys
r = {n: json.loads(open(f"{n}.json").readline()) for n in
     ("k1", "k10", "k100", "k100_again", "k100_other_seed")}
if sys.argv[2] == "1":
    r.update({n: json.loads(open(f"{n}.json").readline()) for n in ("k100_two", "k100_three")})
test = [json.loads(l) for l in open(sys.argv[1]) if '"epoch"' in l][-1]["test_neg_elbo"]
ok = True
def check(cond, what):
    global ok
    print(("  ok   " if cond else "  FAIL ") + what)
    ok = ok and cond
for n, v in r.items():
    check(v["samples"] == 2033 and v["seed"] == (5 if n == "k100_other_seed" else 1)
          and v["checkpoint"].endswith("step-000000150.h5"), f"{n}: 2033 samples, seed, checkpoint")
check(r["k100_again"] == r["k100"], "a second run prints the same figures")
check(abs(r["k100"]["neg_elbo"] - test) <= 1e-5 * test,
      f"neg_elbo {r['k100']['neg_elbo']:.4f} is the run's test_neg_elbo {test:.4f}")
check(r["k1"]["iw_nll"] > r["k10"]["iw_nll"] > r["k100"]["iw_nll"],
      "iw_nll falls as K grows: " + ", ".join(f"K={r[n]['iw_samples']} {r[n]['iw_nll']:.3f}"
                                             for n in ("k1", "k10", "k100")))
check(r["k100"]["iw_nll"] < r["k100"]["neg_elbo"] - 1,
      f"iw_nll {r['k100']['iw_nll']:.3f} below neg_elbo {r['k100']['neg_elbo']:.3f}")
# K = 1 is one draw of the ELBO's estimator: the same expectation, other noise.
check(abs(r["k1"]["iw_nll"] - r["k1"]["neg_elbo"]) < 1.0, "K = 1 estimates the ELBO")
check(r["k100_other_seed"]["neg_elbo"] != r["k100"]["neg_elbo"] and
      abs(r["k100_other_seed"]["iw_nll"] - r["k100"]["iw_nll"]) < 0.5, "--seed changes only the noise")
for n in ("k100_two", "k100_three"):
    if n in r:
        for key in ("neg_elbo", "iw_nll", "recon", "kl"):
            check(abs(r[n][key] - r["k100"][key]) <= 1e-9 * abs(r["k100"][key]),
                  f"{n}: {key} {r[n][key]} as with 1 rank")
sys.exit(0 if ok else 1)
PY

# The latents file at 1, 2 and 3 ranks, with a batch that splits no shard evenly.
for np in "${ranks[@]}"; do
  cmd=()
  [ "$np" -gt 1 ] && cmd=("${mpi[@]}" -np "$np")
  timeout 300 "${cmd[@]}" "$elbo" encode "$ck" --data data/uneven --out "latents$np.h5" \
    --iw-samples 8 --batch 64 >"encode$np.log" 2>&1 || { fail "encode at $np ranks:"; show "encode$np.log"; }
done
if "$PY" - k100.json "${ranks[@]}" <<'PY'; then ok "latents files"; else fail "latents files"; fi
import json, sys
import h5py
import numpy as np
figures = json.load(open(sys.argv[1]))
files = {n: h5py.File(f"latents{n}.h5", "r") for n in sys.argv[2:]}
one = files["1"]
ok = True
def check(cond, what):
    global ok
    print(("  ok   " if cond else "  FAIL ") + what)
    ok = ok and cond
check(one["mu"].shape == (2033, 8) and one["logvar"].shape == (2033, 8) and one["mu"].dtype == np.float32,
      f"mu and logvar [2033, 8] float32")
check(one["neg_elbo"].shape == (2033,) and one["iw_nll"].shape == (2033,), "neg_elbo, iw_nll [2033]")
labels = np.concatenate([h5py.File(f"data/uneven/{s}.h5", "r")["y"][:] for s in "abc"])
check(np.array_equal(one["y"][:], labels), "y: the shards' labels, in input order")
check(one.attrs["checkpoint"].endswith("step-000000150.h5") and one.attrs["data"] == "data/uneven"
      and one.attrs["iw_samples"] == 8 and one.attrs["samples"] == 2033, "attributes")
# Per-sample scores average to eval's figure (the same noise; eval's chunks were another size).
check(abs(one["neg_elbo"][:].mean() - figures["neg_elbo"]) < 1e-4 * figures["neg_elbo"],
      f"mean neg_elbo {one['neg_elbo'][:].mean():.4f} is eval's {figures['neg_elbo']:.4f}")
check(np.all(np.isfinite(one["iw_nll"][:])) and one["iw_nll"][:].mean() < one["neg_elbo"][:].mean(),
      "iw_nll finite, below neg_elbo on average")
for n, f in files.items():
    if n == "1":
        continue
    for key in ("mu", "logvar", "neg_elbo", "iw_nll", "y"):
        check(np.array_equal(f[key][:], one[key][:]), f"{n} ranks: {key} bitwise as with 1 rank")
sys.exit(0 if ok else 1)
PY
# Rows in input order, checked against a file of shard c alone: its rows are rows 1700.. of the set.
mkdir -p data/only_c && cp data/uneven/c.h5 data/only_c/
timeout 300 "$elbo" encode "$ck" --data data/only_c --out only_c.h5 --batch 64 >only_c.log 2>&1 ||
  { fail "encode of shard c:"; show only_c.log; }
if "$PY" - <<'PY'; then ok "row 1700 + i of the set is row i of its shard"; else fail "row order"; fi
import sys
import h5py
import numpy as np
a, c = h5py.File("latents1.h5", "r"), h5py.File("only_c.h5", "r")
# Another chunking of the same rows: equal to float rounding.
sys.exit(0 if np.allclose(a["mu"][1700:], c["mu"][:], rtol=1e-5, atol=1e-5) and
         np.array_equal(a["y"][1700:], c["y"][:]) else 1)
PY

# The README's h5py example (the Python block that reads latents.h5) runs as printed.
awk '/^```python$/ {on = 1; block = ""; next}
     /^```$/ && on {on = 0; if (block ~ /latents\.h5/) printf "%s", block; next}
     on {block = block $0 "\n"}' "$here/../README.md" | sed 's#"latents.h5"#"latents1.h5"#' >readme.py
if [ -s readme.py ] && "$PY" readme.py >readme.log 2>&1; then
  ok "the README's h5py example runs: $(tr '\n' ' ' <readme.log)"
else
  fail "the README's h5py example:"; show readme.py readme.log
fi

# Bad inputs: one line, exit 2, no output file.
expect_error missing_checkpoint 2 "no such file" "$elbo" eval runs/none.h5
expect_error zero_k 2 "--iw-samples must be positive" "$elbo" eval "$ck" --iw-samples 0
expect_error negative_k 2 "--iw-samples must be positive" "$elbo" eval "$ck" --iw-samples -4
expect_error encode_zero_k 2 "--iw-samples must be positive" "$elbo" encode "$ck" --data data/uneven \
  --out bad_k.h5 --iw-samples 0
expect_error other_shape 2 "the data's samples have 16 values" "$elbo" eval "$ck" --data data/small
expect_error encode_other_shape 2 "the data's samples have 16 values" "$elbo" encode "$ck" \
  --data data/small --out other_shape.h5
expect_error encode_missing_checkpoint 2 "no such file" "$elbo" encode runs/none.h5 --data data/uneven \
  --out none.h5
expect_error no_dir 2 "directory does not exist" "$elbo" encode "$ck" --data data/uneven --out nodir/x.h5
expect_error no_batch 2 "--batch must be positive" "$elbo" eval "$ck" --batch 0
expect_error negative_seed 2 "--seed must not be negative" "$elbo" eval "$ck" --seed -1
for f in bad_k.h5 other_shape.h5 none.h5 nodir; do
  [ -e "$f" ] && fail "$f exists after a refused encode"
done
leftovers=$(find . -maxdepth 1 -name '*.h5.tmp.*')
[ -z "$leftovers" ] && ok "no temporary files left" || fail "temporary files left: $leftovers"

# An existing --out is kept unless --force.
before=$(md5sum <latents1.h5)
expect_error exists 2 "exists; pass --force" "$elbo" encode "$ck" --data data/only_c --out latents1.h5
[ "$(md5sum <latents1.h5)" = "$before" ] && ok "the existing file is unchanged" ||
  fail "the existing file was changed"
expect_error out_dir 2 "is a directory" "$elbo" encode "$ck" --data data/only_c --out data --force
if timeout 300 "$elbo" encode "$ck" --data data/only_c --out latents1.h5 --force >force.log 2>&1 &&
   "$PY" -c 'import h5py, sys; sys.exit(0 if h5py.File("latents1.h5")["mu"].shape[0] == 333 else 1)'; then
  ok "--force replaces it"
else
  fail "--force"; show force.log
fi
exit $failed
