//! Command line and environment: every setting has a flag, an environment
//! variable (for the managed plugin's config.json) and a default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::firewall::iptables::Backend;
use crate::ipam::DefaultPool;
use crate::log::{self, Format};

#[derive(Debug, Parser)]
#[command(name = "rustbridge", version, about = "Docker network and IPAM driver: Linux bridges, veth pairs, real NAT")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the NetworkDriver and IpamDriver protocols.
    Serve(ServeArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Unix socket dockerd dials.
    #[arg(long, env = "RUSTBRIDGE_SOCKET", default_value = "/run/docker/plugins/rustbridge.sock")]
    pub socket: PathBuf,
    /// More sockets served by the same process (the managed plugin adds the
    /// host's legacy-plugin socket here so `-d rustbridge` resolves).
    #[arg(long = "also-listen", env = "RUSTBRIDGE_ALSO_LISTEN", value_delimiter = ',')]
    pub also_listen: Vec<PathBuf>,
    /// Directory of the state database.
    #[arg(long, env = "RUSTBRIDGE_STATE_DIR", default_value = "/var/lib/rustbridge")]
    pub state_dir: PathBuf,
    /// error, warn, info or debug (debug shows request and response bodies).
    #[arg(long, env = "RUSTBRIDGE_LOG_LEVEL", default_value = "info", value_parser = log::parse_level)]
    pub log_level: slog::Level,
    /// text or json.
    #[arg(long, env = "RUSTBRIDGE_LOG_FORMAT", default_value = "text")]
    pub log_format: Format,
    /// Pools the IPAM driver picks from when no subnet is given, as CIDR:SIZE
    /// (comma-separated in the environment variable).
    #[arg(long = "default-pool", env = "RUSTBRIDGE_DEFAULT_POOLS", value_delimiter = ',', value_parser = parse_default_pool,
          default_value = "10.210.0.0/16:24,fdb7:7b00::/40:64")]
    pub default_pools: Vec<DefaultPool>,
    /// iptables flavour: auto (follow dockerd), nft or legacy.
    #[arg(long, env = "RUSTBRIDGE_IPTABLES", default_value = "auto")]
    pub iptables: Backend,
    /// Seconds between checks that bridges and firewall rules are still in place.
    #[arg(long, env = "RUSTBRIDGE_RECONCILE_SECONDS", default_value = "5", value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_seconds: u64,
}

fn parse_default_pool(s: &str) -> Result<DefaultPool, String> {
    DefaultPool::parse(s).map_err(|e| e.to_string())
}
