#!/usr/bin/env bash
# Nothing the user has is lost: the run directory's rules (launch/run_directory.h), each case
# checked on disk (a tree digest before and after where a refusal must change nothing):
#   1. --resume PATH into a directory holding another run is refused; the other run unchanged.
#   2. --resume PATH from an older checkpoint of the same run is refused while newer ones exist,
#      and deletes them only with --discard-newer; into a new directory it continues there.
#   3. --resume auto stops at a newest checkpoint that does not load, and leaves it in place
#      (a future format_version: test_launch's RunDirectory tests).
#   4. One writer per directory: a second `elbo train` into a running run's output.dir ends at
#      once naming the holder's pid; of two concurrent `elbo prepare` into one --out exactly one
#      writes, and the shards it wrote are whole.
#   5. Never over a file that is not elbo's: output.dir=. next to the user's config.yaml, the
#      user's report.html or images/, a symlinked config.yaml in a run directory.
#   6. A failure after start-up leaves the directory usable: a run that diverged before its first
#      checkpoint, or was killed, is started over by the same command; a half-written last line of
#      metrics.jsonl is dropped on resume.
#   7. A full disk during a checkpoint: one error line naming the file, exit 1, no crash, the
#      previous checkpoint intact and loadable (a small tmpfs in a private mount namespace).
#   8. A second stop signal ends the run at once (exit 128 + signal), and what it printed is not
#      lost.
# Usage: run_directory_test.sh <elbo> <work-dir>; exits 77 (skip) without Fashion-MNIST.
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
setup_integration_test "$1" "$2" 2

common=(train "$configs/smoke.yaml" "data.train=$work/data/train" "data.test=$work/data/test"
        train.threads=1 output.log_every=10)
train() {  # train <log> <args...>
  local log=$1; shift
  timeout -k 5 300 "$elbo" "${common[@]}" "$@" >"$log" 2>&1
}
steps_in() { (cd "$1/checkpoints" 2>/dev/null && ls step-*.h5 2>/dev/null | tr '\n' ' '); }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }
wait_for() {  # wait_for <seconds> <command...>: polls every 0.1 s
  local i
  for ((i = 0; i < $1 * 10; i++)); do "${@:2}" && return 0; sleep 0.1; done
  return 1
}
has_steps() { local n; n=$(grep -c '"type": "step"' "$1" 2>/dev/null); [ "${n:-0}" -ge "$2" ]; }
child_of() {  # child_of <pid>: the first child of that process (elbo under timeout), waiting 20 s
  local i c
  for ((i = 0; i < 200; i++)); do
    c=$(pgrep -P "$1" | head -n 1)
    [ -n "$c" ] && { echo "$c"; return 0; }
    sleep 0.1
  done
  return 1
}

# Two finished runs of 60 steps, a checkpoint every 20.
ck=(train.max_steps=60 checkpoint.every_steps=20 checkpoint.keep=5)
train a.log output.dir=runs/a "${ck[@]}" || { fail "run a"; show a.log; exit 1; }
train b.log output.dir=runs/b "${ck[@]}" seed=2 || { fail "run b"; show b.log; exit 1; }

# 1. Another run's directory.
before=$(tree_digest runs/b)
expect_error other_run 2 "output.dir holds another run" \
  timeout 120 "$elbo" "${common[@]}" output.dir=runs/b "${ck[@]}" train.max_steps=80 \
  --resume runs/a/checkpoints/step-000000040.h5
if [ "$(tree_digest runs/b)" = "$before" ]; then ok "run b unchanged by the refused resume"
else fail "run b changed by a resume from run a's checkpoint"; fi

# 2. An older checkpoint of the same run.
before=$(tree_digest runs/a)
expect_error older 2 "pass --discard-newer" \
  timeout 120 "$elbo" "${common[@]}" output.dir=runs/a "${ck[@]}" train.max_steps=80 \
  --resume runs/a/checkpoints/step-000000020.h5
if [ "$(tree_digest runs/a)" = "$before" ]; then ok "run a unchanged by the refused resume"
else fail "run a changed by the refused resume from its own step 20"; fi
expect_error discard_alone 2 "--discard-newer goes with --resume PATH" \
  timeout 120 "$elbo" "${common[@]}" output.dir=runs/a --resume auto --discard-newer
cp -a runs/a runs/a2
train fork.log output.dir=runs/fork "${ck[@]}" train.max_steps=70 --resume runs/a/checkpoints/step-000000020.h5
rc=$?
if [ "$rc" -eq 0 ] && [ "$(tree_digest runs/a)" = "$before" ] &&
    [ "$(steps_in runs/fork)" = "step-000000040.h5 step-000000060.h5 step-000000070.h5 " ] &&
    [ "$(info runs/fork/checkpoints/last.h5 step)" = 70 ]; then
  ok "resume from step 20 into a new directory: steps $(steps_in runs/fork), run a unchanged"
else
  fail "resume into a new directory: exit $rc, steps '$(steps_in runs/fork)'"; show fork.log
fi
train discard.log output.dir=runs/a2 "${ck[@]}" train.max_steps=30 \
  --resume runs/a2/checkpoints/step-000000020.h5 --discard-newer
rc=$?
records=$(grep -c '"type": "step"' runs/a2/metrics.jsonl)
last=$(tail -n 1 runs/a2/metrics.jsonl)
if [ "$rc" -eq 0 ] && [ "$(steps_in runs/a2)" = "step-000000020.h5 step-000000030.h5 " ] &&
    grep -q "deleting .*step-000000040.h5" discard.log && [ "$records" -eq 3 ] &&
    [[ $last == *'"step": 30'* ]]; then
  ok "--discard-newer: steps 40 and 60 deleted, continued to 30, metrics cut at 20 ($records step records)"
else
  fail "--discard-newer: exit $rc, steps '$(steps_in runs/a2)', $records step records"; show discard.log
fi

# 3. A newest checkpoint that does not load (here a directory where the file should be; the
# future-format case is in test_launch, which can write such a file).
cp -a runs/b runs/b3
mkdir runs/b3/checkpoints/step-000000099.h5
before=$(tree_digest runs/b3)
expect_error not_a_file 2 "step-000000099.h5" \
  timeout 120 "$elbo" "${common[@]}" output.dir=runs/b3 "${ck[@]}" train.max_steps=80 --resume auto
if [ "$(tree_digest runs/b3)" = "$before" ]; then ok "unreadable newest checkpoint left in place"
else fail "resume auto changed a run whose newest checkpoint cannot be read"; fi

# 4. One writer per directory.
timeout -k 5 300 "$elbo" "${common[@]}" output.dir=runs/busy train.max_steps=0 train.epochs=1000 \
  >busy.log 2>&1 &
busy_timeout=$!
busy=$(child_of "$busy_timeout")
if wait_for 60 has_steps runs/busy/metrics.jsonl 1; then
  expect_error second_writer 2 "in use by another elbo process (pid $busy on host" \
    timeout 60 "$elbo" "${common[@]}" output.dir=runs/busy train.max_steps=10
  expect_error second_resume 2 "in use by another elbo process (pid $busy" \
    timeout 60 "$elbo" "${common[@]}" output.dir=runs/busy --resume auto
  kill -TERM "$busy"
  wait "$busy_timeout"; rc=$?
  if [ "$rc" -eq 0 ] &&
      "$PY" -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' runs/busy/metrics.jsonl; then
    ok "the first writer went on undisturbed and stopped cleanly (exit $rc)"
  else
    fail "the first writer: exit $rc"; show busy.log
  fi
else
  fail "the first writer never logged a step"; show busy.log; kill -KILL "$busy_timeout" "$busy" 2>/dev/null
fi
src=/usr/share/datasets/fashion-mnist
for i in 1 2; do
  timeout 300 "$elbo" prepare --images "$src/train-images-idx3-ubyte.gz" --out data/race \
    --shards 4 >"prepare$i.out" 2>"prepare$i.err" &
  eval "p$i=\$!"
done
wait "$p1"; r1=$?
wait "$p2"; r2=$?
errs=$(cat prepare1.err prepare2.err)
shards=$(find data/race -name '*.h5' | wc -l)
stray=$(find data/race -name '*.tmp*' | wc -l)
if [ $((r1 + r2)) -eq 2 ] && { [ "$r1" -eq 0 ] || [ "$r2" -eq 0 ]; } && [ "$shards" -eq 4 ] &&
    [ "$stray" -eq 0 ] && [[ $errs =~ in\ use\ by\ another\ elbo\ process|refusing\ to\ overwrite ]] &&
    train race.log output.dir=runs/race data.train=data/race train.max_steps=5; then
  ok "two concurrent prepares: exits $r1 and $r2, 4 whole shards that train, refused with: $errs"
else
  fail "two concurrent prepares: exits $r1 and $r2, $shards shards, $stray temporaries: $errs"
  show race.log
fi

# 5. Files that are not elbo's.
mkdir -p mine && cp "$configs/smoke.yaml" mine/config.yaml
before=$(tree_digest mine)
expect_error users_config 2 "config.yaml, which elbo did not write here" \
  bash -c "cd mine && timeout 120 '$elbo' train config.yaml data.train=$work/data/train \
    data.test=null output.dir=. train.max_steps=5"
if [ "$(tree_digest mine)" = "$before" ]; then ok "the user's config.yaml untouched (output.dir: .)"
else fail "output.dir=. changed the user's directory"; fi
# The user's report.html or images/ beside their files: the same refusal, nothing touched.
for name in report.html images; do
  mkdir -p "users_$name"
  if [ "$name" = images ]; then mkdir "users_$name/images" && echo mine >"users_$name/images/a.png"
  else echo mine >"users_$name/$name"; fi
  before=$(tree_digest "users_$name")
  expect_error "users_$name" 2 "$name, which elbo did not write here" \
    timeout 120 "$elbo" "${common[@]}" "output.dir=users_$name" train.max_steps=5
  if [ "$(tree_digest "users_$name")" = "$before" ]; then ok "the user's $name untouched"
  else fail "a run changed the user's $name"; fi
done
cp -a runs/a runs/link && echo "precious" >precious.txt
ln -sf "$work/precious.txt" runs/link/config.yaml
expect_error symlinked_config 2 "config.yaml, which is a symlink" \
  timeout 120 "$elbo" "${common[@]}" output.dir=runs/link "${ck[@]}" train.max_steps=80 --resume auto
if [ "$(cat precious.txt)" = precious ] && [ -L runs/link/config.yaml ]; then
  ok "a symlinked config.yaml is neither followed nor replaced"
else fail "the symlink's target or the symlink changed"; fi

# 6. Failures after start-up.
train diverge.log output.dir=runs/diverge train.optimizer.lr=1e12 train.max_steps=100
rc=$?
if [ "$rc" -ne 0 ] && [ ! -e runs/diverge/checkpoints/last.h5 ]; then
  train again.log output.dir=runs/diverge train.max_steps=20
  rc2=$?
  if [ "$rc2" -eq 0 ] && grep -q "never reached a checkpoint" again.log &&
      [ "$(info runs/diverge/checkpoints/last.h5 step)" = 20 ] &&
      [ "$(grep -c '"type": "step"' runs/diverge/metrics.jsonl)" -eq 2 ]; then
    ok "a run that failed before its first checkpoint (exit $rc) is started over by the same command"
  else
    fail "rerun after a failed start: exit $rc2"; show again.log runs/diverge/metrics.jsonl
  fi
else
  fail "the diverging run: exit $rc, or it wrote a checkpoint"; show diverge.log
fi
timeout -k 5 300 "$elbo" "${common[@]}" output.dir=runs/killed train.max_steps=0 train.epochs=1000 \
  >killed.log 2>&1 &
tpid=$! pid=$(child_of $!)
if wait_for 60 has_steps runs/killed/metrics.jsonl 1; then
  kill -KILL "$pid"; wait "$tpid" 2>/dev/null
  train killed2.log output.dir=runs/killed train.max_steps=10
  rc=$?
  if [ "$rc" -eq 0 ] && [ "$(info runs/killed/checkpoints/last.h5 step)" = 10 ]; then
    ok "a run killed before its first checkpoint is started over by the same command"
  else fail "rerun after kill -9: exit $rc"; show killed2.log; fi
else
  fail "the run to kill never logged a step"; kill -KILL "$tpid" "$pid" 2>/dev/null
fi
cp -a runs/a runs/cut
printf '{"type": "step", "epoch": 0, "step": 61, "lo' >>runs/cut/metrics.jsonl
train cut.log output.dir=runs/cut "${ck[@]}" train.max_steps=80 --resume auto
rc=$?
if [ "$rc" -eq 0 ] && grep -q "cut short by a crash" cut.log &&
    "$PY" -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; assert r[-1]["step"] == 80' \
      runs/cut/metrics.jsonl; then
  ok "a half-written last metrics line is dropped on resume; every line parses"
else
  fail "resume after a cut metrics line: exit $rc"; show cut.log
fi

# 7. A full disk. The tmpfs holds the run's small files and one checkpoint (1.2 MB), not two.
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null; then
  unshare -m bash -c '
    mkdir -p small && mount -t tmpfs -o size=2000k tmpfs small || exit 99
    timeout 120 "$0" "${@:1}" output.dir=small/run train.max_steps=40 checkpoint.every_steps=20 \
      >small.out 2>small.err
    echo $? >small.rc
    "$0" info small/run/checkpoints/step-000000020.h5 >small.info 2>&1
    find small/run -name "*.tmp*" >small.tmp
    umount small' "$elbo" "${common[@]}"
  rc=$(cat small.rc 2>/dev/null)
  if [ "$rc" = 1 ] && [ "$(wc -l <small.err)" -eq 1 ] &&
      grep -q "^elbo: error: cannot write the checkpoint: No space left on device (small/run/checkpoints/step-000000040.h5)$" small.err &&
      grep -q '"step": 20' small.info && [ ! -s small.tmp ]; then
    ok "disk full: exit 1, $(cat small.err); step 20 intact, no temporary left"
  else
    fail "disk full: exit '$rc'"; show small.err small.info small.tmp
  fi
else
  echo "skip - disk full: needs root and unshare for a private tmpfs"
fi

# 8. A second stop signal.
timeout -k 5 300 "$elbo" "${common[@]}" output.dir=runs/impatient train.max_steps=0 \
  train.epochs=1000 >impatient.log 2>&1 &
tpid=$! pid=$(child_of $!)
if wait_for 60 has_steps runs/impatient/metrics.jsonl 1; then
  # Two of one signal sent at once may merge into one delivery. Two different ones, both made
  # pending while the process is stopped, are both delivered when it continues, back to back.
  kill -STOP "$pid"; kill -INT "$pid"; kill -TERM "$pid"; kill -CONT "$pid"
  wait "$tpid"; rc=$?
  if { [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; } && ! grep -q "stopped by signal" impatient.log && grep -q "^elbo: device cpu" impatient.log &&
      grep -q "^elbo: .* parameters" impatient.log; then
    ok "a second stop signal: exit $rc at once, the lines printed before it are in the log"
  else
    fail "a second stop signal: exit $rc"; show impatient.log
  fi
else
  fail "the run to interrupt never logged a step"; kill -KILL "$tpid" "$pid" 2>/dev/null
fi
exit $failed
