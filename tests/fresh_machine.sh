#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12: bootstraps a minimal Debian 12 (debootstrap
# --variant=minbase) into a new temporary folder, puts a clean clone of the repository's committed
# HEAD in it (/root/elbo; uncommitted changes are not in it), and runs, as root in a chroot with an
# empty environment, ./launch/quickstart.sh and then ./launch/test.sh from the repository root.
# Fails when either command fails, or when ctest skipped or did not run a test, except that a test
# labelled gpu may skip (the chroot has no CUDA toolkit and no GPU: the build is CPU-only).
#   ELBO_FRESH_KEEP=1      keep the folder for debugging (it is unmounted all the same)
#   ELBO_FRESH_BASE=DIR    where the folder is made (default: $TMPDIR, else /var/tmp)
#   ELBO_FRESH_MIRROR=URL  the Debian mirror (default: the one this machine's apt uses)
# Needs root, debootstrap (installed when missing), network access to the mirror and a few GB of
# disk. Each run has a folder of its own, so runs can overlap, and an interrupted run is cleaned up
# (its processes in the chroot ended, everything under the folder unmounted, then removed).
set -euo pipefail
repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh_machine: needs root (debootstrap, chroot, mounts)" >&2; exit 1
fi

# The mirror of this machine's apt for bookworm: one-line (.list) or deb822 (.sources) entries.
apt_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 == "bookworm" { print $2 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && awk 'BEGIN { RS = "" }
      { t = u = s = ""; off = 0; n = split($0, l, "\n")
        for (i = 1; i <= n; i++) {
          k = tolower(l[i]); sub(/:.*/, "", k); v = l[i]; sub(/^[^:]*:[ \t]*/, "", v)
          if (k == "types") t = " " v " "
          else if (k == "uris") u = v
          else if (k == "suites") s = " " v " "
          else if (k == "enabled" && tolower(v) == "no") off = 1
        }
        if (!off && t ~ /[ \t]deb[ \t]/ && s ~ /[ \t]bookworm[ \t]/) { split(u, a); print a[1] }
      }' "$f"
  done
  return 0
}
mirror=${ELBO_FRESH_MIRROR:-$(apt_mirror | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

if ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

base=${ELBO_FRESH_BASE:-${TMPDIR:-/var/tmp}}
mkdir -p "$base"
dir=$(realpath "$(mktemp -d "$base/elbo-fresh.XXXXXXXX")")
# The clean-up reads mount points from /proc/self/mountinfo, which escapes white space.
if ! [[ $dir =~ ^[A-Za-z0-9_./-]+$ ]]; then
  rmdir "$dir"; echo "fresh_machine: the base '$base' must be a plain path" >&2; exit 1
fi
root=$dir/root
echo "fresh_machine: $dir, mirror $mirror"

# Elapsed time per phase, printed at the end whatever happens.
phases=() phase_start=0 phase_name=""
phase() {  # phase NAME: ends the current phase (if any) and starts NAME
  local now; now=$(date +%s)
  [ -z "$phase_name" ] || phases+=("$(printf '%-11s %4d s' "$phase_name" $((now - phase_start)))")
  phase_name=$1 phase_start=$now
  [ -z "$1" ] || echo "=== fresh_machine: $1"
}

mounts_under() {  # the mount points at or below $dir, deepest first
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

chroot_pids() {  # the processes whose root is the chroot, or below it
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    if [ "$r" = "$root" ] || [[ $r == "$root"/* ]]; then echo "${p#/proc/}"; fi
  done
}

stop_chroot_processes() {  # TERM (their traps tear down test hosts), then KILL what is left
  local pids i
  pids=$(chroot_pids)
  [ -n "$pids" ] || return 0
  echo "fresh_machine: ending what still runs in the chroot: ${pids//$'\n'/ }"
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null
  for ((i = 0; i < 100; i++)); do  # at most 20 s
    [ -n "$(chroot_pids)" ] || return 0
    sleep 0.2
  done
  pids=$(chroot_pids)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
  for ((i = 0; i < 25; i++)); do [ -n "$(chroot_pids)" ] || return 0; sleep 0.2; done
  echo "fresh_machine: processes left in the chroot: $(chroot_pids | tr '\n' ' ')" >&2
}

unmount_all() {  # every mount under $dir (ours and those the tests made, e.g. /run/netns)
  local m round
  for ((round = 0; round < 5; round++)); do
    [ -n "$(mounts_under)" ] || return 0
    # A mount still busy is detached lazily: it leaves the tree at once, so rm cannot reach it.
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done \
      < <(mounts_under)
  done
  [ -z "$(mounts_under)" ]
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  trap '' INT TERM  # the clean-up itself is not interrupted
  phase ""
  stop_chroot_processes
  if ! unmount_all; then
    echo "fresh_machine: still mounted, $dir left in place:" >&2; mounts_under >&2; rc=1
  elif [ "${ELBO_FRESH_KEEP:-0}" = 1 ]; then
    echo "fresh_machine: kept $dir (ELBO_FRESH_KEEP=1)"
  else
    # Nothing is mounted below (checked just above); --one-file-system guards all the same.
    rm -rf --one-file-system "$dir"
  fi
  echo "fresh_machine: elapsed per phase"
  printf '  %s\n' "${phases[@]}"
  if [ "$rc" -eq 0 ]; then echo "fresh_machine: PASS"
  else echo "fresh_machine: FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase debootstrap
mkdir "$root"
# The root is a private mount point of its own: `ip netns exec` (the multi-node test) remounts /
# as a slave, which needs / to be a mount point, and no mount made below propagates to the host.
mount --bind "$root" "$root"
mount --make-private "$root"
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$dir/debootstrap.log" 2>&1; then
  tail -n 30 "$dir/debootstrap.log"; echo "fresh_machine: debootstrap failed"; exit 1
fi
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"  # Open MPI's shared memory, not the host's

phase clone
git clone --quiet --no-hardlinks "$repo" "$root/root/elbo"
echo "fresh_machine: $(git -C "$root/root/elbo" log -1 --format='%h %s' | cut -c 1-100)"

# in_chroot NAME COMMAND: COMMAND in the repository root inside the chroot, as root, with only a
# minimal environment (so that nothing of this shell hides a missing step); output also in
# $dir/NAME.log. In the background, so that INT and TERM reach the traps above at once.
in_chroot() {
  local env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
             "TERM=${TERM:-dumb}" LANG=C.UTF-8)
  local v
  for v in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do  # what this machine may need for OpenBLAS
    [ -z "${!v:-}" ] || env+=("$v=${!v}")
  done
  ( env -i "${env[@]}" chroot "$root" /bin/bash -c "cd /root/elbo && $2" </dev/null 2>&1 |
      tee "$dir/$1.log" ) &
  wait $!
}

phase quickstart
if ! in_chroot quickstart ./launch/quickstart.sh; then
  echo "fresh_machine: ./launch/quickstart.sh failed"; exit 1
fi

phase test
test_rc=0
in_chroot test ./launch/test.sh || test_rc=$?
phase ""

# ctest's verdict: every registered test ran and passed. The one exception is a test labelled gpu
# that skips: the chroot has no GPU (and the CPU-only build still registers a few GPU tests, e.g.
# NcclOneRank.AllReduceInPlace, "this build has no NCCL"). Any other skip, or a test not run, fails.
log=$dir/test.log
summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 ||
          true)
total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$summary")
echo "=== fresh_machine: ctest inside the chroot"
[ -z "$summary" ] || sed -n '/^[0-9]*% tests passed, /,$p' "$log"
if [ "$test_rc" -ne 0 ]; then
  echo "fresh_machine: ./launch/test.sh failed (exit $test_rc)"; exit 1
elif [ -z "$summary" ] || [ "${total:-0}" -eq 0 ]; then
  echo "fresh_machine: no ctest summary, or no tests"; exit 1
elif ! [[ $summary =~ " 0 tests failed" ]] || grep -q 'Not Run' "$log"; then
  echo "fresh_machine: ctest: $summary"; grep 'Not Run' "$log" || true; exit 1
fi
in_chroot gpu_tests "ctest --test-dir build -N -L gpu" >/dev/null
gpu_tests=$(sed -nE 's/^ *Test +#[0-9]+: (.*)$/\1/p' "$dir/gpu_tests.log")
gpu_skips=() bad=()
while read -r line; do  # "<name> (Skipped)", "<name> (Disabled)", ...
  [ -n "$line" ] || continue
  name=${line% (*}
  if [ "${line##* (}" = "Skipped)" ] && grep -qxF "$name" <<<"$gpu_tests"; then
    gpu_skips+=("$name")
  else
    bad+=("$line")
  fi
done < <(sed -n '/^The following tests did not run:/,/^$/p' "$log" |
         sed -nE 's/^\s+[0-9]+ - (.*)$/\1/p')
if [ ${#bad[@]} -gt 0 ]; then
  echo "fresh_machine: tests skipped or not run:"; printf '  %s\n' "${bad[@]}"; exit 1
fi
echo "fresh_machine: $((total - ${#gpu_skips[@]})) of $total tests ran and passed;" \
  "skipped: ${#gpu_skips[@]} GPU test(s) (no GPU in the chroot)${gpu_skips[*]:+: ${gpu_skips[*]}}"
