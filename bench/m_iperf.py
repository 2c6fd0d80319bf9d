"""iperf3 TCP throughput container→container on one network: rustbridge
against the built-in bridge (twice). Both pairs run the whole run; samples
alternate between them."""

import stats
from common import row, docker_network, rm_network, rm_container, gbit, iperf_gbps
from host import docker, IPERF_IMAGE, NAME_PREFIX

GOAL = 1.0


def pair(ctx, network, tag):
    server, client = f"{NAME_PREFIX}-iperf-{tag}-s", f"{NAME_PREFIX}-iperf-{tag}-c"
    for name in (server, client):
        ctx.on_exit(rm_container, name)
    docker("run", "-d", "--name", server, "--network", network, IPERF_IMAGE, "iperf3", "-s")
    docker("run", "-d", "--name", client, "--network", network, IPERF_IMAGE, "sleep", "3600")
    ip = docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}", server)
    return client, ip


def throughput(client, ip, seconds):
    return iperf_gbps(docker("exec", client, "iperf3", "-c", ip, "-t", str(seconds), "-J", timeout=seconds + 60))


def run(ctx):
    seconds = ctx.pick(5, 1)
    rounds = ctx.pick(4, 1)
    rb = docker_network("iperf-rb", "rustbridge", "10.178.0.0/24")
    ctx.on_exit(rm_network, rb)
    bb = docker_network("iperf-bb", "bridge", "10.179.0.0/24")
    ctx.on_exit(rm_network, bb)
    rb_pair, bb_pair = pair(ctx, rb, "rb"), pair(ctx, bb, "bb")
    ctx.log(f"iperf3: {rounds} rounds of {seconds} s, rustbridge / BB / BB'")
    s = stats.interleave(rounds, {
        "rustbridge": lambda: throughput(*rb_pair, seconds),
        "bb": lambda: throughput(*bb_pair, seconds),
        "bb2": lambda: throughput(*bb_pair, seconds),
    })
    c = stats.compare(s["rustbridge"], s["bb"], s["bb2"])
    v = stats.verdict(c["ratio"], GOAL, stats.noise_of(c["floor"]), higher_is_better=True)
    return {
        "samples_gbps": s,
        "comparison": c,
        "rows": [row(f"iperf3 container→container, {seconds} s runs", gbit(c["rustbridge"]), gbit(c["bb"]),
                     f"{c['ratio']:.2f}×", f"{c['floor']:.2f}×", "≥ BB", v,
                     f"throughput ratio (higher is better); per-round median {c['round_ratio_median']:.2f}×")],
    }
