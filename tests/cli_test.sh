#!/usr/bin/env bash
# Command-line integration test for elbo.
#   usage: tests/cli_test.sh <path-to-elbo> <work-dir> [<path-to-h5_tool>]
# Contract under test: every bad input (config, data file, checkpoint, command line) ends with
# exactly one stderr line `elbo: error: <what> (<where>)` and exit code 2; nothing the user had is
# overwritten; a finished run directory is not clobbered; a failed start leaves the run directory
# untouched. Also: `elbo prepare` + a short `elbo train` lower the loss.
# Prints one "ok - ..." / "FAIL - ..." line per check; exits 1 if any failed, 77 (skip) when the
# Fashion-MNIST files are absent, 0 otherwise. Writes only under <work-dir>.
set -u

if [ "$#" -ne 2 ] && [ "$#" -ne 3 ]; then
  echo "usage: $0 <path-to-elbo> <work-dir> [<path-to-h5_tool>]" >&2
  exit 1
fi

abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

ELBO=$(abspath "$1")
W=$(abspath "$2")
H5TOOL=""  # writes broken HDF5 files (tests/h5_tool.cpp); without it those checks are skipped
if [ "$#" -eq 3 ]; then H5TOOL=$(abspath "$3"); fi
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
CONFIGS="$SCRIPT_DIR/../configs"
FMNIST=/usr/share/datasets/fashion-mnist

if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi

case "$W" in
  / | "" | "$HOME" | "$HOME/") echo "refusing to use '$W' as the work directory" >&2; exit 1 ;;
esac
if [ ! -x "$ELBO" ]; then
  echo "elbo binary '$ELBO' is not executable" >&2
  exit 1
fi

# Clean and recreate the work directory; everything below runs inside it.
rm -rf -- "$W" || { echo "cannot remove '$W'" >&2; exit 1; }
mkdir -p -- "$W" || { echo "cannot create '$W'" >&2; exit 1; }
cd "$W" || exit 1

for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  if [ ! -f "$FMNIST/$f" ]; then
    echo "skip - Fashion-MNIST not found ($FMNIST/$f is absent)"
    exit 77
  fi
done

FAILURES=0
N=0
ok()   { echo "ok - $*"; }
fail() { echo "FAIL - $*"; FAILURES=$((FAILURES + 1)); }
check() {  # check <description> <command...>: ok if the command succeeds
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}

# Prints a file indented, for diagnostics.
show() { sed 's/^/    | /' "$1"; }

# expect_error <expected-substring> <cmd...>
# Asserts: exit code 2, stderr is exactly one newline-terminated line of the form
# "elbo: error: <what> (<where>)", containing the substring.
ERROR_FORM='^elbo: error: .+ \(.+\)$'
expect_error() {
  local want=$1; shift
  N=$((N + 1))
  local out="$W/log/cmd$N.out" err="$W/log/cmd$N.err"
  mkdir -p "$W/log"
  "$@" >"$out" 2>"$err"
  local rc=$?
  local desc="elbo ${*:2}"
  desc=${desc//"$W"/W}
  local problems=""
  [ "$rc" -eq 2 ] || problems="$problems exit code $rc (want 2);"
  local nl records
  nl=$(wc -l <"$err")
  records=$(awk 'END { print NR }' "$err")
  if [ "$nl" -ne 1 ] || [ "$records" -ne 1 ]; then
    problems="$problems stderr has $records line(s) (want exactly 1);"
  fi
  local first
  first=$(head -n 1 "$err")
  case "$first" in
    "elbo: error: "*) ;;
    *) problems="$problems stderr does not start with 'elbo: error: ';" ;;
  esac
  if ! [[ $first =~ $ERROR_FORM ]]; then
    problems="$problems stderr is not of the form 'elbo: error: <what> (<where>)';"
  fi
  case "$(cat "$err")" in
    *"$want"*) ;;
    *) problems="$problems stderr does not mention '$want';" ;;
  esac
  if [ -z "$problems" ]; then
    ok "$desc -> exit 2, one '<what> (<where>)' line mentioning '$want'"
    return 0
  fi
  fail "$desc ->$problems"
  echo "    stderr:"; show "$err"
  if [ -s "$out" ]; then echo "    stdout (last lines):"; tail -n 5 "$out" | sed 's/^/    | /'; fi
  return 1
}

# tree_digest <dir>: every path (sorted) and the md5 of every file under dir, but for the
# contents of .elbo.lock, which names the last process that took the directory's lock.
tree_digest() {
  (cd "$1" && find . -print | LC_ALL=C sort &&
   find . -type f ! -name .elbo.lock -print0 | LC_ALL=C sort -z | xargs -0 -r md5sum)
}

# ---------------------------------------------------------------------------------------------
# 1. Setup: prepare the shards.
mkdir -p "$W/data" "$W/log"
"$ELBO" prepare --from idx --images "$FMNIST/train-images-idx3-ubyte.gz" \
  --labels "$FMNIST/train-labels-idx1-ubyte.gz" --out "$W/data/train" --shards 3 \
  >"$W/log/prepare_train.out" 2>"$W/log/prepare_train.err"
rc=$?
if [ "$rc" -eq 0 ]; then ok "prepare train (3 shards) exits 0"
else fail "prepare train exits $rc"; show "$W/log/prepare_train.err"; fi
"$ELBO" prepare --from idx --images "$FMNIST/t10k-images-idx3-ubyte.gz" \
  --labels "$FMNIST/t10k-labels-idx1-ubyte.gz" --out "$W/data/test" --shards 1 \
  >"$W/log/prepare_test.out" 2>"$W/log/prepare_test.err"
rc=$?
if [ "$rc" -eq 0 ]; then ok "prepare test (1 shard) exits 0"
else fail "prepare test exits $rc"; show "$W/log/prepare_test.err"; fi
n_train=$(find "$W/data/train" -maxdepth 1 -type f -name '*.h5' 2>/dev/null | wc -l)
n_test=$(find "$W/data/test" -maxdepth 1 -type f -name '*.h5' 2>/dev/null | wc -l)
if [ "$n_train" -eq 3 ]; then ok "data/train holds 3 shard files"
else fail "data/train holds $n_train shard files (want 3)"; fi
if [ "$n_test" -eq 1 ]; then ok "data/test holds 1 shard file"
else fail "data/test holds $n_test shard files (want 1)"; fi

# ---------------------------------------------------------------------------------------------
# 2. A short real training run lowers the loss.
RUN="$W/runs/ok"
TRAIN_OK=(train "$CONFIGS/smoke.yaml" "data.train=$W/data/train" "data.test=$W/data/test"
          "output.dir=$RUN" train.max_steps=150 output.log_every=10)
"$ELBO" "${TRAIN_OK[@]}" >"$W/log/train_ok.out" 2>"$W/log/train_ok.err"
rc=$?
if [ "$rc" -eq 0 ]; then ok "train smoke.yaml (150 steps) exits 0"
else fail "train smoke.yaml exits $rc"; show "$W/log/train_ok.err"; fi
check "run dir holds checkpoints/last.h5" test -f "$RUN/checkpoints/last.h5"
check "run dir holds config.yaml" test -s "$RUN/config.yaml"
if [ -s "$RUN/metrics.jsonl" ]; then
  ok "run dir holds metrics.jsonl"
  if verdict=$("$PY" - "$RUN/metrics.jsonl" <<'EOF'
import json, math, sys
steps, epochs = [], []
with open(sys.argv[1]) as f:
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            print("metrics.jsonl line %d is not JSON: %s" % (n, e)); sys.exit(1)
        if rec.get("type") == "step":
            steps.append(rec)
        elif rec.get("type") == "epoch":
            epochs.append(rec)
problems = []
if len(steps) < 4:
    problems.append("%d step records (want >= 4)" % len(steps))
if len(epochs) != 1:
    problems.append("%d epoch records (want 1)" % len(epochs))
else:
    e = epochs[0]
    for key in ("train_loss", "test_neg_elbo"):
        if key not in e:
            problems.append("epoch record lacks %s" % key)
    t = e.get("test_neg_elbo")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        problems.append("test_neg_elbo is not a finite number: %r" % (t,))
if len(steps) >= 4:
    losses = [s.get("loss") for s in steps]
    if not all(isinstance(l, (int, float)) and math.isfinite(l) for l in losses):
        problems.append("non-finite or missing step losses: %r" % (losses,))
    else:
        first, last3 = losses[0], sum(losses[-3:]) / 3.0
        if not last3 <= 0.8 * first:
            problems.append("loss did not drop by 20%%: first %.3f, mean of last 3 %.3f" % (first, last3))
        else:
            print("loss %.1f -> %.1f over %d logged steps; test_neg_elbo %.1f"
                  % (first, last3, len(steps), epochs[0].get("test_neg_elbo", float("nan"))
                     if len(epochs) == 1 else float("nan")))
if problems:
    print("; ".join(problems)); sys.exit(1)
EOF
  ); then
    ok "metrics: step and epoch records, finite test_neg_elbo, loss drops >= 20% ($verdict)"
  else
    fail "metrics: $verdict"
  fi
else
  fail "run dir lacks metrics.jsonl"
fi

# ---------------------------------------------------------------------------------------------
# 3. A finished run directory is not clobbered.
before=$(tree_digest "$RUN" 2>&1)
expect_error "already holds a run" "$ELBO" "${TRAIN_OK[@]}"
after=$(tree_digest "$RUN" 2>&1)
if [ "$before" = "$after" ]; then ok "finished run directory unchanged after the refused rerun"
else fail "finished run directory changed after the refused rerun"; diff <(echo "$before") <(echo "$after") | sed 's/^/    | /'; fi

# ---------------------------------------------------------------------------------------------
# 4. A failed start leaves an existing directory untouched.
EXIST="$W/runs/existing"
mkdir -p "$EXIST" && echo "my notes" >"$EXIST/notes.txt"
before=$(tree_digest "$EXIST" 2>&1)
expect_error "$W/nope" "$ELBO" train "$CONFIGS/smoke.yaml" "data.train=$W/nope" \
  "data.test=$W/data/test" "output.dir=$EXIST" train.max_steps=5
after=$(tree_digest "$EXIST" 2>&1)
if [ "$before" = "$after" ] && [ ! -e "$EXIST/config.yaml" ] && [ ! -e "$EXIST/checkpoints" ]; then
  ok "existing directory untouched by a failed start (no config.yaml, no checkpoints/)"
else
  fail "existing directory modified by a failed start"; diff <(echo "$before") <(echo "$after") | sed 's/^/    | /'
fi

# ---------------------------------------------------------------------------------------------
# 5. Config errors. Every failing start points output.dir at $NONE, which must never appear.
NONE="$W/runs/never"
expect_error "no_such_config.yaml" "$ELBO" train "$W/no_such_config.yaml" "output.dir=$NONE"
cat >"$W/unknown_key.yaml" <<EOF
data:
  train: $W/data/train
output:
  dir: $NONE
train: {epochz: 3}
EOF
expect_error "train.epochz" "$ELBO" train "$W/unknown_key.yaml"
SMOKE_FAIL=(train "$CONFIGS/smoke.yaml" "data.train=$W/data/train" "data.test=$W/data/test"
            "output.dir=$NONE" train.max_steps=5)
expect_error "train.epochs" "$ELBO" "${SMOKE_FAIL[@]}" train.epochs=ten
expect_error "train.epochs" "$ELBO" "${SMOKE_FAIL[@]}" train.epochs
expect_error "train.batch_size" "$ELBO" "${SMOKE_FAIL[@]}" train.batch_size=0

# ---------------------------------------------------------------------------------------------
# 6. Data errors.
mkdir -p "$W/data/textshard" "$W/data/empty"
echo "this is not HDF5" >"$W/data/textshard/x.h5"
expect_error "x.h5" "$ELBO" train "$CONFIGS/smoke.yaml" "data.train=$W/data/textshard" \
  "data.test=$W/data/test" "output.dir=$NONE" train.max_steps=5
expect_error "$W/data/empty" "$ELBO" train "$CONFIGS/smoke.yaml" "data.train=$W/data/empty" \
  "data.test=$W/data/test" "output.dir=$NONE" train.max_steps=5
# A tiny IDX file: 10 images of 2x2 uint8.
"$PY" - "$W/tiny-images-idx3-ubyte" <<'EOF'
import struct, sys
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack(">IIII", 0x00000803, 10, 2, 2))
    f.write(bytes((i * 7) % 256 for i in range(10 * 2 * 2)))
EOF
"$ELBO" prepare --from idx --images "$W/tiny-images-idx3-ubyte" --out "$W/data/tiny" \
  >"$W/log/prepare_tiny.out" 2>"$W/log/prepare_tiny.err"
rc=$?
if [ "$rc" -eq 0 ]; then ok "prepare a tiny 10-sample data set exits 0"
else fail "prepare tiny data set exits $rc"; show "$W/log/prepare_tiny.err"; fi
cat >"$W/tiny.yaml" <<EOF
data:
  train: $W/data/tiny
train:
  batch_size: 64
  max_steps: 5
output:
  dir: $NONE
EOF
expect_error "batch_size" "$ELBO" train "$W/tiny.yaml"
# ---------------------------------------------------------------------------------------------
# 6b. Resuming with another model names the key and both values as the config spells them.
RESUME_FAIL=("${SMOKE_FAIL[@]}" --resume "$RUN/checkpoints/last.h5")
expect_error "model.activation was relu in the checkpoint, is tanh now" \
  "$ELBO" "${RESUME_FAIL[@]}" model.activation=tanh
expect_error "model.likelihood was bernoulli in the checkpoint, is gaussian now" \
  "$ELBO" "${RESUME_FAIL[@]}" model.likelihood=gaussian
expect_error "train.optimizer.name was adam in the checkpoint, is adamw now" \
  "$ELBO" "${RESUME_FAIL[@]}" train.optimizer.name=adamw
expect_error "seed was 1 in the checkpoint, is 2 now" "$ELBO" "${RESUME_FAIL[@]}" seed=2

# ---------------------------------------------------------------------------------------------
# 6c. A FIFO or device where a checkpoint or shard should be is refused at once (reading a FIFO
#     would wait for a writer for ever; `timeout` turns such a hang into a failure).
mkfifo "$W/fifo.h5"
mkdir -p "$W/data/withfifo" && cp "$W/data/tiny/"*.h5 "$W/data/withfifo/" && mkfifo "$W/data/withfifo/z.h5"
expect_error "cannot open: is a FIFO, not a regular file ($W/fifo.h5)" timeout 20 "$ELBO" info "$W/fifo.h5"
expect_error "cannot open: is a character device, not a regular file (/dev/null)" \
  timeout 20 "$ELBO" info /dev/null
expect_error "cannot open: is a FIFO, not a regular file ($W/fifo.h5)" \
  timeout 20 "$ELBO" "${SMOKE_FAIL[@]}" --resume "$W/fifo.h5"
expect_error "cannot open: is a FIFO, not a regular file ($W/data/withfifo/z.h5)" \
  timeout 20 "$ELBO" "${SMOKE_FAIL[@]}" "data.train=$W/data/withfifo"
expect_error "cannot open: is a FIFO, not a regular file ($W/fifo.h5)" \
  timeout 20 "$ELBO" "${SMOKE_FAIL[@]}" "data.test=$W/fifo.h5"

# ---------------------------------------------------------------------------------------------
# 6d. An output.dir that cannot be created is one line naming the reason and the path, before
#     anything is written (not a bare "filesystem error").
LONG=$(printf 'x%.0s' $(seq 5000))
echo "not a directory" >"$W/plainfile"
before=$(tree_digest "$W/runs" 2>&1)
expect_error "cannot create the run directory: a path component is 5000 characters long; the file system allows at most 255 ($W/$LONG/run)" \
  "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/$LONG/run"
expect_error "cannot create the run directory: a path component is 5000 characters long" \
  "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/$LONG" --resume auto
expect_error "cannot create the run directory: '$W/plainfile' is not a directory ($W/plainfile/run)" \
  "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/plainfile/run"
expect_error "cannot create the run directory: it exists and is not a directory ($W/plainfile)" \
  "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/plainfile"
mkdir -p "$W/readonly"
if [ "$(id -u)" -ne 0 ]; then
  chmod 555 "$W/readonly"
  expect_error "cannot create the run directory: Permission denied ('$W/readonly') ($W/readonly/run)" \
    "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/readonly/run"
  chmod 755 "$W/readonly"
elif unshare -m true 2>/dev/null; then  # root passes permission bits; a read-only mount stops it
  expect_error "cannot create the run directory: Read-only file system ('$W/readonly') ($W/readonly/sub/run)" \
    unshare -m sh -c 'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"' sh "$W/readonly" \
    "$ELBO" "${SMOKE_FAIL[@]}" "output.dir=$W/readonly/sub/run"
else
  echo "skip - a read-only output.dir (root without mount namespaces)"
fi
after=$(tree_digest "$W/runs" 2>&1)
if [ "$before" = "$after" ] && [ "$(cat "$W/plainfile")" = "not a directory" ] &&
   [ -z "$(ls -A "$W/readonly")" ]; then
  ok "unusable output.dirs left every file as it was"
else
  fail "an unusable output.dir changed files"; diff <(echo "$before") <(echo "$after") | sed 's/^/    | /'
fi

# ---------------------------------------------------------------------------------------------
# 6e. A model or a data cache too large for the machine's memory is refused before it is
#     allocated (not std::bad_alloc, nor the OOM killer), saying how much it needs.
params=$(( 784 * 1048576 + 1048576 + 1048576 * 1048576 + 1048576 + 1048576 * 16 + 16 \
           + 8 * 64 + 64 + 64 * 784 + 784 ))  # smoke.yaml's latent 8 and decoder [64], D = 784
expect_error "the model needs 28.0 TiB of memory to train ($params float32 parameters" \
  "$ELBO" "${SMOKE_FAIL[@]}" "model.encoder=[1048576, 1048576]"
if [ -n "$H5TOOL" ]; then
  # A chunked shard that was never written is tiny on disk, but as data it is twice the memory.
  avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
  mkdir -p "$W/data/huge"
  "$H5TOOL" shard "$W/data/huge/s.h5" u8 $(( avail_kb / 2 + 16 )) 4096 sparse
  expect_error "data.cache always: the data takes" \
    "$ELBO" "${SMOKE_FAIL[@]}" "data.train=$W/data/huge" data.test= data.cache=always
  expect_error "is available; use data.cache: auto or never ($W/data/huge)" \
    "$ELBO" "${SMOKE_FAIL[@]}" "data.train=$W/data/huge" data.test= data.cache=always
fi

# ---------------------------------------------------------------------------------------------
# 6f. A checkpoint whose fields were damaged or edited is refused by `elbo info` and by
#     `elbo train --resume` alike, naming the file and the field (a negative step crashed resume).
if [ -n "$H5TOOL" ]; then
  cp "$RUN/checkpoints/last.h5" "$W/negative_step.h5" &&
    "$H5TOOL" set-int "$W/negative_step.h5" /state step -5
  want="checkpoint attribute 'step' is -5, must be between 0 and the config's train.max_steps 150 ($W/negative_step.h5:/state)"
  expect_error "$want" "$ELBO" info "$W/negative_step.h5"
  expect_error "$want" "$ELBO" "${SMOKE_FAIL[@]}" --resume "$W/negative_step.h5"
  cp "$RUN/checkpoints/last.h5" "$W/nan_param.h5" &&
    "$H5TOOL" set-value "$W/nan_param.h5" /params/encoder.0.weight 100 nan
  want="tensor holds a non-finite value (nan) at index 100 ($W/nan_param.h5:/params/encoder.0.weight)"
  expect_error "$want" "$ELBO" info "$W/nan_param.h5"
  expect_error "$want" "$ELBO" "${SMOKE_FAIL[@]}" --resume "$W/nan_param.h5"
  cp "$RUN/checkpoints/last.h5" "$W/samples.h5" &&
    "$H5TOOL" set-int "$W/samples.h5" /state samples_seen 12345
  expect_error "checkpoint attribute 'samples_seen' is 12345, but 150 steps of train.batch_size 64 are 9600 ($W/samples.h5:/state)" \
    "$ELBO" "${SMOKE_FAIL[@]}" --resume "$W/samples.h5"
fi

# ---------------------------------------------------------------------------------------------
# 6g. Data errors found only while reading batches (data.cache: never) end the run with one line
#     naming the file, the dataset and the row, exit 2; with the data cached, the same check stops
#     the start before anything is written. A filter the library lacks is refused at the start.
if [ -n "$H5TOOL" ]; then
  D="$W/data/fixtures"
  mkdir -p "$D/corrupt" "$D/filter" "$D/good" "$D/nan_test" "$D/outside"
  "$H5TOOL" shard "$D/corrupt/s.h5" u8 2000 16 deflate &&
    "$H5TOOL" corrupt-chunk "$D/corrupt/s.h5" /x 1000  # the chunk of rows 992-1007
  "$H5TOOL" shard "$D/filter/s.h5" u8 2000 16 unavailable
  "$H5TOOL" shard "$D/good/s.h5" f32 256 16 contiguous
  "$H5TOOL" shard "$D/nan_test/t.h5" f32 64 16 contiguous &&
    "$H5TOOL" set-value "$D/nan_test/t.h5" /x $(( 5 * 16 + 3 )) nan
  "$H5TOOL" shard "$D/outside/s.h5" f32 256 16 contiguous &&
    "$H5TOOL" set-value "$D/outside/s.h5" /x $(( 100 * 16 + 7 )) 1.5
  FIX=(train "$CONFIGS/smoke.yaml" data.test= train.max_steps=0 train.epochs=1 output.log_every=1)

  expect_error "cannot read '/x' at row " \
    "$ELBO" "${FIX[@]}" "data.train=$D/corrupt" data.cache=never "output.dir=$W/runs/corrupt"
  row=$(sed -n "s/.*cannot read '\/x' at row \([0-9]*\): .*/\1/p" "$W/log/cmd$N.err")
  if [ -n "$row" ] && [ "$row" -ge 992 ] && [ "$row" -le 1007 ] &&
     grep -q "filter returned failure during read.* ($D/corrupt/s.h5)\$" "$W/log/cmd$N.err"; then
    ok "the corrupt chunk is found by a batch read: row $row, in the chunk of rows 992-1007"
  else
    fail "corrupt chunk: row '$row' (want 992-1007)"; show "$W/log/cmd$N.err"
  fi
  expect_error "cannot read '/x' at row 992: filter returned failure during read" \
    "$ELBO" "${FIX[@]}" "data.train=$D/corrupt" data.cache=auto "output.dir=$NONE"
  expect_error "dataset is stored with the HDF5 filter 'unavailable test filter' (id 511), which this HDF5 library cannot decode" \
    "$ELBO" "${FIX[@]}" "data.train=$D/filter" data.cache=never "output.dir=$NONE"
  for cache in never auto; do
    expect_error "non-finite value in '/x' at row 5 ($D/nan_test/t.h5)" \
      "$ELBO" "${FIX[@]}" "data.train=$D/good" "data.test=$D/nan_test" "data.cache=$cache" \
      "output.dir=$([ $cache = never ] && echo "$W/runs/nan_test" || echo "$NONE")"
    expect_error "value 1.5 in '/x' at row 100 is outside [0, 1], which model.likelihood bernoulli needs ($D/outside/s.h5)" \
      "$ELBO" "${FIX[@]}" "data.train=$D/outside" "data.cache=$cache" \
      "output.dir=$([ $cache = never ] && echo "$W/runs/outside" || echo "$NONE")"
  done
  # The range is the Bernoulli likelihood's rule only: a Gaussian model trains on the same data.
  "$ELBO" "${FIX[@]}" "data.train=$D/outside" data.cache=never model.likelihood=gaussian \
    "output.dir=$W/runs/outside_gaussian" >"$W/log/outside_gaussian.out" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then ok "a Gaussian model trains on data outside [0, 1]"
  else fail "a Gaussian model on data outside [0, 1] exits $rc"; show "$W/log/outside_gaussian.out"; fi
fi

if [ ! -e "$NONE" ]; then ok "no failed start created its output.dir"
else fail "a failed start created '$NONE'"; find "$NONE" | sed 's/^/    | /'; fi

# ---------------------------------------------------------------------------------------------
# 7. prepare errors.
echo "not an IDX file" >"$W/not_idx.txt"
expect_error "not_idx.txt" "$ELBO" prepare --from idx --images "$W/not_idx.txt" --out "$W/data/bad"
before=$(tree_digest "$W/data/train" 2>&1)
expect_error "$W/data/train" "$ELBO" prepare --from idx --images "$FMNIST/train-images-idx3-ubyte.gz" \
  --labels "$FMNIST/train-labels-idx1-ubyte.gz" --out "$W/data/train" --shards 3
after=$(tree_digest "$W/data/train" 2>&1)
if [ "$before" = "$after" ]; then ok "existing shards unchanged after the refused prepare"
else fail "existing shards changed by the refused prepare"; diff <(echo "$before") <(echo "$after") | sed 's/^/    | /'; fi
expect_error "--shards" "$ELBO" prepare --from idx --images "$W/tiny-images-idx3-ubyte" \
  --out "$W/data/zero" --shards 0

# ---------------------------------------------------------------------------------------------
# 7b. A run that diverges (lr 1e30) stops with a message naming the step, exit 1, and the last
#     checkpoint (written every step) is the finite one before it.
DIVERGE="$W/runs/diverge"
"$ELBO" train "$CONFIGS/smoke.yaml" "data.train=$W/data/train" "data.test=$W/data/test" \
  "output.dir=$DIVERGE" "train.optimizer={name: adam, lr: 1.0e+30}" checkpoint.every_steps=1 \
  >"$W/log/diverge.out" 2>"$W/log/diverge.err"
rc=$?
bad_step=$(sed -n 's/.*not finite at step \([0-9]*\).*/\1/p' "$W/log/diverge.err")
saved_step=$("$ELBO" info "$DIVERGE/checkpoints/last.h5" 2>/dev/null |
             sed -n 's/.*"step": \([0-9]*\).*/\1/p')
if [ "$rc" -eq 1 ] && [ -n "$bad_step" ] && [ "$(wc -l <"$W/log/diverge.err")" -eq 1 ] &&
   [ -n "$saved_step" ] && [ "$saved_step" -lt "$bad_step" ]; then
  ok "divergence stops at step $bad_step (exit 1); last checkpoint is step $saved_step and loads"
else
  fail "divergence: exit $rc, bad step '$bad_step', saved step '$saved_step'"; show "$W/log/diverge.err"
fi

# ---------------------------------------------------------------------------------------------
# 8. Command line.
expect_error "(command line" "$ELBO"
expect_error "(command line" "$ELBO" frobnicate
expect_error "config" "$ELBO" train
for args in "--help" "train --help"; do
  # shellcheck disable=SC2086
  "$ELBO" $args >"$W/log/help.out" 2>"$W/log/help.err"
  rc=$?
  if [ "$rc" -eq 0 ] && grep -qi "usage" "$W/log/help.out"; then
    ok "elbo $args -> exit 0 with usage text on stdout"
  else
    fail "elbo $args -> exit $rc; stdout $(grep -ci usage "$W/log/help.out") usage line(s)"
    show "$W/log/help.err"
  fi
done

# ---------------------------------------------------------------------------------------------
if [ "$FAILURES" -ne 0 ]; then
  echo "$FAILURES check(s) failed"
  exit 1
fi
echo "all checks passed"
exit 0
