#!/usr/bin/env bash
# Runs every end-to-end suite against the running dockerd; the plugin must be
# installed (make install). Prints one total line at the end.
set -uo pipefail
here=$(dirname "$0")
source "$here/../../scripts/lib.sh"
total_passed=0 total_failed=0 status=0
for suite in ${SUITES:-$E2E_SUITES}; do
  out=$(mktemp)
  "$here/$suite.sh" 2>&1 | tee "$out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  line=$(grep -E '^[a-z0-9_]+: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
  if [ -z "$line" ]; then f=1; p=0; status=1; echo "$suite: no summary line (crashed?)"; fi
  total_passed=$((total_passed + p)); total_failed=$((total_failed + f))
  rm -f "$out"
done
echo
echo "e2e: $total_passed passed, $total_failed failed"
exit $status
