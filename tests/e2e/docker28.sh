#!/usr/bin/env bash
# What Docker 28 added for remote drivers: IPv6-only networks, --gw-priority,
# endpoint driver options, GwAllocCheck. Skipped (with a note) on older engines.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

if [ "$(api_version)" -lt 148 ]; then
  echo "docker28: engine API $(docker version -f '{{.Server.APIVersion}}') < 1.48, nothing to check"
  summary; exit
fi
out=rbt-6out-$$
fake_host "$out" 198.18.20.1 198.18.20.2 fd00:198:20::1 fd00:198:20::2
source_echo_server "$out" fd00:198:20::2

step "IPv6-only network (--ipv4=false --ipv6)"
expect "create" docker network create -d rustbridge --ipv4=false --ipv6 --subnet fd00:233:1::/64 "$PREFIX-v6only"
expect "run two containers" sh -c "docker run -d --name $PREFIX-6a --network $PREFIX-v6only $IMAGE sleep 3600 && docker run -d --name $PREFIX-6b --network $PREFIX-v6only $IMAGE sleep 3600"
expect "no IPv4 address inside" sh -c "! docker exec $PREFIX-6a ip -4 addr show eth0 | grep -q inet"
b6=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$PREFIX-v6only\").GlobalIPv6Address}}" "$PREFIX-6b")
expect "an IPv6 address ($b6)" sh -c "echo $b6 | grep -q '^fd00:233:1::'"
expect "IPv6 default route via the gateway" sh -c "docker exec $PREFIX-6a ip -6 route | grep -q '^default via fd00:233:1::1'"
expect "containers ping each other over IPv6" docker exec "$PREFIX-6a" ping -6 -c 1 -W 2 "$b6"
expect "NAT66: the outside host sees the host's IPv6 address" sh -c "docker exec $PREFIX-6a nc fd00:198:20::2 7000 | grep -qx fd00:198:20::1"
v6br=$(bridge_of "$PREFIX-v6only")
expect "no IPv4 rule for this network (no 127.0.0.0/8 drop, no IPv4 NAT)" bash -c "rustbridge_table | grep -q '\"$v6br\" : jump to-$v6br' \
  && ! nft list set inet rustbridge localnet | grep -q $v6br && ! nft list chain inet rustbridge nat-$v6br | grep -q 'ip saddr'"

step "--gw-priority picks the default route across two rustbridge networks"
expect "two networks" sh -c "docker network create -d rustbridge --subnet 10.233.1.0/24 $PREFIX-gwa && docker network create -d rustbridge --subnet 10.233.2.0/24 $PREFIX-gwb"
expect "run with gw-priority on the second network" docker run -d --name "$PREFIX-gw1" \
  --network "name=$PREFIX-gwa" --network "name=$PREFIX-gwb,gw-priority=10" "$IMAGE" sleep 3600
expect "default route via 10.233.2.1" sh -c "docker exec $PREFIX-gw1 ip route | grep -q '^default via 10.233.2.1'"
expect "run with gw-priority on the first network" docker run -d --name "$PREFIX-gw2" \
  --network "name=$PREFIX-gwa,gw-priority=10" --network "name=$PREFIX-gwb" "$IMAGE" sleep 3600
expect "default route via 10.233.1.1" sh -c "docker exec $PREFIX-gw2 ip route | grep -q '^default via 10.233.1.1'"

step "Endpoint driver options"
err=$(docker run -d --name "$PREFIX-ifname" --network "name=$PREFIX-gwa,driver-opt=com.docker.network.endpoint.ifname=foo0" "$IMAGE" sleep 3600 2>&1)
expect "com.docker.network.endpoint.ifname is refused, naming the option" sh -c "echo '$err' | grep -q 'com.docker.network.endpoint.ifname'"
expect "another driver option is accepted" docker run -d --name "$PREFIX-dopt" --network "name=$PREFIX-gwa,driver-opt=com.example.color=blue" "$IMAGE" sleep 3600
ep=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$PREFIX-gwa\").EndpointID}}" "$PREFIX-dopt")
expect "…and kept with the endpoint" endpoint_info_has "$ep" '"com.example.color":"blue"'

step "GwAllocCheck: isolated gateway modes allocate no gateway"
expect "create with gateway_mode_ipv4=isolated" docker network create -d rustbridge --subnet 10.233.3.0/24 \
  -o com.docker.network.bridge.gateway_mode_ipv4=isolated "$PREFIX-iso"
equal "inspect shows no gateway" "" "$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$PREFIX-iso")"
expect "run on it" docker run -d --name "$PREFIX-iso-c" --network "$PREFIX-iso" "$IMAGE" sleep 3600
equal "the first address went to the container (no gateway held it)" 10.233.3.1 "$(ip_of "$PREFIX-iso-c" "$PREFIX-iso")"

step "Clean up"
expect "remove every container and network of this suite" remove_prefixed
summary
