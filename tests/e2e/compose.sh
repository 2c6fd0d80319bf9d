#!/usr/bin/env bash
# docker compose with rustbridge networks (examples/compose/compose.yaml):
# driver_opts, an ipam block (subnet, gateway, ip_range; Docker's IPAM and
# rustbridge's), ipv4_address, aliases and published ports, then `down` leaves
# nothing. Run with Debian 12's docker-compose 1.29 and with Debian 13's v2
# (extracted privately by scripts/engine.sh fetch-compose).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

file=$ROOT/examples/compose/compose.yaml
export RB_IMAGE=$IMAGE

# status_has_network ID: the running plugin's status lists that network.
status_has_network() { plugin_call Rustbridge.Status '{}' | grep -q "\"id\":\"$1\""; }
# iface_mtu CONTAINER ADDRESS: the MTU of the container's interface holding ADDRESS.
iface_mtu() {
  local dev
  dev=$(docker exec "$1" ip -o -4 addr show | awk -v a="$2" '$4 ~ "^"a"/" {print $2}')
  docker exec "$1" cat "/sys/class/net/$dev/mtu"
}
# resolves CONTAINER NAME ADDRESS: dockerd's DNS in CONTAINER answers NAME with ADDRESS (an ERE).
resolves() { docker exec "$1" nslookup "$2" 127.0.0.11 | grep -qE "^Address:[[:space:]]+$3\$"; }
# upper_half ADDRESS NET: ADDRESS is NET.128 to NET.255 (an ip_range x.y.z.128/25).
upper_half() { [ "${1%.*}" = "$2" ] && [ "${1##*.}" -ge 128 ]; }

# run_compose LABEL COMPOSE...: the whole story with one compose binary.
run_compose() {
  local label=$1; shift
  local project="$PREFIX-$label" compose=("$@" -p "$PREFIX-$label" -f "$file")
  local veths_before rules_before
  veths_before=$(host_veth_count); rules_before=$(rustbridge_rule_count)
  cleanup "${compose[*]} down -t 1"
  step "$label: up ($("$@" version 2>/dev/null | head -n 1))"
  expect "$label: up -d" "${compose[@]}" up -d
  local web db client front back
  web=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=web)
  db=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=db)
  client=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=client)
  front="${project}_front" back="${project}_back"
  expect "$label: three containers running" test -n "$web" -a -n "$db" -a -n "$client"
  equal "$label: front uses rustbridge" rustbridge "$(docker network inspect -f '{{.Driver}}' "$front")"
  equal "$label: back uses rustbridge's IPAM" rustbridge "$(docker network inspect -f '{{.IPAM.Driver}}' "$back")"
  equal "$label: web's ipv4_address on front" 10.231.0.10 "$(ip_of "$web" "$front")"
  equal "$label: web's ipv4_address on back" 10.232.0.10 "$(ip_of "$web" "$back")"
  equal "$label: db's ipv4_address on back" 10.232.0.20 "$(ip_of "$db" "$back")"
  local cfront cback
  cfront=$(ip_of "$client" "$front"); cback=$(ip_of "$client" "$back")
  expect "$label: client's front address $cfront from ip_range 10.231.0.128/25" upper_half "$cfront" 10.231.0
  expect "$label: client's back address $cback from ip_range 10.232.0.128/25 (rustbridge IPAM)" upper_half "$cback" 10.232.0
  expect "$label: gateway 10.231.0.1 on bridge rbcompose0 (driver_opts)" sh -c "ip -4 addr show dev rbcompose0 | grep -q 'inet 10.231.0.1/24'"
  equal "$label: MTU 1400 on front (driver_opts)" 1400 "$(iface_mtu "$web" 10.231.0.10)"
  expect "$label: back's gateway 10.232.0.254 on its bridge" sh -c "ip -4 addr show dev $(bridge_of "$back") | grep -q 'inet 10.232.0.254/24'"
  expect "$label: service name web resolves to one of its addresses" resolves "$client" web "10.23[12].0.10"
  expect "$label: alias www resolves" resolves "$client" www 10.231.0.10
  expect "$label: alias frontend resolves" resolves "$client" frontend 10.231.0.10
  expect "$label: alias database resolves on back" resolves "$client" database 10.232.0.20
  expect "$label: client reaches web on front" ping_ok "$client" www
  expect "$label: icc off on back: client cannot reach db" ping_blocked "$client" 10.232.0.20
  equal "$label: web published on 127.0.0.1:18080" web "$(curl -s -m 5 http://127.0.0.1:18080/)"
  equal "$label: db published on 127.0.0.1:15432" db "$(curl -s -m 5 http://127.0.0.1:15432/)"
  local front_id back_id
  front_id=$(network_id "$front"); back_id=$(network_id "$back")
  expect "$label: the plugin's status lists front" status_has_network "$front_id"
  expect "$label: the plugin's status lists back" status_has_network "$back_id"

  step "$label: down"
  expect "$label: down" "${compose[@]}" down -t 1
  equal "$label: no container left" "" "$(docker ps -aq --filter "label=com.docker.compose.project=$project")"
  equal "$label: no network left" "" "$(docker network ls -q --filter "label=com.docker.compose.project=$project")"
  refuse "$label: bridge rbcompose0 gone" ip link show rbcompose0
  refuse "$label: back's bridge gone" ip link show "$RB_BRIDGE_PREFIX${back_id:0:$RB_ID_CHARS_IN_BRIDGE}"
  equal "$label: no host veth left" "$veths_before" "$(host_veth_count)"
  equal "$label: firewall rules as before" "$rules_before" "$(rustbridge_rule_count)"
  refuse "$label: the plugin no longer knows the networks" status_has_network "$front_id"
  refuse "$label: port 18080 no longer answers" curl -s -m 2 http://127.0.0.1:18080/
}

if command -v docker-compose >/dev/null; then
  run_compose v1 docker-compose
else
  fail "docker-compose 1.29 (Debian 12) not installed (scripts/install-deps.sh)"
fi
if v2=$("$ROOT/scripts/engine.sh" fetch-compose 2>/dev/null); then
  run_compose v2 "$v2"
else
  fail "Debian 13's docker-compose (v2) could not be fetched (scripts/engine.sh fetch-compose)"
fi
summary
