#!/usr/bin/env bash
# Multi-host measure (issue 14) on its own: the `swarm` measure of `make bench`
# (bench/m_swarm.py: iperf3 and ping container to container across two hosts of
# the swarm lab, rustbridge VXLAN against Docker's overlay twice, interleaved
# rounds), with its report (latest.md, .json with every sample, .png) in
# $BENCH_SWARM_OUT (default /tmp/rustbridge-bench-swarm).
#   scripts/bench-swarm.sh               (needs plugin/build: make rootfs; iperf3 on the host)
#   BENCH_QUICK=1 LAB_ENGINE_ROOT=/var/cache/rustbridge-engines/sid/root scripts/bench-swarm.sh
# Nothing of the machine's own dockerd is used; it waits for /tmp/rb-lab.lock
# unless its caller holds it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "${BENCH_PYTHON:-/usr/bin/python3}" "$root/bench/run.py" --only swarm --out "${BENCH_SWARM_OUT:-/tmp/rustbridge-bench-swarm}" "$@"
