//! The static iptables part (see [`super::rules`]) in the flavour dockerd
//! uses: read with `*-save` (one process), written with one
//! `*-restore --noflush` batch (one process, atomic per table) when a family
//! gains its first network or loses its last, at start-up and by the repair;
//! never per call. Rules are passed on stdin, never through a shell.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::FirewallError;
use super::rules::{self, Family};

/// Per tool run. A write runs at most four (save and restore, IPv4 and IPv6);
/// a call's transaction also cuts a write off at the call's commit point
/// (the child is killed on drop) and writes the committed rules back.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which iptables flavour to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Whatever `iptables` is on this host, unless dockerd's chains are found only in the other flavour.
    Auto,
    Nft,
    Legacy,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "nft" => Ok(Backend::Nft),
            "legacy" => Ok(Backend::Legacy),
            other => Err(format!("iptables backend {other:?}: expected auto, nft or legacy")),
        }
    }
}

#[derive(Debug, Clone)]
struct Tools {
    save: String,
    restore: String,
}

impl Tools {
    fn new(family: Family, suffix: &str) -> Tools {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        Tools { save: format!("{base}{suffix}-save"), restore: format!("{base}{suffix}-restore") }
    }
}

pub struct IptablesFirewall {
    v4: Tools,
    v6: Tools,
}

impl IptablesFirewall {
    pub async fn detect(preference: Backend) -> IptablesFirewall {
        let suffix = match preference {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Auto => auto_suffix().await,
        };
        IptablesFirewall { v4: Tools::new(Family::V4, suffix), v6: Tools::new(Family::V6, suffix) }
    }

    pub fn describe(&self) -> String {
        self.v4.restore.clone()
    }

    fn tools(&self, family: Family) -> &Tools {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    async fn current(&self, family: Family, needed: bool) -> Result<Option<SavedTables>, FirewallError> {
        match save(&self.tools(family).save).await {
            Ok(text) => Ok(Some(SavedTables::parse(&text))),
            // No ip6tables on this host and nothing to do for IPv6: fine.
            Err(_) if !needed => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Puts the accept chain in place (`active`) or removes it, and removes retired chains.
    pub async fn sync_family(&self, active: bool, family: Family) -> Result<(), FirewallError> {
        let plans = rules::plan(active, family);
        let Some(current) = self.current(family, active).await? else { return Ok(()) };
        let count = |table: &str, chain: &str| current.rules_of(table, chain).count();
        if plans.iter().all(|p| rules::holds(p, &current, &count)) {
            return Ok(());
        }
        let batch: String = plans.iter().map(|p| rules::render(p, &current)).collect();
        restore(&self.tools(family).restore, &batch).await
    }

    /// Swarm networks' rule group in filter INPUT ([`super::swarm`]): the VXLAN
    /// and directory port admit only `members`, or the group goes (`None`).
    pub async fn sync_swarm_members(&self, port: u16, members: Option<&[IpAddr]>) -> Result<(), FirewallError> {
        use super::swarm::{SWARM_CHAIN, render};
        let Some(current) = self.current(Family::V4, members.is_some()).await? else { return Ok(()) };
        let exists = rules::Current::chain_exists(&current, "filter", SWARM_CHAIN);
        let jumps = current.rules_of("filter", "INPUT").filter(|r| r.ends_with(&format!("-j {SWARM_CHAIN}"))).count();
        if members.is_none() && !exists && jumps == 0 {
            return Ok(());
        }
        restore(&self.tools(Family::V4).restore, &render(port, members, exists, jumps)).await
    }

    pub async fn family_intact(&self, active: bool, family: Family) -> Result<bool, FirewallError> {
        let plans = rules::plan(active, family);
        let Some(current) = self.current(family, active).await? else { return Ok(true) };
        let count = |table: &str, chain: &str| current.rules_of(table, chain).count();
        Ok(plans.iter().all(|p| rules::holds(p, &current, &count)))
    }
}

/// dockerd programs whichever flavour `iptables` points to on its host; follow
/// it, unless dockerd's chains exist only in the other flavour.
async fn auto_suffix() -> &'static str {
    let has_docker = |text: Option<String>| text.is_some_and(|t| t.contains(":DOCKER"));
    let nft = has_docker(save("iptables-nft-save").await.ok());
    let legacy = has_docker(save("iptables-legacy-save").await.ok());
    match (nft, legacy) {
        (false, true) => "-legacy",
        (true, false) => "-nft",
        _ => "",
    }
}

/// The parts of `*-save` output the plugin cares about.
#[derive(Debug, Default)]
struct SavedTables {
    /// (table, line) for every line inside a table section.
    lines: Vec<(String, String)>,
}

impl SavedTables {
    fn parse(text: &str) -> SavedTables {
        let mut table = String::new();
        let mut lines = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_string();
            } else if !line.starts_with('#') && line != "COMMIT" {
                lines.push((table.clone(), line.to_string()));
            }
        }
        SavedTables { lines }
    }

    fn rules_of<'a>(&'a self, table: &'a str, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("-A {chain} ");
        self.lines.iter().filter(move |(t, l)| t == table && l.starts_with(&prefix)).map(|(_, l)| l.as_str())
    }
}

impl rules::Current for SavedTables {
    fn chain_exists(&self, table: &str, chain: &str) -> bool {
        let decl = format!(":{chain} ");
        self.lines.iter().any(|(t, l)| t == table && l.starts_with(&decl))
    }

    fn builtin_rules(&self, table: &str, builtin: &str) -> Vec<String> {
        self.rules_of(table, builtin).map(str::to_string).collect()
    }
}

async fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let err = |message: String| FirewallError { tool: tool.to_string(), message };
    // Spawn, feed and wait under one deadline: a tool stuck on a lock must not
    // hold the plugin (and so dockerd) forever.
    let work = async {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("cannot run: {e}")))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(|e| err(format!("write rules: {e}")))?;
        }
        child.wait_with_output().await.map_err(|e| err(e.to_string()))
    };
    let output = tokio::time::timeout(TOOL_TIMEOUT, work)
        .await
        .map_err(|_| err(format!("no answer within {}s", TOOL_TIMEOUT.as_secs())))??;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(err(format!("{}: {}", output.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn save(tool: &str) -> Result<String, FirewallError> {
    run(tool, &[], None).await
}

async fn restore(tool: &str, batch: &str) -> Result<(), FirewallError> {
    run(tool, &["--noflush", "--wait=3"], Some(batch)).await.map(drop).map_err(|mut e| {
        e.message = format!("{}; batch was:\n{batch}", e.message);
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rules::Current;

    const SAVED: &str = "# Generated by iptables-nft-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
        :DOCKER-USER - [0:0]\n:RUSTBRIDGE-FORWARD - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j RUSTBRIDGE-FORWARD\n\
        -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A RUSTBRIDGE-FORWARD -i rb-a -o rb-a -j ACCEPT\nCOMMIT\n\
        *nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n";

    #[test]
    fn parses_chains_and_builtin_rules_per_table() {
        let saved = SavedTables::parse(SAVED);
        assert!(saved.chain_exists("filter", rules::FORWARD_CHAIN));
        assert!(!saved.chain_exists("nat", rules::FORWARD_CHAIN));
        assert_eq!(
            saved.builtin_rules("filter", "FORWARD"),
            ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j RUSTBRIDGE-FORWARD", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"]
        );
        assert_eq!(saved.rules_of("filter", rules::FORWARD_CHAIN).count(), 1);
        assert_eq!(saved.builtin_rules("nat", "POSTROUTING").len(), 1);
    }
}
