#!/usr/bin/env bash
# Checkpoints, resume and signals, on the smoke config:
#   - step files every checkpoint.every_steps, the newest checkpoint.keep kept, last.h5 -> newest;
#   - stop at 50 steps and resume to 120 gives the parameters of an uninterrupted 120-step run,
#     bit for bit at the same world size, within 1e-4 across world sizes (2 -> 1 and 1 -> 3 ranks);
#   - SIGTERM/SIGINT (to the process, or to one rank under mpirun) stops at a step boundary with a
#     checkpoint and exit 0; SIGKILL of one rank ends the whole job within 60 s;
#   - a process killed at any moment, even mid-checkpoint, leaves a last.h5 that loads;
#   - a bad checkpoint for --resume is one `elbo: error: ...` line, exit 2, no run directory.
# Usage: resume_test.sh <elbo> <work-dir>; exits 77 (skip) without mpirun or Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 3 mpi

common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test train.threads=1)
train() {  # train <log> <args...>: one process, in the foreground
  local log=$1; shift
  timeout -k 5 120 "$elbo" "${common[@]}" "$@" >"$log" 2>&1
}
mpitrain() {  # mpitrain <log> <ranks> <args...>
  local log=$1 np=$2; shift 2
  timeout -k 5 120 "${mpi[@]}" -np "$np" "$elbo" "${common[@]}" "$@" >"$log" 2>&1
}
step_files() { (cd "$1/checkpoints" 2>/dev/null && ls step-*.h5 2>/dev/null | tr '\n' ' '); }
names() { local s; for s in "$@"; do printf 'step-%09d.h5 ' "$s"; done; }
link_of() { local l; l=$(readlink "$1/checkpoints/last.h5") && basename "$l"; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }

# Background jobs: the pid of `timeout`, and of the processes it runs, so that a hang is ended.
jobs_started=() procs=()
cleanup() {
  local p
  for p in "${jobs_started[@]}"; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${procs[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  return 0
}
trap cleanup EXIT
elbo_re=$(printf '%s' "$elbo" | sed 's/[][\.*^$+?(){}|]/\\&/g')
rank_pids() {  # rank_pids <run-dir>: the elbo processes training into it
  pgrep -f "^$elbo_re train .*output\.dir=$1( |\$)"
}
rank_pid() {  # rank_pid <run-dir> <rank>: waits (max 20 s) for that rank's process
  local i p
  for ((i = 0; i < 200; i++)); do
    for p in $(rank_pids "$1"); do
      if [ "$2" = single ] || tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null |
          grep -qx "OMPI_COMM_WORLD_RANK=$2"; then
        echo "$p"; return 0
      fi
    done
    sleep 0.1
  done
  return 1
}
wait_steps() {  # wait_steps <run-dir> <records> <pid>: waits (max 60 s) for that many step records
  local i n
  for ((i = 0; i < 600; i++)); do
    n=$(grep -c '"type": *"step"' "$1/metrics.jsonl" 2>/dev/null)
    [ "${n:-0}" -ge "$2" ] && return 0
    alive "$3" || return 1
    sleep 0.1
  done
  return 1
}
rc=0
wait_end() {  # wait_end <pid> <seconds>: sets rc; on a time-out kills the job and returns 1
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$1" || { wait "$1"; rc=$?; return 0; }
    sleep 0.1
  done
  kill -TERM "$1" 2>/dev/null; sleep 5
  local p; for p in "${procs[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  wait "$1"; rc=timeout
  return 1
}

# 1. The reference: 120 uninterrupted steps, a checkpoint every 40.
ck=(checkpoint.every_steps=40 checkpoint.keep=3 output.log_every=10)
train ref.log output.dir=runs/ref train.max_steps=120 "${ck[@]}"
rc=$?
H=$(info runs/ref/checkpoints/last.h5 params_fnv1a64)
step=$(info runs/ref/checkpoints/last.h5 step)
files=$(step_files runs/ref) link=$(link_of runs/ref)
if [ "$rc" -eq 0 ] && [ -n "$H" ] && [ "$step" = 120 ] && [ "$files" = "$(names 40 80 120)" ] &&
    [ "$link" = step-000000120.h5 ]; then
  ok "reference 120 steps: hash $H, step files: $files"
else
  fail "reference (exit $rc, step '$step', hash '$H', step files '$files', last.h5 -> '$link')"
  show ref.log
fi
ref_params=runs/ref.params
timeout 30 "$elbo" info runs/ref/checkpoints/last.h5 --params >"$ref_params" 2>info.err
rc=$?
nparams=$(sed -n 's/^elbo: \([0-9]*\) parameters.*/\1/p' ref.log)
if [ "$rc" -eq 0 ] && "$PY" - "$ref_params" "${nparams:-0}" <<'PY'; then
import json, struct, sys
lines = open(sys.argv[1]).read().splitlines()
head = json.loads(lines[0])
want = {"step": 120, "samples_seen": 120 * 64, "seed": 1, "world_size": 1,
        "num_params": int(sys.argv[2])}
for k in ("step", "epoch", "samples_seen", "seed", "world_size", "num_params", "params_fnv1a64"):
    assert k in head, f"no field {k}: {lines[0]}"
for k, v in want.items():
    assert head[k] == v, f"{k} is {head[k]}, want {v}"
h, n = 0xcbf29ce484222325, 0
for line in lines[1:]:
    name, *values = line.split()
    for v in values:
        f = struct.pack("<f", float(v))
        assert format(struct.unpack("<f", f)[0], ".9g") == v, f"{name}: {v} is not %.9g of a float32"
        for byte in f:
            h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
        n += 1
assert n == head["num_params"], f"--params lists {n} values, num_params is {head['num_params']}"
assert int(str(head["params_fnv1a64"]), 16) == h, f"FNV-1a 64 of the values {h:016x}, info says {head['params_fnv1a64']}"
print(f"  {len(lines) - 1} tensors, {n} values, FNV-1a 64 {h:016x}")
PY
  ok "info fields, and --params agrees with num_params and params_fnv1a64"
else
  fail "elbo info --params (exit $rc)"; show info.err; head -c 600 "$ref_params"; echo
fi

# 2. Stop at 50, resume to 120 in the same directory: the same parameters, bit for bit.
train exact1.log output.dir=runs/exact train.max_steps=50 "${ck[@]}"
rc1=$? s1=$(info runs/exact/checkpoints/last.h5 step)
lines1=$(wc -l <runs/exact/metrics.jsonl 2>/dev/null)
cp runs/exact/metrics.jsonl exact1.metrics 2>/dev/null
train exact2.log output.dir=runs/exact train.max_steps=120 "${ck[@]}" --resume auto
rc2=$?
h=$(info runs/exact/checkpoints/last.h5 params_fnv1a64)
s2=$(info runs/exact/checkpoints/last.h5 step)
if [ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ] && [ "$s1" = 50 ] && [ "$s2" = 120 ] && [ -n "$H" ] &&
    [ "$h" = "$H" ]; then
  ok "stop at 50 + resume to 120 equals the reference bit for bit (hash $h)"
else
  fail "exact resume (exits $rc1, $rc2; steps '$s1', '$s2'; hash '$h', reference '$H')"
  show exact1.log exact2.log
fi
files=$(step_files runs/exact) link=$(link_of runs/exact)
if [ "$files" = "$(names 50 80 120)" ] && [ "$link" = step-000000120.h5 ]; then
  ok "after the resume the newest 3 step files are kept: $files"
else
  fail "step files after the resume: '$files' (want '$(names 50 80 120)'), last.h5 -> '$link'"
fi
if "$PY" - exact1.metrics runs/exact/metrics.jsonl runs/ref/metrics.jsonl "${lines1:-0}" <<'PY'; then
import json, sys
first = open(sys.argv[1]).read().splitlines()
whole = open(sys.argv[2]).read().splitlines()
n = int(sys.argv[4])
assert n > 0 and whole[:n] == first, "the first run's records were not kept as they were"
steps = [json.loads(l) for l in whole if json.loads(l)["type"] == "step"]
ref = [json.loads(l) for l in open(sys.argv[3]) if json.loads(l)["type"] == "step"]
assert [r["step"] for r in steps] == list(range(10, 121, 10)), [r["step"] for r in steps]
diff = [(a["step"], a["loss"], b["loss"]) for a, b in zip(steps, ref) if a["loss"] != b["loss"]]
assert not diff, f"step losses differ from the reference: {diff}"
PY
  ok "the resume appended to metrics.jsonl; step records 10..120 with the reference's losses"
else
  fail "metrics.jsonl after the resume"
fi

# 3. Another world size: 2 ranks to 50, then 1 process to 120; 1 process to 50, then 3 ranks.
compare_params() {  # compare_params <name> <checkpoint>
  timeout 30 "$elbo" info "$2" --params >"$1.params" 2>"$1.info.err" &&
    "$PY" - "$ref_params" "$1.params" <<'PY'
import sys
def load(p):
    return {n: [float(v) for v in vs] for n, *vs in (l.split() for l in open(p).read().splitlines()[1:])}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys(), f"tensors differ: {sorted(a)} vs {sorted(b)}"
assert all(len(a[k]) == len(b[k]) for k in a), "tensor sizes differ"
worst, where = max((abs(x - y), k) for k in a for x, y in zip(a[k], b[k]))
print(f"  max |difference| from the reference {worst:.3g} (in {where})")
sys.exit(0 if worst <= 1e-4 else 1)
PY
}
cross() {  # cross <name> <ranks before> <ranks after>
  local name=$1 dir=runs/$1 ra rb w
  if [ "$2" -gt 1 ]; then mpitrain "$name.1.log" "$2" "output.dir=$dir" train.max_steps=50 "${ck[@]}"
  else train "$name.1.log" "output.dir=$dir" train.max_steps=50 "${ck[@]}"; fi
  ra=$?
  w=$(info "$dir/checkpoints/last.h5" world_size)
  if [ "$3" -gt 1 ]; then
    mpitrain "$name.2.log" "$3" "output.dir=$dir" train.max_steps=120 "${ck[@]}" --resume auto
  else train "$name.2.log" "output.dir=$dir" train.max_steps=120 "${ck[@]}" --resume auto; fi
  rb=$?
  local s; s=$(info "$dir/checkpoints/last.h5" step)
  if [ "$ra" -eq 0 ] && [ "$rb" -eq 0 ] && [ "$w" = "$2" ] && [ "$s" = 120 ] &&
      compare_params "$name" "$dir/checkpoints/last.h5"; then
    ok "$2 rank(s) to 50, resumed on $3 to 120: within 1e-4 of the reference"
  else
    fail "$2 rank(s) to 50, resumed on $3 (exits $ra, $rb; saved world_size '$w'; step '$s')"
    show "$name.1.log" "$name.2.log" "$name.info.err"
  fi
}
cross cross_2to1 2 1
cross cross_1to3 1 3

# 4. SIGTERM and SIGINT to one process: stop at a step boundary, checkpoint, exit 0.
long=(train.max_steps=0 train.epochs=50 output.log_every=5)
signal_single() {  # signal_single <name> <signal>
  local name=$1 dir=runs/$1 t pid s tp secs
  timeout -k 5 300 "$elbo" "${common[@]}" "output.dir=$dir" "${long[@]}" >"$name.log" 2>&1 &
  tp=$!; jobs_started+=("$tp")
  if ! pid=$(rank_pid "$dir" single); then
    fail "$name: no elbo process appeared"; wait_end "$tp" 30; show "$name.log"; return
  fi
  procs+=("$pid")
  if ! wait_steps "$dir" 3 "$pid"; then
    fail "$name: fewer than 3 step records within 60 s"; wait_end "$tp" 30; show "$name.log"; return
  fi
  t=$(now); kill "-$2" "$pid"
  wait_end "$tp" 30; secs=$(since "$t")
  s=$(info "$dir/checkpoints/last.h5" step)
  if [ "$rc" = 0 ] && grep -q "stopped by signal" "$name.log" && [ "${s:-0}" -gt 0 ] &&
      [ "$(link_of "$dir")" = "$(names "$s" | tr -d ' ')" ]; then
    ok "$name: SIG$2 -> exit 0 after $secs s, checkpoint at step $s"
  else
    fail "$name: SIG$2 -> exit $rc after $secs s, checkpoint step '$s', last.h5 -> '$(link_of "$dir")'"
    show "$name.log"
  fi
}
signal_single sigterm TERM
signal_single sigint INT
# Resume with train.epochs=1: on to the end of epoch 1, or, when the saved step is past it, an
# immediate clean end.
s0=$(info runs/sigterm/checkpoints/last.h5 step)
n0=$(wc -l <runs/sigterm/metrics.jsonl 2>/dev/null)
per_epoch=$(sed -n 's/.* \([0-9]*\) steps per epoch.*/\1/p' sigterm.log | head -n 1)
train sigterm2.log output.dir=runs/sigterm train.max_steps=0 train.epochs=1 output.log_every=5 --resume auto
rc=$?
s=$(info runs/sigterm/checkpoints/last.h5 step)
n=$(wc -l <runs/sigterm/metrics.jsonl 2>/dev/null)
want=$(( ${s0:-0} > ${per_epoch:-937} ? ${s0:-0} : ${per_epoch:-937} ))
if [ "$rc" -eq 0 ] && [ "$s" = "$want" ] && [ "${n:-0}" -ge "${n0:-1}" ]; then
  ok "resume after SIGTERM (step $s0) with train.epochs=1: exit 0, ends at step $s"
else
  fail "resume after SIGTERM (step '$s0') with train.epochs=1: exit $rc, step '$s' (want $want)"
  show sigterm2.log
fi

# 5. SIGTERM to rank 1, SIGINT to rank 0, under mpirun -np 2: every rank stops, exit 0.
signal_rank() {  # signal_rank <name> <signal> <rank>
  local name=$1 dir=runs/$1 t pid s w tp secs
  timeout -k 5 300 "${mpi[@]}" -np 2 "$elbo" "${common[@]}" "output.dir=$dir" "${long[@]}" \
    >"$name.log" 2>&1 &
  tp=$!; jobs_started+=("$tp")
  local p; for p in 0 1; do pid=$(rank_pid "$dir" "$p") && procs+=("$pid"); done
  if ! pid=$(rank_pid "$dir" "$3"); then
    fail "$name: rank $3 did not appear"; wait_end "$tp" 30; show "$name.log"; return
  fi
  if ! wait_steps "$dir" 3 "$pid"; then
    fail "$name: fewer than 3 step records within 60 s"; wait_end "$tp" 30; show "$name.log"; return
  fi
  t=$(now); kill "-$2" "$pid"
  wait_end "$tp" 30; secs=$(since "$t")
  s=$(info "$dir/checkpoints/last.h5" step) w=$(info "$dir/checkpoints/last.h5" world_size)
  if [ "$rc" = 0 ] && grep -q "stopped by signal" "$name.log" && [ "${s:-0}" -gt 0 ] &&
      [ "$w" = 2 ] && [ -z "$(rank_pids "$dir")" ]; then
    ok "$name: SIG$2 to rank $3 of 2 -> mpirun exit 0 after $secs s, checkpoint at step $s"
  else
    fail "$name: SIG$2 to rank $3 of 2 -> mpirun exit $rc after $secs s, checkpoint step '$s'," \
         "world_size '$w', ranks left: '$(rank_pids "$dir" | tr '\n' ' ')'"
    show "$name.log"
  fi
}
signal_rank sigterm_rank1 TERM 1
signal_rank sigint_rank0 INT 0

# 6. SIGKILL of one rank ends the whole job, with a non-zero exit, within 60 s.
kill_rank() {  # kill_rank <name> <rank>
  local name=$1 dir=runs/$1 t pid tp secs
  timeout -k 5 300 "${mpi[@]}" -np 2 "$elbo" "${common[@]}" "output.dir=$dir" "${long[@]}" \
    >"$name.log" 2>&1 &
  tp=$!; jobs_started+=("$tp")
  local p; for p in 0 1; do pid=$(rank_pid "$dir" "$p") && procs+=("$pid"); done
  if ! pid=$(rank_pid "$dir" "$2"); then
    fail "$name: rank $2 did not appear"; wait_end "$tp" 30; show "$name.log"; return
  fi
  if ! wait_steps "$dir" 3 "$pid"; then
    fail "$name: fewer than 3 step records within 60 s"; wait_end "$tp" 30; show "$name.log"; return
  fi
  t=$(now); kill -KILL "$pid"
  wait_end "$tp" 60; secs=$(since "$t")
  if [ "$rc" != timeout ] && [ "$rc" -ne 0 ] && [ -z "$(rank_pids "$dir")" ]; then
    ok "$name: SIGKILL of rank $2 of 2 -> mpirun exit $rc after $secs s, no rank left"
  else
    fail "$name: SIGKILL of rank $2 of 2 -> mpirun exit $rc after $secs s," \
         "ranks left: '$(rank_pids "$dir" | tr '\n' ' ')'"
    show "$name.log"
  fi
}
kill_rank sigkill_rank1 1
kill_rank sigkill_rank0 0

# 7. kill -9 at arbitrary moments of a run that checkpoints every step: last.h5 always loads.
dir=runs/crash crash_ok=1 steps_seen="" prev=0
crash_args=(checkpoint.every_steps=1 checkpoint.keep=3 train.max_steps=0 train.epochs=50 output.log_every=50)
i=0
for delay in 1.0 1.3 1.7 2.1 2.6 3.2; do
  resume=(); [ "$i" -gt 0 ] && resume=(--resume auto)
  # In a subshell whose stderr is dropped, so that bash does not report the kill.
  ( timeout -k 5 120 "$elbo" "${common[@]}" "output.dir=$dir" "${crash_args[@]}" "${resume[@]}" \
      >"crash$i.log" 2>&1; exit $? ) 2>/dev/null &
  tp=$!; jobs_started+=("$tp")
  if ! pid=$(rank_pid "$dir" single); then
    fail "crash run $i: no elbo process appeared"; wait_end "$tp" 30; show "crash$i.log"; crash_ok=0; break
  fi
  procs+=("$pid")
  sleep "$delay"
  if ! alive "$pid"; then
    wait "$tp"; r=$?; fail "crash run $i ended before the kill (exit $r)"; show "crash$i.log"; crash_ok=0; break
  fi
  kill -KILL "$pid"; wait_end "$tp" 30
  if [ ! -e "$dir/checkpoints/last.h5" ] && [ ! -L "$dir/checkpoints/last.h5" ] && [ "$prev" -eq 0 ]; then
    steps_seen+=" none"   # killed before the first checkpoint: allowed while none was ever written
  else
    s=$(info "$dir/checkpoints/last.h5" step)
    timeout 30 "$elbo" info "$dir/checkpoints/last.h5" >"crash$i.info" 2>&1
    r=$?
    if [ "$r" -ne 0 ] || [ -z "$s" ] || [ "$s" -lt "$prev" ]; then
      fail "after kill -9 number $((i + 1)) ($delay s): elbo info last.h5 exit $r, step '$s'" \
           "(before: $prev), last.h5 -> '$(link_of "$dir")', files: $(find "$dir/checkpoints" -mindepth 1 -printf '%f ')"
      show "crash$i.info" "crash$i.log"; crash_ok=0; break
    fi
    steps_seen+=" $s"; prev=$s
  fi
  i=$((i + 1))
done
if [ "$crash_ok" -eq 1 ]; then
  ok "6 runs killed with -9 after 1.0 .. 3.2 s: last.h5 loads each time, steps:$steps_seen"
  train crash_end.log "output.dir=$dir" "${crash_args[@]}" "train.max_steps=$((prev + 10))" --resume auto
  rc=$?
  s=$(info "$dir/checkpoints/last.h5" step)
  files=$(step_files "$dir")
  if [ "$rc" -eq 0 ] && [ "$s" = $((prev + 10)) ]; then
    ok "resume auto after the kills: exit 0, step $prev -> $s"
  else
    fail "resume auto after the kills: exit $rc, step '$s' (want $((prev + 10)))"; show crash_end.log
  fi
  if [ "$files" = "$(names $((prev + 8)) $((prev + 9)) $((prev + 10)))" ]; then
    ok "after a clean end the newest 3 step files remain: $files" \
       "(other files: $(find "$dir/checkpoints" -mindepth 1 ! -name 'step-*' -printf '%f '))"
  else
    fail "step files after the final run: '$files' (want the newest 3)"
  fi
fi

# 8. A bad checkpoint for --resume: one error line, exit 2, no run directory.
mkdir -p bad
ref_ck=runs/ref/checkpoints/step-000000120.h5
size=$(stat -c %s "$ref_ck" 2>/dev/null || echo 0)
head -c $((size / 2)) "$ref_ck" >bad/truncated.h5
shards=(data/train/*.h5) shard=${shards[0]}
bad_resume() {  # bad_resume <name> <checkpoint> [overrides...]
  local name=$1 ckpt=$2 dir=runs/$1; shift 2
  timeout -k 5 120 "$elbo" "${common[@]}" "output.dir=$dir" train.max_steps=10 "$@" \
    --resume "$ckpt" >"$name.out" 2>"$name.err"
  local r=$? lines; lines=$(awk 'END { print NR }' "$name.err")
  if [ "$r" -eq 2 ] && [ "$lines" -eq 1 ] && [ "$(wc -l <"$name.err")" -eq 1 ] &&
      grep -q '^elbo: error: ' "$name.err" && [ ! -e "$dir" ]; then
    ok "$name: exit 2, $(cat "$name.err")"
  else
    fail "$name: exit $r, $lines stderr line(s), run directory $([ -e "$dir" ] && echo created || echo absent)"
    show "$name.err" "$name.out"
  fi
}
bad_resume bad_missing bad/no-such-checkpoint.h5
bad_resume bad_truncated bad/truncated.h5
bad_resume bad_shard "$shard"
bad_resume bad_model "$ref_ck" model.latent=9
# --resume auto with nothing to resume from starts fresh.
train fresh.log output.dir=runs/fresh train.max_steps=10 --resume auto
rc=$? s=$(info runs/fresh/checkpoints/last.h5 step)
if [ "$rc" -eq 0 ] && [ "$s" = 10 ]; then
  ok "resume auto in an empty run directory starts fresh (step $s)"
else
  fail "resume auto in an empty run directory: exit $rc, step '$s'"; show fresh.log
fi
exit $failed
