"""Published ports. Through dockerd: one container publishing 200 ports
(`-p 20000-20199:20000-20199`) on rustbridge against the built-in bridge
(twice), counting docker-proxy processes and their memory. On the plugin's
socket: 10,000 ports published in one change, and the cost of publishing one
more port (one ProgramExternalConnectivity) when 0, 100, 1,000 and 10,000
ports are already published, with the plugin's memory."""

import itertools
import json

import stats
from common import row, ms, x, mib, spread, docker_network, rm_network, rm_container
from host import (docker, new_id, now, plugin_rss_mib, port_options, processes_named, short, timed, IMAGE, NAME_PREFIX,
                  PEER_NETNS, PluginError)
from netlink import PeerNamespace

GOAL_200 = 0.10
GOAL_BIG = 1.0
GOAL_SAME = 1.2
FIRST_PORT = 20000
ONE_PORT = 19999


def run(ctx):
    out = {}
    out["docker"] = through_docker(ctx)
    out["socket"] = through_socket(ctx)
    out["rows"] = out["docker"].pop("rows") + out["socket"].pop("rows")
    return out


def through_docker(ctx):
    count = ctx.pick(200, 10)
    rounds = ctx.pick(3, 1)
    last = FIRST_PORT + count - 1
    rb = docker_network("ports-rb", "rustbridge", "10.176.0.0/24")
    ctx.on_exit(rm_network, rb)
    bb = docker_network("ports-bb", "bridge", "10.177.0.0/24")
    ctx.on_exit(rm_network, bb)
    counter = itertools.count()
    seen = {"rustbridge": [], "bb": [], "bb2": []}

    def publish(variant, network):
        def once():
            name = f"{NAME_PREFIX}-ports-{next(counter)}"
            before = processes_named("docker-proxy")
            seconds = timed(docker, "run", "-d", "--name", name, "--network", network,
                            "-p", f"{FIRST_PORT}-{last}:{FIRST_PORT}-{last}", IMAGE, "sleep", "600")
            procs, proxy_rss = processes_named("docker-proxy")
            seen[variant].append({"processes": procs - before[0], "proxy_rss_mib": proxy_rss - before[1],
                                  "plugin_rss_mib": plugin_rss_mib(), "rm": timed(docker, "rm", "-f", name)})
            return seconds
        return once

    ctx.log(f"publish {count} ports through dockerd: {rounds} rounds of rustbridge / BB / BB'")
    s = stats.interleave(rounds, {"rustbridge": publish("rustbridge", rb), "bb": publish("bb", bb),
                                  "bb2": publish("bb2", bb)})
    c = stats.compare(s["rustbridge"], s["bb"], s["bb2"])
    rb_procs = max(r["processes"] for r in seen["rustbridge"])
    bb_procs = stats.median([r["processes"] for r in seen["bb"]])
    bb_rss = stats.median([r["proxy_rss_mib"] for r in seen["bb"]])
    v = stats.verdict(c["ratio"], GOAL_200, stats.noise_of(c["floor"]) * c["ratio"])
    if rb_procs:
        v = "not met"
    rows = [row(
        f"publish {count} ports (`-p {FIRST_PORT}-{last}:…`), docker run",
        f"{spread(c['rustbridge'])}, {rb_procs} processes", f"{spread(c['bb'])}, {bb_procs:.0f} docker-proxy, {mib(bb_rss)}",
        x(c["ratio"]), x(c["floor"]), f"keep: ≤ {GOAL_200}× BB, 0 processes", v,
        f"docker rm: rustbridge {ms(stats.median([r['rm'] for r in seen['rustbridge']]))}, "
        f"BB {ms(stats.median([r['rm'] for r in seen['bb']]))}")]
    return {"samples": s, "comparison": c, "seen": seen, "rows": rows}


def through_socket(ctx):
    counts = ctx.pick([100, 1000, 10000], [10, 100])
    k = ctx.pick(10, 3)
    plugin = ctx.plugin
    net_id, one, big, big2 = new_id(), new_id(), new_id(), new_id()
    made = []

    def teardown():
        for ep in reversed(made):
            for call in (plugin.revoke, plugin.leave, plugin.delete_endpoint):
                try:
                    call(net_id, ep)
                except Exception as e:
                    ctx.log(f"{call.__name__} {ep[:12]}: {e}")
        made.clear()
        plugin.delete_network(net_id)

    plugin.create_network(net_id, "10.173.0.0/24", "10.173.0.1")
    ctx.on_exit(teardown)
    peers = PeerNamespace(PEER_NETNS)
    ctx.on_exit(peers.close)
    blocks, changes = [], []
    try:
        for ep, addr in ((one, "10.173.0.2/24"), (big, "10.173.0.3/24"), (big2, "10.173.0.4/24")):
            plugin.create_endpoint(net_id, ep, addr)
            made.append(ep)
            peers.take(plugin.join(net_id, ep))

        def block(published):
            program, revoke = [], []
            for _ in range(k):
                program.append(timed(plugin.program, net_id, one, [ONE_PORT]))
                revoke.append(timed(plugin.revoke, net_id, one))
            blocks.append({"published": published, "program": program, "revoke": revoke,
                           "rss_mib": plugin_rss_mib()})

        ctx.log(f"one more port ({k}×) with 0 and {counts} ports published")
        block(0)
        for c in counts:
            ports = list(range(FIRST_PORT, FIRST_PORT + c))
            change = {"ports": c}
            t = now()
            try:
                plugin.program(net_id, big, ports)
                change["program"] = now() - t
            except (PluginError, OSError) as e:
                # Refused (e.g. a body over the plugin's limit): publish the same
                # ports in two halves, to measure one more port on top of them anyway.
                size = len(json.dumps({"NetworkID": net_id, "EndpointID": big, "Options": port_options(ports)},
                                      separators=(",", ":")))
                change["error"] = f"a {size:,}-byte request, as dockerd encodes it: {short(e)}"
                ctx.log(f"{c} ports in one change refused: {change['error']}")
                plugin.program(net_id, big, ports[: c // 2])
                plugin.program(net_id, big2, ports[c // 2:])
            change["rss_mib"] = plugin_rss_mib()
            block(c)
            change["revoke"] = timed(plugin.revoke, net_id, big)
            plugin.revoke(net_id, big2)
            changes.append(change)
        block(0)
    finally:
        teardown()
        peers.close()
    return {"blocks": blocks, "changes": changes, "rows": socket_rows(blocks, changes)}


def socket_rows(blocks, changes):
    base = stats.median(blocks[0]["program"])
    after = stats.median(blocks[-1]["program"])
    top = max(blocks[1:-1], key=lambda b: b["published"])
    top_cost = stats.median(top["program"])
    same = top_cost / base
    drift = after / base
    big = changes[-1]
    full = big["ports"] >= 10000
    if "error" in big:
        v_big, big_cell = ("not met" if full else "not measured"), "refused"
    else:
        v_big, big_cell = (stats.verdict(big["program"], GOAL_BIG) if full else "not measured"), ms(big["program"])
    v_same = stats.verdict(same, GOAL_SAME, stats.noise_of(drift)) if full else "not measured"

    def change_text(c):
        done = f"refused ({c['error']}), published in two halves instead" if "error" in c else ms(c["program"])
        return f"{c['ports']} ports {done} (revoke {ms(c['revoke'])})"
    return [
        row(f"publish {big['ports']} ports in one change (ProgramExternalConnectivity)", big_cell, "–", "–",
            "–", "< 1 s", v_big, "; ".join(change_text(c) for c in changes)),
        row(f"one more port with {top['published']} published / with none", f"{ms(top_cost)} / {ms(base)}", "–",
            x(same), x(drift), f"the same (≤ {GOAL_SAME}×)", v_same,
            "one ProgramExternalConnectivity of one port, median of " + str(len(top["program"]))
            + "; the floor column is the same cost with none published, measured again at the end"),
        row(f"scale: {big['ports']} published ports", f"RSS {mib(big['rss_mib'])}", "–", "–", "–", "with memory",
            "measured", f"RSS with none published {mib(blocks[0]['rss_mib'])}"),
    ]
