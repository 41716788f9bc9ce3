#!/usr/bin/env bash
# Runs a test command with every sanitizer report of its processes going to a file under <dir>
# (log_path), and fails when there is one, whatever the command's exit code: a report in a
# process whose output the test only greps, or whose failure it expected, still fails the test.
# Usage: reports.sh <dir> <command...>; exits with the command's code when there is no report.
set -u
dir=$1
shift
rm -rf -- "$dir" && mkdir -p -- "$dir" || exit 1
# A combined runtime (clang's) reads UBSAN_OPTIONS last, so both name the same place. GCC's
# separate UBSan runtime ignores it: its reports end in an abort() that ASan reports here.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:log_path=$dir/report"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-}:log_path=$dir/report"
"$@"
rc=$?
reports=("$dir"/report.*)
if [ -e "${reports[0]}" ]; then
  for r in "${reports[@]}"; do
    echo "FAIL - sanitizer report $r:"
    sed 's/^/    | /' "$r"
  done
  exit 1
fi
exit "$rc"
