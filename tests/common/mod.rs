//! Harness for tests that run the real `rustbridge` binary inside throwaway
//! network namespaces: namespace guards, a plugin process guard with a tiny
//! HTTP/1.1-over-Unix-socket client, fake containers, and bounded command runs.
//!
//! Everything the plugin does happens inside a namespace created here; the
//! host's own links and firewall are never touched. Every guard cleans up in
//! `Drop`, so a failing (panicking) test leaves nothing behind.

#![allow(dead_code)]

pub mod replay;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Upper bound for any helper command (ip, iptables, ping, kill).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Read/write timeout of one plugin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the plugin may take to answer `/Plugin.Activate` after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ------------------------------------------------------------------ preconditions

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Effective UID 0, read from /proc/self/status (no libc).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// True when the test may run. Without root: panics under `CI=true` (a CI
/// run must never silently skip), otherwise prints why and returns false.
/// With root, checks the tools the tests rely on and panics naming what is missing.
pub fn ready_or_skip(test: &str) -> bool {
    if !is_root() {
        if in_ci() {
            panic!("{test}: needs root (network namespaces, bridges, iptables), and CI=true forbids skipping");
        }
        eprintln!("{test}: skipped: needs root");
        return false;
    }
    check_tools();
    true
}

fn check_tools() {
    let mut missing = Vec::new();
    for tool in ["ip", "iptables", "iptables-save", "iptables-restore", "nft", "sysctl", "kill"] {
        if find_in_path(tool).is_none() {
            missing.push(tool.to_string());
        }
    }
    if ping_command().is_none() {
        missing.push("ping (install iputils-ping, or busybox: /bin/busybox ping)".to_string());
    }
    assert!(missing.is_empty(), "netns tests need these tools, missing: {}", missing.join(", "));
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `ping` from iputils if installed, else busybox's applet.
fn ping_command() -> Option<Vec<String>> {
    if let Some(p) = find_in_path("ping") {
        return Some(vec![p.to_string_lossy().into_owned()]);
    }
    for busybox in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(busybox).is_file() {
            return Some(vec![busybox.to_string(), "ping".to_string()]);
        }
    }
    find_in_path("busybox").map(|b| vec![b.to_string_lossy().into_owned(), "ping".to_string()])
}

// ------------------------------------------------------------------ commands

#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command and its output unless it succeeded.
    pub fn expect_ok(self) -> Out {
        assert!(
            self.ok(),
            "command failed: {}\nstatus: {}\nstdout: {}\nstderr: {}",
            self.command,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs a command with a hard time limit; output is collected by threads so
/// that no pipe can fill up and block the child.
pub fn run(program: &str, args: &[&str]) -> Out {
    let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out after {COMMAND_TIMEOUT:?}: {command}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Out { status, stdout, stderr, command }
}

/// 64 hex characters, like dockerd's network and endpoint IDs.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `check` every 50 ms until it returns true or `limit` passes; returns the time it took.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ namespaces

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        // A leftover of an earlier, killed run of the same pid would make `add` fail.
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name]).expect_ok();
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]).expect_ok();
        ns
    }

    /// A namespace set up like a host where dockerd runs: FORWARD policy DROP,
    /// br_netfilter passing bridged traffic to iptables, forwarding on.
    pub fn host() -> Netns {
        let ns = Netns::create(format!("rbt-{}-{}", std::process::id(), unique()));
        if find_in_path("modprobe").is_some() {
            // Global but harmless; the module may as well be built in or loaded already.
            let _ = run("modprobe", &["br_netfilter"]);
        }
        let sysctl = ns.exec(&["sysctl", "-w", "net.bridge.bridge-nf-call-iptables=1"]);
        assert!(
            sysctl.ok(),
            "br_netfilter is not available inside a network namespace (modprobe br_netfilter?): {}",
            sysctl.stderr
        );
        ns.exec(&["sysctl", "-w", "net.ipv4.ip_forward=1"]).expect_ok();
        ns.exec(&["iptables", "-P", "FORWARD", "DROP"]).expect_ok();
        ns
    }

    /// An empty namespace playing a container's sandbox.
    pub fn container() -> Netns {
        Netns::create(format!("rbt-{}-c{}", std::process::id(), unique()))
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> Out {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NAME ARGS…`
    pub fn exec(&self, args: &[&str]) -> Out {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -d -j link` parsed: every link of the namespace.
    pub fn links(&self) -> Vec<Value> {
        let out = self.ip(&["-d", "-j", "link", "show"]).expect_ok();
        match serde_json::from_str(&out.stdout) {
            Ok(Value::Array(links)) => links,
            other => panic!("unexpected `ip -j link` output {other:?}: {}", out.stdout),
        }
    }

    pub fn link_names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.links().iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect();
        names.sort();
        names
    }

    /// One link in detail (`ip -d -j link show NAME`), None if absent.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    pub fn has_link(&self, name: &str) -> bool {
        self.link(name).is_some()
    }

    /// "ADDR/PREFIX" of every IPv4 address of a link.
    pub fn ipv4_addresses(&self, dev: &str) -> Vec<String> {
        let out = self.ip(&["-j", "addr", "show", "dev", dev]).expect_ok();
        let parsed: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let mut found = Vec::new();
        for link in parsed.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if a["family"] == "inet" {
                    found.push(format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]));
                }
            }
        }
        found
    }

    pub fn iptables_save(&self) -> String {
        self.exec(&["iptables-save"]).expect_ok().stdout
    }

    /// `iptables -S CHAIN` lines, or None when the chain does not exist.
    pub fn iptables_chain(&self, table: &str, chain: &str) -> Option<Vec<String>> {
        let out = self.exec(&["iptables", "-t", table, "-S", chain]);
        out.ok().then(|| out.stdout.lines().map(str::to_string).collect())
    }

    /// `nft list table inet rustbridge` (the plugin's table) as text, or None when absent.
    pub fn nft_table(&self) -> Option<String> {
        let out = self.exec(&["nft", "list", "table", "inet", "rustbridge"]);
        out.ok().then_some(out.stdout)
    }

    /// The elements of one of the plugin's sets or maps, as `nft -j` prints them (empty when absent).
    pub fn nft_elements(&self, set: &str) -> Vec<Value> {
        let mut out = self.exec(&["nft", "-j", "list", "set", "inet", "rustbridge", set]);
        if !out.ok() {
            out = self.exec(&["nft", "-j", "list", "map", "inet", "rustbridge", set]);
        }
        if !out.ok() {
            return vec![];
        }
        let parsed: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        parsed["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("set").or_else(|| o.get("map")))
            .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// True when one ping (of up to `tries`) gets an answer.
    pub fn ping_ok(&self, addr: &str, tries: usize) -> bool {
        (0..tries).any(|_| self.ping_once(addr, 1))
    }

    /// Sends `count` echo requests, waits up to 2 s for an answer; true on any reply.
    pub fn ping_once(&self, addr: &str, count: u32) -> bool {
        let ping = ping_command().expect("checked by ready_or_skip");
        let count = count.to_string();
        let mut args: Vec<&str> = ping.iter().map(String::as_str).collect();
        args.extend_from_slice(&["-c", &count, "-W", "2", addr]);
        self.exec(&args).ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run("ip", &["netns", "del", &self.name]);
        if !out.ok() && !std::thread::panicking() {
            eprintln!("warning: could not delete netns {}: {}", self.name, out.stderr);
        }
    }
}

/// What dockerd does after a Join answered `SrcName=peer`: move the peer into
/// the sandbox, rename it eth0, set the MAC from CreateEndpoint, add the
/// address, bring it up and route by default via the gateway.
pub fn fake_container(host: &Netns, peer: &str, mac: Option<&str>, address: &str, gateway: Option<&str>) -> Netns {
    let c = Netns::container();
    host.ip(&["link", "set", peer, "netns", &c.name]).expect_ok();
    c.ip(&["link", "set", peer, "name", "eth0"]).expect_ok();
    if let Some(mac) = mac {
        c.ip(&["link", "set", "eth0", "address", mac]).expect_ok();
    }
    c.ip(&["addr", "add", address, "dev", "eth0"]).expect_ok();
    c.ip(&["link", "set", "eth0", "up"]).expect_ok();
    if let Some(gw) = gateway {
        c.ip(&["route", "add", "default", "via", gw]).expect_ok();
    }
    c
}

// ------------------------------------------------------------------ plugin process

/// The real binary running inside a namespace; killed on drop, its log printed
/// when the test is failing.
pub struct Plugin {
    pub netns: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    /// More `serve` flags (e.g. `--metrics-addr`).
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl Plugin {
    pub fn start(ns: &Netns) -> Plugin {
        Plugin::start_with(ns, &[])
    }

    pub fn start_with(ns: &Netns, extra_args: &[&str]) -> Plugin {
        let dir = std::env::temp_dir().join(format!("rbt-{}-{}-plugin", std::process::id(), unique()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create plugin temp dir");
        let mut plugin = Plugin {
            netns: ns.name.clone(),
            socket: dir.join("rb.sock"),
            state_dir: dir.join("state"),
            log: dir.join("plugin.log"),
            dir,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        plugin.spawn();
        plugin
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "plugin already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open plugin log");
        let log2 = log.try_clone().expect("clone log handle");
        // `ip netns exec` execs the binary: the child's pid is the plugin's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, env!("CARGO_BIN_EXE_rustbridge"), "serve"])
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--log-level", "debug", "--reconcile-seconds", "1"])
            // Endpoints whose pair stays back in the host are forgotten after 2 s, not 30.
            .args(["--unclaimed-grace-seconds", "2"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .expect("start rustbridge");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("wait for plugin")) {
                self.child = None;
                panic!("plugin exited during start-up ({status}); log:\n{}", self.log_text());
            }
            // The handshake is answered before the start-up repair is done;
            // a call that needs the state waits for it (EndpointOperInfo of
            // no endpoint changes nothing), so tests see the repaired kernel.
            if let Ok((200, _)) = self.try_call_raw("/Plugin.Activate", b"") {
                let none = format!(r#"{{"NetworkID":"{0}","EndpointID":"{0}"}}"#, "0".repeat(64));
                let settled = self.try_call_raw("/NetworkDriver.EndpointOperInfo", none.as_bytes());
                assert!(settled.is_ok(), "EndpointOperInfo after start: {settled:?}");
                return;
            }
            if start.elapsed() > START_TIMEOUT {
                panic!("plugin did not answer /Plugin.Activate within {START_TIMEOUT:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("plugin is running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("wait for plugin").is_none(),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// SIGKILL via the `kill` command; reaps the process.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("plugin is running");
        run("kill", &["-9", &child.id().to_string()]).expect_ok();
        let status = child.wait().expect("reap plugin");
        assert_eq!(status.code(), None, "plugin should have died of SIGKILL, got {status}");
    }

    /// SIGTERM via the `kill` command; returns how long the process took to
    /// exit and its status (panics if it is still running after 5 s).
    pub fn sigterm(&mut self) -> (Duration, ExitStatus) {
        let mut child = self.child.take().expect("plugin is running");
        let start = Instant::now();
        run("kill", &["-TERM", &child.id().to_string()]).expect_ok();
        loop {
            if let Some(status) = child.try_wait().expect("wait for plugin") {
                return (start.elapsed(), status);
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("plugin still running 5 s after SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the binary again on the same socket and state directory.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn();
    }

    /// One call; panics on a transport error (with the plugin's log).
    pub fn call(&self, path: &str, body: Value) -> (u16, Value) {
        let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.try_call_raw(path, &bytes).unwrap_or_else(|e| panic!("{path}: {e}; log:\n{}", self.log_text()))
    }

    /// One call expected to succeed (status 200, no error key); returns the body.
    pub fn ok(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.call(path, body.clone());
        let failed = reply.get("Err").is_some_and(|e| !e.as_str().unwrap_or("").is_empty())
            || reply.get("Error").is_some_and(|e| !e.as_str().unwrap_or("").is_empty());
        assert!(status == 200 && !failed, "{path} failed: {status} {reply}\nrequest: {body}");
        reply
    }

    pub fn try_call(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.try_call_raw(path, body.to_string().as_bytes())
    }

    /// POST over the Unix socket with a hand-written HTTP/1.1 request, as
    /// dockerd sends it (no Content-Type; empty body for argument-less calls).
    pub fn try_call_raw(&self, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
        http_post(&self.socket, path, body)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- rustbridge log ({}) ----\n{}---- end of log ----", self.log.display(), self.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn http_post(socket: &Path, path: &str, body: &[u8]) -> Result<(u16, Value), String> {
    http_post_within(socket, path, body, CALL_TIMEOUT)
}

/// `http_post` with another read/write timeout.
pub fn http_post_within(socket: &Path, path: &str, body: &[u8], limit: Duration) -> Result<(u16, Value), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(limit)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // The server may answer (and stop reading) before a refused body is all
    // written: a write error is not final, the answer may still be readable.
    let write_error = stream.write_all(&request).err();
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(format!("read response: {e} (write error: {write_error:?})"));
    }
    parse_response(&response).map_err(|e| format!("{e}; write error: {write_error:?}"))
}

fn parse_response(raw: &[u8]) -> Result<(u16, Value), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let len: usize = value.trim().parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            if body.len() < len {
                return Err(format!("short body: {} of {len} bytes", body.len()));
            }
            body = &body[..len];
        }
    }
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(body)))?
    };
    Ok((status, value))
}

/// Runs `body` on a thread inside `ns` with a current-thread runtime: sockets
/// it opens (netlink) and processes it starts belong to the namespace, and so
/// do spawn_blocking threads, which are spawned from that thread.
#[allow(dead_code)] // not every test crate runs code inside a namespace
pub fn block_on_in_netns<T: Send>(ns: &Netns, body: impl AsyncFnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{}", ns.name)).expect("open the namespace");
            // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(body())
        })
        .join()
        .expect("netns thread panicked")
    })
}
