#!/usr/bin/env bash
# Every built-in bridge option and addressing flag, end to end with a real
# dockerd: each is honoured (and checked in the kernel or the container) or
# refused with an error naming it, and a refusal creates nothing.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

out=rbt-oout-$$ cli=rbt-ocli-$$
net() { docker network create -d rustbridge "${@:2}" "$1"; }
run() { docker run -d --name "$1" "${@:2}" "$IMAGE" sleep 3600; }
cleanup "ip link del rbadopt$$"
# dockerd < 25 (API 1.44) takes --mac-address only from a client that sends it the old way.
mac_client=docker
if [ "$(docker version -f '{{.Server.APIVersion}}' | awk -F. '{print $1 * 100 + $2}')" -lt 144 ] && [ -x /usr/bin/docker ]; then
  mac_client=/usr/bin/docker
fi
outside_sees() { docker exec "$1" nc 198.18.10.2 7000; }

step "The plugin mounts only what it needs (least privilege)"
equal "mounts of $PLUGIN" "$RB_EXPECTED_MOUNTS" "$(plugin_mounts "$PLUGIN")"
equal "capabilities of $PLUGIN" "CAP_NET_ADMIN CAP_NET_RAW" "$(docker plugin inspect -f '{{join .Config.Linux.Capabilities " "}}' "$PLUGIN")"
equal "the legacy socket is root's alone" "600 root" "$(stat -c '%a %U' "$RB_SOCKET")"

step "An IPv6 network switches on IPv6 forwarding (as the built-in bridge does)"
was=$(sysctl -n net.ipv6.conf.all.forwarding)
cleanup "sysctl -qw net.ipv6.conf.all.forwarding=$was"
sysctl -qw net.ipv6.conf.all.forwarding=0
expect "create --ipv6" net "$PREFIX-fwd6" --ipv6 --subnet fd00:232:11::/64
equal "net.ipv6.conf.all.forwarding is on" 1 "$(sysctl -n net.ipv6.conf.all.forwarding)"
expect "remove it" docker network rm "$PREFIX-fwd6"

fake_host "$out" 198.18.10.1 198.18.10.2 fd00:198:10::1 fd00:198:10::2
fake_host "$cli" 198.18.11.1 198.18.11.2
# Extra host addresses to SNAT to.
ip addr add 198.18.13.1/32 dev "${out:0:10}h"
ip addr add fd00:198:13::1/128 dev "${out:0:10}h" nodad
source_echo_server "$out" 198.18.10.2 fd00:198:10::2

step "com.docker.network.bridge.name"
expect "create with -o com.docker.network.bridge.name=rbname$$" net "$PREFIX-name" -o "com.docker.network.bridge.name=rbname$$"
expect "bridge rbname$$ exists" ip link show "rbname$$" type bridge
expect "network rm removes the bridge it created" sh -c "docker network rm $PREFIX-name && ! ip link show rbname$$"
ip link add "rbadopt$$" type bridge
expect "create with -o bridge=rbadopt$$ (existing bridge, short alias)" net "$PREFIX-adopt" -o "bridge=rbadopt$$" --subnet 10.232.1.0/24
expect "the existing bridge got the gateway address" sh -c "ip -4 addr show rbadopt$$ | grep -q 10.232.1.1/24"
expect "network rm leaves an adopted bridge in place, without our address" sh -c \
  "docker network rm $PREFIX-adopt && ip link show rbadopt$$ && ! ip -4 addr show rbadopt$$ | grep -q 10.232.1.1"

step "com.docker.network.driver.mtu"
expect "create with -o com.docker.network.driver.mtu=1400" net "$PREFIX-mtu" -o com.docker.network.driver.mtu=1400
expect "run a container" run "$PREFIX-mtu-c" --network "$PREFIX-mtu"
bridge=$(bridge_of "$PREFIX-mtu")
equal "bridge MTU" 1400 "$(cat /sys/class/net/$bridge/mtu)"
endpoint=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$PREFIX-mtu\").EndpointID}}" "$PREFIX-mtu-c")
equal "host veth MTU" 1400 "$(cat /sys/class/net/$(host_veth_of "$endpoint")/mtu)"
equal "container eth0 MTU" 1400 "$(docker exec "$PREFIX-mtu-c" cat /sys/class/net/eth0/mtu)"

step "com.docker.network.container_iface_prefix"
expect "create with -o com.docker.network.container_iface_prefix=rbif" net "$PREFIX-pfx" -o com.docker.network.container_iface_prefix=rbif
expect "run a container" run "$PREFIX-pfx-c" --network "$PREFIX-pfx"
expect "the container's interface is rbif0" docker exec "$PREFIX-pfx-c" ip link show rbif0

step "com.docker.network.bridge.enable_icc"
expect "create with enable_icc=false" net "$PREFIX-icc" -o com.docker.network.bridge.enable_icc=false
run "$PREFIX-icc-a" --network "$PREFIX-icc" >/dev/null; run "$PREFIX-icc-b" --network "$PREFIX-icc" >/dev/null
expect "containers cannot reach each other" ping_blocked "$PREFIX-icc-a" "$(ip_of "$PREFIX-icc-b" "$PREFIX-icc")"

step "com.docker.network.bridge.enable_ip_masquerade"
expect "create with enable_ip_masquerade=false" net "$PREFIX-nomasq" --subnet 10.232.2.0/24 -o com.docker.network.bridge.enable_ip_masquerade=false
expect "run a container" run "$PREFIX-nomasq-c" --network "$PREFIX-nomasq"
expect "no MASQUERADE rule for the subnet" bash -c "rustbridge_table | grep -q $(bridge_of "$PREFIX-nomasq") && ! rustbridge_table | grep -q 'saddr 10.232.2.0/24'"
expect "the outside host sees the container's own address" sh -c "outside_sees() { docker exec \$1 nc 198.18.10.2 7000; }; outside_sees $PREFIX-nomasq-c | grep -qx $(ip_of "$PREFIX-nomasq-c" "$PREFIX-nomasq")"

step "com.docker.network.host_ipv4 (SNAT)"
expect "create with host_ipv4=198.18.13.1" net "$PREFIX-snat" -o com.docker.network.host_ipv4=198.18.13.1
expect "run a container" run "$PREFIX-snat-c" --network "$PREFIX-snat"
expect "the outside host sees 198.18.13.1" sh -c "docker exec $PREFIX-snat-c nc 198.18.10.2 7000 | grep -qx 198.18.13.1"

step "com.docker.network.host_ipv6 (SNAT for IPv6)"
expect "create --ipv6 with host_ipv6=fd00:198:13::1" net "$PREFIX-snat6" --ipv6 --subnet 10.232.8.0/24 --subnet fd00:232:8::/64 \
  -o com.docker.network.host_ipv6=fd00:198:13::1
expect "run a container" run "$PREFIX-snat6-c" --network "$PREFIX-snat6"
expect "the outside host sees fd00:198:13::1" sh -c "docker exec $PREFIX-snat6-c nc fd00:198:10::2 7000 | grep -qx fd00:198:13::1"

step "com.docker.network.bridge.gateway_mode_ipv6=isolated"
expect "create dual stack with gateway_mode_ipv6=isolated" net "$PREFIX-iso6" --ipv6 --subnet 10.232.12.0/24 --subnet fd00:232:12::/64 \
  -o com.docker.network.bridge.gateway_mode_ipv6=isolated
expect "run a container" run "$PREFIX-iso6-c" --network "$PREFIX-iso6"
expect "no IPv6 default route inside" sh -c "! docker exec $PREFIX-iso6-c ip -6 route | grep -q '^default'"
expect "the IPv4 default route is still there" sh -c "docker exec $PREFIX-iso6-c ip route | grep -q '^default via 10.232.12.1'"
expect "the bridge has no IPv6 gateway address" sh -c "! ip -6 addr show $(bridge_of "$PREFIX-iso6") | grep -q 'fd00:232:12::1'"

step "com.docker.network.bridge.host_binding_ipv4"
expect "create with host_binding_ipv4=127.0.0.1" net "$PREFIX-hb" -o com.docker.network.bridge.host_binding_ipv4=127.0.0.1
expect "run with -p 8095:80" docker run -d --name "$PREFIX-hb-c" --network "$PREFIX-hb" -p 8095:80 "$IMAGE" sh -c 'mkdir -p /w && echo hb > /w/index.html && httpd -f -p 80 -h /w'
eventually "reachable on 127.0.0.1:8095" 10 sh -c "curl -s -m 2 http://127.0.0.1:8095/ | grep -q hb"
refuse "not reachable from the client host" sh -c "ip netns exec $cli curl -s -m 2 http://198.18.11.1:8095/ | grep -q hb"

step "com.docker.network.bridge.inhibit_ipv4"
expect "create with inhibit_ipv4=true" net "$PREFIX-inh" --subnet 10.232.3.0/24 -o com.docker.network.bridge.inhibit_ipv4=true
expect "the bridge has no IPv4 address" sh -c "! ip -4 addr show $(bridge_of "$PREFIX-inh") | grep -q inet"

step "com.docker.network.bridge.gateway_mode_ipv4=routed"
expect "create routed" net "$PREFIX-routed" --subnet 10.232.4.0/24 -o com.docker.network.bridge.gateway_mode_ipv4=routed
expect "run a server" docker run -d --name "$PREFIX-routed-c" --network "$PREFIX-routed" "$IMAGE" sh -c 'mkdir -p /w && echo routed > /w/index.html && httpd -f -p 80 -h /w'
ip netns exec "$cli" ip route add 10.232.4.0/24 via 198.18.11.1
expect "the client host reaches the container at its own address" sh -c "ip netns exec $cli curl -s -m 2 http://$(ip_of "$PREFIX-routed-c" "$PREFIX-routed")/ | grep -q routed"
expect "no MASQUERADE for a routed network" bash -c "rustbridge_table | grep -q $(bridge_of "$PREFIX-routed") && ! rustbridge_table | grep -q 'saddr 10.232.4.0/24'"

step "com.docker.network.bridge.gateway_mode_ipv4=isolated"
expect "create isolated" net "$PREFIX-iso" --subnet 10.232.5.0/24 -o com.docker.network.bridge.gateway_mode_ipv4=isolated
expect "run a container" run "$PREFIX-iso-c" --network "$PREFIX-iso"
expect "the bridge has no gateway address" sh -c "! ip -4 addr show $(bridge_of "$PREFIX-iso") | grep -q 10.232.5.1"
expect "the container has no default route" sh -c "! docker exec $PREFIX-iso-c ip route | grep -q default"
expect "the container is not attached to docker_gwbridge" sh -c "! docker inspect -f '{{json .NetworkSettings.Networks}}' $PREFIX-iso-c | grep -q docker_gwbridge"

step "--internal"
expect "create --internal" net "$PREFIX-int" --internal
expect "run a container" run "$PREFIX-int-c" --network "$PREFIX-int"
expect "no default route inside" sh -c "! docker exec $PREFIX-int-c ip route | grep -q default"
refuse "cannot reach the outside host" docker exec "$PREFIX-int-c" nc -w 2 198.18.10.2 7000

step "Dual stack: --ipv6 --subnet"
expect "create --ipv6 --subnet 10.232.6.0/24 --subnet fd00:232:6::/64" net "$PREFIX-v6" --ipv6 --subnet 10.232.6.0/24 --subnet fd00:232:6::/64
run "$PREFIX-v6-a" --network "$PREFIX-v6" >/dev/null; run "$PREFIX-v6-b" --network "$PREFIX-v6" >/dev/null
v6b=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$PREFIX-v6\").GlobalIPv6Address}}" "$PREFIX-v6-b")
expect "the container has an IPv6 address ($v6b)" sh -c "echo $v6b | grep -q '^fd00:232:6::'"
expect "IPv6 default route via the gateway" sh -c "docker exec $PREFIX-v6-a ip -6 route | grep -q '^default via fd00:232:6::1'"
expect "IPv6 ping between containers" docker exec "$PREFIX-v6-a" ping -6 -c 1 -W 2 "$v6b"
expect "NAT66 rule for the IPv6 subnet" bash -c "rustbridge_table | grep -q 'ip6 saddr fd00:232:6::/64 oifname != \"$(bridge_of "$PREFIX-v6")\" masquerade'"

step "IPv6 with rustbridge's own IPAM"
expect "create --ipv6 --ipam-driver rustbridge" net "$PREFIX-v6ipam" --ipv6 --ipam-driver rustbridge
expect "run a container" run "$PREFIX-v6ipam-c" --network "$PREFIX-v6ipam"
expect "it got an IPv6 address from the default pool" sh -c "docker inspect -f '{{(index .NetworkSettings.Networks \"$PREFIX-v6ipam\").GlobalIPv6Address}}' $PREFIX-v6ipam-c | grep -q '^fdb7:7b'"

step "--subnet --gateway --ip-range --aux-address with --ipam-driver rustbridge"
expect "create" net "$PREFIX-addr" --ipam-driver rustbridge --subnet 10.232.7.0/24 --gateway 10.232.7.254 \
  --ip-range 10.232.7.16/30 --aux-address "reserved=10.232.7.17"
equal "inspect shows the gateway" 10.232.7.254 "$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$PREFIX-addr")"
run "$PREFIX-addr-a" --network "$PREFIX-addr" >/dev/null; run "$PREFIX-addr-b" --network "$PREFIX-addr" >/dev/null
got=$(for c in a b; do ip_of "$PREFIX-addr-$c" "$PREFIX-addr"; done | sort | tr '\n' ' ')
equal "addresses come from the ip-range, skipping the aux address" "10.232.7.16 10.232.7.18 " "$got"
expect "the default route uses the given gateway" sh -c "docker exec $PREFIX-addr-a ip route | grep -q '^default via 10.232.7.254'"

step "docker run --ip --ip6 --mac-address"
expect "run with --ip 10.232.6.50 --ip6 fd00:232:6::50 --mac-address 02:42:0a:e8:06:32" "$mac_client" run -d --name "$PREFIX-fixed" \
  --network "$PREFIX-v6" --ip 10.232.6.50 --ip6 fd00:232:6::50 --mac-address 02:42:0a:e8:06:32 "$IMAGE" sleep 3600
expect "the container has 10.232.6.50" sh -c "docker exec $PREFIX-fixed ip -4 addr show eth0 | grep -q 'inet 10.232.6.50/24'"
expect "the container has fd00:232:6::50" sh -c "docker exec $PREFIX-fixed ip -6 addr show eth0 | grep -q 'fd00:232:6::50/64'"
expect "the container has MAC 02:42:0a:e8:06:32" sh -c "docker exec $PREFIX-fixed cat /sys/class/net/eth0/address | grep -qx 02:42:0a:e8:06:32"
expect "inspect shows the MAC" sh -c "docker network inspect -f '{{range .Containers}}{{.MacAddress}} {{end}}' $PREFIX-v6 | grep -q 02:42:0a:e8:06:32"

step "network connect --ip --alias; several networks per container"
expect "run a container on $PREFIX-mtu" run "$PREFIX-multi" --network "$PREFIX-mtu"
expect "network connect --ip 10.232.6.60 --alias webalias" docker network connect --ip 10.232.6.60 --alias webalias "$PREFIX-v6" "$PREFIX-multi"
expect "the connected interface has 10.232.6.60" sh -c "docker exec $PREFIX-multi ip -4 addr | grep -q 'inet 10.232.6.60/24'"
expect "another container reaches it by its alias" ping_ok "$PREFIX-v6-a" webalias
expect "it still reaches peers on its first network" ping_ok "$PREFIX-multi" "$PREFIX-mtu-c"
expect "and peers on its second network" ping_ok "$PREFIX-multi" "$PREFIX-v6-b"

step "Validation: clear errors, nothing created"
expect "a network using bridge name rbinuse$$" net "$PREFIX-inuse" -o com.docker.network.bridge.name=rbinuse$$
links_before=$(ip -br link | wc -l)
rules_before=$(rustbridge_rule_count)
must_fail() { # DESC EXPECTED_TEXT ARGS...
  local desc=$1 text=$2 err; shift 2
  if err=$(docker network create -d rustbridge "$@" "$PREFIX-bad" 2>&1); then
    docker network rm "$PREFIX-bad" >/dev/null 2>&1
    fail "$desc" "was accepted"
  elif echo "$err" | grep -qi -- "$text"; then pass "$desc"
  else fail "$desc" "error does not name '$text': $err"
  fi
}
must_fail "a subnet overlapping another rustbridge network" "overlaps" --ipam-driver rustbridge --subnet 10.232.7.128/25
must_fail "a bridge name in use by another rustbridge network" "already used" -o com.docker.network.bridge.name=rbinuse$$
must_fail "a bridge name over 15 bytes" "com.docker.network.bridge.name" -o com.docker.network.bridge.name=a-very-long-bridge-name
must_fail "a bridge name with bad characters" "com.docker.network.bridge.name" -o 'com.docker.network.bridge.name=br;x'
must_fail "an MTU that is not a number" "com.docker.network.driver.mtu" -o com.docker.network.driver.mtu=big
must_fail "an MTU out of range" "com.docker.network.driver.mtu" -o com.docker.network.driver.mtu=20
must_fail "a gateway outside the subnet" "gateway" --ipam-driver rustbridge --subnet 10.232.10.0/24 --gateway 10.232.11.1
must_fail "an unknown option" "com.example.nope" -o com.example.nope=1
must_fail "Docker's own bridge name" "reserved" -o com.docker.network.bridge.name=docker0
must_fail "an unknown --ipam-opt" "ipam" --ipam-driver rustbridge --ipam-opt color=blue
equal "no link was created by the refused requests" "$links_before" "$(ip -br link | wc -l)"
equal "no rule was created by the refused requests" "$rules_before" "$(rustbridge_rule_count)"

step "Clean up"
expect "remove every container and network of this suite" remove_prefixed
equal "no network of this suite left" "" "$(docker network ls -q --filter "name=^$PREFIX-")"
summary
