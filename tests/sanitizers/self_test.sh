#!/usr/bin/env bash
# The sanitized configurations catch what they claim to, with the tests' own settings: each fault
# of sanitizer_faults, run through reports.sh by a command that ignores its exit code (as a test
# that expects a process to fail does), and again as a rank under mpirun, fails with the report
# printed; a clean run keeps the command's exit code (0, and 77 for a skip).
# Usage: self_test.sh <reports.sh> <sanitizer_faults> <work-dir> <mpirun or -> <fault kind...>
set -u
reports=$1 faults=$2 work=$3 mpirun=$4
shift 4
failed=0
# What the report file says (GCC's UBSan writes its own message to stderr only; the file holds
# AddressSanitizer's report of the abort that follows, through the UBSan handler).
declare -A want=([overflow]="| .*ERROR: AddressSanitizer: heap-buffer-overflow"
                 [ub]="| .*__ubsan_handle_add_overflow" [leak]="| .*ERROR: LeakSanitizer")
expect_caught() {  # expect_caught <kind> <how> <command...>
  local kind=$1 how=$2 out rc
  shift 2
  out=$("$reports" "$work/$kind-$how" "$@" 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ] && grep -q "FAIL - sanitizer report" <<<"$out" &&
      grep -q "${want[$kind]}" <<<"$out"; then
    echo "ok - $kind ($how) fails the test with its report"
  else
    echo "FAIL - $kind ($how): exit $rc, output:"; sed 's/^/    | /' <<<"$out"; failed=1
  fi
}
for kind in "$@"; do
  expect_caught "$kind" process sh -c '"$0" "$1"; exit 0' "$faults" "$kind"
  if [ "$mpirun" != - ]; then
    expect_caught "$kind" mpirun sh -c '"$0" -np 1 --oversubscribe "$1" "$2"; exit 0' \
      "$mpirun" "$faults" "$kind"
  fi
done
for code in 0 77; do
  "$reports" "$work/clean-$code" sh -c '"$0" none >/dev/null && exit "$1"' "$faults" "$code"
  rc=$?
  if [ "$rc" -eq "$code" ]; then echo "ok - a clean run keeps exit code $code"
  else echo "FAIL - a clean run exiting $code gave $rc"; failed=1; fi
done
exit $failed
