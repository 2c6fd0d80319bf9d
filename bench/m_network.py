"""`docker network create` + `docker network rm` of one network, rustbridge
against the built-in bridge (twice, for the floor)."""

import itertools

import stats
from common import row, spread, x, ms
from host import docker, now, NAME_PREFIX

GOAL = 0.5


def create_rm(driver, subnet, counter, ctx):
    """Seconds of create and of rm, as a pair; the sum is the sample."""
    name = f"{NAME_PREFIX}-net-{next(counter)}"
    t0 = now()
    docker("network", "create", "-d", driver, "--subnet", subnet, name)
    t1 = now()
    docker("network", "rm", name)
    return t1 - t0, now() - t1


def measure(ctx, rounds, rb_subnet, bb_subnet):
    """Interleaved create+rm; returns the samples (sums) and the create/rm parts."""
    counter = itertools.count()
    parts = {"rustbridge": [], "bb": [], "bb2": []}

    def variant(name, driver, subnet):
        def once():
            pair = create_rm(driver, subnet, counter, ctx)
            parts[name].append(pair)
            return sum(pair)
        return once

    s = stats.interleave(rounds, {
        "rustbridge": variant("rustbridge", "rustbridge", rb_subnet),
        "bb": variant("bb", "bridge", bb_subnet),
        "bb2": variant("bb2", "bridge", bb_subnet),
    })
    return s, parts


def run(ctx):
    rounds = ctx.pick(20, 3)
    ctx.log(f"network create+rm: {rounds} rounds of rustbridge / BB / BB'")
    s, parts = measure(ctx, rounds, "10.170.0.0/24", "10.171.0.0/24")
    c = stats.compare(s["rustbridge"], s["bb"], s["bb2"])
    split = {k: (stats.median([p[0] for p in v]), stats.median([p[1] for p in v])) for k, v in parts.items()}
    v = stats.verdict(c["ratio"], GOAL, stats.noise_of(c["floor"]))
    why = (f"create + rm medians: rustbridge {ms(split['rustbridge'][0])} + {ms(split['rustbridge'][1])}, "
           f"BB {ms(split['bb'][0])} + {ms(split['bb'][1])}")
    return {
        "samples": s,
        "parts": {k: [list(p) for p in v] for k, v in parts.items()},
        "comparison": c,
        "rows": [row("`docker network create` + `rm`", spread(c["rustbridge"]), spread(c["bb"]), x(c["ratio"]),
                     x(c["floor"]), f"≤ {GOAL:.2f}× BB", v, why)],
    }
