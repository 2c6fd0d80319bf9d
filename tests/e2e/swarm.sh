#!/usr/bin/env bash
# Multi-host: a rustbridge swarm network over kernel VXLAN, in the three-node
# swarm lab (scripts/swarm-lab.sh: three dockerd in namespaces, node 1 the
# manager). Nothing of the machine's own dockerd is used. The engine is the
# one first in PATH (make test-engines puts 26.1/28.5 there), or LAB_ENGINE_ROOT.
# The plugin is installed as it comes (no dockerd API socket, local), then
# given the one swarm setting (RB_SWARM_SETTING, scripts/lib.sh) on every node;
# node 3 later gets it only after joining. DEMO=1 (make demo-swarm) prints the
# story's commands and their output.
# Needs plugin/build (make rootfs). Takes the lab lock (/tmp/rb-lab.lock).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
LABSH="$ROOT/scripts/swarm-lab.sh"
export LAB_DIR=${LAB_DIR:-/tmp/rb-swarm-lab}
export LAB_IMAGE=lab/busybox:1
PLUGIN_DIR=${PLUGIN_DIR:-$ROOT/plugin/build}
NET=rbswarm
SUBNET=10.231.0
VXLAN_PORT=4799

# The engine: an extracted one when its dockerd comes first in PATH.
if [ -z "${LAB_ENGINE_ROOT:-}" ]; then
  d=$(readlink -f "$(command -v dockerd)" 2>/dev/null || true)
  case "$d" in */usr/sbin/dockerd) [ "$d" != /usr/sbin/dockerd ] && export LAB_ENGINE_ROOT=${d%/usr/sbin/dockerd} ;; esac
fi

# One lab at a time on this machine (its namespace names are fixed); the lab's
# daemons must not inherit the lock's descriptor.
exec 9>/tmp/rb-lab.lock
flock -w 900 9 || { echo "swarm: the lab lock is held by someone else"; exit 1; }
lab() { "$LABSH" "$@" 9>&-; }
dk() { lab exec "$@"; }
nsx() { lab nsexec "$@"; }
# The daemons' logs stay in $LAB_LOGS after the lab goes.
LAB_LOGS=${LAB_LOGS:-/tmp/rb-swarm-lab-logs}
rm -rf "$LAB_LOGS"
cleanup "LAB_SAVE_LOGS=$LAB_LOGS lab down"

measured() { echo "  measured: $*"; }
ping_on() { dk "$1" exec "$2" ping -c 1 -W 2 "$3"; }
cid_of_task() { dk "$1" ps -q --filter "label=com.docker.swarm.service.name=$2" | head -n 1; }
tasks_running() { [ "$(dk 1 service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running')" -eq "$2" ]; }
addr_on() { dk "$1" inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$2"; }
vxlan_dev() { nsx "$1" ip -o link show type vxlan | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^rbx-' | head -n 1; }
fdb_to() { nsx "$1" bridge fdb show dev "$(vxlan_dev "$1")" | grep -c "dst $2" || true; }
no_fdb_to() { [ "$(fdb_to "$1" "$2")" -eq 0 ]; }
has_fdb_to() { [ "$(fdb_to "$1" "$2")" -gt 0 ]; }
resolves_to() { # NODE CONTAINER NAME COUNT
  local got; got=$(dk "$1" exec "$2" nslookup "$3" 127.0.0.11 2>/dev/null | awk '/^Address/ && !/127.0.0.11/ {print $NF}' | sort -u | wc -l)
  [ "$got" -eq "$4" ]
}
leftovers_on() { # NODE: rustbridge devices or rules left in the node's namespace
  nsx "$1" sh -c "ip -o link | grep -E ': rb[xhc]?-' ; iptables-save | grep RUSTBRIDGE" 2>/dev/null
}
# back_on NODE CONTAINER NETWORK: the container runs with an address on NETWORK.
# dockerd starts a swarm network's --restart always containers once, at its own
# start, and gives up when the manager's network attachment takes over 20 s
# ("failed to start swarm container" in its log; Docker's race, reported with its overlay
# too: https://github.com/moby/moby/issues/32607). Then it is started by hand,
# as its users must (again while it fails: that start may lose a race with
# dockerd's own detach, "failed to get network during CreateEndpoint",
# docker/for-linux#888): what the plugin answers is checked either way.
# The starts are reported after the check (hand_starts).
back_on() {
  local id; id=$(dk "$1" inspect -f '{{.Id}}' "$2" 2>/dev/null) || return 1
  if [ "$(dk "$1" inspect -f '{{.State.Running}}' "$2")" != true ] &&
    grep -q "failed to start swarm container.*container=$id" "$LAB_DIR/n$1/log/dockerd.log" 2>/dev/null; then
    echo "dockerd of node $1 gave up restarting $2 at its start (moby#32607): docker start $2" >>"$LAB_DIR/started-by-hand.$id"
    dk "$1" start "$2" >/dev/null || return 1
  fi
  [ -n "$(dk "$1" inspect -f "{{with index .NetworkSettings.Networks \"$3\"}}{{.IPAddress}}{{end}}" "$2" 2>/dev/null)" ]
}
hand_starts() {
  local f
  for f in "$LAB_DIR"/started-by-hand.*; do
    [ -f "$f" ] && measured "$(head -n 1 "$f") ($(wc -l <"$f") time(s))" && rm -f "$f"
  done
  true
}
# across_after_manager_restart NODE FROM NAME ADDR: FROM (on NODE) pings a
# container of node 1 by ADDR, then by NAME, once node 1's dockerd restarted.
# Node 1's containers are cut off from the other hosts until Docker's gossip
# (NetworkDB: each network's peers, and the names) has reconnected to the
# restarted manager, which starts with no one to call: 18-40 s measured on
# 20.10, 26.1 and 28.5, as for Docker's overlay, whose peers come from the same gossip.
across_after_manager_restart() {
  local t0=$SECONDS
  eventually "$2 pings $3 by address across hosts ($4)" 120 ping_on "$1" "$2" "$4"
  eventually "$2 pings $3 by name" 90 ping_on "$1" "$2" "$3"
  measured "$2 reached $3 by address, then by name, $((SECONDS - t0)) s after it started"
}
plugin_pid_on() { # NODE: the plugin process of that node (by its cgroup)
  local p
  for p in $(pgrep -f '^/usr/bin/rustbridge serve'); do
    grep -q "/swarm-lab/n$1/" "/proc/$p/cgroup" 2>/dev/null && { echo "$p"; return; }
  done
}
# api_inside NODE TEST: `test TEST` on /host/run/docker.sock as the plugin of NODE sees it (-S: a socket).
api_inside() { local p; p=$(plugin_pid_on "$1"); [ -n "$p" ] && test "$2" "/proc/$p/root/host/run/docker.sock"; }
directory_served() { [ -n "$(nsx "$1" ss -Hltn "sport = :$VXLAN_PORT")" ]; }
# story NODE DESC ARGS...: the check `docker ARGS` on NODE, a step of the story `make demo-swarm` prints.
story() { local n=$1 desc=$2; shift 2; told "$desc" "node$n\$ docker $*" dk "$n" "$@"; }
# patiently CMD...: CMD retried for up to 60 s, quietly but for its last error
# (the manager removes a removed service's tasks from the network a little later).
patiently() {
  local i err; err=$(mktemp)
  for i in $(seq 120); do "$@" 2>"$err" && { rm -f "$err"; return 0; }; sleep 0.5; done
  cat "$err" >&2; rm -f "$err"; return 1
}

step "A swarm lab of three dockerd ($("${LAB_ENGINE_ROOT:-}/usr/sbin/dockerd" --version 2>/dev/null | cut -d, -f1)); node 3 joins later"
lab down >/dev/null 2>&1
lab_up() { LAB_SWARM_NODES=2 "$LABSH" up 9>&-; }
expect "the lab is up (nodes 1, 2 in the swarm, 3 standalone)" lab_up
expect "plugin/build exists" test -f "$PLUGIN_DIR/config.json"
# The lab's plugins log at debug level (in each dockerd's log); no other setting but the story's.
# install_plugin SETTINGS [NODE...] (every node without NODE)
install_plugin() {
  local settings=$1; shift
  LAB_PLUGIN_SETTINGS="RUSTBRIDGE_LOG_LEVEL=debug $settings" "$LABSH" plugin-install "$PLUGIN_DIR" "$@" 9>&-
}
expect "the managed plugin is enabled on every node as it comes" install_plugin ""

step "As it comes, the plugin holds no dockerd API socket: local scope, no swarm task"
for n in 1 2 3; do
  equal "node $n: the docker-api mount's source is /dev/null (docker plugin inspect)" /dev/null \
    "$(dk "$n" plugin inspect -f '{{range .Config.Mounts}}{{if eq .Name "docker-api"}}{{.Source}}{{end}}{{end}}' "$PLUGIN" 2>&1)"
  expect "node $n: inside the plugin /host/run/docker.sock is /dev/null (a character device)" api_inside "$n" -c
  refuse "node $n: …not dockerd's socket" api_inside "$n" -S
  refuse "node $n: nothing listens on TCP $VXLAN_PORT (no membership task, no directory)" directory_served "$n"
done
expect "node 3 (no swarm): -d $PLUGIN makes a network" dk 3 network create -d "$PLUGIN" rbswarm-single
equal "…of scope local" local "$(dk 3 network inspect -f '{{.Scope}}' rbswarm-single 2>&1)"
expect "…and removes it" dk 3 network rm rbswarm-single

step "The one setting, on every node (node 3 before it joins): $RB_SWARM_SETTING"
for n in 1 2 3; do
  story "$n" "node $n: disable the plugin" plugin disable "$PLUGIN"
  story "$n" "node $n: docker plugin set $RB_SWARM_SETTING" plugin set "$PLUGIN" "$RB_SWARM_SETTING"
  story "$n" "node $n: enable it" plugin enable "$PLUGIN"
  expect "node $n: the plugin holds dockerd's socket" api_inside "$n" -S
  eventually "node $n: RUSTBRIDGE_SCOPE=auto made it global: its directory is served on TCP $VXLAN_PORT" 10 directory_served "$n"
done

step "docker network create -d $PLUGIN --attachable on the manager"
story 1 "create $NET" network create -d "$PLUGIN" --attachable --subnet "$SUBNET.0/24" "$NET"
equal "its scope is swarm" swarm "$(dk 1 network inspect -f '{{.Scope}}' "$NET" 2>&1)"
expect "-d rustbridge (legacy name) still makes local networks" dk 1 network create -d rustbridge rbswarm-local
equal "…of scope local" local "$(dk 1 network inspect -f '{{.Scope}}' rbswarm-local 2>&1)"
expect "…and is removed" dk 1 network rm rbswarm-local

step "Attachable containers on two hosts ping each other by name"
story 1 "run c1 on node 1" run -d --name c1 --network "$NET" "$LAB_IMAGE" sleep 3600
story 2 "run c2 on node 2" run -d --name c2 --network "$NET" "$LAB_IMAGE" sleep 3600
dev1=$(vxlan_dev 1); dev2=$(vxlan_dev 2)
expect "node 1 has a VXLAN device ($dev1)" test -n "$dev1"
vni1=$(nsx 1 ip -d link show "$dev1" | grep -o 'vxlan id [0-9]*' | awk '{print $3}')
vni2=$(nsx 2 ip -d link show "$dev2" | grep -o 'vxlan id [0-9]*' | awk '{print $3}')
equal "the same VNI on both nodes ($vni1)" "$vni1" "$vni2"
expect "UDP port $VXLAN_PORT, learning off, proxy on" sh -c "'$LABSH' nsexec 1 ip -d link show $dev1 | grep -q 'dstport $VXLAN_PORT.*nolearning.*proxy'" 9>&-
equal "MTU = underlay 1500 - 50" 1450 "$(nsx 2 cat "/sys/class/net/$dev2/mtu")"
equal "…announced to the container" 1450 "$(dk 2 exec c2 cat /sys/class/net/eth0/mtu 2>&1)"
eventually "node 1 floods to node 2 (FDB 00:00:00:00:00:00 dst 10.99.0.12)" 30 has_fdb_to 1 10.99.0.12
eventually "c1 pings c2 by name across hosts" 30 ping_on 1 c1 c2
story 1 "c1 pings c2 by name, 2 packets" exec c1 ping -c 2 -W 2 c2
story 2 "c2 pings c1 by name" exec c2 ping -c 2 -W 2 c1
c2ip=$(addr_on 2 c2)
expect "node 1 has a static neighbour for c2 ($c2ip)" sh -c "'$LABSH' nsexec 1 ip neigh show dev $dev1 | grep -q '^$c2ip .*PERMANENT'" 9>&-

step "NAT out through each host's own address (fake outside host 10.99.0.100)"
ip netns exec lab-x python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.100", 7000)); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(a[0].encode() + b"\n"); c.close()' >/dev/null 2>&1 9>&- &
cleanup "kill $!"
sleep 0.5
equal "c1 reaches it as node 1 (10.99.0.11)" 10.99.0.11 "$(dk 1 exec c1 nc -w 3 10.99.0.100 7000 2>&1 | tr -d '\r')"
equal "c2 reaches it as node 2 (10.99.0.12)" 10.99.0.12 "$(dk 2 exec c2 nc -w 3 10.99.0.100 7000 2>&1 | tr -d '\r')"

step "The VXLAN and directory port admit swarm members only"
eventually "node 2 admits node 1 on UDP and TCP $VXLAN_PORT" 30 sh -c "'$LABSH' nsexec 2 iptables -S RUSTBRIDGE-SWARM | grep -q -- '-s 10.99.0.11/32 -p udp -m udp --dport $VXLAN_PORT -j ACCEPT'" 9>&-
expect "node 1 reads node 2's endpoints (c2's address)" sh -c "'$LABSH' nsexec 1 timeout 4 bash -c 'cat </dev/tcp/10.99.0.12/$VXLAN_PORT' | grep -q '\"$c2ip\"'" 9>&-
refuse "the outside host cannot read them" lab outside timeout 4 bash -c "cat </dev/tcp/10.99.0.12/$VXLAN_PORT"
udp_drops() { nsx 2 iptables -L RUSTBRIDGE-SWARM -v -n -x | awk '/DROP/ && /udp/ {print $1}'; }
drops0=$(udp_drops)
lab outside bash -c "echo vxlan > /dev/udp/10.99.0.12/$VXLAN_PORT"
expect "VXLAN packets from the outside host are dropped (counter $drops0 -> $(udp_drops))" test "$(udp_drops)" -gt "$drops0"

step "Isolation"
expect "run iso on node 2's default bridge" dk 2 run -d --name iso "$LAB_IMAGE" sleep 3600
refuse "iso cannot reach c2 ($c2ip)" dk 2 exec iso ping -c 1 -W 1 "$c2ip"

step "A global service (dnsrr), then node 3 joins the swarm"
story 1 "service create gs --mode global --endpoint-mode dnsrr" service create --detach --no-resolve-image \
  --name gs --mode global --network "$NET" --endpoint-mode dnsrr "$LAB_IMAGE" sleep 3600
eventually "gs runs on nodes 1 and 2" 60 tasks_running gs 2
wtok=$(dk 1 swarm join-token -q worker)
expect "node 3 joins (its plugin was enabled before)" dk 3 swarm join --token "$wtok" \
  --advertise-addr 10.99.0.13 --listen-addr 10.99.0.13:2377 10.99.0.11:2377
eventually "gs runs on all three nodes" 90 tasks_running gs 3
t1=$(cid_of_task 1 gs)
eventually "tasks.gs resolves to 3 addresses (from node 1's task)" 60 resolves_to 1 "$t1" tasks.gs 3
for n in 2 3; do
  tn=$(cid_of_task "$n" gs); ipn=$(addr_on "$n" "$tn")
  eventually "node 1's task pings node $n's task ($ipn)" 30 dk 1 exec "$t1" ping -c 1 -W 2 "$ipn"
done
t3=$(cid_of_task 3 gs)
eventually "node 3's task resolves tasks.gs to 3 addresses" 30 resolves_to 3 "$t3" tasks.gs 3
story 3 "node 3's task pings c1 (node 1) by name" exec "$t3" ping -c 2 -W 2 c1
expect "c2 (node 2) pings node 3's task" ping_on 2 c2 "$(addr_on 3 "$t3")"

step "Host-mode published port on the node running the task"
expect "service create web --publish mode=host,published=18080,target=8080" dk 1 service create --detach --no-resolve-image \
  --name web --mode global --network "$NET" --endpoint-mode dnsrr --publish mode=host,published=18080,target=8080 \
  "$LAB_IMAGE" sh -c 'mkdir -p /w && echo "hello from $(hostname)" > /w/index.html && httpd -f -p 8080 -h /w'
eventually "web runs on all three nodes" 90 tasks_running web 3
eventually "the outside host reaches node 2's task at 10.99.0.12:18080" 30 lab outside wget -q -T 2 -O /dev/null http://10.99.0.12:18080/

step "Restarts: plugin (SIGKILL) on node 3, dockerd on node 2"
p3=$(plugin_pid_on 3)
expect "node 3's plugin is killed ($p3)" kill -KILL "$p3"
eventually "…and restarted by its dockerd" 30 sh -c "[ -n \"\$(pgrep -f '^/usr/bin/rustbridge serve' | while read p; do grep -q /swarm-lab/n3/ /proc/\$p/cgroup && echo \$p; done)\" ]"
expect "node 1's task still pings node 3's task" dk 1 exec "$t1" ping -c 1 -W 2 "$(addr_on 3 "$t3")"
expect "dockerd of node 2 restarts" lab restart-dockerd 2
eventually "gs runs on all three nodes again" 120 tasks_running gs 3
# The manager may still count node 2's old task: wait for node 2's own container.
has_task() { [ -n "$(cid_of_task "$1" "$2")" ] && [ -n "$(addr_on "$1" "$(cid_of_task "$1" "$2")")" ]; }
eventually "node 2 runs a gs task again" 180 has_task 2 gs
t2=$(cid_of_task 2 gs)
eventually "node 1's task pings node 2's new task" 60 dk 1 exec "$t1" ping -c 1 -W 2 "$(addr_on 2 "$t2")"
eventually "node 2's new task pings node 3's task" 30 dk 2 exec "$t2" ping -c 1 -W 2 "$(addr_on 3 "$t3")"

step "--ipam-driver $PLUGIN: the manager allocates (global space), nodes ask again (local space)"
INET=rbswarm-ipam
ip_in() { dk "$1" inspect -f "{{(index .NetworkSettings.Networks \"$INET\").IPAddress}}" "$2"; }
expect "create $INET with rustbridge's IPAM" dk 1 network create -d "$PLUGIN" --ipam-driver "$PLUGIN" --attachable "$INET"
expect "run i1 on node 1 (--restart always)" dk 1 run -d --restart always --name i1 --network "$INET" "$LAB_IMAGE" sleep 3600
expect "run i2 on node 2" dk 2 run -d --name i2 --network "$INET" "$LAB_IMAGE" sleep 3600
i1=$(ip_in 1 i1); i2=$(ip_in 2 i2)
expect "two addresses, no duplicate ($i1, $i2)" sh -c "[ -n '$i1' ] && [ -n '$i2' ] && [ '$i1' != '$i2' ]"
eventually "i1 pings i2 by name" 30 ping_on 1 i1 i2
expect "the manager's dockerd restarts (AllocateNetwork and the global IPAM side are replayed)" lab restart-dockerd 1
eventually "i1 is back with an address" 90 back_on 1 i1 "$INET"
hand_starts
expect "run i3 on node 2 after the replay" dk 2 run -d --name i3 --network "$INET" "$LAB_IMAGE" sleep 3600
i1b=$(ip_in 1 i1); i3=$(ip_in 2 i3)
expect "i3 has an address of its own ($i3; i1 $i1b, i2 $i2)" sh -c "[ -n '$i3' ] && [ '$i3' != '$i1b' ] && [ '$i3' != '$i2' ]"
across_after_manager_restart 2 i3 i1 "$i1b"
expect "remove i1 i2 i3" sh -c "'$LABSH' exec 1 rm -f i1 >/dev/null && '$LABSH' exec 2 rm -f i2 i3 >/dev/null" 9>&-
eventually "docker network rm $INET" 60 dk 1 network rm "$INET"

# Issue 14 item 4: a plugin enabled on a node only after that node joined the
# swarm and after the network and its global service exist.
enable_after_join() {
  step "A plugin enabled only after its node joined, and after the network exists (node 3)"
  expect "node 3's plugin is removed" lab plugin-remove 3
  local gone; gone=$(dk 1 node ls -q --filter name=lab-n3)
  expect "the manager forgets the node 3 that left (${gone:-none})" dk 1 node rm --force $gone
  lr_off() { [ "$(dk 3 info -f '{{.LiveRestoreEnabled}}')" = false ]; }
  eventually "node 3's dockerd has live-restore off (swarm join refuses it)" 10 lr_off
  expect "node 3 joins again, without the plugin" dk 3 swarm join --token "$wtok" \
    --advertise-addr 10.99.0.13 --listen-addr 10.99.0.13:2377 10.99.0.11:2377
  eventually "node 3 is Ready" 60 sh -c "'$LABSH' exec 1 node ls --format '{{.Hostname}} {{.Status}}' | grep -q '^lab-n3 Ready'" 9>&-
  expect "no gs task on node 3 yet (the scheduler needs the plugin there)" test -z "$(cid_of_task 3 gs)"
  told "node 3: the plugin installed and enabled with $RB_SWARM_SETTING" \
    "node3\$ docker plugin create $PLUGIN plugin/build; docker plugin set $PLUGIN $RB_SWARM_SETTING; docker plugin enable $PLUGIN" \
    install_plugin "$RB_SWARM_SETTING" 3
  eventually "node 3 runs a gs task" 120 has_task 3 gs
  # Nodes 1 and 2's dockerd were restarted above: their tasks too.
  both_run_gs() { has_task 1 gs && has_task 2 gs; }
  eventually "nodes 1 and 2 run a gs task" 180 both_run_gs
  local t1 t2 t3 ip3; t1=$(cid_of_task 1 gs); t2=$(cid_of_task 2 gs); t3=$(cid_of_task 3 gs); ip3=$(addr_on 3 "$t3")
  eventually "node 1's task pings node 3's task ($ip3)" 60 dk 1 exec "$t1" ping -c 1 -W 2 "$ip3"
  eventually "node 3's task pings node 2's task ($(addr_on 2 "$t2"))" 30 dk 3 exec "$t3" ping -c 1 -W 2 "$(addr_on 2 "$t2")"
  eventually "tasks.gs resolves to 3 addresses from node 3's task" 30 resolves_to 3 "$t3" tasks.gs 3
  # c1 and c2 stopped with their dockerd's restart above (no --restart): new containers.
  story 1 "run a1 on node 1" run -d --name a1 --network "$NET" "$LAB_IMAGE" sleep 3600
  story 3 "run c3 on node 3" run -d --name c3 --network "$NET" "$LAB_IMAGE" sleep 3600
  eventually "c3 pings a1 (node 1) by name" 30 ping_on 3 c3 a1
  story 3 "c3 pings a1 by name, 2 packets" exec c3 ping -c 2 -W 2 a1
  story 1 "a1 pings c3 (node 3) by name" exec a1 ping -c 2 -W 2 c3
  expect "node 3's task pings a1 by name" ping_on 3 "$t3" a1
  expect "node 2's task pings c3 by name" ping_on 2 "$t2" c3
}

step "A host that dies, then comes back, then leaves"
t0=$SECONDS
expect "node 3 is cut off (its underlay link down)" nsx 3 ip link set eth0 down
eventually "node 1 holds no entry pointing at node 3 (bound: README)" 90 no_fdb_to 1 10.99.0.13
measured "node 3's entries gone from node 1 after $((SECONDS - t0)) s"
expect "node 3 is back" nsx 3 ip link set eth0 up
eventually "node 1 floods to node 3 again" 120 has_fdb_to 1 10.99.0.13
expect "node 3 leaves the swarm" dk 3 swarm leave --force
eventually "node 1 and node 2 hold no entry pointing at node 3" 90 sh -c "! '$LABSH' nsexec 1 bridge fdb show | grep -q 'dst 10.99.0.13' && ! '$LABSH' nsexec 2 bridge fdb show | grep -q 'dst 10.99.0.13'"
eventually "node 3 removed the network's devices" 60 sh -c "! '$LABSH' nsexec 3 ip -o link | grep -qE ': rbx?-'"

# Swarm networks' leftovers, and dockerd stopped uncleanly on a node of a
# network with rustbridge's IPAM (issue 14's follow-up). Nodes 1 and 2.
leftovers_and_unclean_stops() {
  step "A swarm network's leftover devices (named after a base-36 swarm ID) are collected"
  local mark; mark=$(nsx 2 cat "/sys/class/net/$(vxlan_dev 2)/ifalias")
  expect "node 2's devices carry its plugin's owner mark ($mark)" sh -c "echo '$mark' | grep -q '^rustbridge:'"
  # What a crash leaves: the bridge rb-<12> with its VXLAN device rbx-<11> and an entry, marked as the plugin marks them.
  leave() {
    nsx 2 ip link add rb-zz0leftover0 type bridge && nsx 2 ip link set rb-zz0leftover0 alias "$mark" &&
    nsx 2 ip link add rbx-zz0leftover type vxlan id 16777001 dstport "$VXLAN_PORT" nolearning &&
    nsx 2 ip link set rbx-zz0leftover alias "$mark" master rb-zz0leftover0 up &&
    nsx 2 bridge fdb append 00:00:00:00:00:00 dev rbx-zz0leftover dst 10.99.0.13 &&
    nsx 2 ip link add rb-zz1userbridg type bridge # a user's look-alike: no mark
  }
  expect "leave rb-zz0leftover0 + rbx-zz0leftover (with an FDB entry) and an unmarked rb-zz1userbridg on node 2" leave
  gone() { ! nsx 2 ip link show rb-zz0leftover0 && ! nsx 2 ip link show rbx-zz0leftover; }
  eventually "node 2's reconciler removes the leftover bridge and VXLAN device" 30 gone
  expect "the unmarked look-alike stays" nsx 2 ip link show rb-zz1userbridg
  expect "…(removed by the test)" nsx 2 ip link del rb-zz1userbridg
  expect "the network's own devices stay" nsx 2 ip link show "$(vxlan_dev 2)"

  step "--live-restore on a manager, rustbridge IPAM: the plugin is restarted, the node's pool answered again"
  local LNET=rbswarm-lr d1="$LAB_DIR/n1" p1
  ip_of() { dk "$1" inspect -f "{{(index .NetworkSettings.Networks \"$LNET\").IPAddress}}" "$2" 2>/dev/null; }
  expect "create $LNET with rustbridge's IPAM" dk 1 network create -d "$PLUGIN" --ipam-driver "$PLUGIN" --attachable "$LNET"
  expect "run l1 on node 1 (--restart always)" dk 1 run -d --restart always --name l1 --network "$LNET" "$LAB_IMAGE" sleep 3600
  expect "run l2 on node 2" dk 2 run -d --name l2 --network "$LNET" "$LAB_IMAGE" sleep 3600
  echo '{"live-restore": true}' >"$d1/daemon.json"
  expect "live-restore turned on in node 1's running dockerd (SIGHUP): accepted in swarm mode" kill -HUP "$(cat "$d1/dockerd.pid")"
  lr_on() { [ "$(dk 1 info -f '{{.LiveRestoreEnabled}}')" = true ]; }
  eventually "…dockerd reports it" 10 lr_on
  p1=$(plugin_pid_on 1)
  # A start with live-restore fails ("incompatible with swarm mode", measured): start without it.
  echo '{}' >"$d1/daemon.json"
  expect "node 1's dockerd stops with live-restore (the plugin and l1 keep running) and starts without" lab restart-dockerd 1
  new_plugin() { local p; p=$(plugin_pid_on 1); [ -n "$p" ] && [ "$p" != "$p1" ]; }
  eventually "dockerd restarted the plugin it had left running (was $p1)" 30 new_plugin
  eventually "l1 is back with an address (node 1's local pool, still held, answered again)" 90 back_on 1 l1 "$LNET"
  hand_starts
  expect "run l3 on node 2" dk 2 run -d --name l3 --network "$LNET" "$LAB_IMAGE" sleep 3600
  local a1 a2 a3; a1=$(ip_of 1 l1); a2=$(ip_of 2 l2); a3=$(ip_of 2 l3)
  expect "three addresses, no duplicate ($a1, $a2, $a3)" sh -c "[ -n '$a1$a2$a3' ] && [ \$(printf '%s\n' '$a1' '$a2' '$a3' | sort -u | grep -c .) -eq 3 ]"
  across_after_manager_restart 2 l3 l1 "$a1"

  local d3="$LAB_DIR/n3" wtok
  echo '{"live-restore": true}' >"$d3/daemon.json"
  expect "live-restore on in node 3's dockerd (out of the swarm since it left)" kill -HUP "$(cat "$d3/dockerd.pid")"
  lr3_on() { [ "$(dk 3 info -f '{{.LiveRestoreEnabled}}')" = true ]; }
  eventually "…dockerd reports it" 10 lr3_on
  wtok=$(dk 1 swarm join-token -q worker)
  expect "docker swarm join with live-restore is refused (Docker's own rule)" sh -c "'$LABSH' exec 3 swarm join --token $wtok \
    --advertise-addr 10.99.0.13 --listen-addr 10.99.0.13:2377 10.99.0.11:2377 2>&1 | grep -q 'live-restore daemon configuration is incompatible with swarm mode'" 9>&-
  # A reload only changes the keys the file has: '{}' would leave live-restore on.
  echo '{"live-restore": false}' >"$d3/daemon.json"
  expect "…and off again" kill -HUP "$(cat "$d3/dockerd.pid")"

  step "dockerd of a worker killed (SIGKILL) and started again, rustbridge IPAM"
  expect "run l4 on node 2 (--restart always)" dk 2 run -d --restart always --name l4 --network "$LNET" "$LAB_IMAGE" sleep 3600
  expect "node 2's dockerd is killed" kill -KILL "$(cat "$LAB_DIR/n2/dockerd.pid")"
  expect "…and started again" lab restart-dockerd 2
  eventually "l4 is back with an address (node 2's local pool, never released, answered again)" 90 back_on 2 l4 "$LNET"
  hand_starts
  eventually "l4 pings l1 by name" 60 ping_on 2 l4 l1
  local a4; a4=$(ip_of 2 l4)
  expect "l4's address ($a4) is neither l1's nor l3's" sh -c "[ -n '$a4' ] && [ '$a4' != '$a1' ] && [ '$a4' != '$a3' ]"
  expect "remove l1..l4" sh -c "'$LABSH' exec 1 rm -f l1 >/dev/null && '$LABSH' exec 2 rm -f l2 l3 l4 >/dev/null" 9>&-
  eventually "docker network rm $LNET" 60 dk 1 network rm "$LNET"
}
# A swarm network a node's plugin holds while its dockerd does not know it:
# what a node that missed DeleteNetwork keeps (here made by a CreateNetwork
# sent to node 2's plugin itself). Checked after enable_after_join, when
# dockerd has answered "not found" for longer than the plugin waits (60 s).
MISSED=zz2missed0delete0network0
missed_delete_network() {
  step "A swarm network node 2's dockerd does not know (a missed DeleteNetwork) is removed by its plugin"
  local sock body
  sock="/proc/$(plugin_pid_on 2)/root/run/docker/plugins/rustbridge.sock"
  body='{"NetworkID": "'$MISSED'", "Options": {"com.docker.network.generic": {"com.rustbridge.vxlan.vni": "4999"}},
    "IPv4Data": [{"AddressSpace": "", "Pool": "10.233.0.0/24", "Gateway": "10.233.0.1/24"}], "IPv6Data": []}'
  expect "node 2's plugin holds network ${MISSED:0:12} (CreateNetwork sent to it, not to dockerd)" \
    curl -sf --unix-socket "$sock" -X POST http://plugin/NetworkDriver.CreateNetwork -d "$body"
  expect "…with its bridge rb-${MISSED:0:12}" nsx 2 ip link show "rb-${MISSED:0:12}"
  MISSED_AT=$SECONDS
}
missed_network_gone() {
  gone() { ! nsx 2 ip link show "rb-${MISSED:0:12}" && ! nsx 2 ip -o link show type vxlan | grep -q "rbx-${MISSED:0:11}"; }
  eventually "node 2's plugin removed it, its bridge and VXLAN device" 120 gone
  measured "removed $((SECONDS - MISSED_AT)) s after it was made"
  expect "…and logged why" grep -q "removed a network dockerd has not known here" "$LAB_DIR/n2/log/dockerd.log"
}
leftovers_and_unclean_stops
missed_delete_network
enable_after_join
missed_network_gone

step "docker service rm / network rm leave nothing on any node"
story 1 "service rm gs web" service rm gs web
story 1 "rm -f c1 a1" rm -f c1 a1
story 2 "rm -f c2 iso" rm -f c2 iso
story 3 "rm -f c3" rm -f c3
told "docker network rm $NET (once the tasks are gone)" "node1\$ docker network rm $NET" patiently dk 1 network rm "$NET"
left_on() { nsx "$1" sh -c 'ip -br link | grep -E "^rb[xhc]?-"; iptables-save | grep RUSTBRIDGE; nft list table inet rustbridge 2>/dev/null'; }
nothing_left_on() { [ -z "$(left_on "$1")" ]; }
for n in 1 2 3; do
  eventually "node $n: no bridge, VXLAN device, veth, rule or nftables table left" 60 nothing_left_on "$n"
  [ "$DEMO" = 1 ] && show_as "node$n# ip -br link | grep '^rb'; iptables-save | grep RUSTBRIDGE; nft list table inet rustbridge" left_on "$n"
done

summary
