use super::*;

fn render(m: &Metrics) -> String {
    let gauges = StateGauges {
        networks: 2,
        endpoints: 3,
        published_ports: 4,
        pools: vec![("rustbridge-local/10.9.0.0/24".into(), 5, 249)],
    };
    m.render(&gauges, &ProcessStats::read())
}

fn value(text: &str, series: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(str::to_string))
}

#[test]
fn calls_errors_and_cumulative_latency_buckets_per_method() {
    let m = Metrics::new();
    m.record_call("/NetworkDriver.Join", Duration::from_millis(3), true);
    m.record_call("/NetworkDriver.Join", Duration::from_millis(300), false);
    m.record_call("/IpamDriver.RequestAddress", Duration::from_secs(60), true);
    let text = render(&m);
    assert_eq!(value(&text, "rustbridge_calls_total{method=\"NetworkDriver.Join\"}").as_deref(), Some("2"));
    assert_eq!(value(&text, "rustbridge_call_errors_total{method=\"NetworkDriver.Join\"}").as_deref(), Some("1"));
    assert_eq!(
        value(&text, "rustbridge_call_errors_total{method=\"IpamDriver.RequestAddress\"}").as_deref(),
        Some("0")
    );
    let bucket = |m: &str, le: &str| {
        value(&text, &format!("rustbridge_call_duration_seconds_bucket{{method=\"{m}\",le=\"{le}\"}}"))
    };
    assert_eq!(bucket("NetworkDriver.Join", "0.001").as_deref(), Some("0"));
    assert_eq!(bucket("NetworkDriver.Join", "0.005").as_deref(), Some("1"));
    assert_eq!(bucket("NetworkDriver.Join", "0.25").as_deref(), Some("1"));
    assert_eq!(bucket("NetworkDriver.Join", "0.5").as_deref(), Some("2"));
    assert_eq!(bucket("NetworkDriver.Join", "+Inf").as_deref(), Some("2"));
    // Slower than the largest bound: only in +Inf, but counted and summed.
    assert_eq!(bucket("IpamDriver.RequestAddress", "25").as_deref(), Some("0"));
    assert_eq!(bucket("IpamDriver.RequestAddress", "+Inf").as_deref(), Some("1"));
    assert_eq!(
        value(&text, "rustbridge_call_duration_seconds_sum{method=\"IpamDriver.RequestAddress\"}").as_deref(),
        Some("60")
    );
    assert_eq!(
        value(&text, "rustbridge_call_duration_seconds_count{method=\"NetworkDriver.Join\"}").as_deref(),
        Some("2")
    );
}

#[test]
fn state_gauges_pools_repairs_and_process_metrics() {
    let m = Metrics::new();
    m.record_repair("rules_restored");
    m.record_repair("rules_restored");
    let text = render(&m);
    assert_eq!(value(&text, "rustbridge_networks").as_deref(), Some("2"));
    assert_eq!(value(&text, "rustbridge_endpoints").as_deref(), Some("3"));
    assert_eq!(value(&text, "rustbridge_published_ports").as_deref(), Some("4"));
    assert_eq!(
        value(&text, "rustbridge_pool_addresses_in_use{pool=\"rustbridge-local/10.9.0.0/24\"}").as_deref(),
        Some("5")
    );
    assert_eq!(
        value(&text, "rustbridge_pool_addresses_free{pool=\"rustbridge-local/10.9.0.0/24\"}").as_deref(),
        Some("249")
    );
    assert_eq!(value(&text, "rustbridge_reconcile_repairs_total{kind=\"rules_restored\"}").as_deref(), Some("2"));
    for name in
        ["process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total", "process_start_time_seconds"]
    {
        let v: f64 = value(&text, name).unwrap_or_else(|| panic!("{name} missing")).parse().unwrap();
        // A test process may not have used a whole clock tick of CPU yet.
        assert!(v > 0.0 || name == "process_cpu_seconds_total" && v == 0.0, "{name} = {v}");
    }
    // Every sample's family is declared once, with HELP and TYPE.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let mut unique = types.clone();
    unique.dedup();
    assert_eq!(types.len(), unique.len());
}

#[test]
fn health_needs_loaded_state_and_a_successful_last_check() {
    let m = Metrics::new();
    assert_eq!(m.health().unwrap_err(), "state not loaded yet");
    m.set_state_loaded();
    assert_eq!(m.health().unwrap_err(), "no reconcile has run yet");
    m.record_drift("bridge rb-1 missing");
    m.record_check(Err("netlink: boom".into()));
    assert_eq!(m.health().unwrap_err(), "last reconcile failed: netlink: boom");
    assert_eq!(m.check().drift, ["bridge rb-1 missing"]);
    assert!(m.check().last_success_unix.is_none());
    m.record_check(Ok(()));
    assert_eq!(m.health(), Ok(()));
    assert!(m.check().drift.is_empty(), "drift belongs to the check that found it");
    assert!(m.check().last_success_unix.is_some());
    assert!(value(&render(&m), "rustbridge_last_successful_check_timestamp_seconds").is_some());
    assert_eq!(value(&render(&m), "rustbridge_healthy").as_deref(), Some("1"));
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn parses_proc_fields() {
    let stat = "1234 (rust bridge) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100";
    assert_eq!(parse_cpu_ticks(stat), Some(300));
    let limits = "Limit Soft Limit Hard Limit Units\nMax open files            1048576              1048576              files\n";
    assert_eq!(parse_max_open_files(limits), Some(1048576));
}
