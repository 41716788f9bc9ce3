#!/usr/bin/env bash
# Fuzzes elbo's readers of untrusted input with libFuzzer: builds the fuzz targets with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer into build-fuzz/, then runs each target for a
# bounded time, starting from a copy of its seed corpus (tests/fuzz/corpus/<target>, which stays
# as it is) and its regression inputs (tests/fuzz/regressions/<target>). Fails on any crash,
# sanitizer report, leak, timeout (-timeout, seconds per input) or memory blow-up (-rss_limit_mb,
# which also caps a single allocation), and prints the input that reproduces it.
# Usage: tests/fuzz/run.sh [seconds per target, default 60] [target...]
#   targets: config shard idx checkpoint (default: all)
#   env: BUILD_DIR (default build-fuzz), ELBO_FUZZ_KEEP=1 keeps the grown corpus in the work dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config shard idx checkpoint)
build=${BUILD_DIR:-$root/build-fuzz}

# The project's packages (launch/common.sh), then what only fuzzing needs: clang and its
# libFuzzer and sanitizer runtimes.
# shellcheck source=launch/common.sh
source "$root/launch/common.sh"
install_missing_packages
fuzz_packages=(clang-14 libclang-rt-14-dev)
missing=()
for p in "${fuzz_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "elbo: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DELBO_CUDA=OFF -DELBO_FUZZ=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

work=$(mktemp -d /tmp/elbo-fuzz.XXXXXX)
[ "${ELBO_FUZZ_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
artifacts=$build/fuzz-artifacts
# As for the tests (tests/CMakeLists.txt): whole stacks, so that tests/sanitizers/lsan.supp can
# name the third-party code whose leaks it suppresses. malloc returns NULL above 512 MiB (no
# input here needs a tenth of that), as it may without the sanitizers, where a throwing operator
# new still fails the run (out of memory). HDF5 1.10.8 allocates the buffer for a piece of
# metadata at the size a corrupt file states, before it checks that size against the end of the
# file (HDF5 issues #2600, #4431, #4435, #5572; not all fixed), and a variable-length string at
# the length (up to 4 GiB) that a corrupt reference states, which it zeroes; it handles NULL
# (regressions/shard/hdf5-asks-for-*). Allowed through, such a request trips -rss_limit_mb, or
# costs seconds of shadow memory.
# intercept_tls_get_addr=0: as for the tests, LLVM 14's leak checker can misread a dynamic TLS
# block and crash its tracer (tests/CMakeLists.txt says how).
ASAN_OPTIONS=detect_leaks=1:intercept_tls_get_addr=0:fast_unwind_on_malloc=0:halt_on_error=1
export ASAN_OPTIONS=$ASAN_OPTIONS:allocator_may_return_null=1:max_allocation_size_mb=512
export LSAN_OPTIONS=suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# A failure whose report matches a signature of hdf5_crashes.txt is a crash inside HDF5 that no
# check of ours avoids: reported, not failed. Prints the signature's name. Never when the memory
# the report is about was allocated or freed by our code (the innermost frame of that stack in
# HDF5 or elbo is elbo's): HDF5 overrunning a buffer of ours is our bug.
known_crash() {  # known_crash <report>
  local name regexes r all
  [ -f "$root/tests/fuzz/hdf5_crashes.txt" ] || return 1
  if awk '/(allocated|freed) by thread/ { s = 1; next }
          s && /^ *#/ { if ($0 ~ /libhdf5/) s = 0; else if ($0 ~ / in elbo::/) { ours = 1; s = 0 } }
          /^$/ { s = 0 }
          END { exit !ours }' "$1"; then
    return 1
  fi
  while IFS='|' read -r name rest; do
    [[ -z $name || $name == \#* ]] && continue
    IFS='|' read -ra regexes <<<"$rest"
    all=1
    for r in "${regexes[@]}"; do grep -qE -- "$r" "$1" || { all=0; break; }; done
    [ "$all" = 1 ] && { echo "$name"; return 0; }
  done <"$root/tests/fuzz/hdf5_crashes.txt"
  return 1
}
limits=(-timeout=10 -rss_limit_mb=2048)

# A second opinion on an input that crashed during fuzzing but not when replayed alone under
# AddressSanitizer: HDF5's wild reads may land in memory AddressSanitizer does not poison, and
# then fault only with what earlier inputs left in the heap. valgrind checks every access. Run on
# the unsanitized replay binary of an ordinary build (ELBO_REPLAY_BUILD, default build/; .ci/run
# builds it first), it prints why when valgrind reports an invalid access whose innermost frames
# are all HDF5's (through libc's memory functions) and whose block, if valgrind names one, HDF5
# allocated: an HDF5 fault like the known ones, not elbo's. Anything else stays a failure.
valgrind_hdf5_fault() {  # valgrind_hdf5_fault <target> <input>
  local replay=${ELBO_REPLAY_BUILD:-$root/build}/tests/fuzz/fuzz_$1_replay log=$2.valgrind.log
  command -v valgrind >/dev/null && [ -x "$replay" ] || return 1
  timeout 300 valgrind -q --error-exitcode=99 "$replay" "$2" >"$log" 2>&1
  [ $? -eq 99 ] || return 1
  awk '/^==[0-9]+== (Invalid (read|write)|Use of uninitialised|Conditional jump)/ && !what {
         what = $0; sub(/^==[0-9]+== /, "", what); stack = 1; next }
       stack && /^==[0-9]+==  +(at|by) / {
         if ($0 ~ /libhdf5/) { hdf5 = 1; next }
         if ($0 ~ /(libc\.so|vgpreload|memcpy|memmove|memset)/ && !hdf5) next
         if (!hdf5) bad = 1
         stack = 0; next }
       stack { stack = 0 }
       /alloc.d$/ { alloc = 1; next }
       alloc && /^==[0-9]+==  +(at|by) / {
         if ($0 ~ /(vgpreload|malloc|calloc|realloc)/) next
         if ($0 !~ /libhdf5/) bad = 1
         alloc = 0 }
       END { if (!what || !hdf5 || bad) exit 1; print what }' "$log" |
    sed "s|\$| in HDF5 (valgrind report: $log)|"
  [ "${PIPESTATUS[0]}" -eq 0 ]
}

# The inputs of the known crashes still crash as their signatures say (else the signature is
# wrong, or HDF5 was fixed and the exclusion can go).
for t in "${targets[@]}"; do
  for input in "$root/tests/fuzz/known/$t"/*; do
    [ -f "$input" ] || continue
    name=$(basename "$input")
    report=$work/known-$name.log
    "$build/tests/fuzz/fuzz_$t" "${limits[@]}" "$input" >"$report" 2>&1 && true
    if [ "$(known_crash "$report")" = "$name" ]; then
      echo "elbo: known HDF5 crash $name ($t) still crashes as recorded"
    else
      echo "FAIL - tests/fuzz/known/$t/$name does not crash as hdf5_crashes.txt records:"
      tail -n 30 "$report" | sed 's/^/    | /'
      exit 1
    fi
  done
done

# Fork mode, with crashes (and, by default, timeouts and memory blow-ups) left for the end, so
# that a known HDF5 crash does not end the run: every input that failed is kept under
# $artifacts/<target>/ and replayed afterwards for its report.
failed=()
for t in "${targets[@]}"; do
  rm -rf "${artifacts:?}/$t"
  mkdir -p "$work/$t" "$artifacts/$t"
  cp "$root/tests/fuzz/corpus/$t"/* "$work/$t/"
  inputs=("$work/$t")
  [ -d "$root/tests/fuzz/regressions/$t" ] && inputs+=("$root/tests/fuzz/regressions/$t")
  echo "elbo: fuzzing $t for $seconds s"
  log=$work/$t.log
  set +e
  "$build/tests/fuzz/fuzz_$t" -fork=1 -ignore_crashes=1 -max_total_time="$seconds" "${limits[@]}" \
    -artifact_prefix="$artifacts/$t/" "${inputs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  # The last statistics: executions, coverage (cov: edges, ft: features), corpus, failures.
  grep -E '^#[0-9]+: cov: ' "$log" | tail -n 1 | sed "s/^/  $t: /" || true
  # Fork mode exits non-zero when its last job failed; the failing input explains it.
  if [ "$rc" -ne 0 ] && ! compgen -G "$artifacts/$t/*" >/dev/null; then
    failed+=("$t")
    echo "FAIL - fuzz_$t exited $rc, leaving no failing input; the end of its log ($log):"
    tail -n 30 "$log" | sed 's/^/    | /'
    trap - EXIT  # keep the log
  fi
  for input in "$artifacts/$t"/*; do
    [ -f "$input" ] || continue
    report=$input.log
    if "$build/tests/fuzz/fuzz_$t" "${limits[@]}" "$input" >"$report" 2>&1; then
      if why=$(valgrind_hdf5_fault "$t" "$input"); then
        echo "  $t: ${input##*/} crashed during fuzzing only; alone, valgrind shows it: $why"
        continue
      fi
      failed+=("$t")
      echo "FAIL - fuzz_$t: ${input##*/} failed during fuzzing, but not when replayed alone (its"
      echo "  failure depends on the inputs before it, or on memory that they used up)"
      echo "  input: $input"
      continue
    fi
    if name=$(known_crash "$report"); then
      echo "  $t: known HDF5 crash ($name): $input"
      continue
    fi
    failed+=("$t")
    echo "FAIL - fuzz_$t: $(grep -m 1 -E 'ERROR|BUG|runtime error|SUMMARY' "$report" || echo failed)"
    sed 's/^/    | /' "$report" | grep -v '^    | INFO' | head -n 40
    echo "  reproducer: $input"
    echo "  replay it:  $build/tests/fuzz/fuzz_$t $input"
    echo "  once fixed: cp $input $root/tests/fuzz/regressions/$t/<what-it-is>"
  done
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "elbo: fuzzing failed: $(printf '%s\n' "${failed[@]}" | sort -u | tr '\n' ' ')"
  exit 1
fi
echo "elbo: fuzzing passed: ${targets[*]} ($seconds s each)"
