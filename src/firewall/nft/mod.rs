//! The firewall engine: rustbridge's own nftables table, written over
//! netlink (no process), one transaction per change holding only what the
//! change adds or removes; plus the static iptables accept rule in dockerd's
//! filter FORWARD ([`super::iptables`]), written only when a family gains its
//! first network or loses its last.
//!
//! The engine remembers what it last committed, per network. A call hands it
//! only the networks it changed ([`Firewall::apply`]); the transaction is the
//! difference of those networks' chains and elements (in memory, no kernel
//! read), so neither the work nor the transaction grows with the other
//! networks or their ports. When it does not know what the kernel holds
//! (start-up, a failed or cut-off write, drift found by the repair) it
//! rewrites the whole table in one transaction (delete and recreate), so a
//! reader never sees it half-made.

pub mod expr;
pub mod msg;
pub mod ruleset;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;

use super::iptables::IptablesFirewall;
use super::{Firewall, FirewallError, FwChange, FwNetwork, FwPort};
use crate::family::Family;
use msg::{Attrs, Kind, Msg, NFPROTO_INET, NLM_F_CREATE, Reply, Socket};
use ruleset::{Chain, Elem, Rule, Ruleset, SETS, SetData, SetDef, TABLE};

const NLM_F_APPEND: u16 = 0x800;
/// Bounds one NFTA_SET_ELEM_LIST_ELEMENTS (a 16-bit attribute length).
const ELEMENTS_BYTES: usize = 48 * 1024;

pub struct NftFirewall {
    statics: IptablesFirewall,
    cache: tokio::sync::Mutex<Cache>,
    /// Messages in the last transaction sent (for tests: a change's size).
    last_transaction: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Cache {
    /// What the table holds; None: not known.
    committed: Option<Committed>,
    /// Whether the iptables accept chain is in place, per family; None: not known.
    statics: Option<[bool; 2]>,
    /// Counts the table's commits: a check whose kernel read overlapped a
    /// commit cannot tell drift from the commit.
    generation: u64,
}

fn err(message: String) -> FirewallError {
    FirewallError { tool: "nftables".into(), message }
}

fn families_in_use<'a>(networks: impl Iterator<Item = &'a FwNetwork> + Clone) -> [bool; 2] {
    let has = |f: Family| networks.clone().any(|n| n.subnets.iter().any(|s| f.matches(s)));
    [has(Family::V4), has(Family::V6)]
}

/// What the kernel's table holds, per network (no network: no table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    nets: BTreeMap<String, Net>,
    /// Every element, with the network that put it there and how many of
    /// that network's distinct ports (or itself) want it.
    owners: Owners,
}

type Owners = BTreeMap<(&'static str, Vec<u8>), Owned>;

/// One network: its settings (no ports) and its ports, each with how many
/// times it was handed over (its elements go when the count does).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Net {
    settings: FwNetwork,
    ports: BTreeMap<FwPort, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    elem: Elem,
    /// Shared by all of a network's elements (one allocation per network, not per element).
    bridge: Arc<str>,
    refs: usize,
}

/// Elements a transaction deletes and adds, by set.
#[derive(Default)]
struct ElementChanges {
    deleted: BTreeMap<&'static str, BTreeMap<Vec<u8>, Elem>>,
    added: BTreeMap<&'static str, BTreeMap<Vec<u8>, Elem>>,
}

/// A change named a bridge that holds no rules (a caller's mistake): the
/// engine forgets what it committed and the caller rewrites everything.
#[derive(Debug)]
pub struct UnknownBridge;

impl Committed {
    /// What a full write of `networks` leaves (the first network wins a key, as in [`ruleset::build`]).
    pub fn new(networks: &[FwNetwork]) -> Committed {
        let mut c = Committed::default();
        let (mut elements, mut chains) = (ElementChanges::default(), Vec::new());
        for n in networks {
            c.change_network(&n.bridge, Some(n), &mut elements, &mut chains);
            c.change_ports(&n.bridge, &n.ports, &[], &mut elements).expect("the network was just added");
        }
        c
    }

    /// Every network as a full view (ports sorted), in bridge order.
    fn networks(&self) -> Vec<FwNetwork> {
        self.nets.values().map(|n| FwNetwork { ports: expand(&n.ports), ..n.settings.clone() }).collect()
    }

    fn holds(&self, networks: &[FwNetwork]) -> bool {
        self.nets.len() == networks.len()
            && networks.iter().all(|n| {
                self.nets.get(&n.bridge).is_some_and(|c| {
                    c.settings.same_settings(n) && {
                        let mut ports: Vec<&FwPort> = n.ports.iter().collect();
                        ports.sort();
                        ports.into_iter().eq(c.ports.iter().flat_map(|(p, count)| std::iter::repeat_n(p, *count)))
                    }
                })
            })
    }

    /// The changes that turn this into `networks`.
    fn changes_to(&self, networks: &[FwNetwork]) -> Vec<FwChange> {
        let gone = self.nets.keys().filter(|b| !networks.iter().any(|n| n.bridge == **b));
        let mut out: Vec<FwChange> = gone.map(|b| FwChange::Network { bridge: b.clone(), after: None }).collect();
        for n in networks {
            out.push(FwChange::Network { bridge: n.bridge.clone(), after: Some(n.settings()) });
            let mine = self.nets.get(&n.bridge).map(|c| expand(&c.ports)).unwrap_or_default();
            let (removed, added) = super::port_difference(&mine, &n.ports);
            if !(removed.is_empty() && added.is_empty()) {
                let owned = |ports: Vec<&FwPort>| ports.into_iter().cloned().collect();
                out.push(FwChange::Ports { bridge: n.bridge.clone(), added: owned(added), removed: owned(removed) });
            }
        }
        out
    }

    /// A network's settings changed, or it is added (no ports yet) or gone
    /// (with its ports): its own chains and elements, and on removal its ports'.
    fn change_network(
        &mut self,
        bridge: &str,
        after: Option<&FwNetwork>,
        elements: &mut ElementChanges,
        chains: &mut Vec<Msg>,
    ) {
        let before = match (self.nets.get(bridge), after) {
            (None, None) => return,
            (Some(o), Some(a)) if o.settings.same_settings(a) => return,
            (old, _) => old.map(|n| n.settings.clone()),
        };
        let name: Arc<str> = bridge.into();
        // Wanted first, unwanted after: an element both had is neither written nor deleted.
        for (key, elem) in after.iter().flat_map(|n| ruleset::network_elements(n)) {
            acquire(&mut self.owners, key, elem, &name, elements);
        }
        if after.is_none() {
            let ports = self.nets.remove(bridge).map(|n| n.ports).unwrap_or_default();
            for (key, _) in ports.keys().flat_map(ruleset::port_elements) {
                release(&mut self.owners, key, bridge, elements);
            }
        }
        for (key, _) in before.iter().flat_map(ruleset::network_elements) {
            release(&mut self.owners, key, bridge, elements);
        }
        chains.extend(chain_changes(before.as_ref(), after));
        if let Some(a) = after {
            let settings = a.settings();
            match self.nets.get_mut(bridge) {
                Some(n) => n.settings = settings,
                None => drop(self.nets.insert(bridge.to_string(), Net { settings, ports: BTreeMap::new() })),
            }
        }
    }

    /// Ports published on and withdrawn from a network: only those ports' elements.
    fn change_ports(
        &mut self,
        bridge: &str,
        added: &[FwPort],
        removed: &[FwPort],
        elements: &mut ElementChanges,
    ) -> Result<(), UnknownBridge> {
        let Committed { nets, owners } = self;
        let net = nets.get_mut(bridge).ok_or(UnknownBridge)?;
        let name: Arc<str> = bridge.into();
        for p in added {
            let count = net.ports.entry(p.clone()).or_default();
            *count += 1;
            if *count == 1 {
                for (key, elem) in ruleset::port_elements(p) {
                    acquire(owners, key, elem, &name, elements);
                }
            }
        }
        for p in removed {
            let Some(count) = net.ports.get_mut(p) else { continue };
            *count -= 1;
            if *count == 0 {
                net.ports.remove(p);
                for (key, _) in ruleset::port_elements(p) {
                    release(owners, key, bridge, elements);
                }
            }
        }
        Ok(())
    }
}

fn expand(ports: &BTreeMap<FwPort, usize>) -> Vec<FwPort> {
    ports.iter().flat_map(|(p, count)| std::iter::repeat_n(p.clone(), *count)).collect()
}

/// `bridge` wants the element. Keys are unique across networks (no
/// overlapping subnets, one owner per host port); were they not, the
/// network holding the key keeps it.
fn acquire(owners: &mut Owners, key: (&'static str, Vec<u8>), elem: Elem, bridge: &Arc<str>, out: &mut ElementChanges) {
    match owners.get_mut(&key) {
        None => {
            out.added.entry(key.0).or_default().insert(key.1.clone(), elem.clone());
            owners.insert(key, Owned { elem, bridge: bridge.clone(), refs: 1 });
        }
        Some(o) if o.bridge == *bridge => {
            o.refs += 1;
            if o.elem != elem {
                // The same key to another value (a host port moved to another container).
                out.deleted.entry(key.0).or_default().insert(key.1.clone(), o.elem.clone());
                out.added.entry(key.0).or_default().insert(key.1, elem.clone());
                o.elem = elem;
            }
        }
        Some(_) => {}
    }
}

/// `bridge` no longer wants the element once.
fn release(owners: &mut Owners, key: (&'static str, Vec<u8>), bridge: &str, out: &mut ElementChanges) {
    let Some(o) = owners.get_mut(&key).filter(|o| &*o.bridge == bridge) else { return };
    o.refs -= 1;
    if o.refs > 0 {
        return;
    }
    let o = owners.remove(&key).expect("just found");
    let not_yet_written = out.added.get_mut(key.0).and_then(|a| a.remove(&key.1)).is_some();
    if !not_yet_written || out.deleted.get(key.0).is_some_and(|d| d.contains_key(&key.1)) {
        out.deleted.entry(key.0).or_default().insert(key.1, o.elem);
    }
}

/// The messages that turn a network's chains from `before`'s into `after`'s.
fn chain_changes(before: Option<&FwNetwork>, after: Option<&FwNetwork>) -> Vec<Msg> {
    let before = before.map(ruleset::chains).unwrap_or_default();
    let after = after.map(ruleset::chains).unwrap_or_default();
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut msgs = Vec::new();
    for name in names {
        match (before.get(name), after.get(name)) {
            (Some(_), None) => msgs.extend(chain_del_msgs(name)),
            (None, Some(rules)) => {
                msgs.push(chain_msg(name, None));
                msgs.extend(rules_msgs(name, rules));
            }
            (Some(a), Some(b)) if a != b => {
                let [flush, _] = chain_del_msgs(name);
                msgs.push(flush);
                msgs.extend(rules_msgs(name, b));
            }
            _ => {}
        }
    }
    msgs
}

impl NftFirewall {
    pub fn new(statics: IptablesFirewall) -> NftFirewall {
        NftFirewall { statics, cache: Default::default(), last_transaction: Default::default() }
    }

    /// How many nf_tables messages the last transaction held (0: nothing to change).
    pub fn last_transaction(&self) -> usize {
        self.last_transaction.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn describe(&self) -> String {
        format!("nftables table inet {TABLE}, accept rule via {}", self.statics.describe())
    }

    async fn write_statics(&self, cache: &mut Cache, want: [bool; 2]) -> Result<(), FirewallError> {
        if cache.statics == Some(want) {
            return Ok(());
        }
        // Only the family that changed: a network more of one family runs no
        // tool for the other. Both at once when both are unknown (start-up).
        let known = cache.statics.take();
        let family = |i: usize, family| async move {
            match known.is_none_or(|k| k[i] != want[i]) {
                true => self.statics.sync_family(want[i], family).await,
                false => Ok(()),
            }
        };
        let (v4, v6) = tokio::join!(family(0, Family::V4), family(1, Family::V6));
        v4?;
        v6?;
        cache.statics = Some(want);
        Ok(())
    }
}

impl NftFirewall {
    /// Not knowing what the kernel holds (start-up, a failed write, drift):
    /// reads the table back and writes nothing when it holds exactly what
    /// `networks` means (a restart over an unchanged table), else the whole
    /// table in one transaction. A table that cannot be read is rewritten.
    async fn rewrite_unless_held(&self, networks: &[FwNetwork]) -> Vec<Msg> {
        let desired = ruleset::build(networks);
        let read = tokio::task::spawn_blocking(move || (table_holds(desired.as_ref()), desired)).await;
        match read {
            Ok((Ok(true), _)) => vec![],
            Ok((_, desired)) => full_batch(desired.as_ref()),
            Err(_) => full_batch(ruleset::build(networks).as_ref()),
        }
    }
}

async fn transact(msgs: Vec<Msg>) -> Result<(), FirewallError> {
    if msgs.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || Socket::open()?.transact(&msgs))
        .await
        .map_err(|e| err(format!("nf_tables writer: {e}")))?
        .map_err(err)
}

impl NftFirewall {
    /// Sends `msgs`; `next` is what the kernel holds once they commit.
    /// Unknown until the kernel has answered: a write cut off at a call's
    /// deadline (this future dropped) leaves the next write a full rewrite.
    async fn commit(&self, cache: &mut Cache, msgs: Vec<Msg>, next: Committed) -> Result<(), FirewallError> {
        cache.committed = None;
        cache.generation += 1;
        self.last_transaction.store(msgs.len(), std::sync::atomic::Ordering::Relaxed);
        transact(msgs).await?;
        let families = families_in_use(next.nets.values().map(|n| &n.settings));
        cache.committed = Some(next);
        self.write_statics(cache, families).await
    }
}

#[async_trait]
impl Firewall for NftFirewall {
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError> {
        let mut cache = self.cache.lock().await;
        let known = cache.committed.take().and_then(|mut c| {
            let changes = c.changes_to(networks);
            change_batch(&mut c, &changes).ok().map(|msgs| (msgs, c))
        });
        let (msgs, next) = match known {
            Some(known) => known,
            None => (self.rewrite_unless_held(networks).await, Committed::new(networks)),
        };
        self.commit(&mut cache, msgs, next).await
    }

    async fn apply(&self, changes: &[FwChange]) -> Result<bool, FirewallError> {
        let mut cache = self.cache.lock().await;
        let Some(mut c) = cache.committed.take() else { return Ok(false) };
        let Ok(msgs) = change_batch(&mut c, changes) else { return Ok(false) };
        self.commit(&mut cache, msgs, c).await?;
        Ok(true)
    }

    /// Reads the kernel without holding off writers. Drift forgets what was
    /// committed (the next write is a full rewrite) only when `networks` is
    /// what was committed and no commit overlapped the read: the periodic
    /// check runs on a snapshot that a call may have superseded meanwhile.
    /// The swarm rule group lives in dockerd's iptables filter INPUT, with
    /// the static part ([`crate::firewall::swarm`]).
    async fn sync_swarm_members(&self, port: u16, members: Option<&[std::net::IpAddr]>) -> Result<(), FirewallError> {
        self.statics.sync_swarm_members(port, members).await
    }

    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError> {
        let desired = ruleset::build(networks);
        let families = families_in_use(networks.iter());
        let (generation, as_committed) = {
            let cache = self.cache.lock().await;
            (cache.generation, cache.committed.as_ref().is_some_and(|c| c.holds(networks)))
        };
        let table = tokio::task::spawn_blocking(move || table_holds(desired.as_ref()))
            .await
            .map_err(|e| err(format!("nf_tables reader: {e}")))?
            .map_err(err)?;
        let (v4, v6) = tokio::join!(
            self.statics.family_intact(families[0], Family::V4),
            self.statics.family_intact(families[1], Family::V6)
        );
        let statics = v4? && v6?;
        let mut cache = self.cache.lock().await;
        if !table && as_committed && cache.generation == generation {
            cache.committed = None;
        }
        if !statics && cache.statics == Some(families) {
            cache.statics = None;
        }
        Ok(table && statics)
    }
}

// ---- batches ----

fn table_msg(kind: Kind, flags: u16, what: &str) -> Msg {
    Msg::new(kind, flags, NFPROTO_INET, format!("{what} table inet {TABLE}"), |a| a.put_str(1, TABLE))
}

fn set_msg(set: &SetDef, id: u32) -> Msg {
    Msg::new(Kind::NewSet, NLM_F_CREATE, NFPROTO_INET, format!("add set {}", set.name), |a| {
        // NFTA_SET_TABLE 1, NAME 2, FLAGS 3, KEY_TYPE 4, KEY_LEN 5, DATA_TYPE 6, DATA_LEN 7, ID 10
        a.put_str(1, TABLE);
        a.put_str(2, set.name);
        a.put_be32(3, if set.data.is_some() { 0x8 } else { 0 });
        a.put_be32(4, set.key_type);
        a.put_be32(5, set.key_len);
        match set.data {
            Some(SetData::Verdict) => a.put_be32(6, ruleset::NFT_DATA_VERDICT),
            Some(SetData::Value { kind, len }) => {
                a.put_be32(6, kind);
                a.put_be32(7, len);
            }
            None => {}
        }
        a.put_be32(10, id);
        // NFTA_SET_USERDATA: NFTNL_UDATA_SET_KEYBYTEORDER (type 0, 4 bytes) = host
        // endian for interface names, so that `nft list` prints them as strings.
        if set.key_type == ruleset::TYPE_IFNAME {
            let mut udata = vec![0u8, 4];
            udata.extend_from_slice(&1u32.to_ne_bytes());
            a.put(13, &udata);
        }
    })
}

fn chain_msg(name: &str, hook: Option<ruleset::Hook>) -> Msg {
    Msg::new(Kind::NewChain, NLM_F_CREATE, NFPROTO_INET, format!("add chain {name}"), |a| {
        // NFTA_CHAIN_TABLE 1, NAME 3, HOOK 4 {HOOKNUM 1, PRIORITY 2}, POLICY 5, TYPE 7
        a.put_str(1, TABLE);
        a.put_str(3, name);
        if let Some(h) = hook {
            a.nested(4, |n| {
                n.put_be32(1, h.num);
                n.put_be32(2, h.priority as u32);
            });
            a.put_be32(5, expr::NF_ACCEPT as u32);
            a.put_str(7, h.kind);
        }
    })
}

fn chain_del_msgs(name: &str) -> [Msg; 2] {
    let flush = Msg::new(Kind::DelRule, 0, NFPROTO_INET, format!("flush chain {name}"), |a| {
        a.put_str(1, TABLE);
        a.put_str(2, name);
    });
    let delete = Msg::new(Kind::DelChain, 0, NFPROTO_INET, format!("delete chain {name}"), |a| {
        a.put_str(1, TABLE);
        a.put_str(3, name);
    });
    [flush, delete]
}

/// A NEWRULE message's attributes: NFTA_RULE_TABLE 1, CHAIN 2, EXPRESSIONS 4.
pub fn rule_attrs(table: &str, chain: &str, rule: &Rule) -> Attrs {
    let mut a = Attrs::default();
    a.put_str(1, table);
    a.put_str(2, chain);
    a.nested(4, |list| rule.iter().for_each(|e| e.encode(list)));
    a
}

fn rule_msg(chain: &str, rule: &Rule, index: usize) -> Msg {
    let what = format!("add rule {index} to chain {chain}");
    let flags = NLM_F_CREATE | NLM_F_APPEND;
    let mut attrs = rule_attrs(TABLE, chain, rule);
    // NFTA_RULE_USERDATA 7: the rule's fingerprint (see `rule_fingerprint`).
    attrs.put(7, &fingerprint_udata(rule_fingerprint(chain, rule)));
    Msg { kind: Kind::NewRule, flags, family: NFPROTO_INET, attrs, what }
}

fn rules_msgs(chain: &str, rules: &[Rule]) -> impl Iterator<Item = Msg> {
    rules.iter().enumerate().map(move |(i, r)| rule_msg(chain, r, i + 1))
}

/// NEWSETELEM / DELSETELEM for `elements` of `set`, as few messages as the attribute size allows.
fn elements_msgs<'a>(kind: Kind, set: &str, elements: impl Iterator<Item = (&'a Vec<u8>, &'a Elem)>) -> Vec<Msg> {
    let verb = if kind == Kind::NewSetElem { "add" } else { "delete" };
    let mut chunks: Vec<Attrs> = Vec::new();
    let mut current = Attrs::default();
    let mut count = 0;
    let mut counts = Vec::new();
    for (key, elem) in elements {
        current.nested(1, |e| {
            // NFTA_SET_ELEM_KEY 1, DATA 2 (NFTA_DATA_VALUE 1 / NFTA_DATA_VERDICT 2)
            e.nested(1, |k| k.put(1, key));
            if kind == Kind::NewSetElem {
                match elem {
                    Elem::Key => {}
                    Elem::Value(v) => e.nested(2, |d| d.put(1, v)),
                    Elem::Jump(chain) => {
                        e.nested(2, |d| d.nested(2, |v| expr::encode_verdict(v, expr::NFT_JUMP, Some(chain))))
                    }
                }
            }
        });
        count += 1;
        if current.0.len() > ELEMENTS_BYTES {
            chunks.push(std::mem::take(&mut current));
            counts.push(std::mem::take(&mut count));
        }
    }
    if count > 0 {
        chunks.push(current);
        counts.push(count);
    }
    let flags = if kind == Kind::NewSetElem { NLM_F_CREATE } else { 0 };
    chunks
        .into_iter()
        .zip(counts)
        .map(|(list, n)| {
            Msg::new(kind, flags, NFPROTO_INET, format!("{verb} {n} element(s) of set {set}"), |a| {
                // NFTA_SET_ELEM_LIST_TABLE 1, SET 2, ELEMENTS 3
                a.put_str(1, TABLE);
                a.put_str(2, set);
                a.put(3 | 0x8000, &list.0);
            })
        })
        .collect()
}

/// Replaces whatever table is there by `desired` (or removes it), in one transaction.
pub fn full_batch(desired: Option<&Ruleset>) -> Vec<Msg> {
    // Adding first makes the delete succeed whether or not the table exists.
    let mut msgs = vec![table_msg(Kind::NewTable, NLM_F_CREATE, "add"), table_msg(Kind::DelTable, 0, "delete")];
    let Some(rs) = desired else { return msgs };
    msgs.push(table_msg(Kind::NewTable, NLM_F_CREATE, "add"));
    msgs.extend(SETS.iter().enumerate().map(|(i, s)| set_msg(s, i as u32 + 1)));
    let skeleton = ruleset::skeleton();
    msgs.extend(rs.chains.keys().map(|name| chain_msg(name, None)));
    msgs.extend(skeleton.iter().map(|c| chain_msg(&c.name, c.hook)));
    for (set, elements) in &rs.elements {
        msgs.extend(elements_msgs(Kind::NewSetElem, set, elements.iter()));
    }
    for (name, rules) in &rs.chains {
        msgs.extend(rules_msgs(name, rules));
    }
    for Chain { name, rules, .. } in &skeleton {
        msgs.extend(rules_msgs(name, rules));
    }
    msgs
}

/// The transaction that makes `changes` (in order) to the table `c`
/// describes, and turns `c` into its description. Only what the changes
/// touch: a port's elements, or a network's chains and elements. Element
/// deletions first (a chain still referenced by a map element cannot go),
/// then chains, then new elements. The first network makes the table, the
/// last removes it. Err: a change named a bridge that holds no rules.
pub fn change_batch(c: &mut Committed, changes: &[FwChange]) -> Result<Vec<Msg>, UnknownBridge> {
    let was_empty = c.nets.is_empty();
    let mut elements = ElementChanges::default();
    let mut chains = Vec::new();
    for change in changes {
        match change {
            FwChange::Network { bridge, after } => c.change_network(bridge, after.as_ref(), &mut elements, &mut chains),
            FwChange::Ports { bridge, added, removed } => c.change_ports(bridge, added, removed, &mut elements)?,
        }
    }
    if c.nets.is_empty() {
        *c = Committed::default();
        return Ok(if was_empty { vec![] } else { vec![table_msg(Kind::DelTable, 0, "delete")] });
    }
    if was_empty {
        return Ok(full_batch(ruleset::build(&c.networks()).as_ref()));
    }
    let mut msgs = Vec::new();
    for set in SETS {
        if let Some(e) = elements.deleted.get(set.name) {
            msgs.extend(elements_msgs(Kind::DelSetElem, set.name, e.iter()));
        }
    }
    msgs.extend(chains);
    for set in SETS {
        if let Some(e) = elements.added.get(set.name) {
            msgs.extend(elements_msgs(Kind::NewSetElem, set.name, e.iter()));
        }
    }
    Ok(msgs)
}

// ---- reading back ----

/// A rule's fingerprint, stored with it (NFTA_RULE_USERDATA) so that
/// reading the table back can tell that each chain holds exactly the rules
/// rustbridge wrote, in order, without decoding expressions (which the
/// kernel may dump differently from how they were sent). FNV-1a of the
/// chain name and the encoded rule.
pub fn rule_fingerprint(chain: &str, rule: &Rule) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in chain.as_bytes().iter().chain([0u8].iter()).chain(rule_attrs(TABLE, chain, rule).0.iter()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The userdata's one TLV (type, length, value), of a type `nft` does not
/// know and so neither prints nor minds (it knows 0, a comment, and 1).
const UDATA_FINGERPRINT: u8 = 0x72;

fn fingerprint_udata(fingerprint: u64) -> Vec<u8> {
    [&[UDATA_FINGERPRINT, 8][..], &fingerprint.to_be_bytes()].concat()
}

fn udata_fingerprint(udata: &[u8]) -> Option<u64> {
    match udata {
        [UDATA_FINGERPRINT, 8, value @ ..] => Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

/// What the table must hold: per chain its hook and its rules' fingerprints, and every set's elements.
struct Expected {
    chains: BTreeMap<String, (Option<ruleset::Hook>, Vec<Option<u64>>)>,
    elements: BTreeMap<&'static str, BTreeMap<Vec<u8>, Elem>>,
}

impl Expected {
    fn of(rs: &Ruleset) -> Expected {
        let prints = |name: &str, rules: &[Rule]| rules.iter().map(|r| Some(rule_fingerprint(name, r))).collect();
        let mut chains: BTreeMap<String, (Option<ruleset::Hook>, Vec<Option<u64>>)> =
            ruleset::skeleton().into_iter().map(|c| (c.name.clone(), (c.hook, prints(&c.name, &c.rules)))).collect();
        chains.extend(rs.chains.iter().map(|(name, rules)| (name.clone(), (None, prints(name, rules)))));
        Expected { chains, elements: rs.elements.clone() }
    }
}

/// Whether the kernel's table holds exactly `desired` (or no table, for
/// None), read back in full: the table not dormant; the same chains, each
/// base chain on its hook, priority and type with policy accept; in each
/// chain exactly the rules written (by their fingerprints), in order; every set,
/// with exactly the elements (keys and data) wanted. A flush, a deletion, a
/// partial write or a changed rule or element all read as false. In
/// proportion to the table's size: the start-up pass and the periodic
/// repair, never a call.
fn table_holds(desired: Option<&Ruleset>) -> Result<bool, String> {
    let mut sock = Socket::open()?;
    let get = |kind, what: &str, fill: &dyn Fn(&mut Attrs)| {
        Msg::new(kind, 0, NFPROTO_INET, format!("list {what} of table inet {TABLE}"), |a| fill(a))
    };
    let ours = |r: &Reply, attr| r.family == NFPROTO_INET && r.str(attr).as_deref() == Some(TABLE);
    let tables = sock.dump(&get(Kind::GetTable, "tables", &|_| {}))?;
    let table = tables.iter().find(|r| ours(r, 1));
    let Some(rs) = desired else { return Ok(table.is_none()) };
    // NFTA_TABLE_FLAGS 2: dormant (1) switches every chain off.
    let Some(table) = table else { return Ok(false) };
    if table.get(2).is_some_and(|f| be32(f) != Some(0)) {
        return Ok(false);
    }
    let expected = Expected::of(rs);
    let mut chains = BTreeMap::new();
    for r in sock.dump(&get(Kind::GetChain, "chains", &|_| {}))?.iter().filter(|r| ours(r, 1)) {
        let Some(name) = r.str(3) else { return Ok(false) };
        chains.insert(name, chain_hook(r));
    }
    let hook_wanted = |hook: &Option<ruleset::Hook>| hook.map(|h| (h, expr::NF_ACCEPT as u32));
    if chains.len() != expected.chains.len()
        || !expected.chains.iter().all(|(name, (hook, _))| chains.get(name) == Some(&hook_wanted(hook)))
    {
        return Ok(false);
    }
    let mut rules: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    for r in sock.dump(&get(Kind::GetRule, "rules", &|a| a.put_str(1, TABLE)))?.iter().filter(|r| ours(r, 1)) {
        rules.entry(r.str(2).unwrap_or_default()).or_default().push(r.get(7).and_then(udata_fingerprint));
    }
    let none = Vec::new();
    if !expected.chains.iter().all(|(name, (_, want))| rules.get(name).unwrap_or(&none) == want)
        || rules.keys().any(|name| !expected.chains.contains_key(name))
    {
        return Ok(false);
    }
    let sets: BTreeSet<String> = sock
        .dump(&get(Kind::GetSet, "sets", &|a| a.put_str(1, TABLE)))?
        .iter()
        .filter(|r| ours(r, 1))
        .filter_map(|r| r.str(2))
        .collect();
    if sets.iter().map(String::as_str).ne(SETS.iter().map(|s| s.name).collect::<BTreeSet<_>>()) {
        return Ok(false);
    }
    for set in SETS {
        let fill = |a: &mut Attrs| {
            a.put_str(1, TABLE);
            a.put_str(2, set.name);
        };
        let mut found = BTreeMap::new();
        for list in sock.dump(&get(Kind::GetSetElem, set.name, &fill))?.iter().filter_map(|r| r.get(3)) {
            for (_, elem) in msg::parse_attrs(list) {
                let Some((key, value)) = parse_element(&elem) else { return Ok(false) };
                found.insert(key, value);
            }
        }
        if expected.elements.get(set.name).map_or(!found.is_empty(), |want| *want != found) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn be32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// A base chain's hook and policy as dumped (NFTA_CHAIN_HOOK 4 {HOOKNUM 1,
/// PRIORITY 2}, POLICY 5, TYPE 7); None for a regular chain (or an unknown type).
fn chain_hook(r: &Reply) -> Option<(ruleset::Hook, u32)> {
    let hook = msg::parse_attrs(r.get(4)?);
    let field = |kind| hook.iter().find(|(k, _)| *k == kind).and_then(|(_, v)| be32(v));
    let chain_type = r.str(7)?;
    let kind = ruleset::skeleton().into_iter().filter_map(|c| c.hook).map(|h| h.kind).find(|k| *k == chain_type)?;
    let hook = ruleset::Hook { num: field(1)?, priority: field(2)? as i32, kind };
    Some((hook, r.get(5).and_then(be32)?))
}

/// One dumped set element (NFTA_LIST_ELEM): KEY 1 {VALUE 1}, DATA 2 {VALUE 1 | VERDICT 2 {CODE 1, CHAIN 2}}.
fn parse_element(elem: &[u8]) -> Option<(Vec<u8>, Elem)> {
    let attrs = msg::parse_attrs(elem);
    let get = |attrs: &[(u16, Vec<u8>)], kind| attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone());
    let key = get(&msg::parse_attrs(&get(&attrs, 1)?), 1)?;
    let Some(data) = get(&attrs, 2) else { return Some((key, Elem::Key)) };
    let data = msg::parse_attrs(&data);
    if let Some(value) = get(&data, 1) {
        return Some((key, Elem::Value(value)));
    }
    let verdict = msg::parse_attrs(&get(&data, 2)?);
    let code = be32(&get(&verdict, 1)?)? as i32;
    let chain = get(&verdict, 2)?;
    let chain = String::from_utf8_lossy(chain.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
    (code == expr::NFT_JUMP).then_some((key, Elem::Jump(chain)))
}

#[cfg(test)]
mod tests;
