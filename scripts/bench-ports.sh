#!/usr/bin/env bash
# Publishing a range of ports with the installed plugin (make install first):
# one container with -p A-B:A-B, timed, and the plugin's memory, against what
# docker-proxy would cost (one process per port). Cleans up after itself.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if ! docker_ready || ! plugin_socket_ready; then
  echo "bench-ports: needs dockerd and the plugin (make install)"
  exit 0
fi
count=${COUNT:-1000}
first=20000
last=$((first + count - 1))
net=rbbench-$$ ctr=rbbench-$$-c
image=${IMAGE:-rustbridge-test/busybox:2}
trap 'docker rm -f $ctr >/dev/null 2>&1; docker network rm $net >/dev/null 2>&1' EXIT
docker network create -d rustbridge "$net" >/dev/null
start=$(date +%s%N)
docker run -d --name "$ctr" --network "$net" -p "$first-$last:$first-$last" "$image" sleep 600 >/dev/null
run_ms=$(( ($(date +%s%N) - start) / 1000000 ))
rules=$(iptables -t nat -S RUSTBRIDGE-DNAT 2>/dev/null | grep -c -- "-j DNAT")
rss_kb=$(ps -o rss= -C rustbridge | sort -n | tail -n 1)
start=$(date +%s%N)
docker rm -f "$ctr" >/dev/null
rm_ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf 'publish %d ports: docker run %d ms, %d DNAT rules, plugin RSS %d KiB; docker rm %d ms\n' \
  "$count" "$run_ms" "$rules" "$rss_kb" "$rm_ms"
