"""Multi-host (issue 14): container to container across two hosts of the
swarm lab (scripts/swarm-lab.sh: dockerd in namespaces of this machine,
joined into one swarm), over a rustbridge swarm network (kernel VXLAN)
against Docker's own overlay network, measured twice so that
overlay′/overlay is the run's noise floor: iperf3 TCP throughput and ping
round-trip time, in interleaved rounds. Nothing of the machine's own dockerd
or plugin is used. The lab is brought up here and torn down whatever
happens, under the lab lock."""

import concurrent.futures
import fcntl
import os
import re
import time

import stats
from common import row, gbit, iperf_gbps, spread, x
from host import sh, IPERF_IMAGE, PLUGIN_REF

# run.py: neither the host's dockerd nor its plugin is needed or touched.
USES_HOST = False
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABSH = os.path.join(ROOT, "scripts", "swarm-lab.sh")
PLUGIN_DIR = os.path.join(ROOT, "plugin", "build")
LAB_DIR = "/tmp/rb-bench-lab"
# One lab at a time on this machine (its namespace names are fixed).
LAB_LOCK = "/tmp/rb-lab.lock"
LAB_LOCK_WAIT = 600
# Where the plugin setting every swarm node needs is kept (RB_SWARM_SETTING).
LIBSH = os.path.join(ROOT, "scripts", "lib.sh")
NETWORKS = {"rustbridge": (PLUGIN_REF, "10.232.0.0/24"), "overlay": ("overlay", "10.233.0.0/24")}
SERVER_NODE, CLIENT_NODE = 2, 1
PING_INTERVAL = 0.1
GOAL = 1.0  # Docker's overlay: ≥ its throughput, ≤ its round-trip time


def lab(*args, timeout=120, settings=""):
    env = [f"LAB_DIR={LAB_DIR}", "LAB_NODES=2", f"LAB_PLUGIN_SETTINGS={settings}"]
    return sh("env", *env, LABSH, *args, timeout=timeout)


def dk(node, *args, timeout=120):
    return lab("exec", str(node), *args, timeout=timeout)


def same_file(path, st):
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def caller_has_open(st):
    """Whether a process this one descends from has the lock file open
    (`flock /tmp/rb-lab.lock make bench`, or a script's `exec 9>…; flock 9`):
    then the lock that is busy is our caller's, and waiting would never end."""
    pid = os.getppid()
    while pid > 1:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        if any(same_file(f"/proc/{pid}/fd/{fd}", st) for fd in fds):
            return True
        pid = parent(pid)
    return False


def take_lab_lock(ctx):
    """The lab lock, held until the lock file is closed (None when our caller holds it)."""
    f = open(LAB_LOCK, "a")
    deadline = time.time() + LAB_LOCK_WAIT
    waited = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if caller_has_open(os.fstat(f.fileno())):
                ctx.log(f"{LAB_LOCK} is held by this run's caller")
                f.close()
                return None
            if time.time() > deadline:
                f.close()
                raise RuntimeError(f"{LAB_LOCK}: still held by someone else after {LAB_LOCK_WAIT} s (another lab run)")
            if not waited:
                ctx.log(f"waiting for {LAB_LOCK} (another lab run)")
                waited = True
            time.sleep(1)


def swarm_setting():
    """The plugin setting of swarm nodes, from its one home (scripts/lib.sh)."""
    setting = sh("bash", "-c", '. "$1" && printf %s "$RB_SWARM_SETTING"', "_", LIBSH)
    if not setting:
        raise RuntimeError(f"{LIBSH} defines no RB_SWARM_SETTING")
    return setting


def lab_down(ctx):
    """Down, then whatever of the lab is still there is a leftover of the run."""
    try:
        lab("down", timeout=180)
        ctx.log("lab down")
    except RuntimeError as e:
        ctx.log(f"lab down: {e}")
    left = [n for n in sh("ip", "netns", "list", check=False).split() if re.fullmatch(r"lab-(u|x|n\d+)", n)]
    left += [LAB_DIR] if os.path.exists(LAB_DIR) else []
    if left:
        ctx.leftovers += left
        ctx.log(f"the lab left: {' '.join(left)}")


def up(ctx, setting):
    """The lab with two nodes, the managed plugin on both, the iperf3 image on both."""
    if not os.path.exists(os.path.join(PLUGIN_DIR, "config.json")):
        raise RuntimeError(f"no managed plugin in {PLUGIN_DIR} (make rootfs)")
    lab("down", timeout=180)  # a killed run's lab
    lab("up", timeout=300)
    ctx.log("lab up")
    lab("plugin-install", PLUGIN_DIR, settings=setting, timeout=300)
    for n in (1, 2):
        sh("env", f"DOCKER_HOST=unix://{LAB_DIR}/n{n}/docker.sock", f"IPERF_IMAGE={IPERF_IMAGE}",
           os.path.join(ROOT, "scripts", "bench-image.sh"), timeout=300)
    ctx.log(f"plugin ({setting}) and {IPERF_IMAGE} on both nodes")
    return dk(CLIENT_NODE, "version", "-f", "{{.Server.Version}}")


def pairs():
    """{network kind: (client container, server address)}: an iperf3 server on
    one node and a client on the other, on each network."""
    for kind, (driver, subnet) in NETWORKS.items():
        dk(1, "network", "create", "-d", driver, "--attachable", "--subnet", subnet, f"bench-{kind}")
    runs = [(node, name, kind, cmd) for kind in NETWORKS
            for node, name, cmd in ((SERVER_NODE, f"s-{kind}", ["iperf3", "-s"]),
                                    (CLIENT_NODE, f"c-{kind}", ["sleep", "3600"]))]
    # In parallel: a worker's first container on a swarm network waits for its attachment.
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        for f in [pool.submit(dk, node, "run", "-d", "--name", name, "--network", f"bench-{kind}", IPERF_IMAGE, *cmd)
                  for node, name, kind, cmd in runs]:
            f.result()
    return {kind: (f"c-{kind}", dk(SERVER_NODE, "inspect", "-f",
                                   f"{{{{(index .NetworkSettings.Networks \"bench-{kind}\").IPAddress}}}}", f"s-{kind}"))
            for kind in NETWORKS}


def answers(client, ip):
    try:
        dk(CLIENT_NODE, "exec", client, "ping", "-c", "1", "-W", "1", ip, timeout=30)
        return True
    except RuntimeError:
        return False


def wait_paths(ctx, paths, seconds=60):
    """Both paths answer before anything is measured (rustbridge's membership task needs a pass or two)."""
    t = time.time()
    for kind, (client, ip) in paths.items():
        while not answers(client, ip):
            if time.time() - t > seconds:
                raise RuntimeError(f"{client} on node {CLIENT_NODE} does not reach {ip} over {kind} after {seconds} s")
            time.sleep(0.5)
    ctx.log(f"both paths answer after {time.time() - t:.1f} s")


def throughput(client, ip, seconds):
    return iperf_gbps(dk(CLIENT_NODE, "exec", client, "iperf3", "-c", ip, "-t", str(seconds), "-J",
                         timeout=seconds + 60))


def rtts(client, ip, count):
    """Seconds of each of count pings."""
    out = dk(CLIENT_NODE, "exec", client, "ping", "-c", str(count), "-i", str(PING_INTERVAL), ip,
             timeout=count * PING_INTERVAL + 60)
    times = [float(t) / 1000 for t in re.findall(r"time=([0-9.]+) ms", out)]
    if len(times) != count:
        raise RuntimeError(f"ping {ip} from {client}: {len(times)} replies of {count}")
    return times


def flat(runs):
    return [v for run in runs for v in run]


def run(ctx):
    seconds, rounds, pings = ctx.pick(5, 1), ctx.pick(4, 1), ctx.pick(20, 5)
    lock = take_lab_lock(ctx)
    if lock is not None:
        ctx.on_exit(lock.close)
    ctx.on_exit(lab_down, ctx)
    ctx.log(f"swarm lab: 2 nodes in {LAB_DIR}")
    setting = swarm_setting()
    engine = up(ctx, setting)
    paths = pairs()
    ctx.log("networks and containers up")
    wait_paths(ctx, paths)

    def once(kind):
        client, ip = paths[kind]
        return {"gbps": throughput(client, ip, seconds), "rtt": rtts(client, ip, pings)}

    ctx.log(f"dockerd {engine} x2: {rounds} rounds of iperf3 {seconds} s + {pings} pings, rustbridge / overlay / overlay'")
    s = stats.interleave(rounds, {"rustbridge": lambda: once("rustbridge"), "overlay": lambda: once("overlay"),
                                  "overlay2": lambda: once("overlay")})
    tp = {k: [r["gbps"] for r in v] for k, v in s.items()}
    rt = {k: [r["rtt"] for r in v] for k, v in s.items()}
    c_tp = stats.compare(tp["rustbridge"], tp["overlay"], tp["overlay2"], ref="overlay")
    c_rt = stats.compare(flat(rt["rustbridge"]), flat(rt["overlay"]), flat(rt["overlay2"]), ref="overlay")
    # Per round: the ratio of that round's median RTTs (not ping by ping).
    c_rt["round_ratio_median"] = stats.median([stats.median(a) / stats.median(b)
                                               for a, b in zip(rt["rustbridge"], rt["overlay"])])
    v_tp = stats.verdict(c_tp["ratio"], GOAL, stats.noise_of(c_tp["floor"]), higher_is_better=True)
    v_rt = stats.verdict(c_rt["ratio"], GOAL, stats.noise_of(c_rt["floor"]))
    where = f"dockerd {engine} ×2 in the swarm lab on this machine (veth underlay)"
    return {
        "engine": engine, "plugin_setting": setting, "rounds": rounds, "seconds_per_run": seconds,
        "pings_per_run": pings, "ping_interval_s": PING_INTERVAL,
        "networks": {k: {"driver": d, "subnet": n} for k, (d, n) in NETWORKS.items()},
        "samples_gbps": tp, "samples_rtt_s": rt,
        "comparison": {"gbps": c_tp, "rtt": c_rt},
        "rows": [
            row(f"two hosts: iperf3 container→container, {seconds} s runs", "VXLAN " + gbit(c_tp["rustbridge"]),
                "Docker overlay " + gbit(c_tp["overlay"]), x(c_tp["ratio"]), f"{x(c_tp['floor'])} (overlay′/overlay)",
                "≥ overlay", v_tp, f"throughput ratio (higher is better); per-round median "
                f"{x(c_tp['round_ratio_median'])}; {where}"),
            row(f"two hosts: ping RTT container→container, {pings} pings a run", "VXLAN " + spread(c_rt["rustbridge"]),
                "Docker overlay " + spread(c_rt["overlay"]), x(c_rt["ratio"]), f"{x(c_rt['floor'])} (overlay′/overlay)",
                "≤ overlay", v_rt, f"round-trip ratio (lower is better); per-round median "
                f"{x(c_rt['round_ratio_median'])}; {where}"),
        ],
    }
