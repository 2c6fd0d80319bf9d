#!/usr/bin/env python3
"""`make bench`: every measure of issue 13 against Docker's built-in bridge,
and issue 14's across two hosts against Docker's overlay (the swarm lab), in
one run, then the report (bench/results/latest.{md,json,png} and the
README's table). BENCH_QUICK=1 (`make bench-smoke`): every measure with tiny
counts, written to bench/results/smoke/. Needs dockerd, the installed plugin
and the images (the Makefile's prerequisites); run it under the host lock.
The swarm measure takes the lab lock itself (or runs under a caller holding
it); `--only swarm` uses nothing of the host's dockerd (scripts/bench-swarm.sh).

  bench/run.py [--quick] [--out DIR] [--only NAME,...]
  bench/run.py --check DIR     the report files in DIR are there and well-formed
"""

import argparse
import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host  # noqa: E402
import netlink  # noqa: E402
import report  # noqa: E402
from common import Ctx, row  # noqa: E402
import m_docker_run, m_endpoints, m_iperf, m_network, m_network_scale, m_ports, m_swarm  # noqa: E402,E401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURES = [
    ("docker_run", m_docker_run),
    ("network", m_network),
    ("network_scale", m_network_scale),
    ("endpoints", m_endpoints),
    ("ports", m_ports),
    ("iperf", m_iperf),
    ("swarm", m_swarm),
]


def uses_host(module):
    """Whether a measure runs on the host's dockerd and plugin (all but the swarm lab's)."""
    return getattr(module, "USES_HOST", True)


def sweep(log):
    """Removes whatever a bench run (this one or a killed earlier one) left:
    containers and networks named rbbench-…, the plugin's networks and
    endpoints whose IDs start with the bench prefix, kernel-floor links."""
    for cid in host.docker("ps", "-aq", "--filter", f"name=^{host.NAME_PREFIX}-", check=False).split():
        host.docker("rm", "-f", cid, check=False)
    for nid in host.docker("network", "ls", "-q", "--filter", f"name=^{host.NAME_PREFIX}-", check=False).split():
        host.docker("network", "rm", nid, check=False)
    plugin = host.Plugin(timeout=30)
    try:
        networks = plugin.status().get("networks", [])
    except (OSError, host.PluginError) as e:
        networks = []
        log(f"sweep: the plugin does not answer ({e}): its bench networks, if any, stay until the next run")
    for net in networks:
        if not net["id"].startswith(host.ID_PREFIX):
            continue
        log(f"sweep: removing the plugin's bench network {net['id'][:12]} ({len(net['endpoints'])} endpoints)")
        for ep in net["endpoints"]:
            for call in (plugin.revoke, plugin.leave, plugin.delete_endpoint):
                try:
                    call(net["id"], ep["id"])
                except host.PluginError as e:
                    log(f"sweep: {e}")
        plugin.delete_network(net["id"])
    plugin.close()
    host.sh("ip", "netns", "del", host.PEER_NETNS, check=False)
    nl = netlink.Netlink()
    for name in netlink.links_with_prefix(host.FLOOR_PREFIX):
        try:
            nl.delete(name)
        except OSError:
            pass  # a peer already gone with its pair
    nl.close()


def leftovers():
    found = []
    found += host.docker("ps", "-aq", "--filter", f"name=^{host.NAME_PREFIX}-", check=False).split()
    found += host.docker("network", "ls", "-q", "--filter", f"name=^{host.NAME_PREFIX}-", check=False).split()
    try:
        networks = host.Plugin(timeout=30).status().get("networks", [])
        found += [n["id"][:12] for n in networks if n["id"].startswith(host.ID_PREFIX)]
    except (OSError, host.PluginError) as e:
        found.append(f"(the plugin's networks unknown: {e})")
    found += netlink.links_with_prefix(host.FLOOR_PREFIX)
    found += [host.PEER_NETNS] if os.path.exists(f"/run/netns/{host.PEER_NETNS}") else []
    return found


def preflight():
    problems = []
    if host.sh("docker", "info", "-f", "{{.ID}}", check=False, timeout=10) == "":
        problems.append("dockerd does not answer")
    if not os.path.exists(host.RB_SOCKET):
        problems.append(f"no plugin socket {host.RB_SOCKET} (make install)")
    for image in (host.IMAGE, host.IPERF_IMAGE):
        if host.sh("docker", "image", "inspect", "-f", "{{.Id}}", image, check=False) == "":
            problems.append(f"no image {image} (scripts/test-image.sh, scripts/bench-image.sh)")
    if problems:
        sys.exit("bench: " + "; ".join(problems))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1")
    ap.add_argument("--out")
    ap.add_argument("--only", help="comma-separated measures: " + ",".join(n for n, _ in MEASURES))
    ap.add_argument("--check", metavar="DIR")
    ap.add_argument("--sweep", action="store_true", help="only remove what a bench run left")
    ap.add_argument("--rewrite", metavar="DIR", help="write DIR's report again from its latest.json")
    args = ap.parse_args()
    if args.rewrite:
        with open(os.path.join(args.rewrite, "latest.json")) as f:
            run = json.load(f)
        md, _, _ = report.write(run, args.rewrite)
        if not run["quick"] and not run["errors"] and os.path.samefile(args.rewrite, os.path.join(ROOT, "bench", "results")):
            report.update_readme(os.path.join(ROOT, "README.md"), run, os.path.relpath(md, ROOT))
        return 0
    if args.check:
        return check(args.check)
    if args.sweep:
        sweep(lambda m: print(m, file=sys.stderr))
        left = leftovers()
        print("left:", " ".join(left) or "nothing")
        return 1 if left else 0
    out = args.out or os.path.join(ROOT, "bench", "results", "smoke" if args.quick else "")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = args.only.split(",") if args.only else [n for n, _ in MEASURES]
    unknown = sorted(set(names) - {n for n, _ in MEASURES})
    if unknown:
        sys.exit(f"bench: --only: unknown measure(s) {', '.join(unknown)}; known: {', '.join(n for n, _ in MEASURES)}")
    selected = [(n, m) for n, m in MEASURES if n in names]
    on_host = any(uses_host(m) for _, m in selected)
    if on_host:
        preflight()
    ctx = Ctx(args.quick)
    ctx.plugin = host.Plugin()
    run = {"quick": args.quick, "stamp": host.stamp(ROOT), "results": {}, "rows": [], "errors": {}}
    ctx.log(f"bench ({'quick' if args.quick else 'full'}): {', '.join(n for n, _ in selected)}")
    if on_host:
        sweep(ctx.log)
    t0 = time.time()
    try:
        for name, module in selected:
            ctx.log(f"== {name}")
            try:
                result = module.run(ctx)
                run["rows"] += result.pop("rows")
                run["results"][name] = result
            except Exception as e:
                ctx.log(f"{name} failed: {e}")
                traceback.print_exc()
                run["errors"][name] = host.short(e, 1000)
                run["rows"].append(row(name, "–", "–", "–", "–", "–", "failed", host.short(e)))
            finally:
                ctx.run_cleanups()
                ctx.plugin.close()
    except BaseException as e:  # interrupted: clean up and still write what was measured
        run["interrupted"] = f"{type(e).__name__} {e}"
        raise
    finally:
        ctx.run_cleanups()
        if on_host:
            sweep(ctx.log)
        left = (leftovers() if on_host else []) + ctx.leftovers
        run["clean"], run["leftovers"] = not left, " ".join(left)
        run["seconds"] = time.time() - t0
        md, js, png = report.write(run, out)
        ctx.log(f"report: {md}, {js}, {png}")
    if not args.quick and not args.only and not args.out and not run["errors"]:
        link = os.path.relpath(md, ROOT)
        if report.update_readme(os.path.join(ROOT, "README.md"), run, link):
            ctx.log("README.md: latest table updated")
    print(open(md).read())
    if run["errors"] or left:
        sys.exit(f"bench: {len(run['errors'])} measure(s) failed; leftovers: {run['leftovers'] or 'none'}")


def check(directory):
    """The smoke pass's report is there and well-formed (never its timings)."""
    md, js, png = (os.path.join(directory, f"latest.{e}") for e in ("md", "json", "png"))
    with open(js) as f:
        run = json.load(f)
    problems = []
    for key in ("stamp", "rows", "results", "clean"):
        if key not in run:
            problems.append(f"{js}: no {key}")
    for key in ("cores", "memory_gib", "kernel", "docker", "iptables", "commit"):
        if not run.get("stamp", {}).get(key):
            problems.append(f"{js}: stamp has no {key}")
    names = {n for n, _ in MEASURES}
    if set(run.get("results", {})) != names:
        problems.append(f"{js}: results for {sorted(run.get('results', {}))}, expected {sorted(names)}")
    text = open(md).read()
    if report.table(run.get("rows", [])) not in text or "## Goals in plain words" not in text:
        problems.append(f"{md}: no table or no verdicts")
    with open(png, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            problems.append(f"{png}: not a PNG")
    if not run.get("clean"):
        problems.append(f"leftovers after the run: {run.get('leftovers')}")
    for p in problems:
        print("bench check:", p)
    print(f"bench check: {len(run.get('rows', []))} rows, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
