#!/usr/bin/env bash
# The report as a browser shows it: a short two-epoch run's report.html rendered by headless
# Chromium, whose screenshot must hold every chart curve and both image grids
# (report_render_check). With ELBO_REPORT_SCREENSHOT set, the screenshot is copied there (how
# docs/report.png was made). Exits 77 (skip) without Chromium or Fashion-MNIST.
# Usage: report_test.sh <elbo> <work-dir> <report_render_check>
set -u
# shellcheck source=tests/lib.sh
. "$(dirname "$0")/lib.sh"
check=$(realpath "$3")
browser=$(command -v chromium || command -v chromium-browser) ||
  { echo "skip - no chromium (the Debian package chromium; launch/test.sh installs it)"; exit 77; }
setup_integration_test "$1" "$2" 1
timeout -k 5 300 "$elbo" train "$configs/smoke.yaml" "data.train=$work/data/train" \
  "data.test=$work/data/test" train.max_steps=0 train.epochs=2 train.batch_size=512 \
  train.threads=1 output.log_every=20 output.dir=runs/report >train.log 2>&1 ||
  { fail "training"; show train.log; exit 1; }
# A profile of its own, so that no other Chromium and no user profile is involved.
timeout -k 5 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$work/profile" --window-size=1000,820 --screenshot="$work/report.png" \
  "file://$work/runs/report/report.html" >browser.log 2>&1
if [ -s report.png ]; then ok "chromium rendered report.html"; else fail "no screenshot"; show browser.log; exit 1; fi
"$check" report.png || failed=1
[ -n "${ELBO_REPORT_SCREENSHOT:-}" ] && cp report.png "$ELBO_REPORT_SCREENSHOT"
exit $failed
