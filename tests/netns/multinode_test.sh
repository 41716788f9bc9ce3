#!/usr/bin/env bash
# Several nodes on one machine: two network namespaces ("hosts", tests/netns/hosts.sh) joined by a
# bridge, mpirun in the root namespace starting its daemons in them through a plm_rsh_agent, Open
# MPI forced onto TCP between the hosts (shared memory within one).
#   0. mpirun places 2 ranks on each host; the all-reduce benchmark runs across them, correctly;
#   a. 2 hosts x 2 ranks train 50 steps of the smoke config with the step losses of 1 process
#      (1e-5 relative), asked for distributed.shared_memory, which needs one node: a note says it
#      is set aside;
#   b. 1 process resumes the 4-rank run (--resume auto) to step 80: exit 0, world size 1;
#   c. a host that goes away mid-run (its link cut; in a second run every process on it killed)
#      ends the job within distributed.timeout_s + 30 s with a message naming a rank or the lost
#      host; last.h5 loads, and host 1 alone resumes the run from it.
# Usage: multinode_test.sh <elbo> <work-dir>; exits 77 (skip) without root/namespaces, mpirun or
# Fashion-MNIST. Needs root (network namespaces), iproute2, util-linux (unshare).
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/netns/hosts.sh
. "$here/hosts.sh"
# shellcheck source=tests/lib.sh
. "$here/../lib.sh"
command -v unshare >/dev/null || { echo "skip - no unshare (util-linux)"; exit 77; }
netns_supported || { echo "skip - $netns_reason"; exit 77; }
setup_integration_test "$1" "$2" 3 mpi
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# mpirun jobs started in the background (a subshell running timeout running mpirun): ended, with
# what they run, before the hosts go away.
launchers=()
tree() {  # tree <pid>: the pid and 3 generations of its descendants
  local p=$1 kids all="$1"
  for _ in 1 2 3; do
    kids=$(for q in $p; do pgrep -P "$q"; done 2>/dev/null | tr '\n' ' ')
    [ -n "${kids// /}" ] || break
    all+=" $kids" p=$kids
  done
  echo "$all"
}
netns_before_down() {
  local p i any pids=""
  for p in "${launchers[@]}"; do alive "$p" && pids+=" $(tree "$p")"; done
  [ -n "${pids// /}" ] || return 0
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null
  for ((i = 0; i < 40; i++)); do  # at most 8 s; timeout -k 5 kills mpirun after 5 s
    any=0
    for p in $pids; do alive "$p" && any=1; done
    [ "$any" -eq 0 ] && return 0
    sleep 0.2
  done
  for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  return 0
}
netns_up 2 "$work" 2 || { fail "could not make the test hosts"; exit 1; }
echo "# hosts ${netns_ns[1]} (${netns_ip[1]}), ${netns_ns[2]} (${netns_ip[2]}), bridge $netns_bridge ($netns_subnet.1)"

common=(train "$configs/smoke.yaml" data.train=data/train data.test=data/test train.threads=1)
mpi=(mpirun "${netns_mpirun[@]}" --wdir "$work")

# 0. The launch itself: 2 ranks on each host, each in its own namespace.
# shellcheck disable=SC2016 # expanded by the sh on each host
placement=$(timeout -k 5 60 "${mpi[@]}" --map-by ppr:2:node sh -c \
  'echo "$(hostname) $(ip -4 -o addr show dev eth0 | awk "{print \$4}")"' 2>&1 | sort | uniq -c |
  awk '{ printf "%s%s x%s (%s)", sep, $2, $1, $3; sep = ", " }')
want="${netns_ns[1]} x2 (${netns_ip[1]}/24), ${netns_ns[2]} x2 (${netns_ip[2]}/24)"
if [ "$placement" = "$want" ]; then ok "mpirun across the hosts places $placement"
else fail "placement '$placement', want '$want'"; fi

# 0b. The all-reduce benchmark across the hosts (2 x 1 rank, TCP): every size correct; the 4 KB
#     and 2.5 MB (about the model's gradient) figures are printed.
bench="$(dirname "$elbo")/allreduce_bench"
if [ -x "$bench" ]; then
  timeout -k 5 120 "${mpi[@]}" --map-by ppr:1:node "$bench" --min-bytes 4K --max-bytes 4M \
    --factor 4 --iters 10 >bench.log 2>&1
  rc=$?
  if [ "$rc" -eq 0 ] && grep -q '"wrong_sizes":0' bench.log && grep -q '"nodes":2' bench.log; then
    ok "all-reduce across 2 hosts: $(grep -E '"bytes":(4096|4194304),' bench.log |
         sed -E 's/.*"bytes":([0-9]+).*"time_us":([0-9.]+).*"busbw_GBps":([0-9.e-]+).*/\1 B in \2 us (busbw \3 GB\/s)/' |
         paste -sd ';' -)"
  else
    fail "all-reduce benchmark across the hosts: exit $rc"; show bench.log
  fi
else
  fail "no all-reduce benchmark next to elbo ($bench)"
fi

# a. 2 hosts x 2 ranks against 1 process: every step loss within 1e-5 relative.
steps=(train.max_steps=50 output.log_every=1)
timeout -k 5 180 "${mpi[@]}" --map-by ppr:2:node "$elbo" "${common[@]}" output.dir=runs/four \
  "${steps[@]}" distributed.shared_memory=true >four.log 2>&1
rc4=$?
timeout -k 5 120 "$elbo" "${common[@]}" output.dir=runs/one "${steps[@]}" >one.log 2>&1
rc1=$?
if [ "$rc4" -ne 0 ] || [ "$rc1" -ne 0 ] || ! grep -q "communicator mpi, 4 rank" four.log; then
  fail "2 hosts x 2 ranks (exit $rc4) or 1 process (exit $rc1)"; show four.log one.log
elif "$PY" - runs/four/metrics.jsonl runs/one/metrics.jsonl <<'PY'; then
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
sa = [r["loss"] for r in a if r["type"] == "step"]
sb = [r["loss"] for r in b if r["type"] == "step"]
assert len(sa) == len(sb) == 50, (len(sa), len(sb))
worst, at = max((abs(x - y) / abs(y), i + 1) for i, (x, y) in enumerate(zip(sa, sb)))
ea = [r for r in a if r["type"] == "epoch"][-1]
eb = [r for r in b if r["type"] == "epoch"][-1]
test = abs(ea["test_neg_elbo"] - eb["test_neg_elbo"]) / eb["test_neg_elbo"]
print(f"  worst step-loss relative difference {worst:.2e} (step {at}), test_neg_elbo {test:.2e}, "
      f"first loss {sa[0]:.3f}, last {sa[-1]:.3f}")
sys.exit(0 if worst <= 1e-5 and test <= 1e-5 else 1)
PY
  ok "2 hosts x 2 ranks give the step losses of 1 process"
  if grep -q "note: distributed.shared_memory needs every rank on the CPU of one node" four.log; then
    ok "shared_memory across 2 hosts is set aside: $(grep -m1 'note: distributed.shared_memory' four.log)"
  else
    fail "no note that shared_memory is set aside across hosts"; show four.log
  fi
else
  fail "2 hosts x 2 ranks vs 1 process: step losses differ"
fi

# b. 1 process continues the 4-rank run to step 80.
ws0=$(info runs/four/checkpoints/last.h5 world_size) s0=$(info runs/four/checkpoints/last.h5 step)
timeout -k 5 120 "$elbo" "${common[@]}" output.dir=runs/four train.max_steps=80 output.log_every=1 \
  --resume auto >resume4.log 2>&1
rc=$?
ws=$(info runs/four/checkpoints/last.h5 world_size) s=$(info runs/four/checkpoints/last.h5 step)
if [ "$rc" -eq 0 ] && [ "$ws0" = 4 ] && [ "$s0" = 50 ] && [ "$ws" = 1 ] && [ "$s" = 80 ]; then
  ok "1 process resumes the 4-rank run: step $s0 -> $s, world_size $ws0 -> $ws"
else
  fail "resume of the 4-rank run on 1 process: exit $rc, step '$s0' -> '$s', world_size '$ws0' -> '$ws'"
  show resume4.log
fi

# c. A host that goes away: host 2's link is cut, or everything on it is killed.
timeout_s=10
lose_host() {  # lose_host <name> cut|kill
  local name=$1 how=$2 dir=runs/$1 i tp t secs rc msg step
  # In a subshell whose stderr is dropped, so that bash does not report how mpirun ended.
  ( timeout -k 5 150 "${mpi[@]}" --map-by ppr:1:node "$elbo" "${common[@]}" "output.dir=$dir" \
      train.epochs=50 train.max_steps=0 distributed.timeout_s=$timeout_s \
      checkpoint.every_steps=20 output.log_every=20 >"$name.log" 2>&1; exit $? ) 2>/dev/null &
  tp=$!; launchers+=("$tp")
  for ((i = 0; i < 300; i++)); do  # at most 60 s for the first checkpoint
    [ -e "$dir/checkpoints/last.h5" ] && break
    alive "$tp" || break
    sleep 0.2
  done
  if [ ! -e "$dir/checkpoints/last.h5" ] || ! alive "$tp"; then
    fail "$name: no checkpoint within 60 s, or the run ended"; netns_before_down; show "$name.log"
    return
  fi
  sleep 0.5
  t=$EPOCHREALTIME
  if [ "$how" = cut ]; then netns_cut 2; else netns_kill 2; fi
  local limit=$((timeout_s + 30))
  for ((i = 0; i < (limit + 10) * 10; i++)); do  # at most limit + 10 s (and that many rounds)
    alive "$tp" || break
    awk -v s="$(since "$t")" -v m=$((limit + 10)) 'BEGIN { exit !(s > m) }' && break
    sleep 0.1
  done
  secs=$(since "$t")
  if alive "$tp"; then rc=hang; netns_before_down; else wait "$tp"; rc=$?; fi
  # What is left of the run (the orted and rank of a cut-off host) is killed, the link restored.
  netns_kill 1; netns_kill 2
  ip link set "${netns_veth[2]}" up
  # The message: elbo's watchdog names the waiting rank; Open MPI names a rank, or the daemon and
  # node it lost (when it ends the job first, elbo prints nothing). Step records do not count.
  local ip_re=${netns_ip[2]//./\\.} named=""
  msg=$(grep -v '^step ' "$name.log" | grep -m 4 -E "rank [0-9]+|$ip_re|${netns_ns[2]}" | cut -c 1-200)
  if grep -v '^step ' "$name.log" | grep -q -E "rank [0-9]+"; then named="a rank"
  elif [ -n "$msg" ]; then named="the lost host, no rank"; fi
  if [ "$rc" != hang ] && [ "$rc" -ne 0 ] && [ -n "$named" ] &&
      awk -v s="$secs" -v m="$limit" 'BEGIN { exit !(s <= m) }'; then
    ok "$name: host 2 ${how} -> mpirun exit $rc after $secs s (limit $limit s); the output names $named:"
    printf '%s\n' "$msg" | sed 's/^/    | /'
  else
    fail "$name: host 2 ${how} -> mpirun exit $rc after $secs s (limit $limit s), message: '$named'"
    show "$name.log"
  fi
  timeout 30 "$elbo" info "$dir/checkpoints/last.h5" >"$name.info" 2>&1
  rc=$? step=$(info "$dir/checkpoints/last.h5" step)
  if [ "$rc" -ne 0 ] || [ -z "$step" ]; then
    fail "$name: elbo info last.h5 exit $rc"; show "$name.info"; return
  fi
  ok "$name: last.h5 loads: step $step, world_size $(info "$dir/checkpoints/last.h5" world_size)"
  timeout -k 5 120 ip netns exec "${netns_ns[1]}" "$elbo" "${common[@]}" "output.dir=$dir" \
    train.epochs=50 train.max_steps=$((step + 20)) distributed.timeout_s=$timeout_s \
    checkpoint.every_steps=20 output.log_every=20 --resume auto >"$name.resume.log" 2>&1
  rc=$?
  local s2 ws; s2=$(info "$dir/checkpoints/last.h5" step) ws=$(info "$dir/checkpoints/last.h5" world_size)
  if [ "$rc" -eq 0 ] && [ "$s2" = $((step + 20)) ] && [ "$ws" = 1 ]; then
    ok "$name: host 1 alone resumes: exit 0, step $step -> $s2, world_size $ws"
  else
    fail "$name: resume on host 1: exit $rc, step $step -> '$s2' (want $((step + 20))), world_size '$ws'"
    show "$name.resume.log"
  fi
}
lose_host cut_link cut
lose_host kill_host kill
exit $failed
