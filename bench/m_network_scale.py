"""Network #N create+rm against network #1, with N up to 1,000. rustbridge's
N-1 other networks are made on the plugin's socket (fast, and dockerd knows
nothing of them, so the change isolates the plugin's own growth); the built-in
bridge's are made through dockerd, as far as its time budget allows. At each
count, #N is measured through dockerd for both, interleaved with BB twice.
Every background change is timed too (the plugin's per-change cost against the
number of networks), and the plugin's memory is read at each count."""

import stats
from common import row, x, ms, mib
from host import docker, new_id, now, plugin_rss_mib, timed, NAME_PREFIX
import m_network

GOAL = 1.2


def rb_subnet(k):
    return f"10.{160 + k // 256}.{k % 256}.0/24"


def bb_subnet(k):
    return f"10.{184 + k // 256}.{k % 256}.0/24"


def run(ctx):
    checkpoints = ctx.pick([1, 10, 100, 250, 500, 1000], [1, 5, 10])
    rounds = ctx.pick(5, 2)
    rb_budget, bb_budget = ctx.pick((360, 30), (60, 60))
    plugin = ctx.plugin
    rb_ids, bb_names = [], []
    series = {"rb_fill": [], "bb_fill": [], "rb_teardown": [], "bb_teardown": []}
    points = []
    rb_spent = bb_spent = 0.0
    bb_stopped = rb_stopped = None

    def teardown():
        while rb_ids:
            net_id = rb_ids.pop()
            t = now()
            try:
                plugin.delete_network(net_id)
                series["rb_teardown"].append([len(rb_ids), now() - t])
            except Exception as e:
                ctx.log(f"DeleteNetwork {net_id[:12]}: {e}")
        while bb_names:
            name = bb_names.pop()
            t = now()
            docker("network", "rm", name, check=False)
            series["bb_teardown"].append([len(bb_names), now() - t])

    ctx.on_exit(teardown)
    try:
        for n in checkpoints:
            while len(rb_ids) < n - 1 and rb_stopped is None:
                k = len(rb_ids)
                net_id = new_id()
                t = now()
                plugin.create_network(net_id, rb_subnet(k), rb_subnet(k).replace(".0/24", ".1"))
                rb_ids.append(net_id)
                dt = now() - t
                series["rb_fill"].append([k + 1, dt])
                rb_spent += dt
                if rb_spent > rb_budget:
                    rb_stopped = len(rb_ids)
            while len(bb_names) < n - 1 and bb_stopped is None:
                k = len(bb_names)
                name = f"{NAME_PREFIX}-bg-{k}"
                dt = timed(docker, "network", "create", "-d", "bridge", "--subnet", bb_subnet(k), name)
                bb_names.append(name)
                series["bb_fill"].append([k + 1, dt])
                bb_spent += dt
                if bb_spent > bb_budget:
                    bb_stopped = len(bb_names)
            if len(rb_ids) < n - 1:
                break
            bb_at = len(bb_names) + 1
            ctx.log(f"network #{n} (BB #{bb_at}): {rounds} rounds")
            s, _ = m_network.measure(ctx, rounds, "10.170.0.0/24", "10.171.0.0/24")
            points.append({"n": n, "bb_n": bb_at, "rss_mib": plugin_rss_mib(), "samples": s,
                           "comparison": stats.compare(s["rustbridge"], s["bb"], s["bb2"])})
        rss_at_max = plugin_rss_mib()
    finally:
        t = now()
        teardown()
        ctx.log(f"background networks removed in {now() - t:.0f} s")
    return summarise(points, series, rss_at_max, rb_stopped, bb_stopped, checkpoints[-1])


def summarise(points, series, rss_at_max, rb_stopped, bb_stopped, wanted):
    first, last = points[0], points[-1]
    med = lambda p, k: p["comparison"][k]["median"]  # noqa: E731
    rb_growth = med(last, "rustbridge") / med(first, "rustbridge")
    bb_growth = med(last, "bb") / med(first, "bb")
    noise = stats.noise_of(last["comparison"]["floor"])
    reached = last["n"]
    v = stats.verdict(rb_growth, GOAL, noise) if reached >= wanted else "not measured"
    bb_note = (f"BB measured at #{last['bb_n']} (its other networks made through dockerd"
               + (f"; its time budget stopped it at {bb_stopped} networks)" if bb_stopped else ")"))
    fill = series["rb_fill"]
    early = stats.median([d for k, d in fill if k <= max(10, len(fill) // 10)]) if fill else None
    late = stats.median([d for k, d in fill if k > len(fill) * 9 // 10]) if fill else None
    teardown_total = sum(d for _, d in series["rb_teardown"])
    why = (f"#{reached} {ms(med(last, 'rustbridge'))} vs #1 {ms(med(first, 'rustbridge'))}; {bb_note}; "
           f"the plugin's own CreateNetwork on its socket: {ms(early)} among the first networks, "
           f"{ms(late)} near #{len(fill)}" + (f"; stopped at {rb_stopped} networks by the time budget" if rb_stopped else ""))
    rows = [
        row(f"network #{reached} create+rm / #1", x(rb_growth), f"{x(bb_growth)} (#{last['bb_n']}/#1)", "–",
            x(last["comparison"]["floor"]), f"#1000/#1 ≤ {GOAL}×", v, why),
        row(f"scale: {len(fill) + 1} rustbridge networks", f"RSS {mib(rss_at_max)}", "–", "–", "–", "with memory",
            "measured", f"{len(fill)} networks made on the socket in {sum(d for _, d in fill):.1f} s and removed in "
            f"{teardown_total:.1f} s; RSS at #1 {mib(first['rss_mib'])}"),
    ]
    return {"points": points, "series": series, "rss_at_max_mib": rss_at_max, "rb_growth": rb_growth,
            "bb_growth": bb_growth, "rows": rows}
