//! Batches: what a change sends, without a kernel (tests/firewall_netns.rs
//! sends them to one).

use super::*;
use crate::firewall::{FwPort, Proto};
use crate::testing::fw_network;

fn nets(n: usize) -> Vec<FwNetwork> {
    (0..n).map(|i| fw_network(&format!("rb-{i}"), &[&format!("10.{}.{}.0/24", i / 256, i % 256)])).collect()
}

fn port(host_port: u16, container: &str) -> FwPort {
    FwPort { proto: Proto::Tcp, host_ip: None, host_port, container_ip: container.parse().unwrap(), container_port: 80 }
}

fn summary(msgs: &[Msg]) -> Vec<(Kind, String)> {
    msgs.iter().map(|m| (m.kind, m.what.clone())).collect()
}

/// What a call that turns `old` into `new` sends, handing over only what differs.
fn delta(old: &[FwNetwork], new: &[FwNetwork]) -> Vec<Msg> {
    let mut committed = Committed::new(old);
    let changes = committed.changes_to(new);
    let msgs = change_batch(&mut committed, &changes).expect("every bridge named is known");
    assert_eq!(committed, Committed::new(new), "what the engine believes is what a full write of {new:?} gives");
    msgs
}

#[test]
fn nothing_changed_nothing_sent() {
    let n = nets(3);
    assert!(delta(&n, &n).is_empty());
    assert!(delta(&[], &[]).is_empty());
}

#[test]
fn a_port_more_is_three_elements_whatever_is_there() {
    let published = |host_port| FwPort { container_port: host_port, ..port(host_port, "10.0.0.2") };
    let mut before = nets(1000);
    before[0].ports = (0..1000).map(|i| published(20000 + i)).collect();
    let mut after = before.clone();
    after[0].ports.push(published(31000));
    assert_eq!(
        summary(&delta(&before, &after)),
        [
            (Kind::NewSetElem, "add 1 element(s) of set published4".into()),
            (Kind::NewSetElem, "add 1 element(s) of set hairpin4".into()),
            (Kind::NewSetElem, "add 1 element(s) of set dnat4-any".into()),
        ]
    );
    // Another host port to a container port already published: its DNAT element only.
    let mut again = after.clone();
    again[0].ports.push(FwPort { container_port: 31000, ..port(31001, "10.0.0.2") });
    assert_eq!(summary(&delta(&after, &again)), [(Kind::NewSetElem, "add 1 element(s) of set dnat4-any".into())]);
}

#[test]
fn a_port_to_a_new_container_port_adds_one_element_per_set() {
    let before = nets(2);
    let mut after = before.clone();
    after[1].ports.push(FwPort { container_port: 8443, ..port(443, "10.0.1.2") });
    let kinds: Vec<String> = delta(&before, &after).into_iter().map(|m| m.what).collect();
    assert_eq!(
        kinds,
        ["add 1 element(s) of set published4", "add 1 element(s) of set hairpin4", "add 1 element(s) of set dnat4-any"]
    );
}

#[test]
fn a_host_port_moved_to_another_container_replaces_its_map_element() {
    let mut before = nets(1);
    before[0].ports = vec![port(8080, "10.0.0.2")];
    let mut after = before.clone();
    after[0].ports = vec![port(8080, "10.0.0.3")];
    let msgs = summary(&delta(&before, &after));
    assert!(msgs.contains(&(Kind::DelSetElem, "delete 1 element(s) of set dnat4-any".into())), "{msgs:?}");
    assert!(msgs.contains(&(Kind::NewSetElem, "add 1 element(s) of set dnat4-any".into())), "{msgs:?}");
    assert_eq!(msgs.len(), 6, "published4, hairpin4 and dnat4-any: one out, one in: {msgs:?}");
}

#[test]
fn a_network_more_or_less_is_a_constant_change() {
    for existing in [1, 100, 1000] {
        let before = nets(existing);
        let after = nets(existing + 1);
        let added = summary(&delta(&before, &after));
        assert_eq!(added.len(), 21, "{existing}: {added:?}");
        assert_eq!(added.iter().filter(|(k, _)| *k == Kind::NewChain).count(), 3);
        // The map elements that jump to the new chains come after the chains.
        let first_element = added.iter().position(|(k, _)| *k == Kind::NewSetElem).unwrap();
        assert!(added[..first_element].iter().all(|(k, _)| matches!(k, Kind::NewChain | Kind::NewRule)));
        let removed = summary(&delta(&after, &before));
        assert_eq!(removed.len(), 11, "{existing}: {removed:?}");
        // Elements (references) go before the chains they point to.
        let first_chain = removed.iter().position(|(k, _)| *k == Kind::DelRule).unwrap();
        assert!(removed[..first_chain].iter().all(|(k, _)| *k == Kind::DelSetElem), "{removed:?}");
        assert_eq!(removed[first_chain..].len(), 6);
    }
}

#[test]
fn an_option_changed_rewrites_only_that_networks_chain() {
    let before = nets(10);
    let mut after = before.clone();
    after[3].icc = false;
    let msgs = summary(&delta(&before, &after));
    assert_eq!(msgs[0], (Kind::DelRule, "flush chain to-rb-3".into()));
    assert!(msgs[1..].iter().all(|(k, w)| *k == Kind::NewRule && w.ends_with("to chain to-rb-3")), "{msgs:?}");
}

#[test]
fn first_network_writes_the_table_and_the_last_removes_it() {
    let one = nets(1);
    let first = summary(&delta(&[], &one));
    assert_eq!(
        first[..3].iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [Kind::NewTable, Kind::DelTable, Kind::NewTable]
    );
    assert_eq!(first.iter().filter(|(k, _)| *k == Kind::NewSet).count(), SETS.len());
    assert_eq!(summary(&delta(&one, &[])), [(Kind::DelTable, "delete table inet rustbridge".into())]);
    // Unknown state (start-up, after a failure): a full rewrite, or a delete of whatever is there.
    assert_eq!(summary(&full_batch(None)).len(), 2);
}

#[test]
fn ten_thousand_ports_fit_in_bounded_messages() {
    let mut n = nets(1);
    n[0].ports = (0..10_000).map(|i| FwPort { container_port: i, ..port(10_000 + i, "10.0.0.2") }).collect();
    let msgs = full_batch(ruleset::build(&n).as_ref());
    let elements: Vec<&Msg> = msgs.iter().filter(|m| m.kind == Kind::NewSetElem).collect();
    assert!(elements.iter().all(|m| m.attrs.0.len() < 60_000), "a nested attribute's length is 16 bits");
    let total: usize =
        elements.iter().map(|m| m.what.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(total, 3 * 10_000 + 5);
}

#[test]
#[ignore = "prints the in-memory cost of a change at scale; run with --ignored --nocapture"]
fn in_memory_cost_of_a_change_at_scale() {
    let mut before = nets(1000);
    before[0].ports = (0..10_000).map(|i| FwPort { container_port: i, ..port(10_000 + i, "10.0.0.2") }).collect();
    let mut after = before.clone();
    after[999].icc = false;
    let mut committed = Committed::new(&before);
    let changes = [FwChange::Network { bridge: after[999].bridge.clone(), after: Some(after[999].settings()) }];
    let start = std::time::Instant::now();
    let msgs = change_batch(&mut committed, &changes).unwrap();
    eprintln!(
        "one network's change among 1,000 networks and 10,000 ports: {:?}, {} messages",
        start.elapsed(),
        msgs.len()
    );
    let start = std::time::Instant::now();
    let msgs = change_batch(&mut committed, &[one_more(&before[0].bridge, 20_000)]).unwrap();
    eprintln!("one port more on the network holding 10,000: {:?}, {} messages", start.elapsed(), msgs.len());
}

fn one_more(bridge: &str, host_port: u16) -> FwChange {
    let added = vec![FwPort { container_port: host_port, ..port(host_port, "10.0.0.3") }];
    FwChange::Ports { bridge: bridge.into(), added, removed: vec![] }
}

/// Issue 13, item 3: a port more or less is the same transaction whether
/// none or 10,000 ports are published, and the engine keeps one copy of
/// each port (counted: what it holds grows by the port, nothing is rebuilt).
#[test]
fn a_port_more_or_less_is_the_same_change_with_none_or_ten_thousand_published() {
    let mut busy = nets(1);
    busy[0].ports = (0..10_000).map(|i| FwPort { container_port: i, ..port(30_000 + i, "10.0.0.2") }).collect();
    let mut sizes = Vec::new();
    for networks in [nets(1), busy] {
        let mut committed = Committed::new(&networks);
        let bridge = networks[0].bridge.clone();
        let added = summary(&change_batch(&mut committed, &[one_more(&bridge, 20_000)]).unwrap());
        assert_eq!(committed.nets[&bridge].ports.len(), networks[0].ports.len() + 1);
        let FwChange::Ports { added: port, .. } = one_more(&bridge, 20_000) else { unreachable!() };
        let revoke = FwChange::Ports { bridge: bridge.clone(), added: vec![], removed: port };
        let removed = summary(&change_batch(&mut committed, &[revoke]).unwrap());
        assert_eq!(committed, Committed::new(&networks), "back where it was");
        sizes.push((added, removed));
    }
    assert_eq!(sizes[0], sizes[1], "none published, then 10,000");
    assert_eq!(sizes[0].0.len(), 3, "{:?}", sizes[0]);
    assert!(sizes[0].1.iter().all(|(k, _)| *k == Kind::DelSetElem) && sizes[0].1.len() == 3);
}

/// A port change for a bridge the engine holds no rules for is refused
/// (the caller then rewrites everything), not written half.
#[test]
fn ports_for_an_unknown_bridge_are_refused() {
    let mut committed = Committed::new(&nets(1));
    assert!(change_batch(&mut committed, &[one_more("rb-nowhere", 20_000)]).is_err());
}

#[test]
fn elements_shared_by_two_ports_stay_while_either_is_published() {
    let mut one = nets(2);
    one[1].ports = vec![port(8080, "10.0.1.2"), port(8081, "10.0.1.2")];
    let mut fewer = one.clone();
    fewer[1].ports.remove(0);
    assert_eq!(summary(&delta(&one, &fewer)), [(Kind::DelSetElem, "delete 1 element(s) of set dnat4-any".into())]);
    let none = nets(2);
    let msgs = summary(&delta(&fewer, &none));
    assert_eq!(msgs.len(), 3, "the last port takes the shared elements with it: {msgs:?}");
    assert!(msgs.iter().all(|(k, _)| *k == Kind::DelSetElem));
}

#[test]
fn ports_handed_unsorted_are_compared_as_sets() {
    let mut a = nets(1);
    a[0].ports = vec![port(8081, "10.0.0.2"), port(8080, "10.0.0.3")];
    let mut b = a.clone();
    b[0].ports.reverse();
    b[0].ports.push(port(8082, "10.0.0.4"));
    assert_eq!(delta(&a, &b).len(), 3);
}
