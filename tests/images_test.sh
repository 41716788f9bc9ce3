#!/usr/bin/env bash
# Pictures of a run, checked on disk:
#   1. A two-epoch run writes images/epoch-NNN-{reconstructions,samples}.png at each epoch end,
#      of the grid sizes the data's [28, 28] samples give, and a report.html that is well-formed
#      HTML and self-contained (no http:, every src a data: URI); resuming adds the next epoch's,
#      and resuming from an earlier checkpoint with --discard-newer removes the later ones.
#   2. `elbo sample`: prior draws, inputs above reconstructions and an interpolation, each of its
#      grid size; its reconstructions of the test set's first 16 samples are byte for byte the
#      run's last reconstructions grid (the same model and samples through the other code path).
#   3. Bad input ends with one line and exit 2, touching nothing: a missing checkpoint, an
#      existing --out without --force (--force replaces it), samples that are not images,
#      --interpolate without --data or past the data.
#   4. The progress line: redrawn in place on a terminal, the step records elsewhere.
# With `cuda <png_compare>` as third and fourth arguments, only: `elbo sample --device cuda` gives
# the PNGs the CPU gives, up to the last bits' rounding (png_compare; skip without a device).
# Usage: images_test.sh <elbo> <work-dir> [<h5_tool> | cuda <png_compare>]; exits 77 (skip)
# without Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 1

train() {  # train <log> <args...>
  local log=$1; shift
  timeout -k 5 300 "$elbo" train "$configs/smoke.yaml" "data.train=$work/data/train" \
    "data.test=$work/data/test" train.max_steps=0 train.batch_size=512 train.threads=1 \
    output.log_every=50 output.dir=runs/pics "$@" >"$log" 2>&1
}
# png_size <file>: "WIDTHxHEIGHT" from the IHDR chunk, or nothing when it is not a PNG.
png_size() {
  "$PY" - "$1" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR"
w, h = struct.unpack(">II", b[16:24])
print(f"{w}x{h}")
PY
}
expect_size() {  # expect_size <file> <WxH>
  local got; got=$(png_size "$1" 2>/dev/null)
  if [ "$got" = "$2" ]; then ok "$1 is $2"; else fail "$1 is '${got}', want $2"; fi
}
# A grid of C columns and R rows of 28x28 tiles, 2 pixels apart and from the border.
grid() { echo "$(($1 * 28 + ($1 + 1) * 2))x$(($2 * 28 + ($2 + 1) * 2))"; }

if [ "${3:-}" = cuda ]; then
  png_compare=$(realpath "$4")
  train train.log train.epochs=1 device=cpu || { fail "training"; show train.log; exit 1; }
  ck=runs/pics/checkpoints/last.h5
  "$elbo" sample "$ck" --out cuda.png --device cuda --n 16 >cuda.log 2>&1
  skip_without_cuda cuda.log
  "$elbo" sample "$ck" --out cpu.png --device cpu --n 16 >cpu.log 2>&1
  "$elbo" sample "$ck" --out cuda-rec.png --device cuda --data data/test --n 16 >>cuda.log 2>&1
  "$elbo" sample "$ck" --out cpu-rec.png --device cpu --data data/test --n 16 >>cpu.log 2>&1
  path=(--data data/test --interpolate 3 7 --steps 6)
  "$elbo" sample "$ck" --out cuda-path.png --device cuda "${path[@]}" >>cuda.log 2>&1
  "$elbo" sample "$ck" --out cpu-path.png --device cpu "${path[@]}" >>cpu.log 2>&1
  for kind in "" -rec -path; do
    if out=$("$png_compare" "cpu$kind.png" "cuda$kind.png"); then ok "cuda$kind.png is cpu$kind.png: $out"
    else fail "cuda$kind.png differs from cpu$kind.png: $out"; show cuda.log cpu.log; fi
  done
  exit $failed
fi
h5_tool=${3:-}

# ---- 1. the run's images and report --------------------------------------------------------
train train.log train.epochs=2 || { fail "training"; show train.log; exit 1; }
for e in 001 002; do
  expect_size "runs/pics/images/epoch-$e-reconstructions.png" "$(grid 8 4)"
  expect_size "runs/pics/images/epoch-$e-samples.png" "$(grid 8 2)"
done
check_report() {  # check_report <expected newest epoch>
  if "$PY" - runs/pics/report.html "$1" <<'PY'; then ok "report.html: well-formed, self-contained, epoch $1's images"; else fail "report.html"; fi
import base64, html.parser, sys
text = open(sys.argv[1]).read()
void = {"meta", "img", "br", "hr", "input", "link", "rect", "line", "circle", "polyline"}
class Check(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.srcs, self.svgs = [], [], 0
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "src" in a: self.srcs.append(a["src"])
        if "href" in a: raise SystemExit(f"href to {a['href'][:40]}")
        self.svgs += tag == "svg"
        if tag not in void: self.stack.append(tag)
    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in void: self.stack.pop()
    def handle_endtag(self, tag):
        if tag in void: return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()
c = Check(); c.feed(text); c.close()
assert not c.stack, c.stack
assert "http:" not in text and "https:" not in text and "file:" not in text
assert c.svgs == 2, c.svgs
assert len(c.srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in c.srcs), c.srcs
for s, kind in zip(c.srcs, ("reconstructions", "samples")):
    want = open(f"runs/pics/images/epoch-{sys.argv[2]}-{kind}.png", "rb").read()
    assert base64.b64decode(s.split(",", 1)[1]) == want, kind
assert "<pre>name: smoke" in text
PY
}
check_report 002

# ---- 2. elbo sample --------------------------------------------------------------------------
ck=runs/pics/checkpoints/last.h5
"$elbo" sample "$ck" --out prior.png --n 10 >sample.log 2>&1 || fail "sample: exit $?"
expect_size prior.png "$(grid 4 3)"
# One BLAS thread, as the run had (train.threads=1): another split of the sums may round a pixel
# the other way.
OPENBLAS_NUM_THREADS=1 "$elbo" sample "$ck" --out rec.png --data data/test --n 16 >>sample.log 2>&1 ||
  fail "sample --data: exit $?"
expect_size rec.png "$(grid 8 4)"
if cmp -s rec.png runs/pics/images/epoch-002-reconstructions.png; then
  ok "sample --data rec.png equals the run's last reconstructions grid, byte for byte"
else
  fail "sample --data rec.png differs from images/epoch-002-reconstructions.png"
fi
"$elbo" sample "$ck" --out path.png --data data/test --interpolate 3 7 --steps 6 >>sample.log 2>&1 ||
  fail "sample --interpolate: exit $?"
expect_size path.png "$(grid 8 1)"
"$elbo" sample "$ck" --out prior2.png --n 10 --seed 1 >>sample.log 2>&1
if ! cmp -s prior.png prior2.png; then ok "another --seed, other samples"; else fail "--seed changes nothing"; fi
show sample.log | head -n 3

# ---- 3. bad input ------------------------------------------------------------------------------
md5=$(md5sum prior.png)
expect_error missing 2 "nosuch.h5" "$elbo" sample nosuch.h5 --out new.png
expect_error exists 2 "pass --force" "$elbo" sample "$ck" --out prior.png --seed 5
if [ "$(md5sum prior.png)" = "$md5" ]; then ok "the refused --out is unchanged"; else fail "prior.png changed"; fi
"$elbo" sample "$ck" --out prior.png --seed 5 --force >/dev/null 2>&1
if [ "$(md5sum prior.png)" != "$md5" ]; then ok "--force replaces --out"; else fail "--force left prior.png"; fi
expect_error no_data 2 "needs --data" "$elbo" sample "$ck" --out x.png --interpolate 0 1
expect_error past_data 2 "not in the data" "$elbo" sample "$ck" --out x.png --data data/test \
  --interpolate 0 10000
if [ -n "$h5_tool" ]; then
  mkdir -p flat && "$h5_tool" shard flat/a.h5 u8 20 784 contiguous
  expect_error flat 2 "not images" "$elbo" sample "$ck" --out x.png --data flat
fi
[ ! -e new.png ] && [ ! -e x.png ] && ok "no output from the refusals" || fail "a refusal wrote a file"

# ---- 1 again: resuming draws the next epoch ----------------------------------------------------
train resume.log train.epochs=3 --resume auto || { fail "resume"; show resume.log; }
expect_size runs/pics/images/epoch-003-samples.png "$(grid 8 2)"
[ -e runs/pics/images/epoch-001-samples.png ] && ok "earlier epochs' images kept" || fail "epoch 1 images lost"
check_report 003
# Back to epoch 2 with --discard-newer: epoch 3's images go with its checkpoint and records.
train discard.log train.epochs=2 --resume runs/pics/checkpoints/step-000000234.h5 --discard-newer ||
  { fail "resume --discard-newer"; show discard.log; }
if [ ! -e runs/pics/images/epoch-003-samples.png ] && [ ! -e runs/pics/images/epoch-003-reconstructions.png ] &&
    [ -e runs/pics/images/epoch-002-samples.png ]; then
  ok "--discard-newer removes the images past the checkpoint's epoch"
else
  fail "images after --discard-newer: $(ls runs/pics/images | tr '\n' ' ')"
fi
check_report 002

# ---- 4. the progress line: redrawn in place on a terminal (script(1) gives the run one), the
# step records as before elsewhere (train.log above) ---------------------------------------------
if command -v script >/dev/null; then
  TERM=dumb script -qec "$(printf '%q ' timeout -k 5 300 "$elbo" train "$configs/smoke.yaml" \
    "data.train=$work/data/train" data.test=null train.max_steps=60 train.batch_size=512 \
    train.threads=1 output.log_every=20 output.dir=runs/tty)" tty.log >/dev/null 2>&1
  if "$PY" - tty.log train.log <<'PY'; then ok "progress line on a terminal, step lines elsewhere"; else fail "progress line"; show tty.log; fi
import re, sys
tty, plain = (open(p, errors="replace", newline="").read() for p in sys.argv[1:3])
redraws = re.findall(r"\r\x1b\[Kepoch 1  step (\d+)/117  loss [\d.]+  \d+ samples/s  ETA \d+:\d\d", tty)
assert [int(s) for s in redraws] == [20, 40, 60], redraws
assert not re.search(r"^step \d+  loss", tty, re.M), "step records on a terminal"
assert re.search(r"^step 50  loss [\d.]+  recon", plain, re.M) and "\r" not in plain
PY
  # Under mpirun each rank's stdout is a pseudo-terminal even when mpirun writes into a file: the
  # run must print plain lines, not redraws, into what is most likely a log.
  if command -v mpirun >/dev/null; then
    TERM=dumb OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 script -qec \
      "$(printf '%q ' timeout -k 5 300 mpirun -np 1 "$elbo" train "$configs/smoke.yaml" \
      "data.train=$work/data/train" data.test=null train.max_steps=60 train.batch_size=512 \
      train.threads=1 output.log_every=20 output.dir=runs/mpi-tty)" mpi-tty.log >/dev/null 2>&1
    if grep -aq "^step 60  loss" mpi-tty.log && ! grep -aq $'\e\\[K' mpi-tty.log; then
      ok "plain progress lines under mpirun"
    else
      fail "progress under mpirun"; show mpi-tty.log
    fi
  fi
else
  echo "skip - progress line: no script(1)"
fi
exit $failed
