//! Command line and environment: every setting has a flag, an environment
//! variable (for the managed plugin's config.json) and a default.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

use crate::api::Scope;
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
    /// What the running plugin holds: networks, endpoints, pools, firewall (asked through its socket).
    Status(StatusArgs),
    /// List kernel objects that look like rustbridge's but no state knows; remove them with --yes.
    Gc(GcArgs),
    /// Print the version, git commit and the engines it was tested with.
    Version,
}

/// The socket a client command asks the running plugin through.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The plugin's socket (the managed plugin also serves the legacy socket here on the host).
    #[arg(long, env = "RUSTBRIDGE_SOCKET", default_value = "/run/docker/plugins/rustbridge.sock")]
    pub socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// dockerd's API socket, asked for network names (dockerd does not send them to a remote driver);
    /// an empty value skips it.
    #[arg(long, env = "DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
}

#[derive(Debug, Args, Clone)]
pub struct GcArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Remove what is listed (without it, gc only lists).
    #[arg(long)]
    pub yes: bool,
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
    /// host:port for Prometheus metrics (/metrics) and /health over HTTP; off when unset or empty.
    #[arg(long, env = "RUSTBRIDGE_METRICS_ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,
    /// Seconds within which every call is answered. A call that cannot commit
    /// in time undoes what it did and commits nothing. Keep it well below the
    /// plugin's HTTP client timeout in dockerd (`docker plugin enable
    /// --timeout`, 30 s by default), hence at most 25.
    #[arg(long, env = "RUSTBRIDGE_CALL_DEADLINE_SECONDS", default_value = "25",
          value_parser = clap::value_parser!(u64).range(2..=25))]
    pub call_deadline_seconds: u64,
    /// Seconds a joined endpoint's veth pair must stay back in the host before
    /// the endpoint is taken for one whose container is gone (tests shorten it).
    #[arg(long, env = "RUSTBRIDGE_UNCLAIMED_GRACE_SECONDS", default_value = "30", hide = true)]
    pub unclaimed_grace_seconds: u64,
    /// The driver scope the main socket (the managed plugin's) answers:
    /// `auto` (global when dockerd's API socket is given, see
    /// `--docker-socket`, else local), `local`, or `global` for swarm
    /// networks (VXLAN between the nodes; needs the API socket). The extra
    /// sockets (`--also-listen`, the legacy name) are always local.
    #[arg(long, env = "RUSTBRIDGE_SCOPE", default_value = "auto")]
    pub scope: ScopeSetting,
    /// UDP port of swarm networks' VXLAN traffic between the nodes (the same on every node).
    #[arg(long, env = "RUSTBRIDGE_VXLAN_PORT", default_value_t = crate::driver::swarm::DEFAULT_VXLAN_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub vxlan_port: u16,
    /// dockerd's API socket, read in the background for swarm networks'
    /// members; given only when this path is a Unix socket (the managed
    /// plugin mounts /dev/null here unless its `docker-api.source` is set).
    /// Empty: none.
    #[arg(long, env = "RUSTBRIDGE_DOCKER_SOCKET", default_value = "",
          value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from))]
    pub docker_socket: PathBuf,
    /// Seconds between two reads of swarm networks' members.
    #[arg(long, env = "RUSTBRIDGE_MEMBERSHIP_SECONDS", default_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub membership_seconds: u64,
}

/// `RUSTBRIDGE_SCOPE` as set; [`ServeArgs::scope`] decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSetting {
    Auto,
    Local,
    Global,
}

impl std::str::FromStr for ScopeSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ScopeSetting::Auto),
            "local" => Ok(ScopeSetting::Local),
            "global" => Ok(ScopeSetting::Global),
            other => {
                Err(format!("scope {other:?}: expected auto, local or global (setting RUSTBRIDGE_SCOPE / --scope)"))
            }
        }
    }
}

/// dockerd's API is there only when the path is a Unix socket: the managed
/// plugin's default mount (/dev/null), a missing file or an empty setting is none.
pub fn docker_api_given(path: &Path) -> bool {
    !path.as_os_str().is_empty() && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The scope the main socket answers, or why the plugin cannot serve as set.
pub fn resolve_scope(setting: ScopeSetting, docker_socket: &Path) -> Result<Scope, String> {
    match (setting, docker_api_given(docker_socket)) {
        (ScopeSetting::Local, _) | (ScopeSetting::Auto, false) => Ok(Scope::Local),
        (ScopeSetting::Auto | ScopeSetting::Global, true) => Ok(Scope::Global),
        (ScopeSetting::Global, false) => {
            let found = if docker_socket.as_os_str().is_empty() {
                "none is set".to_string()
            } else {
                format!("{} is not a socket", docker_socket.display())
            };
            Err(format!(
                "RUSTBRIDGE_SCOPE=global needs dockerd's API socket ({found}): give it with the plugin setting \
                 docker-api.source=/var/run/docker.sock (docker plugin disable <plugin>; \
                 docker plugin set <plugin> docker-api.source=/var/run/docker.sock; docker plugin enable <plugin>), \
                 or with --docker-socket / RUSTBRIDGE_DOCKER_SOCKET when run by hand"
            ))
        }
    }
}

impl ServeArgs {
    /// See [`resolve_scope`].
    pub fn scope(&self) -> Result<Scope, String> {
        resolve_scope(self.scope, &self.docker_socket)
    }

    pub fn swarm_settings(&self) -> crate::driver::swarm::SwarmSettings {
        crate::driver::swarm::SwarmSettings {
            vxlan_port: self.vxlan_port,
            docker_socket: self.docker_socket.clone(),
            poll: std::time::Duration::from_secs(self.membership_seconds),
            ..Default::default()
        }
    }
}

/// The metrics listener's address; empty (the managed plugin's default) means off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

impl ServeArgs {
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.and_then(|a| a.0)
    }
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.trim().is_empty() {
        return Ok(MetricsAddr(None));
    }
    s.trim()
        .parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("metrics address {s:?}: {e} (expected host:port, e.g. 127.0.0.1:9474)"))
}

fn parse_default_pool(s: &str) -> Result<DefaultPool, String> {
    DefaultPool::parse(s).map_err(|e| format!("{e} (setting RUSTBRIDGE_DEFAULT_POOLS / --default-pool)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_empty_is_off_and_bad_is_refused() {
        assert_eq!(parse_metrics_addr("").unwrap(), MetricsAddr(None));
        assert_eq!(parse_metrics_addr("127.0.0.1:9474").unwrap(), MetricsAddr(Some("127.0.0.1:9474".parse().unwrap())));
        let err = parse_metrics_addr("localhost").unwrap_err();
        assert!(err.contains("metrics address \"localhost\"") && err.contains("host:port"), "{err}");
    }

    /// `::/0:0` once overflowed at the second automatic pool; now refused at
    /// start, naming the setting.
    #[test]
    fn a_whole_space_default_pool_is_refused_naming_the_setting() {
        let err = Cli::try_parse_from(["rustbridge", "serve", "--default-pool", "::/0:0"]).unwrap_err().to_string();
        assert!(err.contains("RUSTBRIDGE_DEFAULT_POOLS / --default-pool"), "{err}");
        assert!(err.contains("size /0"), "{err}");
        let err = parse_default_pool("10.0.0.0/8").unwrap_err();
        assert!(
            err.starts_with("invalid default pool \"10.0.0.0/8\"") && err.contains("RUSTBRIDGE_DEFAULT_POOLS"),
            "{err}"
        );
    }

    /// Without dockerd's API socket (the managed plugin's default mount is
    /// /dev/null) the scope is local; `global` is refused, naming the setting.
    #[test]
    fn the_scope_follows_the_docker_api_socket() {
        let dir = std::env::temp_dir().join(format!("rb-scope-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let plain = dir.join("plain-file");
        std::fs::write(&plain, "").unwrap();
        let none = [Path::new(""), Path::new("/dev/null"), plain.as_path(), &dir.join("missing")];
        for path in none {
            assert!(!docker_api_given(path), "{}", path.display());
            assert_eq!(resolve_scope(ScopeSetting::Auto, path), Ok(Scope::Local), "{}", path.display());
            assert_eq!(resolve_scope(ScopeSetting::Local, path), Ok(Scope::Local));
            let err = resolve_scope(ScopeSetting::Global, path).unwrap_err();
            assert!(err.starts_with("RUSTBRIDGE_SCOPE=global needs dockerd's API socket"), "{err}");
            assert!(
                err.contains("docker-api.source=/var/run/docker.sock") && err.contains("RUSTBRIDGE_DOCKER_SOCKET"),
                "{err}"
            );
        }
        assert!(
            resolve_scope(ScopeSetting::Global, Path::new("/dev/null"))
                .unwrap_err()
                .contains("/dev/null is not a socket")
        );
        assert!(docker_api_given(&socket));
        assert_eq!(resolve_scope(ScopeSetting::Auto, &socket), Ok(Scope::Global));
        assert_eq!(resolve_scope(ScopeSetting::Global, &socket), Ok(Scope::Global));
        assert_eq!(resolve_scope(ScopeSetting::Local, &socket), Ok(Scope::Local));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The defaults: `auto` and no API socket, so a binary run by hand (or a
    /// plugin left as installed) is local; a bad scope names the setting.
    #[test]
    fn scope_defaults_to_auto_without_an_api_socket() {
        let Command::Serve(args) = Cli::try_parse_from(["rustbridge", "serve"]).unwrap().command else { panic!() };
        assert_eq!((args.scope, args.docker_socket.as_os_str().is_empty()), (ScopeSetting::Auto, true));
        assert_eq!(args.scope(), Ok(Scope::Local));
        let err = Cli::try_parse_from(["rustbridge", "serve", "--scope", "swarm"]).unwrap_err().to_string();
        assert!(err.contains("expected auto, local or global") && err.contains("RUSTBRIDGE_SCOPE"), "{err}");
    }
}
