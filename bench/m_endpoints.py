"""CreateEndpoint+Join over the plugin's socket, from 1 to 1,000 endpoints on
one network, each interleaved with the kernel floor at the same count (a veth
pair created, attached to a bridge of its own and brought up: bench/netlink.py).
With the endpoints in place: the plugin's memory, and restarts to serving
(also measured with none, first). Everything is removed afterwards, including
on failure."""

import ipaddress
import socket

import stats
import m_restart
from common import row, ms, x, mib
from host import new_id, now, plugin_rss_mib, FLOOR_PREFIX, PEER_NETNS
from netlink import Netlink, PeerNamespace

GOAL_FLOOR = 1.3
GOAL_FLAT = 1.2
GOAL_RESTART = 0.100
GOAL_RSS_IDLE, GOAL_RSS_FULL = 10, 20
SUBNET = ipaddress.ip_network("10.172.0.0/21")
FLOOR_BRIDGE = FLOOR_PREFIX + "-br"


def address(i):
    return f"{SUBNET.network_address + 2 + i}/{SUBNET.prefixlen}"


def run(ctx):
    n = ctx.pick(1000, 30)
    restarts = ctx.pick(3, 1)
    plugin = ctx.plugin
    net_id = new_id()
    endpoints, floor_links = [], []
    nl = Netlink()
    peers = PeerNamespace(PEER_NETNS)
    extra = iter(range(n, SUBNET.num_addresses - 3))
    result = {"n": n, "plugin": [], "floor": [], "leave": [], "restart_empty": [], "restart_full": []}

    def probe(client):
        """The first real call after a restart: one more endpoint, created and joined."""
        ep = new_id()
        client.create_endpoint(net_id, ep, address(next(extra)))
        endpoints.append(ep)
        peers.take(client.join(net_id, ep))

    def teardown():
        if result.get("torn_down"):
            return
        result["torn_down"] = True
        while endpoints:
            ep = endpoints.pop()
            t = now()
            try:
                plugin.leave(net_id, ep)
                plugin.delete_endpoint(net_id, ep)
                result["leave"].append([len(endpoints) + 1, now() - t])
            except Exception as e:
                ctx.log(f"Leave/DeleteEndpoint {ep[:12]}: {e}")
        while floor_links:
            nl.delete(floor_links.pop())
        try:
            nl.delete(FLOOR_BRIDGE)
        except OSError:
            pass
        plugin.delete_network(net_id)
        nl.close()
        peers.close()

    plugin.create_network(net_id, str(SUBNET), str(SUBNET.network_address + 1))
    ctx.on_exit(teardown)
    try:
        nl.create_bridge(FLOOR_BRIDGE)
        bridge_index = socket.if_nametoindex(FLOOR_BRIDGE)
        ctx.log(f"restart with no endpoint, {restarts}×")
        for _ in range(restarts):
            result["restart_empty"].append(m_restart.restart(probe))
        plugin.close()
        result["rss_idle_mib"] = rss_settled()

        def one_endpoint(i):
            ep = new_id()
            t = now()
            plugin.create_endpoint(net_id, ep, address(i))
            endpoints.append(ep)
            reply = plugin.join(net_id, ep)
            seconds = now() - t
            peers.take(reply)
            return seconds

        def one_floor(i):
            host, peer = f"{FLOOR_PREFIX}{i:05d}h", f"{FLOOR_PREFIX}{i:05d}p"
            t = now()
            nl.create_veth(host, peer)
            floor_links.append(host)
            nl.attach_up(host, bridge_index)
            return now() - t

        ctx.log(f"{n} endpoints, each next to the kernel floor")
        for i in range(n):
            if i % 2:
                result["floor"].append([i + 1, one_floor(i)])
                result["plugin"].append([i + 1, one_endpoint(i)])
            else:
                result["plugin"].append([i + 1, one_endpoint(i)])
                result["floor"].append([i + 1, one_floor(i)])
        result["rss_full_mib"] = rss_settled()
        ctx.log(f"restart with {len(endpoints)} endpoints, {restarts}×")
        for _ in range(restarts):
            result["restart_full"].append(m_restart.restart(probe))
        plugin.close()
        result["rss_after_restart_mib"] = rss_settled()
    finally:
        t = now()
        teardown()
        ctx.log(f"endpoints removed in {now() - t:.1f} s")
    del result["torn_down"]
    result["rows"] = rows(result)
    return result


def rss_settled():
    import time
    time.sleep(1)
    return plugin_rss_mib()


def window(series, lo, hi):
    return [d for i, d in series if lo <= i <= hi]


def rows(r):
    n = r["n"]
    w = max(10, n // 10)
    first = (1, w)
    last = (n - w + 1, n)
    out = []
    per = {}
    for name, (lo, hi) in (("first", first), ("last", last)):
        p = stats.summary(window(r["plugin"], lo, hi))
        f = stats.summary(window(r["floor"], lo, hi))
        per[name] = (p, f)
    (p1, f1), (pn, fn) = per["first"], per["last"]
    ratio_first, ratio_last = p1["median"] / f1["median"], pn["median"] / fn["median"]
    flat = pn["median"] / p1["median"]
    floor_flat = fn["median"] / f1["median"]
    worst = max(ratio_first, ratio_last)
    v_floor = stats.verdict(worst, GOAL_FLOOR)
    v_flat = stats.verdict(flat, GOAL_FLAT)
    v = "met" if v_floor == v_flat == "met" and n >= 1000 else ("not met" if "not met" in (v_floor, v_flat) else v_floor)
    out.append(row(
        f"CreateEndpoint+Join over the socket, endpoints {first[0]}–{first[1]} / {last[0]}–{last[1]}",
        f"p50 {ms(p1['median'])} / {ms(pn['median'])}; p99 {ms(p1['p99'])} / {ms(pn['p99'])}",
        f"kernel floor p50 {ms(f1['median'])} / {ms(fn['median'])}; p99 {ms(f1['p99'])} / {ms(fn['p99'])}",
        f"{x(ratio_first)} / {x(ratio_last)} the floor", "–",
        f"≤ {GOAL_FLOOR}× the floor, flat from 10 to 1,000", v,
        f"{x(worst)} the floor at worst; p50 at {last[1]} endpoints is {x(flat)} the p50 at the start "
        f"(the floor itself {x(floor_flat)}); flat taken as ≤ {GOAL_FLAT}×"))
    full = [s["exec_to_served"] for s in r["restart_full"]]
    empty = [s["exec_to_served"] for s in r["restart_empty"]]
    listen_full = [s["exec_to_listen"] for s in r["restart_full"]]
    kill = [s["kill_to_exec"] for s in r["restart_full"] + r["restart_empty"]]
    restart_v = stats.verdict(stats.median(full), GOAL_RESTART)
    out.append(row(
        f"restart to serving, {n} endpoints in state", ms(stats.median(full)),
        f"{ms(stats.median(empty))} with none", x(stats.median(full) / stats.median(empty)) + " of empty", "–",
        "< 100 ms", restart_v,
        f"from the new process's exec to a served CreateEndpoint+Join, median of {len(full)}; socket answering after "
        f"{ms(stats.median(listen_full))}; dockerd took {ms(stats.median(kill))} from SIGKILL to exec the new process "
        f"(not counted)"))
    idle, full_rss = r["rss_idle_mib"], r["rss_full_mib"]
    v_rss = "met" if idle is not None and full_rss is not None and idle < GOAL_RSS_IDLE and full_rss < GOAL_RSS_FULL else "not met"
    out.append(row(
        f"plugin RSS: idle / {n} endpoints", f"{mib(idle)} / {mib(full_rss)}", "–", "–", "–",
        f"< {GOAL_RSS_IDLE} MiB / < {GOAL_RSS_FULL} MiB", v_rss if n >= 1000 else "not measured",
        f"idle read 1 s after a fresh start; {mib(r.get('rss_after_restart_mib'))} after a restart with the "
        f"endpoints in state"))
    leave = stats.summary([d for _, d in r["leave"]])
    out.append(row(
        f"scale: {n} endpoints on one network", f"Leave+DeleteEndpoint p50 {ms(leave.get('median'))}, "
        f"p99 {ms(leave.get('p99'))}", "–", "–", "–", "with memory", "measured",
        f"RSS {mib(full_rss)} with {n} endpoints"))
    return out
