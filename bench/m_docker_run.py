"""`docker run -d` to running: a container on a rustbridge network against one
on a built-in bridge network (twice, for the floor)."""

import itertools

import stats
from common import row, spread, x, docker_network, rm_network, rm_container
from host import docker, timed, IMAGE, NAME_PREFIX

GOAL = 1.00


def run(ctx):
    rounds = ctx.pick(15, 3)
    rb = docker_network("run-rb", "rustbridge", "10.174.0.0/24")
    ctx.on_exit(rm_network, rb)
    bb = docker_network("run-bb", "bridge", "10.175.0.0/24")
    ctx.on_exit(rm_network, bb)
    counter = itertools.count()
    removals = []

    def start(network):
        name = f"{NAME_PREFIX}-run-{next(counter)}"
        seconds = timed(docker, "run", "-d", "--name", name, "--network", network, IMAGE, "sleep", "600")
        removals.append(timed(docker, "rm", "-f", name))
        return seconds

    ctx.log(f"docker run -d: {rounds} rounds of rustbridge / BB / BB'")
    s = stats.interleave(rounds, {"rustbridge": lambda: start(rb), "bb": lambda: start(bb), "bb2": lambda: start(bb)})
    c = stats.compare(s["rustbridge"], s["bb"], s["bb2"])
    v = stats.verdict(c["ratio"], GOAL, stats.noise_of(c["floor"]))
    why = (f"median {x(c['ratio'])} of BB, per-round median {x(c['round_ratio_median'])}; "
           f"the two BB series differ by {x(c['floor'])}")
    return {
        "samples": s,
        "comparison": c,
        "rows": [row("`docker run -d` to running", spread(c["rustbridge"]), spread(c["bb"]), x(c["ratio"]),
                     x(c["floor"]), f"≤ {GOAL:.2f}× BB", v, why)],
    }
