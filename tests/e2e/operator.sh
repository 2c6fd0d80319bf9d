#!/usr/bin/env bash
# The operator's view of the installed (managed) plugin: RUSTBRIDGE_METRICS_ADDR
# set with `docker plugin set`, /metrics parsed by Prometheus' Python parser
# (scripts/scrape-metrics.py) on the host's loopback, /health, and
# /Rustbridge.Status on the legacy socket the CLI uses. The setting is put back.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

addr=127.0.0.1:9474
set_metrics() {
  docker plugin disable -f "$PLUGIN" >/dev/null && docker plugin set "$PLUGIN" "RUSTBRIDGE_METRICS_ADDR=$1" \
    && docker plugin enable "$PLUGIN" >/dev/null && wait_for 40 0.25 plugin_socket_ready
}
# sample NAME: the value of one sample (name with labels, as Prometheus writes it) from a scrape.
sample() {
  "$ROOT/scripts/scrape-metrics.py" "http://$addr/metrics" | /usr/bin/python3 -c '
import json, sys
want = sys.argv[1]
for s in json.load(sys.stdin)["samples"]:
    labels = ",".join(f"{k}=\"{v}\"" for k, v in sorted(s["labels"].items()))
    if (s["name"] + ("{" + labels + "}" if labels else "")) == want:
        print(int(s["value"]) if s["value"] == int(s["value"]) else s["value"]); break' "$1"
}
health() { curl -s -m 5 "http://$addr/health"; }

step "metrics address as a plugin setting"
cleanup "set_metrics ''"
expect "docker plugin set RUSTBRIDGE_METRICS_ADDR=$addr" set_metrics "$addr"
eventually "/health answers ok" 10 sh -c "curl -s -m 2 http://$addr/health | grep -qx ok"
expect "/metrics parses (prometheus_client)" "$ROOT/scripts/scrape-metrics.py" "http://$addr/metrics"

step "calls and state show up"
# Relative to what the plugin already holds (networks of other users of this dockerd).
networks_before=$(sample rustbridge_networks)
expect "create a network" docker network create -d rustbridge --subnet 10.234.0.0/24 "$PREFIX-m"
expect "run a container publishing 127.0.0.1:18090" docker run -d --name "$PREFIX-m1" --network "$PREFIX-m" -p 127.0.0.1:18090:80 "$IMAGE" sleep 3600
equal "one CreateNetwork counted" 1 "$(sample 'rustbridge_calls_total{method="NetworkDriver.CreateNetwork"}')"
equal "one Join counted" 1 "$(sample 'rustbridge_call_duration_seconds_count{method="NetworkDriver.Join"}')"
equal "one network more" "$((networks_before + 1))" "$(sample rustbridge_networks)"
expect "its published port counted" test "$(sample rustbridge_published_ports)" -ge 1
id=$(network_id "$PREFIX-m")
expect "status on the legacy socket lists the network" sh -c "curl -s -m 5 --unix-socket $RB_SOCKET -X POST http://p/Rustbridge.Status | grep -q '\"id\":\"$id\"'"
expect "status shows the published port" sh -c "curl -s -m 5 --unix-socket $RB_SOCKET -X POST http://p/Rustbridge.Status | grep -q '\"host_port\":18090'"
expect "remove the container" rm_each "$PREFIX-m1"
expect "remove the network" docker network rm "$PREFIX-m"
equal "the network gone from the metrics" "$networks_before" "$(sample rustbridge_networks)"

step "metrics off again"
expect "docker plugin set RUSTBRIDGE_METRICS_ADDR=" set_metrics ""
refuse "nothing listens on $addr" curl -s -m 2 "http://$addr/metrics"
summary
