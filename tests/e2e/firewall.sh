#!/usr/bin/env bash
# Firewall parity with the built-in bridge, against a real dockerd with the
# plugin enabled: NAT, isolation, --internal, ICC, published ports, robustness.
# "Outside" and "client" hosts are network namespaces of the test's own.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

out=rbt-out-$$ cli=rbt-cli-$$
n1=$PREFIX-n1 n2=$PREFIX-n2 nint=$PREFIX-int nicc=$PREFIX-noicc n5=$PREFIX-n5 trusted=$PREFIX-trusted n6=$PREFIX-n6 n7=$PREFIX-n7 w6=$PREFIX-w6 o6=$PREFIX-o6
web=$PREFIX-web web2=$PREFIX-web2 peer=$PREFIX-peer other=$PREFIX-other dflt=$PREFIX-dflt
inner=$PREFIX-inner i1=$PREFIX-i1 i2=$PREFIX-i2 eph=$PREFIX-eph dup=$PREFIX-dup
cleanup "docker network rm $n1 $n2 $nint $nicc $n5"
cleanup "docker rm -f $web $web2 $peer $other $dflt $inner $i1 $i2 $eph $dup"
rules_before=$(rustbridge_rule_count)

step "Fake hosts: outside 198.18.10.2, client 198.18.11.2 (namespaces, routed via this host)"
fake_host "$out" 198.18.10.1 198.18.10.2 fd00:198:10::1 fd00:198:10::2
fake_host "$cli" 198.18.11.1 198.18.11.2 fd00:198:11::1 fd00:198:11::2
source_echo_server "$out" 198.18.10.2 fd00:198:10::2

httpd_cmd='mkdir -p /www && echo hello-$(hostname) > /www/index.html && httpd -p 80 -h /www && udp-echo 81'
expect "network $n1" docker network create -d rustbridge --subnet 10.231.1.0/24 "$n1"
expect "network $n2" docker network create -d rustbridge --subnet 10.231.2.0/24 "$n2"
expect "internal network $nint" docker network create -d rustbridge --internal --subnet 10.231.3.0/24 "$nint"
expect "network $nicc with enable_icc=false" docker network create -d rustbridge --subnet 10.231.4.0/24 -o com.docker.network.bridge.enable_icc=false "$nicc"
expect "run $web -p 8080:80 -p 127.0.0.1:8081:81/udp -p 8090:81/udp" docker run -d --restart always --name "$web" --hostname web --network "$n1" \
  -p 8080:80 -p 127.0.0.1:8081:81/udp -p 8090:81/udp "$IMAGE" sh -c "$httpd_cmd"
expect "run $peer on $n1" docker run -d --name "$peer" --network "$n1" "$IMAGE" sleep 3600
expect "run $other on $n2" docker run -d --name "$other" --network "$n2" "$IMAGE" sleep 3600
expect "run $dflt on Docker's default bridge" docker run -d --name "$dflt" "$IMAGE" sleep 3600
expect "run $inner on $nint" docker run -d --name "$inner" --network "$nint" "$IMAGE" sleep 3600
expect "run $i1 on $nicc -p 8082:80" docker run -d --name "$i1" --hostname i1 --network "$nicc" -p 8082:80 "$IMAGE" sh -c "$httpd_cmd"
expect "run $i2 on $nicc" docker run -d --name "$i2" --network "$nicc" "$IMAGE" sleep 3600
web_ip=$(ip_of "$web" "$n1")

step "Outbound NAT"
expect "the outside host sees the host's address as source" sh -c "docker exec $peer nc 198.18.10.2 7000 | grep -qx 198.18.10.1"
refuse "an internal network cannot reach the outside host" docker exec "$inner" nc -w 2 198.18.10.2 7000
expect "an internal network's container has no default route" sh -c "! docker exec $inner ip route | grep -q default"

step "Isolation"
expect "$peer → $other (rustbridge → rustbridge) blocked" ping_blocked "$peer" "$(ip_of "$other" "$n2")"
expect "$other → $peer (rustbridge → rustbridge) blocked" ping_blocked "$other" "$(ip_of "$peer" "$n1")"
expect "$peer → $dflt (rustbridge → Docker bridge) blocked" ping_blocked "$peer" "$(ip_of "$dflt" bridge)"
expect "$dflt → $peer (Docker bridge → rustbridge) blocked" ping_blocked "$dflt" "$(ip_of "$peer" "$n1")"
expect "$peer → $web on the same network allowed" ping_ok "$peer" "$web"
expect "the client host cannot reach an unpublished container directly" sh -c \
  "ip netns exec $cli ip route add 10.231.1.0/24 via 198.18.11.1 && ! ip netns exec $cli ping -c1 -W1 $(ip_of "$peer" "$n1")"

step "ICC disabled"
expect "$i2 cannot ping $i1 (enable_icc=false)" ping_blocked "$i2" "$(ip_of "$i1" "$nicc")"
expect "$i2 still reaches the outside" sh -c "docker exec $i2 nc 198.18.10.2 7000 | grep -qx 198.18.10.1"
eventually "$i1's published port works from the client host" 10 sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8082/ | grep -q hello-i1"

step "Published ports"
eventually "tcp 8080 from the client host" 10 sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8080/ | grep -q hello-web"
expect "udp 8090 from the client host" sh -c "[ \"\$(ip netns exec $cli python3 -c \"
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'ping',('198.18.11.1',8090)); print(s.recvfrom(100)[0].decode())\")\" = echo:ping ]"
expect "tcp 8080 from 127.0.0.1 on the host" sh -c "curl -s -m 3 http://127.0.0.1:8080/ | grep -q hello-web"
expect "udp 127.0.0.1:8081 from the host" sh -c "[ \"\$(python3 -c \"
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'ping',('127.0.0.1',8081)); print(s.recvfrom(100)[0].decode())\")\" = echo:ping ]"
refuse "udp 8081 is bound to 127.0.0.1 only (not reachable from the client host)" sh -c "ip netns exec $cli python3 -c \"
import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(b'ping',('198.18.11.1',8081)); s.recvfrom(100)\""
expect "hairpin: $web reaches its own published port through the host address" sh -c "docker exec $web timeout 3 wget -qO- http://198.18.11.1:8080/ | grep -q hello-web"
expect "$peer reaches $web's published port through the host address" sh -c "docker exec $peer timeout 3 wget -qO- http://198.18.11.1:8080/ | grep -q hello-web"
expect "$other (another network) reaches the published port through the host address" sh -c "docker exec $other timeout 3 wget -qO- http://198.18.11.1:8080/ | grep -q hello-web"

step "No direct routing into containers"
expect "the client host cannot reach a published container at its own address" sh -c \
  "! ip netns exec $cli curl -s -m 2 http://$web_ip:80/"
expect "…while its published host port answers" sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8080/ | grep -q hello-web"
expect "network $n5 trusting the client host's interface" docker network create -d rustbridge --subnet 10.231.5.0/24 \
  -o "com.docker.network.bridge.trusted_host_interfaces=${cli:0:10}h" "$n5"
expect "run $trusted on $n5" docker run -d --name "$trusted" --hostname trusted --network "$n5" "$IMAGE" sh -c "$httpd_cmd"
ip netns exec "$cli" ip route add 10.231.5.0/24 via 198.18.11.1
eventually "the trusted interface reaches the container at its own address" 10 sh -c \
  "ip netns exec $cli curl -s -m 2 http://$(ip_of "$trusted" "$n5"):80/ | grep -q hello-trusted"

step "Ephemeral ports and conflicts"
expect "run $eph -p 80 -P --expose 81" docker run -d --name "$eph" --hostname eph --network "$n1" -p 80 -P --expose 81 "$IMAGE" sh -c "$httpd_cmd"
eph_ip=$(ip_of "$eph" "$n1")
eph80=$(published_port "$eph_ip" 80 tcp); eph81=$(published_port "$eph_ip" 81 tcp)
read -r low high < /proc/sys/net/ipv4/ip_local_port_range
expect "-p 80 got an ephemeral port ($eph80) in $low-$high" test -n "$eph80" -a "${eph80:-0}" -ge "$low" -a "${eph80:-0}" -le "$high"
expect "-P published the exposed port 81 on another port ($eph81)" test -n "$eph81" -a "${eph81:-0}" != "${eph80:-0}"
expect "the ephemeral port works from the client host" sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:$eph80/ | grep -q hello-eph"
expect "run $PREFIX-range -p 8100-8102:80 (a host port range)" docker run -d --name "$PREFIX-range" --hostname range --network "$n1" -p 8100-8102:80 "$IMAGE" sh -c "$httpd_cmd"
range_port=$(published_port "$(ip_of "$PREFIX-range" "$n1")" 80 tcp)
expect "it got a host port in 8100-8102 ($range_port)" test "${range_port:-0}" -ge 8100 -a "${range_port:-0}" -le 8102
eventually "the range port works from the client host" 10 sh -c "ip netns exec $cli curl -s -m 2 http://198.18.11.1:$range_port/ | grep -q hello-range"
dnat_before=$(published_ports | wc -l)
veths_before=$(host_veth_count)
out_text=$(docker run -d --name "$dup" --network "$n1" -p 8080:80 "$IMAGE" sleep 3600 2>&1)
status=$?
expect "a second container asking for host port 8080 fails" test "$status" -ne 0
expect "the error names the port" sh -c "echo '$out_text' | grep -q '8080/tcp'"
equal "no DNAT element leaked" "$dnat_before" "$(published_ports | wc -l)"
equal "no veth leaked" "$veths_before" "$(host_veth_count)"
docker rm -f "$dup" >/dev/null 2>&1
docker rm -f "$eph" >/dev/null
expect "removing $eph removes exactly its DNAT elements" bash -c "! published_ports | grep -q ' $eph_ip ' && published_ports | grep -q ' $web_ip 80\$'"

step "IPv6: the same behaviour"
expect "dual-stack network $n6" docker network create -d rustbridge --ipv6 --subnet 10.231.6.0/24 --subnet fd00:231:6::/64 "$n6"
expect "dual-stack network $n7" docker network create -d rustbridge --ipv6 --subnet 10.231.7.0/24 --subnet fd00:231:7::/64 "$n7"
expect "run $w6 -p 8086:80" docker run -d --name "$w6" --hostname w6 --network "$n6" -p 8086:80 "$IMAGE" sh -c "$httpd_cmd"
expect "run $o6 on $n7" docker run -d --name "$o6" --network "$n7" "$IMAGE" sleep 3600
w6_ip6=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$n6\").GlobalIPv6Address}}" "$w6")
eventually "published port over IPv6 from the client host" 10 sh -c "ip netns exec $cli curl -s -m 2 -g 'http://[fd00:198:11::1]:8086/' | grep -q hello-w6"
expect "NAT66: the outside host sees the host's IPv6 address" sh -c "docker exec $w6 nc fd00:198:10::2 7000 | grep -qx fd00:198:10::1"
expect "IPv6 isolation between rustbridge networks" sh -c "! docker exec $o6 ping -6 -c 1 -W 1 $w6_ip6"
expect "no direct IPv6 routing into the container" sh -c \
  "ip netns exec $cli ip -6 route add fd00:231:6::/64 via fd00:198:11::1 && ! ip netns exec $cli curl -s -m 2 -g 'http://[$w6_ip6]:80/'"

step "SCTP ports"
# The rule needs only netfilter's sctp match; traffic needs the kernel's SCTP,
# which this test does not assume.
expect "run with -p 8099:99/sctp" docker run -d --name "$PREFIX-sctp" --network "$n1" -p 8099:99/sctp "$IMAGE" sleep 3600
sctp_ip=$(ip_of "$PREFIX-sctp" "$n1")
expect "an sctp DNAT element to $sctp_ip:99" bash -c "published_ports | grep -qx 'sctp 8099 $sctp_ip 99'"

step "Rules come back after a flush and after a dockerd restart"
iptables -F RUSTBRIDGE-FORWARD; iptables -D FORWARD -j RUSTBRIDGE-FORWARD; nft flush map inet rustbridge dnat4-any
eventually "after a flush, the published port works again" 20 sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8080/ | grep -q hello-web"
show "$ROOT/scripts/dockerd.sh" restart
eventually "$web (--restart always) is running again" 60 sh -c "[ \"\$(docker inspect -f '{{.State.Running}}' $web)\" = true ]"
eventually "after a dockerd restart, the published port works again" 30 sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8080/ | grep -q hello-web"
expect "after a dockerd restart, NAT to the outside works" sh -c "docker exec $web nc 198.18.10.2 7000 | grep -qx 198.18.10.1"
nft delete table inet rustbridge
eventually "after the table was deleted, the published port works again" 20 sh -c "ip netns exec $cli curl -s -m 3 http://198.18.11.1:8080/ | grep -q hello-web"
equal "exactly one jump to RUSTBRIDGE-FORWARD" 1 "$(iptables -S FORWARD | grep -c -- '-j RUSTBRIDGE-FORWARD')"
expect "the jump sits right after DOCKER-USER" sh -c "iptables -S FORWARD | grep -A1 -- '-j DOCKER-USER' | tail -n1 | grep -q RUSTBRIDGE-FORWARD"

step "Teardown leaves zero rules"
expect "remove containers" rm_each "$web" "$peer" "$other" "$dflt" "$inner" "$i1" "$i2" "$trusted" "$w6" "$o6" "$PREFIX-range" "$PREFIX-sctp"
expect "remove networks" docker network rm "$n1" "$n2" "$nint" "$nicc" "$n5" "$n6" "$n7"
if [ "$rules_before" = 0 ] && [ -z "$(docker network ls -q --filter driver=rustbridge)" ]; then
  equal "no RUSTBRIDGE rule or chain left (iptables and ip6tables), no nftables table" 0 "$(rustbridge_rule_count)"
fi

summary
