#!/usr/bin/env bash
# The user story against a real dockerd with the managed plugin enabled
# (`make install` first). Usage: tests/e2e/user_story.sh [--demo]
set -uo pipefail
[ "${1:-}" = --demo ] && export DEMO=1
source "$(dirname "$0")/lib.sh"

net=$PREFIX-net net2=$PREFIX-net2 m1=$PREFIX-m1
a=$PREFIX-a b=$PREFIX-b web=$PREFIX-web r1=$PREFIX-r1 r2=$PREFIX-r2 late=$PREFIX-late
cleanup "docker network rm $net"
cleanup "docker network rm $net2"
cleanup "docker rm -f $a $b $web $r1 $r2 $late $m1"

step "Create a network with the plain driver name"
expect "docker network create -d rustbridge $net" docker network create -d rustbridge "$net"
show docker network ls --filter "name=$net"
equal "network ls shows driver rustbridge" rustbridge "$(docker network ls --filter "name=^$net\$" --format '{{.Driver}}')"
subnet=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$net")
gateway=$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$net")
expect "inspect shows subnet ($subnet)" test -n "$subnet"
expect "inspect shows gateway ($gateway)" test -n "$gateway"
bridge=$(bridge_of "$net")
expect "bridge $bridge exists with the gateway address" sh -c "ip -4 addr show $bridge | grep -q 'inet $gateway/'"

step "The managed reference leads to the same process and state"
expect "docker network create -d $PLUGIN $net2" docker network create -d "$PLUGIN" "$net2"
expect "run $m1 on $net2" docker run -d --name "$m1" --network "$net2" "$IMAGE" sleep 3600
m1_endpoint=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net2\").EndpointID}}" "$m1")
expect "the process behind -d rustbridge knows $m1's endpoint" endpoint_info_has "$m1_endpoint" HostVeth
expect "remove $m1 and $net2" sh -c "docker rm -f $m1 && docker network rm $net2"

step "Two containers talk by name"
expect "run $a" docker run -d --name "$a" --network "$net" "$IMAGE" sleep 3600
expect "run $b" docker run -d --name "$b" --network "$net" "$IMAGE" sleep 3600
show docker network inspect -f '{{range .Containers}}{{.Name}} {{.IPv4Address}} {{.MacAddress}}{{println}}{{end}}' "$net"
for c in "$a" "$b"; do
  expect "inspect shows $c with an IPv4Address" sh -c "docker network inspect -f '{{range .Containers}}{{.Name}}={{.IPv4Address}}{{println}}{{end}}' $net | grep -q '^$c=[0-9]'"
  expect "inspect shows $c with a MacAddress" sh -c "docker network inspect -f '{{range .Containers}}{{.Name}}={{.MacAddress}}{{println}}{{end}}' $net | grep -Eq '^$c=([0-9a-f]{2}:){5}[0-9a-f]{2}'"
done
show docker exec "$a" ping -c 1 "$b"
expect "$a pings $b by name" ping_ok "$a" "$b"
expect "$b pings $a by name" ping_ok "$b" "$a"
show docker exec "$a" ip route
expect "default route via the bridge gateway" sh -c "docker exec $a ip route | grep -q '^default via $gateway dev eth0'"

step "A container on the default bridge is isolated until connected"
expect "run $web on the default bridge" docker run -d --name "$web" "$IMAGE" sleep 3600
a_ip=$(ip_of "$a" "$net")
expect "$web cannot reach $a ($a_ip)" ping_blocked "$web" "$a_ip"
expect "$a cannot reach $web" ping_blocked "$a" "$(ip_of "$web" bridge)"
expect "docker network connect $net $web" docker network connect "$net" "$web"
expect "$web pings $a by name" ping_ok "$web" "$a"
expect "$a pings $web by name" ping_ok "$a" "$web"
expect "docker network disconnect $net $web" docker network disconnect "$net" "$web"
refuse "$web is gone from inspect" sh -c "docker network inspect -f '{{range .Containers}}{{.Name}} {{end}}' $net | grep -qw $web"
expect "$web can no longer reach $a" ping_blocked "$web" "$a_ip"

step "--restart always containers survive a dockerd restart"
expect "run $r1 --restart always" docker run -d --restart always --name "$r1" --network "$net" "$IMAGE" sleep 3600
expect "run $r2 --restart always" docker run -d --restart always --name "$r2" --network "$net" "$IMAGE" sleep 3600
show "$ROOT/scripts/dockerd.sh" restart
expect "dockerd restarted" docker info
eventually "$r1 is running again" 60 sh -c "[ \"\$(docker inspect -f '{{.State.Running}}' $r1)\" = true ]"
eventually "$r2 is running again" 60 sh -c "[ \"\$(docker inspect -f '{{.State.Running}}' $r2)\" = true ]"
eventually "$r1 pings $r2 by name" 20 ping_ok "$r1" "$r2"
expect "$r2 pings $r1 by name" ping_ok "$r2" "$r1"
expect "the network is still there" docker network inspect "$net"

step "A plugin killed with SIGKILL comes back"
pid=$(plugin_pid)
expect "plugin process found ($pid)" test -n "$pid"
show kill -9 "$pid"
eventually "dockerd restarted the plugin" 30 plugin_restarted "$pid"
expect "docker run on the network works after the kill" docker run -d --name "$late" --network "$net" "$IMAGE" sleep 3600
addresses=$(docker network inspect -f '{{range .Containers}}{{.IPv4Address}}{{println}}{{end}}' "$net" | grep . | sort)
equal "no duplicate address on the network" "$(echo "$addresses" | wc -l)" "$(echo "$addresses" | uniq | wc -l)"
expect "$late pings $r1 by name" ping_ok "$late" "$r1"

step "Every plugin call answers within a bounded time"
for method in Plugin.Activate NetworkDriver.GetCapabilities IpamDriver.GetCapabilities \
  IpamDriver.GetDefaultAddressSpaces NetworkDriver.CreateNetwork NetworkDriver.DeleteNetwork \
  NetworkDriver.CreateEndpoint NetworkDriver.DeleteEndpoint NetworkDriver.Join NetworkDriver.Leave \
  NetworkDriver.EndpointOperInfo NetworkDriver.ProgramExternalConnectivity \
  NetworkDriver.RevokeExternalConnectivity NetworkDriver.DiscoverNew NetworkDriver.DiscoverDelete \
  NetworkDriver.AllocateNetwork NetworkDriver.FreeNetwork IpamDriver.RequestPool IpamDriver.ReleasePool \
  IpamDriver.RequestAddress IpamDriver.ReleaseAddress NetworkDriver.NoSuchMethod; do
  # An address space that does not exist, so RequestPool allocates nothing.
  expect "$method answers within 5s" plugin_call "$method" '{"AddressSpace":"bounded-time-check"}'
done

step "docker network rm leaves nothing behind"
expect "remove the containers" rm_each "$a" "$b" "$web" "$r1" "$r2" "$late"
expect "docker network rm $net" docker network rm "$net"
refuse "bridge $bridge is gone" ip link show "$bridge"
equal "no rustbridge veth left" 0 "$(ip -br link | grep -c '^rb[hc]-' || true)"
if [ -z "$(docker network ls -q --filter driver=rustbridge)" ]; then
  equal "no RUSTBRIDGE firewall rule or chain left" 0 "$(rustbridge_rule_count)"
fi

summary
