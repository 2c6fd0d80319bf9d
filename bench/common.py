"""What every measure shares: the run's settings (full or quick), its log,
cleanups that run whatever happens, and the row format of the report."""

import json
import sys
import time

from host import docker, NAME_PREFIX


class Ctx:
    def __init__(self, quick):
        self.quick = quick
        self.started = time.time()
        self._cleanups = []
        # What a measure found left behind outside the host's dockerd (the swarm lab).
        self.leftovers = []

    def pick(self, full, quick):
        return quick if self.quick else full

    def log(self, msg):
        t = time.time() - self.started
        print(f"[{t:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def on_exit(self, fn, *args, **kwargs):
        """Registers a cleanup, run (last registered first) when the measure ends."""
        self._cleanups.append((fn, args, kwargs))

    def run_cleanups(self):
        while self._cleanups:
            fn, args, kwargs = self._cleanups.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:
                self.log(f"cleanup {getattr(fn, '__name__', fn)}: {e}")


def row(measure, rustbridge, bb, ratio, floor, goal, verdict, why):
    return {"measure": measure, "rustbridge": rustbridge, "bb": bb, "ratio": ratio, "floor": floor,
            "goal": goal, "verdict": verdict, "why": why}


def ms(seconds):
    if seconds is None:
        return "–"
    v = seconds * 1000
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"


def spread(s):
    """'median (p10–p90)' of a summary in ms."""
    if not s.get("n"):
        return "–"
    return f"{ms(s['median'])} ({ms(s['p10'])}–{ms(s['p90'])})"


def gbit(s):
    """'median (p10–p90)' of a summary in Gbit/s."""
    return f"{s['median']:.2f} Gbit/s ({s['p10']:.2f}–{s['p90']:.2f})" if s.get("n") else "–"


def iperf_gbps(out):
    """Received throughput in Gbit/s from `iperf3 -c … -J` output."""
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def x(r):
    return "–" if r is None else f"{r:.2f}×"


def mib(v):
    return "–" if v is None else f"{v:.1f} MiB"


def docker_network(name, driver, subnet):
    docker("network", "create", "-d", driver, "--subnet", subnet, f"{NAME_PREFIX}-{name}")
    return f"{NAME_PREFIX}-{name}"


def rm_network(name):
    docker("network", "rm", name, check=False)


def rm_container(name):
    docker("rm", "-f", name, check=False)
