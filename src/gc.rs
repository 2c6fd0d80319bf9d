//! `rustbridge gc`: kernel objects that look like rustbridge's but that no
//! state record knows (a crash between a kernel change and its commit, a wiped
//! state directory, an engine switch). Served by the running plugin as
//! `/Rustbridge.Gc` and computed under its state lock, so an object a call is
//! creating at that moment is never taken for a leftover. Removes only when asked,
//! and never what is in use (a veth whose peer is in a container, a bridge with
//! ports): removing those would cut a live container off, whoever made them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dataplane::{Link, LinkKind};
use crate::driver::Plugin;
use crate::names::{is_hex_derived_bridge_name, is_owned_bridge_name, is_owned_veth_name, is_owned_vxlan_name};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GcRequest {
    /// False: only list. True: list and remove.
    #[serde(rename = "Remove")]
    pub remove: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leftover {
    /// `bridge`, `veth`, `vxlan` (a swarm network's device, with its
    /// forwarding and neighbour entries) or `firewall`.
    pub kind: String,
    pub name: String,
    /// Why it is kept even with `--yes` (e.g. its peer is in a container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct GcReport {
    pub leftovers: Vec<Leftover>,
    /// True when removal was asked for (see `errors` for what failed).
    pub removed: bool,
    pub errors: Vec<String>,
}

/// Lists (and with `remove`, deletes) what the kernel holds that the state does not.
pub async fn run(plugin: &Plugin, req: GcRequest) -> GcReport {
    let state = plugin.lock_state().await;
    let mut report = GcReport { removed: req.remove, ..GcReport::default() };
    let known: BTreeSet<String> = state
        .networks
        .values()
        .flat_map(|n| std::iter::once(n.bridge.clone()).chain(plugin.vxlan_spec(n).map(|v| v.name)))
        .chain(state.endpoints.values().flat_map(|e| [e.host_veth.clone(), e.container_veth.clone()]))
        .collect();
    match plugin.dataplane().list_links().await {
        Ok(links) => report.leftovers = leftover_links(&links, &known),
        Err(e) => report.errors.push(format!("list links: {e}")),
    }
    // With networks, the plugin's table and chains are its own and the
    // reconciler keeps them exact; with none, its nftables table or any
    // RUSTBRIDGE chain or jump is a leftover. (The swarm networks' rule
    // group goes with the last swarm network, by the membership task.)
    if state.networks.is_empty() {
        match plugin.firewall().is_intact(&[]).await {
            Ok(true) => {}
            Ok(false) => report.leftovers.push(Leftover {
                kind: "firewall".into(),
                name: "nftables table inet rustbridge, RUSTBRIDGE-* chains and the jumps into them".into(),
                in_use: None,
            }),
            Err(e) => report.errors.push(format!("read firewall: {e}")),
        }
    }
    report.leftovers.sort();
    if req.remove {
        // A bridge's leftover ports first: the bridge is then empty.
        let order = |l: &&Leftover| (l.kind == "bridge", l.kind == "firewall");
        let mut removable: Vec<&Leftover> = report.leftovers.iter().filter(|l| l.in_use.is_none()).collect();
        removable.sort_by_key(order);
        for leftover in removable {
            let result = match leftover.kind.as_str() {
                "firewall" => plugin.firewall().sync(&[]).await.map_err(|e| e.to_string()),
                _ => plugin.dataplane().delete_link(&leftover.name).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                report.errors.push(format!("remove {} {}: {e}", leftover.kind, leftover.name));
            }
        }
    }
    report
}

/// What kind of rustbridge object the link is, if it is one: named as the
/// plugin names them and, where a user could have chosen that name (a bridge
/// named like a swarm network's, any VXLAN device), carrying an owner mark.
fn kind_of(link: &Link) -> Option<&'static str> {
    let marked = link.owner.is_some();
    match link.kind {
        LinkKind::Bridge if is_owned_bridge_name(&link.name) && (marked || is_hex_derived_bridge_name(&link.name)) => {
            Some("bridge")
        }
        LinkKind::Veth if is_owned_veth_name(&link.name) => Some("veth"),
        LinkKind::Vxlan if is_owned_vxlan_name(&link.name) && marked => Some("vxlan"),
        _ => None,
    }
}

/// The rustbridge links no state record accounts for, each with what keeps it
/// if anything. A swarm network's leftover VXLAN device does not keep its
/// bridge (it is always there, and goes first); any other port does.
fn leftover_links(links: &[Link], known: &BTreeSet<String>) -> Vec<Leftover> {
    let unknown: Vec<(&'static str, &Link)> = links
        .iter()
        .filter_map(|l| kind_of(l).map(|kind| (kind, l)))
        .filter(|(_, l)| !known.contains(&l.name))
        .collect();
    let going: BTreeSet<&str> =
        unknown.iter().filter(|(kind, _)| *kind == "vxlan").map(|(_, l)| l.name.as_str()).collect();
    unknown
        .into_iter()
        .map(|(kind, link)| Leftover {
            kind: kind.into(),
            name: link.name.clone(),
            in_use: use_of(link, links, &going),
        })
        .collect()
}

/// What keeps a link that no state knows from being removed, if anything
/// (ports named in `going` are removed first and do not count).
fn use_of(link: &Link, links: &[Link], going: &BTreeSet<&str>) -> Option<String> {
    match link.kind {
        LinkKind::Veth if link.peer_elsewhere => Some("its peer is in another network namespace (a container)".into()),
        LinkKind::Bridge => {
            let ports = links
                .iter()
                .filter(|l| l.controller.as_deref() == Some(link.name.as_str()) && !going.contains(l.name.as_str()))
                .count();
            (ports > 0).then(|| format!("{ports} port(s) attached"))
        }
        _ => None,
    }
}

/// The text `rustbridge gc` prints.
pub fn render_text(report: &GcReport) -> String {
    let mut out = String::new();
    if report.leftovers.is_empty() {
        out.push_str("nothing to collect: every rustbridge-looking kernel object is known to the plugin\n");
    }
    for l in &report.leftovers {
        match &l.in_use {
            Some(why) => out.push_str(&format!("in use, kept {} {}: {why}\n", l.kind, l.name)),
            None => {
                let verb = if report.removed { "removed" } else { "leftover" };
                out.push_str(&format!("{verb} {} {}\n", l.kind, l.name));
            }
        }
    }
    if !report.removed && report.leftovers.iter().any(|l| l.in_use.is_none()) {
        out.push_str("run `rustbridge gc --yes` to remove them\n");
    }
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests;
