"""Everything the benchmarks touch on the host: the docker CLI, the plugin's
socket, its process, the machine's stamp, and the names every bench object
carries (so a sweep can find and remove leftovers of an earlier, killed run)."""

import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import time

RB_SOCKET = os.environ.get("RB_SOCKET", "/run/docker/plugins/rustbridge.sock")
IMAGE = os.environ.get("IMAGE", "rustbridge-test/busybox:2")
IPERF_IMAGE = os.environ.get("IPERF_IMAGE", "rustbridge-bench/iperf3:1")
# Containers and networks made through dockerd are named NAME_PREFIX-…;
# networks and endpoints made on the plugin's socket have IDs starting with ID_PREFIX.
NAME_PREFIX = "rbbench"
ID_PREFIX = "bec4"
# Kernel-floor links (made by bench/netlink.py, never by the plugin).
FLOOR_PREFIX = "bfl"
# The namespace that stands for the containers of socket-made endpoints.
PEER_NETNS = "rbt-bench-peers"
DOCKER_TIMEOUT = 120


def now():
    return time.perf_counter()


def new_id():
    return ID_PREFIX + secrets.token_hex(30)


def sh(*args, timeout=DOCKER_TIMEOUT, check=True):
    """Runs a command, returns its stdout; raises with its stderr on failure."""
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout.strip()


def docker(*args, timeout=DOCKER_TIMEOUT, check=True):
    return sh("docker", *args, timeout=timeout, check=check)


def timed(fn, *args, **kwargs):
    """Seconds fn took (its result is dropped)."""
    t = now()
    fn(*args, **kwargs)
    return now() - t


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("plugin", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class PluginError(RuntimeError):
    pass


class Plugin:
    """The plugin's protocol over its socket, on one kept-alive connection
    (as dockerd's plugin client does)."""

    def __init__(self, path=RB_SOCKET, timeout=60):
        self.path, self.timeout, self.conn = path, timeout, None

    def call(self, method, body=None):
        # Compact, as Go encodes it: the plugin limits a body to 2 MiB.
        data = json.dumps(body if body is not None else {}, separators=(",", ":"))
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.path, self.timeout)
            try:
                self.conn.request("POST", "/" + method, body=data,
                                  headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
                r = self.conn.getresponse()
                text = r.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise
        reply = json.loads(text) if text else {}
        err = reply.get("Err") or reply.get("Error") if isinstance(reply, dict) else None
        if r.status != 200 or err:
            raise PluginError(f"{method}: {r.status} {err or text[:300]!r}")
        return reply

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # The NetworkDriver calls as dockerd makes them (docs/protocol-notes.md).
    def create_network(self, net_id, subnet, gateway):
        prefix = subnet.split("/")[1]
        self.call("NetworkDriver.CreateNetwork", {
            "NetworkID": net_id,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": f"{gateway}/{prefix}"}],
            "IPv6Data": [],
            "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
        })

    def delete_network(self, net_id):
        self.call("NetworkDriver.DeleteNetwork", {"NetworkID": net_id})

    def create_endpoint(self, net_id, ep_id, address, ports=()):
        self.call("NetworkDriver.CreateEndpoint", {
            "NetworkID": net_id, "EndpointID": ep_id,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
            "Options": port_options(ports),
        })

    def join(self, net_id, ep_id, ports=()):
        return self.call("NetworkDriver.Join", {
            "NetworkID": net_id, "EndpointID": ep_id,
            "SandboxKey": f"/var/run/docker/netns/{ep_id[:12]}",
            "Options": port_options(ports),
        })

    def program(self, net_id, ep_id, ports):
        self.call("NetworkDriver.ProgramExternalConnectivity",
                  {"NetworkID": net_id, "EndpointID": ep_id, "Options": port_options(ports)})

    def revoke(self, net_id, ep_id):
        self.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": net_id, "EndpointID": ep_id})

    def leave(self, net_id, ep_id):
        self.call("NetworkDriver.Leave", {"NetworkID": net_id, "EndpointID": ep_id})

    def delete_endpoint(self, net_id, ep_id):
        self.call("NetworkDriver.DeleteEndpoint", {"NetworkID": net_id, "EndpointID": ep_id})

    def status(self):
        return self.call("Rustbridge.Status", {})


def port_options(ports):
    """dockerd's port keys for TCP ports published host port = container port."""
    return {
        "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": p} for p in ports],
        "com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": p, "HostIP": "", "HostPort": p, "HostPortEnd": p} for p in ports
        ],
    }


PLUGIN_REF = "rustbridge/rustbridge:latest"
_plugin_id = []


def plugin_id():
    """The managed plugin's ID (it stays the same across the restarts dockerd makes)."""
    if not _plugin_id:
        _plugin_id.append(docker("plugin", "inspect", "-f", "{{.Id}}", PLUGIN_REF, check=False))
    return _plugin_id[0]


def is_plugin_process(pid, exclude=None):
    """`/usr/bin/rustbridge serve` of this host's plugin: in this network namespace
    and in the cgroup dockerd named after the plugin's ID. Other dockerds on the
    machine (in namespaces of their own) run plugins with the same command line."""
    if pid == exclude or not cmdline(pid).startswith("/usr/bin/rustbridge\0serve"):
        return False
    try:
        if os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"):
            return False
        with open(f"/proc/{pid}/cgroup") as f:
            return not plugin_id() or plugin_id() in f.read()
    except OSError:
        return False


def plugin_pid(exclude=None):
    for pid in pids():
        if is_plugin_process(pid, exclude):
            return pid
    return None


def pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def plugin_rss_mib():
    pid = plugin_pid()
    kib = rss_kib(pid) if pid else None
    return None if kib is None else kib / 1024


def processes_named(exe_name):
    """(count, total RSS MiB) of the processes whose executable is exe_name."""
    count, kib = 0, 0
    for pid in pids():
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if os.path.basename(exe) == exe_name:
            count += 1
            kib += rss_kib(pid) or 0
    return count, kib / 1024


def wait_for(cond, seconds, interval=0.05):
    deadline = now() + seconds
    while now() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False


def stamp(root):
    """The machine, kernel, engine, iptables and commit the numbers belong to."""
    def first(cmd):
        try:
            return sh(*cmd, timeout=20).splitlines()[0]
        except Exception as e:  # a missing tool is recorded, not fatal
            return f"unknown ({e})"
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = first(["git", "-C", root, "rev-parse", "--short=12", "HEAD"])
    dirty = sh("git", "-C", root, "status", "--porcelain", "--untracked-files=no", check=False)
    try:
        st = Plugin(timeout=10).status()
        plugin = f"{st.get('version', '?')} ({st.get('commit', '?')}), firewall {st.get('firewall', {}).get('backend', '?')}"
    except Exception as e:
        plugin = f"unknown ({e})"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "docker": first(["docker", "version", "-f", "{{.Server.Version}}"]),
        "iptables": first(["iptables", "--version"]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "plugin": plugin,
    }


def short(text, n=300):
    text = re.sub(r"\s+", " ", str(text))
    return text if len(text) <= n else text[:n] + "…"
