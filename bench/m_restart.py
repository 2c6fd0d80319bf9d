"""Plugin restart to serving: the plugin is killed (SIGKILL) and dockerd
starts it again; timed from the moment the new process has exec'd the plugin
(seen in /proc, polled every few ms, so up to ~5 ms late) until the socket
answers, and until a real CreateEndpoint+Join has been served."""

import os
import signal
import time

from host import Plugin, PluginError, now, plugin_pid, sh, PLUGIN_REF

TIMEOUT = 60


def _new_plugin_process(old):
    deadline = now() + TIMEOUT
    while now() < deadline:
        pid = plugin_pid(exclude=old)
        if pid:
            return pid
        time.sleep(0.002)
    enabled = sh("docker", "plugin", "inspect", "-f", "{{.Name}} enabled={{.Enabled}}", PLUGIN_REF, check=False)
    raise RuntimeError(f"no new plugin process within {TIMEOUT} s of killing {old} ({enabled or PLUGIN_REF + ' not installed'})")


def _until_listening():
    deadline = now() + TIMEOUT
    while now() < deadline:
        p = Plugin(timeout=5)
        try:
            p.call("NetworkDriver.GetCapabilities")
            return
        except (OSError, PluginError):
            time.sleep(0.001)
        finally:
            p.close()
    raise RuntimeError(f"the restarted plugin did not answer within {TIMEOUT} s")


def restart(probe):
    """Kills the plugin, waits for its successor; probe() is the first real call
    (given a fresh Plugin client). Returns the phases in seconds."""
    old = plugin_pid()
    if old is None:
        raise RuntimeError("no plugin process (/usr/bin/rustbridge serve) to restart")
    t_kill = now()
    os.kill(old, signal.SIGKILL)
    _new_plugin_process(old)
    t_exec = now()
    _until_listening()
    t_listen = now()
    client = Plugin()
    try:
        probe(client)
    finally:
        client.close()
    t_served = now()
    time.sleep(1)  # let dockerd settle before anything kills the plugin again
    return {"kill_to_exec": t_exec - t_kill, "exec_to_listen": t_listen - t_exec, "exec_to_served": t_served - t_exec}
