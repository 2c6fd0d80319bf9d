//! Observability: one registry the server (calls, latency) and the reconciler
//! (checks, repairs, drift) report to, rendered in the Prometheus text format
//! together with gauges read from the state at scrape time and process metrics
//! from /proc/self. The registry also backs `/health` and the `status` view.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod http;

/// Upper bounds of the latency histogram, in seconds (a call is a few
/// netlink round trips, one nf_tables transaction and one fsync).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0];

#[derive(Debug, Default, Clone)]
struct MethodStats {
    calls: u64,
    errors: u64,
    /// Count per bucket of LATENCY_BUCKETS (not cumulative).
    buckets: Vec<u64>,
    sum_seconds: f64,
}

/// What the last kernel check (start-up or periodic reconcile) found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CheckReport {
    /// Unix time of the last check that ran to the end without error.
    pub last_success_unix: Option<f64>,
    /// Unix time of the last check, successful or not.
    pub last_run_unix: Option<f64>,
    /// The last check's error, when it failed.
    pub last_error: Option<String>,
    /// What the last check found out of place (before repairing it); empty when the kernel matched.
    pub drift: Vec<String>,
}

#[derive(Default)]
struct Inner {
    methods: BTreeMap<String, MethodStats>,
    repairs: BTreeMap<String, u64>,
    check: CheckReport,
    pending_drift: Vec<String>,
    state_loaded: bool,
    firewall: String,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    started: SystemTime,
}

/// Values read from the plugin's state at scrape time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StateGauges {
    pub networks: usize,
    pub endpoints: usize,
    pub published_ports: usize,
    /// Per pool ID: (addresses in use, addresses free).
    pub pools: Vec<(String, u128, u128)>,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process's registry (the server, the reconciler and `serve` report here).
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::new)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics { inner: Mutex::new(Inner::default()), started: SystemTime::now() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One protocol call: its method (path without the leading '/'), how long it took, and whether it failed.
    pub fn record_call(&self, method: &str, took: Duration, ok: bool) {
        let mut inner = self.lock();
        let stats = inner.methods.entry(method.trim_start_matches('/').to_string()).or_default();
        if stats.buckets.is_empty() {
            stats.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        let seconds = took.as_secs_f64();
        stats.calls += 1;
        stats.errors += u64::from(!ok);
        stats.sum_seconds += seconds;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            stats.buckets[i] += 1;
        }
    }

    /// One repair made by the reconciler (`bridge_recreated`, `link_removed`, `rules_restored`, ...).
    pub fn record_repair(&self, kind: &str) {
        *self.lock().repairs.entry(kind.to_string()).or_default() += 1;
    }

    /// Something a kernel check found out of place (it is repaired right after).
    pub fn record_drift(&self, what: impl Into<String>) {
        self.lock().pending_drift.push(what.into());
    }

    /// The end of one kernel check: whether it finished without error; the
    /// drift recorded since the previous check becomes the check's finding.
    pub fn record_check(&self, result: Result<(), String>) {
        let now = unix(SystemTime::now());
        let mut inner = self.lock();
        inner.check.last_run_unix = Some(now);
        inner.check.drift = std::mem::take(&mut inner.pending_drift);
        match result {
            Ok(()) => {
                inner.check.last_success_unix = Some(now);
                inner.check.last_error = None;
            }
            Err(e) => inner.check.last_error = Some(e),
        }
    }

    pub fn set_state_loaded(&self) {
        self.lock().state_loaded = true;
    }

    pub fn set_firewall(&self, describe: impl Into<String>) {
        self.lock().firewall = describe.into();
    }

    pub fn firewall(&self) -> String {
        self.lock().firewall.clone()
    }

    pub fn check(&self) -> CheckReport {
        self.lock().check.clone()
    }

    pub fn repairs(&self) -> BTreeMap<String, u64> {
        self.lock().repairs.clone()
    }

    /// `/health`: ok only when the state is loaded and the last check succeeded.
    pub fn health(&self) -> Result<(), String> {
        let inner = self.lock();
        if !inner.state_loaded {
            return Err("state not loaded yet".into());
        }
        match (&inner.check.last_run_unix, &inner.check.last_error) {
            (None, _) => Err("no reconcile has run yet".into()),
            (Some(_), Some(e)) => Err(format!("last reconcile failed: {e}")),
            (Some(_), None) => Ok(()),
        }
    }

    /// The whole exposition, Prometheus text format 0.0.4.
    pub fn render(&self, state: &StateGauges, process: &ProcessStats) -> String {
        let inner = self.lock();
        let mut out = String::new();
        family(&mut out, "rustbridge_calls_total", "counter", "Protocol calls answered, per method.");
        for (method, s) in &inner.methods {
            sample(&mut out, "rustbridge_calls_total", &[("method", method)], s.calls as f64);
        }
        family(
            &mut out,
            "rustbridge_call_errors_total",
            "counter",
            "Protocol calls answered with an error, per method.",
        );
        for (method, s) in &inner.methods {
            sample(&mut out, "rustbridge_call_errors_total", &[("method", method)], s.errors as f64);
        }
        let name = "rustbridge_call_duration_seconds";
        family(&mut out, name, "histogram", "Time to answer a protocol call, per method.");
        for (method, s) in &inner.methods {
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&s.buckets) {
                cumulative += count;
                let le = bound.to_string();
                sample(&mut out, &format!("{name}_bucket"), &[("method", method), ("le", &le)], cumulative as f64);
            }
            sample(&mut out, &format!("{name}_bucket"), &[("method", method), ("le", "+Inf")], s.calls as f64);
            sample(&mut out, &format!("{name}_sum"), &[("method", method)], s.sum_seconds);
            sample(&mut out, &format!("{name}_count"), &[("method", method)], s.calls as f64);
        }
        gauge(&mut out, "rustbridge_networks", "Networks the plugin holds.", state.networks as f64);
        gauge(&mut out, "rustbridge_endpoints", "Endpoints the plugin holds.", state.endpoints as f64);
        gauge(&mut out, "rustbridge_published_ports", "Published ports programmed.", state.published_ports as f64);
        family(&mut out, "rustbridge_pool_addresses_in_use", "gauge", "Addresses allocated, per IPAM pool.");
        for (pool, used, _) in &state.pools {
            sample(&mut out, "rustbridge_pool_addresses_in_use", &[("pool", pool)], *used as f64);
        }
        family(&mut out, "rustbridge_pool_addresses_free", "gauge", "Addresses still free, per IPAM pool.");
        for (pool, _, free) in &state.pools {
            sample(&mut out, "rustbridge_pool_addresses_free", &[("pool", pool)], *free as f64);
        }
        family(&mut out, "rustbridge_reconcile_repairs_total", "counter", "Repairs made by the reconciler, per kind.");
        for (kind, n) in &inner.repairs {
            sample(&mut out, "rustbridge_reconcile_repairs_total", &[("kind", kind)], *n as f64);
        }
        if let Some(t) = inner.check.last_success_unix {
            gauge(
                &mut out,
                "rustbridge_last_successful_check_timestamp_seconds",
                "Unix time of the last kernel check that succeeded.",
                t,
            );
        }
        let healthy = inner.state_loaded && inner.check.last_run_unix.is_some() && inner.check.last_error.is_none();
        gauge(
            &mut out,
            "rustbridge_healthy",
            "1 when the state is loaded and the last check succeeded.",
            f64::from(u8::from(healthy)),
        );
        gauge(
            &mut out,
            "rustbridge_drift_items",
            "Things the last kernel check found out of place (repaired since).",
            inner.check.drift.len() as f64,
        );
        family(&mut out, "rustbridge_build_info", "gauge", "Version and git commit of the running plugin.");
        sample(
            &mut out,
            "rustbridge_build_info",
            &[("version", crate::version::VERSION), ("commit", crate::version::COMMIT), ("firewall", &inner.firewall)],
            1.0,
        );
        drop(inner);
        process.render(&mut out, unix(self.started));
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    family(out, name, "gauge", help);
    sample(out, name, &[], value);
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
        let _ = write!(out, "{{{}}}", inner.join(","));
    }
    let _ = writeln!(out, " {}", format_value(value));
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// The standard process metrics (as Prometheus client libraries name them), from /proc/self.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).map(|n| n * 1024))
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let max_fds = parse_max_open_files(&limits);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cpu_seconds = parse_cpu_ticks(&stat).filter(|_| ticks > 0).map(|t| t as f64 / ticks as f64);
        ProcessStats { resident_bytes: kib("VmRSS:"), virtual_bytes: kib("VmSize:"), open_fds, max_fds, cpu_seconds }
    }

    fn render(&self, out: &mut String, start_unix: f64) {
        let mut put = |name: &str, kind: &str, help: &str, value: Option<f64>| {
            if let Some(v) = value {
                family(out, name, kind, help);
                sample(out, name, &[], v);
            }
        };
        put("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.", self.cpu_seconds);
        put(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|v| v as f64),
        );
        put(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            self.virtual_bytes.map(|v| v as f64),
        );
        put("process_open_fds", "gauge", "Open file descriptors.", self.open_fds.map(|v| v as f64));
        put("process_max_fds", "gauge", "Limit of open file descriptors.", self.max_fds.map(|v| v as f64));
        put(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process, Unix time in seconds.",
            Some(start_unix),
        );
    }
}

/// utime + stime (fields 14 and 15) of /proc/self/stat; the command name (field 2) may hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // after_comm starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests;
