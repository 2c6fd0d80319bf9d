#!/usr/bin/env bash
# Multi-host measure (issue 14): iperf3 TCP throughput and ping latency
# container to container across two hosts of the swarm lab
# (scripts/swarm-lab.sh), over a rustbridge swarm network (kernel VXLAN)
# against Docker's own overlay network, in the same run, rounds alternating.
# Prints one line per measure with both medians and the ratio, and writes the
# samples as JSON to $BENCH_SWARM_OUT (default /tmp/rustbridge-bench-swarm.json).
#   scripts/bench-swarm.sh               (needs plugin/build: make rootfs; iperf3 on the host)
#   BENCH_SWARM_ROUNDS=4 BENCH_SWARM_SECONDS=5 LAB_ENGINE_ROOT=... scripts/bench-swarm.sh
# Nothing of the machine's own dockerd is used; takes /tmp/rb-lab.lock.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
LABSH=$root/scripts/swarm-lab.sh
export LAB_DIR=${LAB_DIR:-/tmp/rb-bench-lab} LAB_NODES=2
ROUNDS=${BENCH_SWARM_ROUNDS:-4}
SECONDS_PER_RUN=${BENCH_SWARM_SECONDS:-5}
OUT=${BENCH_SWARM_OUT:-/tmp/rustbridge-bench-swarm.json}
IMAGE=rustbridge-bench/iperf3:1
PLUGIN=rustbridge/rustbridge:latest

exec 9>/tmp/rb-lab.lock
flock -w 900 9 || { echo "bench-swarm: the lab lock is held by someone else" >&2; exit 1; }
lab() { "$LABSH" "$@" 9>&-; }
dk() { lab exec "$@"; }
trap 'lab down >/dev/null 2>&1 || true' EXIT

lab down >/dev/null 2>&1 || true
lab up >/dev/null
LAB_PLUGIN_SETTINGS="RUSTBRIDGE_SCOPE=global" lab plugin-install "$root/plugin/build" >/dev/null
for n in 1 2; do DOCKER_HOST="unix://$LAB_DIR/n$n/docker.sock" "$root/scripts/bench-image.sh" >/dev/null 9>&-; done
engine=$(dk 1 version -f '{{.Server.Version}}')

dk 1 network create -d "$PLUGIN" --attachable --subnet 10.232.0.0/24 bench-rb >/dev/null
dk 1 network create -d overlay --attachable --subnet 10.233.0.0/24 bench-ov >/dev/null
for net in rb ov; do
  dk 2 run -d --name "s-$net" --network "bench-$net" "$IMAGE" iperf3 -s >/dev/null
  dk 1 run -d --name "c-$net" --network "bench-$net" "$IMAGE" sleep 3600 >/dev/null
done
ip_of() { dk 2 inspect -f "{{(index .NetworkSettings.Networks \"bench-$1\").IPAddress}}" "s-$1"; }
rb_ip=$(ip_of rb); ov_ip=$(ip_of ov)
# Both paths answer before anything is measured (the membership task needs a pass or two).
for i in $(seq 1 60); do
  dk 1 exec c-rb ping -c 1 -W 1 "$rb_ip" >/dev/null 2>&1 && dk 1 exec c-ov ping -c 1 -W 1 "$ov_ip" >/dev/null 2>&1 && break
  sleep 1
done

gbps() { dk 1 exec "c-$1" iperf3 -c "$2" -t "$SECONDS_PER_RUN" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9)'; }
rtt_ms() { dk 1 exec "c-$1" ping -c 20 -i 0.2 -q "$2" | awk -F/ '/min\/avg\/max/ {print $4}'; }
samples=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which one goes first, so neither always runs on a warmer machine.
  order="rb ov"; [ $((r % 2)) = 0 ] && order="ov rb"
  for net in $order; do
    ip=$rb_ip; [ "$net" = ov ] && ip=$ov_ip
    echo "$net gbps $(gbps "$net" "$ip")" >>"$samples"
    echo "$net rtt_ms $(rtt_ms "$net" "$ip")" >>"$samples"
  done
done
mkdir -p "$(dirname "$OUT")"
python3 - "$samples" "$OUT" "$engine" "$ROUNDS" "$SECONDS_PER_RUN" <<'PY'
import json, statistics, sys
path, out, engine, rounds, seconds = sys.argv[1:]
s = {}
for line in open(path):
    net, what, value = line.split()
    s.setdefault(what, {}).setdefault(net, []).append(float(value))
med = {w: {n: statistics.median(v) for n, v in d.items()} for w, d in s.items()}
report = {"engine": engine, "rounds": int(rounds), "seconds_per_run": int(seconds), "samples": s, "median": med,
          "ratio_rustbridge_over_overlay": {w: med[w]["rb"] / med[w]["ov"] for w in med}}
json.dump(report, open(out, "w"), indent=2)
print(f"swarm lab, dockerd {engine}, two hosts, {rounds} rounds (alternating)")
print(f"iperf3 TCP, {seconds} s runs: rustbridge VXLAN {med['gbps']['rb']:.2f} Gbit/s, Docker overlay {med['gbps']['ov']:.2f} Gbit/s, "
      f"ratio {report['ratio_rustbridge_over_overlay']['gbps']:.2f}x (higher is better)")
print(f"ping RTT, 20 pings: rustbridge VXLAN {med['rtt_ms']['rb']:.3f} ms, Docker overlay {med['rtt_ms']['ov']:.3f} ms, "
      f"ratio {report['ratio_rustbridge_over_overlay']['rtt_ms']:.2f}x (lower is better)")
print(f"samples: {out}")
PY
rm -f "$samples"
