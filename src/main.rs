use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use slog::{Logger, error, info};
use tokio::signal::unix::{SignalKind, signal};

use rustbridge::api::Scope;
use rustbridge::config::{Cli, Command, ServeArgs};
use rustbridge::dataplane::netlink::NetlinkDataPlane;
use rustbridge::driver::Plugin;
use rustbridge::firewall::iptables::IptablesFirewall;
use rustbridge::firewall::nft::NftFirewall;
use rustbridge::server::Serving;
use rustbridge::state::Store;
use rustbridge::{cli, log, membership, metrics, reconcile, server};

/// SIGTERM must end the process within a second: in-flight calls get this long.
const DRAIN: Duration = Duration::from_millis(600);
const FINISH_CALLS: Duration = Duration::from_millis(250);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            print!("{}", rustbridge::version::describe());
            std::process::ExitCode::SUCCESS
        }
        Command::Status(args) => client_result(cli::status(&args).map(|text| (text, false))),
        Command::Gc(args) => client_result(cli::gc(&args)),
        Command::Serve(args) => {
            let log = log::build(args.log_level, args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            let result = runtime.block_on(serve(args, log.clone()));
            let code = match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(message) => {
                    error!(log, "rustbridge stopped"; "error" => &message);
                    eprintln!("rustbridge: {message}");
                    std::process::ExitCode::FAILURE
                }
            };
            runtime.shutdown_timeout(Duration::from_millis(100));
            drop(log);
            code
        }
    }
}

/// Loads the state and takes the state lock for the start-up repair, which
/// runs once the socket is bound (see `serve`); or, when the state cannot be
/// used, serves the reason instead of exiting: dockerd would only show
/// "connection refused" (and a managed plugin that exits at enable is
/// disabled), whereas an answered call shows the reason in docker's output.
/// In that mode nothing in the kernel is touched.
/// A setting that cannot be served as given (`refused`) is answered the same way.
async fn start(
    args: &ServeArgs,
    refused: Option<&String>,
    log: &Logger,
) -> Result<(Serving, Option<reconcile::StartUp>), String> {
    if let Some(reason) = refused {
        return Ok((refusing(log, reason.clone()), None));
    }
    let store = match Store::open(&args.state_dir) {
        Ok(store) => store,
        Err(e) => return Ok((refusing(log, e.to_string()), None)),
    };
    let dataplane = Arc::new(NetlinkDataPlane::connect().map_err(|e| format!("netlink socket: {e}"))?);
    let firewall = NftFirewall::new(IptablesFirewall::detect(args.iptables).await);
    info!(log, "starting"; "version" => rustbridge::version::VERSION, "commit" => rustbridge::version::COMMIT,
        "state_dir" => %args.state_dir.display(), "firewall" => firewall.describe());
    metrics::global().set_firewall(firewall.describe());
    let db = store.path().to_path_buf();
    let plugin = match Plugin::load(store, dataplane, Arc::new(firewall), args.default_pools.clone()) {
        Ok(plugin) => Arc::new(
            plugin
                .with_unclaimed_grace(Duration::from_secs(args.unclaimed_grace_seconds))
                .with_swarm_settings(args.swarm_settings()),
        ),
        Err(e) => {
            return Ok((refusing(log, format!("state database {} cannot be loaded: {e}", db.display())), None));
        }
    };
    {
        let state = plugin.lock_state().await;
        info!(log, "state loaded"; "networks" => state.networks.len(), "endpoints" => state.endpoints.len());
    }
    metrics::global().set_state_loaded();
    // dockerd may call as soon as the socket exists: the repair holds the
    // state lock from now on, so any call that needs the state comes after it.
    let startup = reconcile::StartUp::hold(&plugin).await;
    Ok((Serving::Plugin(plugin), Some(startup)))
}

fn refusing(log: &Logger, reason: String) -> Serving {
    error!(log, "not serving: every call is answered with the reason and nothing in the kernel is touched";
        "reason" => &reason);
    eprintln!("rustbridge: {reason}");
    Serving::Refusing(
        format!(
            "rustbridge is not serving: {reason}. Once fixed, restart the plugin (docker plugin disable -f <plugin>; docker plugin enable <plugin>)"
        )
        .into(),
    )
}

async fn serve(args: ServeArgs, log: Logger) -> Result<(), String> {
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let scope = args.scope();
    let (serving, startup) = start(&args, scope.as_ref().err(), &log).await?;
    // A refused scope setting is answered by every call; the handshake stays local then.
    let scope = scope.unwrap_or(Scope::Local);
    let mut listeners = Vec::new();
    let paths: Vec<PathBuf> = std::iter::once(args.socket.clone()).chain(args.also_listen.iter().cloned()).collect();
    for (i, path) in paths.iter().enumerate() {
        let listener = server::bind(path).map_err(|e| format!("listen on {}: {e}", path.display()))?;
        // The main socket (the managed plugin's) answers the configured scope; the legacy name is local.
        let scope = if i == 0 { scope } else { Scope::Local };
        info!(log, "listening"; "socket" => %path.display(), "scope" => scope.as_str());
        listeners.push((path.clone(), listener, scope));
    }
    let startup = match (&serving, startup) {
        (Serving::Plugin(plugin), Some(startup)) => {
            let (plugin, log) = (plugin.clone(), log.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = startup.run(&plugin, &log).await {
                    error!(log, "start-up reconcile incomplete; will retry periodically"; "error" => %e);
                }
            }))
        }
        _ => None,
    };
    let (reconciler, metrics_task) = match &serving {
        Serving::Plugin(plugin) => (
            Some(tokio::spawn(reconcile::run_periodically(
                plugin.clone(),
                log.clone(),
                Duration::from_secs(args.reconcile_seconds),
            ))),
            start_metrics(args.metrics_addr(), plugin, &log).await,
        ),
        Serving::Refusing(_) => (None, None),
    };
    let swarm = match &serving {
        Serving::Plugin(plugin) => membership::start(plugin, scope, &log),
        Serving::Refusing(_) => Vec::new(),
    };
    let shutdown = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let limits =
        server::Limits { call_deadline: Duration::from_secs(args.call_deadline_seconds), ..Default::default() };
    server::serve_scoped(listeners, serving.clone(), log.clone(), shutdown, DRAIN, limits).await;
    for task in reconciler.into_iter().chain(metrics_task).chain(startup).chain(swarm) {
        task.abort();
    }
    // A call whose answer was already given up on may still be running: let it
    // finish its step (its changes are committed or undone under this lock).
    if let Serving::Plugin(plugin) = &serving
        && tokio::time::timeout(FINISH_CALLS, plugin.lock_state()).await.is_err()
    {
        info!(log, "a call was still running at exit; the next start reconciles what it left");
    }
    if let Serving::Plugin(plugin) = &serving
        && let Err(e) = plugin.flush()
    {
        error!(log, "Joins since the last reconcile pass not flushed to disk; the next start recovers them from the kernel"; "error" => %e);
    }
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    // Networks stay up: containers keep their traffic while the plugin is away.
    info!(log, "stopped; networks left in place");
    Ok(())
}

/// The metrics listener, when asked for. A listener that cannot bind is logged
/// and skipped: the network driver itself keeps serving.
async fn start_metrics(
    addr: Option<std::net::SocketAddr>,
    plugin: &Arc<Plugin>,
    log: &Logger,
) -> Option<tokio::task::JoinHandle<()>> {
    let addr = addr?;
    match metrics::http::bind(addr).await {
        Ok(listener) => {
            info!(log, "metrics listening"; "address" => %addr);
            let serving = metrics::http::serve(listener, plugin.clone(), log.clone(), std::future::pending());
            Some(tokio::spawn(serving))
        }
        Err(e) => {
            error!(log, "metrics listener not started (RUSTBRIDGE_METRICS_ADDR)"; "address" => %addr, "error" => %e);
            None
        }
    }
}

/// Prints a client command's output; exit status 1 on failure or reported errors.
fn client_result(result: Result<(String, bool), String>) -> std::process::ExitCode {
    match result {
        Ok((text, failed)) => {
            print!("{text}");
            if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
        }
        Err(message) => {
            eprintln!("rustbridge: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
