#!/usr/bin/env bash
# Runs inside `scripts/engine.sh run SUITE …`: install the already built
# plugin (plugin/build) into the running engine and run the e2e suites there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/lib.sh"
plugin=${PLUGIN:-rustbridge/rustbridge:latest}
"$root/scripts/plugin.sh" create "$plugin" "$root/plugin/build"
"$root/scripts/plugin.sh" enable "$plugin"
"$root/scripts/test-image.sh"
status=0
SUITES=${SUITES:-$ENGINE_E2E_SUITES} "$root/tests/e2e/run.sh" || status=$?
"$root/scripts/plugin.sh" remove "$plugin" || true
exit $status
