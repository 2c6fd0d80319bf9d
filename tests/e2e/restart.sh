#!/usr/bin/env bash
# Isolation through a dockerd restart. dockerd rewrites filter FORWARD when it
# starts (its accepts for docker0 land above rustbridge's jump until the
# plugin's next repair); rustbridge's isolation must hold all the time anyway.
# The prober is a namespace of the test's own on docker0 (what a container on
# Docker's default bridge is to the kernel), the target a namespace on the
# rustbridge network's bridge: both live through the restart, so the probe
# never pauses (containers would stop with dockerd unless live-restore is on).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

net=$PREFIX-iso probe=rbp-$$ target=rbq-$$
log=$(mktemp) order=$(mktemp)
cleanup "rm -f $log $order"

# on_bridge NS BRIDGE ADDRESS/LEN GATEWAY: a namespace wired to a bridge by a veth pair.
on_bridge() {
  local ns=$1 bridge=$2 addr=$3 gw=$4 veth=${1:0:10}h
  ip netns add "$ns" && cleanup "ip netns del $ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns" && cleanup "ip link del $veth"
  ip link set "$veth" master "$bridge" up
  ip -n "$ns" addr add "$addr" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "$gw"
}

# A free address high in docker0's subnet (dockerd hands out low ones first).
docker0_net=$(ip -4 -o addr show docker0 | awk '{print $4}' | head -n 1)
if [ -z "$docker0_net" ]; then
  fail "docker0 has an IPv4 address" "no docker0 (dockerd runs without its default bridge?)"
  summary; exit
fi
docker0_gw=${docker0_net%/*}
probe_addr=$(python3 -c "import ipaddress,sys; n=ipaddress.ip_interface(sys.argv[1]).network; print(f'{n.broadcast_address - 7}/{n.prefixlen}')" "$docker0_net")

step "A rustbridge network with a target namespace; a prober namespace on docker0"
expect "network $net" docker network create -d rustbridge --subnet 10.232.1.0/24 --gateway 10.232.1.1 "$net"
bridge=$(bridge_of "$net")
on_bridge "$target" "$bridge" 10.232.1.250/24 10.232.1.1
on_bridge "$probe" docker0 "$probe_addr" "$docker0_gw"
expect "the host reaches the target" ping -c 1 -W 2 10.232.1.250
expect "the prober reaches docker0's gateway" ip netns exec "$probe" ping -c 1 -W 2 "$docker0_gw"
expect "the prober cannot reach the target" sh -c "! ip netns exec $probe ping -c 1 -W 1 10.232.1.250"

step "Restart dockerd while the prober pings the target every 0.1 s"
ip netns exec "$probe" ping -O -i 0.1 -W 1 10.232.1.250 >"$log" 2>&1 &
pinger=$!
cleanup "kill $pinger"
# Watch filter FORWARD: how long dockerd's rules stood above rustbridge's jump.
(
  while :; do
    iptables -S FORWARD 2>/dev/null | awk '/^-A FORWARD/ {n++; if ($0 ~ /RUSTBRIDGE-FORWARD/) {print n; exit}}' >>"$order"
    sleep 0.1
  done
) &
watcher=$!
cleanup "kill $watcher"
sleep 2
expect "dockerd restarts" "$ROOT/scripts/dockerd.sh" restart
expect "the plugin answers after the restart" docker network inspect "$net"
# The plugin's repair runs every RUSTBRIDGE_RECONCILE_SECONDS (5 by default): probe past it.
sleep 12
kill "$pinger" 2>/dev/null; wait "$pinger" 2>/dev/null
kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
sent=$(grep -c 'icmp_seq=' "$log" || true)
replies=$(grep -c 'bytes from' "$log" || true)
displaced=$(awk '/^[0-9]+$/ && $1 > 2 {n++} END {print n + 0}' "$order")
echo "  measured: $sent pings sent, $replies answered; rustbridge's FORWARD jump below dockerd's rules in $displaced samples (0.1 s apart)"
expect "the prober kept probing through the restart (at least 100 pings)" test "$sent" -ge 100
equal "no reply from the target at any time during and after the restart" 0 "$replies"
expect "the prober still reaches docker0's gateway" ip netns exec "$probe" ping -c 1 -W 2 "$docker0_gw"
expect "the host still reaches the target" ping -c 1 -W 2 10.232.1.250

summary
