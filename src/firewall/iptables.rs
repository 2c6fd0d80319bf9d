//! iptables backend: reads the current tables with `*-save` (one process),
//! writes one `*-restore --noflush` batch per change (one process, atomic per
//! table). Rules are passed on stdin, never through a shell.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::rules::{self, Family, JumpPlan};
use super::{Firewall, FirewallError, FwNetwork};

const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
const DOCKER_USER_JUMP: &str = "-A FORWARD -j DOCKER-USER";

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

    async fn sync_family(&self, networks: &[FwNetwork], family: Family) -> Result<(), FirewallError> {
        let tools = self.tools(family);
        let forward = rules::forward_rules(networks, family);
        let postrouting = rules::postrouting_rules(networks, family);
        let current = match save(&tools.save).await {
            Ok(text) => SavedTables::parse(&text),
            // No ip6tables on this host and nothing to do for IPv6: fine.
            Err(_) if forward.is_empty() && postrouting.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        let filter_plan = current.plan("filter", "FORWARD", rules::FORWARD_CHAIN);
        let nat_plan = current.plan("nat", "POSTROUTING", rules::POSTROUTING_CHAIN);
        let nothing_to_remove = |plan: &JumpPlan| plan.existing_jumps == 0 && !current.chain_exists(plan.table, plan.chain);
        if forward.is_empty() && postrouting.is_empty() && nothing_to_remove(&filter_plan) && nothing_to_remove(&nat_plan) {
            return Ok(());
        }
        let mut batch = rules::render_table(&filter_plan, &forward, current.chain_exists("filter", rules::FORWARD_CHAIN));
        batch += &rules::render_table(&nat_plan, &postrouting, current.chain_exists("nat", rules::POSTROUTING_CHAIN));
        restore(&tools.restore, &batch).await
    }

    async fn family_intact(&self, networks: &[FwNetwork], family: Family) -> Result<bool, FirewallError> {
        let forward = rules::forward_rules(networks, family);
        let postrouting = rules::postrouting_rules(networks, family);
        let current = match save(&self.tools(family).save).await {
            Ok(text) => SavedTables::parse(&text),
            Err(_) if forward.is_empty() && postrouting.is_empty() => return Ok(true),
            Err(e) => return Err(e),
        };
        Ok(current.chain_holds("filter", "FORWARD", rules::FORWARD_CHAIN, forward.len())
            && current.chain_holds("nat", "POSTROUTING", rules::POSTROUTING_CHAIN, postrouting.len()))
    }
}

#[async_trait]
impl Firewall for IptablesFirewall {
    async fn sync(&self, networks: &[FwNetwork]) -> Result<(), FirewallError> {
        self.sync_family(networks, Family::V4).await?;
        self.sync_family(networks, Family::V6).await
    }

    async fn is_intact(&self, networks: &[FwNetwork]) -> Result<bool, FirewallError> {
        Ok(self.family_intact(networks, Family::V4).await? && self.family_intact(networks, Family::V6).await?)
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
        self.lines
            .iter()
            .filter(move |(t, l)| t == table && l.starts_with(&prefix))
            .map(|(_, l)| l.as_str())
    }

    fn chain_exists(&self, table: &str, chain: &str) -> bool {
        let decl = format!(":{chain} ");
        self.lines.iter().any(|(t, l)| t == table && l.starts_with(&decl))
    }

    fn plan(&self, table: &'static str, builtin: &'static str, chain: &'static str) -> JumpPlan {
        let jump = format!("-A {builtin} -j {chain}");
        let others: Vec<&str> = self.rules_of(table, builtin).filter(|l| *l != jump).collect();
        let existing_jumps = self.rules_of(table, builtin).filter(|l| *l == jump).count();
        JumpPlan { table, builtin, chain, existing_jumps, insert_at: jump_position(builtin, &others) }
    }

    /// Exactly the expected number of rules in our chain and one jump, where it belongs.
    fn chain_holds(&self, table: &'static str, builtin: &'static str, chain: &'static str, expected: usize) -> bool {
        let jump = format!("-A {builtin} -j {chain}");
        let all: Vec<&str> = self.rules_of(table, builtin).collect();
        let count = self.rules_of(table, chain).count();
        if expected == 0 {
            return count == 0 && !all.contains(&jump.as_str()) && !self.chain_exists(table, chain);
        }
        let others: Vec<&str> = all.iter().copied().filter(|l| *l != jump).collect();
        let want_at = jump_position(builtin, &others);
        let jumps: Vec<usize> = all.iter().enumerate().filter(|(_, l)| **l == jump).map(|(i, _)| i + 1).collect();
        count == expected && jumps == [want_at]
    }
}

/// Our FORWARD jump goes right after DOCKER-USER (which stays the user's,
/// first) and before every other dockerd rule, so that Docker's own accepts
/// for its bridges cannot bypass rustbridge's isolation.
fn jump_position(builtin: &str, others: &[&str]) -> usize {
    if builtin == "FORWARD" {
        if let Some(i) = others.iter().position(|l| *l == DOCKER_USER_JUMP) {
            return i + 2;
        }
    }
    1
}

async fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
    let err = |message: String| FirewallError { tool: tool.to_string(), message };
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
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| err(format!("no answer within {}s", TOOL_TIMEOUT.as_secs())))?
        .map_err(|e| err(e.to_string()))?;
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
    run(tool, &["--noflush", "--wait"], Some(batch)).await.map(drop).map_err(|mut e| {
        e.message = format!("{}; batch was:\n{batch}", e.message);
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "# Generated by iptables-nft-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
        :DOCKER-USER - [0:0]\n:RUSTBRIDGE-FORWARD - [0:0]\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j RUSTBRIDGE-FORWARD\n\
        -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A RUSTBRIDGE-FORWARD -i rb-a -o rb-a -j ACCEPT\nCOMMIT\n\
        *nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n";

    #[test]
    fn plans_jump_after_docker_user() {
        let saved = SavedTables::parse(SAVED);
        let plan = saved.plan("filter", "FORWARD", rules::FORWARD_CHAIN);
        assert_eq!(plan.existing_jumps, 1);
        assert_eq!(plan.insert_at, 2);
        assert!(saved.chain_holds("filter", "FORWARD", rules::FORWARD_CHAIN, 1));
        assert!(!saved.chain_holds("filter", "FORWARD", rules::FORWARD_CHAIN, 2));
        let nat = saved.plan("nat", "POSTROUTING", rules::POSTROUTING_CHAIN);
        assert_eq!((nat.existing_jumps, nat.insert_at), (0, 1));
        assert!(!saved.chain_exists("nat", rules::POSTROUTING_CHAIN));
    }

    #[test]
    fn jump_below_docker_rules_is_not_intact() {
        let text = SAVED.replace(
            "-A FORWARD -j RUSTBRIDGE-FORWARD\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A FORWARD -j RUSTBRIDGE-FORWARD\n",
        );
        let saved = SavedTables::parse(&text);
        assert!(!saved.chain_holds("filter", "FORWARD", rules::FORWARD_CHAIN, 1));
    }
}
