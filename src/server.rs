//! HTTP/1.1 over Unix sockets: routing, body limits, per-call deadlines and
//! the error shapes dockerd reads (`Err` for NetworkDriver, `Error` for IpamDriver).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use slog::{Logger, debug, error, info, warn};
use tokio::net::{UnixListener, UnixStream};

use crate::api::*;
use crate::deadline::CallDeadline;
use crate::driver::{Plugin, PluginError};
use crate::listener::{self, Connections, Slot};

/// Far above any real request but the largest published ranges: a port
/// binding is about 107 bytes as dockerd encodes it, so 10,000 ports in one
/// ProgramExternalConnectivity take 1.07 MB; 2 MiB holds about 19,000.
pub const MAX_BODY_BYTES: usize = 2 << 20;
const CONTENT_TYPE_V1: &str = "application/vnd.docker.plugins.v1+json";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ErrorKey {
    /// NetworkDriver and Plugin calls.
    Err,
    /// IpamDriver calls: with `Err`, dockerd hides the message.
    Error,
}

struct Reply {
    status: StatusCode,
    body: Value,
    outcome: Result<(), String>,
}

impl Reply {
    fn ok(body: impl Serialize) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: serde_json::to_value(body).expect("responses serialize"),
            outcome: Ok(()),
        }
    }

    fn error(key: ErrorKey, status: StatusCode, message: String) -> Reply {
        let body = match key {
            ErrorKey::Err => json!({ "Err": message }),
            ErrorKey::Error => json!({ "Error": message }),
        };
        Reply { status, body, outcome: Err(message) }
    }
}

/// What answers the calls.
#[derive(Clone)]
pub enum Serving {
    Plugin(Arc<Plugin>),
    /// The state could not be used (see `state::StoreError::Refused`): the
    /// handshake is answered, so that dockerd registers the driver, and every
    /// other call gets this reason as its error, so that the operator reads
    /// it in docker's own output. Nothing else is done.
    Refusing(Arc<str>),
}

impl From<Arc<Plugin>> for Serving {
    fn from(plugin: Arc<Plugin>) -> Self {
        Serving::Plugin(plugin)
    }
}

pub use crate::listener::Limits;
/// Binds a socket only root may use (see `listener::bind`).
pub use crate::listener::bind;

/// Serves until `shutdown` resolves, then lets in-flight calls finish (bounded
/// by `drain`). Every call is answered within `Limits::call_deadline` (see [`CallDeadline`]).
pub async fn serve(
    listeners: Vec<(PathBuf, UnixListener)>,
    serving: impl Into<Serving>,
    log: Logger,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    serve_with(listeners, serving, log, shutdown, drain, Limits::default()).await
}

/// `serve` with other limits on clients (tests make them small).
pub async fn serve_with(
    listeners: Vec<(PathBuf, UnixListener)>,
    serving: impl Into<Serving>,
    log: Logger,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) {
    let listeners = listeners.into_iter().map(|(path, listener)| (path, listener, Scope::Local)).collect();
    serve_scoped(listeners, serving, log, shutdown, drain, limits).await
}

/// `serve_with`, each socket answering GetCapabilities with its own scope
/// (dockerd treats every socket as a driver of its own and asks each).
pub async fn serve_scoped(
    listeners: Vec<(PathBuf, UnixListener, Scope)>,
    serving: impl Into<Serving>,
    log: Logger,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) {
    let serving = serving.into();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections::default());
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(64);
    let mut accept_tasks = Vec::new();
    for (path, listener, scope) in listeners {
        let accept =
            listener::accept_loop(path, listener, scope, connections.clone(), limits, log.clone(), conn_tx.clone());
        accept_tasks.push(tokio::spawn(accept));
    }
    drop(conn_tx);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some((stream, slot, scope)) = conn_rx.recv() => {
                let id = slot.id();
                let conn = serve_connection(stream, slot, scope, serving.clone(), log.clone(), limits, &graceful);
                connections.set_abort(id, tokio::spawn(conn).abort_handle());
            }
            _ = &mut shutdown => break,
        }
    }
    for task in accept_tasks {
        task.abort();
    }
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        warn!(log, "in-flight calls did not finish in time"; "waited_ms" => drain.as_millis() as u64);
    }
}

/// HTTP/1.1 on one connection: headers within `limits.header_timeout`, the
/// connection marked busy (never evicted) while a call runs.
fn serve_connection(
    stream: UnixStream,
    slot: Slot,
    scope: Scope,
    serving: Serving,
    log: Logger,
    limits: Limits,
    graceful: &GracefulShutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let slot = Arc::new(slot);
    let call_log = log.clone();
    let service = service_fn(move |req| {
        let busy = slot.busy();
        let call = handle(serving.clone(), call_log.clone(), limits, scope, req);
        async move {
            let reply = call.await;
            drop(busy);
            reply
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let conn = graceful.watch(conn);
    async move {
        if let Err(e) = conn.await {
            debug!(log, "connection ended with an error"; "error" => %e);
        }
    }
}

/// The request body, bounded in size and time; a refusal is the reply to send.
/// A declared length over the limit is refused before a byte of the body is read.
async fn read_body(req: Request<Incoming>, key: ErrorKey, limits: Limits) -> Result<Bytes, Reply> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&l| l > MAX_BODY_BYTES as u64) {
        let message = format!("request body refused: {length} bytes declared, the limit is {MAX_BODY_BYTES} bytes");
        return Err(Reply::error(key, StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    match tokio::time::timeout(limits.body_timeout, Limited::new(req.into_body(), MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            let message = format!("request body refused: {e} (limit {MAX_BODY_BYTES} bytes)");
            Err(Reply::error(key, StatusCode::PAYLOAD_TOO_LARGE, message))
        }
        Err(_) => {
            let message = format!("request body refused: not received within {}s", limits.body_timeout.as_secs_f64());
            Err(Reply::error(key, StatusCode::REQUEST_TIMEOUT, message))
        }
    }
}

async fn handle(
    serving: Serving,
    log: Logger,
    limits: Limits,
    scope: Scope,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    // The deadline runs from the call's arrival: reading the body counts too.
    let deadline = CallDeadline::for_call(limits.call_deadline);
    let path = req.uri().path().to_string();
    let key = if path.starts_with("/IpamDriver.") { ErrorKey::Error } else { ErrorKey::Err };
    let body = match read_body(req, key, limits).await {
        Ok(body) => body,
        Err(reply) => {
            // The rest of the body is not read: the connection cannot be reused.
            let mut response = finish(&log, &path, &[], reply, started);
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let plugin = match serving {
        Serving::Plugin(plugin) => plugin,
        Serving::Refusing(reason) => {
            let reply = handshake(&path, scope)
                .unwrap_or_else(|| Reply::error(key, StatusCode::SERVICE_UNAVAILABLE, reason.to_string()));
            return Ok(finish(&log, &path, &body, reply, started));
        }
    };
    // The call runs as its own task, so it is never cut off half-way through
    // a kernel step: a call the answer was not waited for undoes its steps
    // and commits nothing (its transaction sees the verdict).
    let call = {
        let (plugin, path, body) = (plugin.clone(), path.clone(), body.clone());
        tokio::spawn(deadline.clone().scope(async move { dispatch(&plugin, &path, &body, key, scope).await }))
    };
    let reply = answer_in_time(&deadline, call, key, &path, &log).await;
    Ok(finish(&log, &path, &body, reply, started))
}

/// The call's own answer when it comes in time, or when it had already
/// claimed its commit (then its answer is the truth, a little late at most);
/// otherwise an error saying that nothing was changed. An abandoned call's
/// late outcome is logged when it ends.
async fn answer_in_time(
    deadline: &CallDeadline,
    mut call: tokio::task::JoinHandle<Reply>,
    key: ErrorKey,
    path: &str,
    log: &Logger,
) -> Reply {
    let joined = |result: Result<Reply, tokio::task::JoinError>| match result {
        Ok(reply) => reply,
        Err(panicked) => {
            Reply::error(key, StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: internal error: {panicked}"))
        }
    };
    let Some(limit) = deadline.until_answer() else { return joined(call.await) };
    match tokio::time::timeout(limit, &mut call).await {
        Ok(result) => joined(result),
        Err(_) if deadline.abandon() => {
            let (log, path_owned) = (log.clone(), path.to_string());
            tokio::spawn(async move {
                let outcome = match call.await {
                    Ok(reply) => reply.outcome.err().unwrap_or_else(|| "ok, nothing to commit".into()),
                    Err(e) => format!("internal error: {e}"),
                };
                warn!(log, "abandoned call ended"; "method" => path_owned, "outcome" => outcome);
            });
            Reply::error(
                key,
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{path}: no answer within {} ms; the call commits nothing and undoes what it did",
                    limit.as_millis()
                ),
            )
        }
        // It claimed its commit before the answer was due: wait for the truth.
        Err(_) => joined(call.await),
    }
}

fn finish(log: &Logger, path: &str, body: &[u8], reply: Reply, started: Instant) -> Response<Full<Bytes>> {
    let method = if reply.status == StatusCode::NOT_FOUND { "unknown" } else { path };
    crate::metrics::global().record_call(method, started.elapsed(), reply.outcome.is_ok());
    let ids = ids_of(body);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match &reply.outcome {
        Ok(()) => info!(log, "call"; "method" => path, "network" => &ids.0, "endpoint" => &ids.1, "pool" => &ids.2,
            "duration_ms" => format!("{ms:.1}"), "outcome" => "ok"),
        Err(message) => {
            error!(log, "call"; "method" => path, "network" => &ids.0, "endpoint" => &ids.1, "pool" => &ids.2,
            "duration_ms" => format!("{ms:.1}"), "outcome" => "error", "error" => message)
        }
    }
    debug!(log, "call bodies"; "method" => path, "request" => String::from_utf8_lossy(body).into_owned(),
        "response" => reply.body.to_string());
    Response::builder()
        .status(reply.status)
        .header(CONTENT_TYPE, CONTENT_TYPE_V1)
        .body(Full::new(Bytes::from(reply.body.to_string())))
        .expect("static response parts are valid")
}

/// Short network, endpoint and pool IDs for the log line.
fn ids_of(body: &[u8]) -> (String, String, String) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |name: &str, len: usize| {
        value.get(name).and_then(Value::as_str).map(|s| s.chars().take(len).collect()).unwrap_or_default()
    };
    (field("NetworkID", 12), field("EndpointID", 12), field("PoolID", 64))
}

/// For calls without required fields an empty body means "no arguments"; a
/// missing Content-Type is normal.
fn decode<T: DeserializeOwned + Default>(path: &str, body: &[u8]) -> Result<T, PluginError> {
    if is_empty_body(body) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| PluginError::new(format!("{path}: malformed request body: {e}")))
}

/// For calls that need IDs: an empty body is dockerd's retry after a transport
/// failure (moby/moby#39331) and is refused, so nothing is answered "ok"
/// having done nothing; the IDs are checked before anything runs.
fn decode_args<T: DeserializeOwned + Default + Arguments>(path: &str, body: &[u8]) -> Result<T, PluginError> {
    if is_empty_body(body) {
        return Err(PluginError::new(format!(
            "{path}: empty request body, but the call needs {} (dockerd re-sends a call with an empty body after a transport failure); nothing was done",
            T::REQUIRED.join(" and ")
        )));
    }
    let req: T = decode(path, body)?;
    req.check().map_err(|e| PluginError::new(format!("{path}: {e}")))?;
    Ok(req)
}

fn is_empty_body(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

async fn dispatch(plugin: &Plugin, path: &str, body: &[u8], key: ErrorKey, scope: Scope) -> Reply {
    let result = route(plugin, path, body, scope).await;
    match result {
        Ok(reply) => reply,
        Err(RouteError::NotFound) => Reply::error(
            key,
            StatusCode::NOT_FOUND,
            format!(
                "{path}: unknown method (rustbridge implements Plugin.Activate, NetworkDriver.*, IpamDriver.* and Rustbridge.Status/Gc)"
            ),
        ),
        Err(RouteError::Plugin(e)) => Reply::error(key, StatusCode::INTERNAL_SERVER_ERROR, e.0),
    }
}

/// One call without the HTTP around it: the JSON dockerd would read, or the
/// error text it would show. The in-process fixture replay drives the plugin
/// through this, so it exercises the same routing and decoding as the socket.
pub async fn answer(plugin: &Plugin, path: &str, body: &[u8]) -> Result<Value, String> {
    answer_on(plugin, path, body, Scope::Local).await
}

/// `answer` as the socket of that scope would.
pub async fn answer_on(plugin: &Plugin, path: &str, body: &[u8], scope: Scope) -> Result<Value, String> {
    match route(plugin, path, body, scope).await {
        Ok(reply) => reply.outcome.map(|()| reply.body),
        Err(RouteError::NotFound) => Err(format!("{path}: unknown method")),
        Err(RouteError::Plugin(e)) => Err(e.0),
    }
}

enum RouteError {
    NotFound,
    Plugin(PluginError),
}

impl From<PluginError> for RouteError {
    fn from(e: PluginError) -> Self {
        RouteError::Plugin(e)
    }
}

#[derive(Serialize)]
struct Empty {}

/// The calls dockerd makes to register the plugin; they need no state.
fn handshake(path: &str, scope: Scope) -> Option<Reply> {
    Some(match path {
        "/Plugin.Activate" => Reply::ok(ActivateResponse { implements: vec!["NetworkDriver", "IpamDriver"] }),
        "/NetworkDriver.GetCapabilities" => Reply::ok(Plugin::capabilities(scope)),
        "/IpamDriver.GetCapabilities" => Reply::ok(Plugin::ipam_capabilities()),
        "/IpamDriver.GetDefaultAddressSpaces" => Reply::ok(Plugin::default_address_spaces()),
        _ => return None,
    })
}

async fn route(plugin: &Plugin, path: &str, body: &[u8], scope: Scope) -> Result<Reply, RouteError> {
    macro_rules! call {
        ($method:ident) => {{
            let req = decode_args(path, body)?;
            Reply::ok(plugin.$method(req).await?)
        }};
        ($method:ident, empty) => {{
            let req = decode_args(path, body)?;
            plugin.$method(req).await?;
            Reply::ok(Empty {})
        }};
    }
    if let Some(reply) = handshake(path, scope) {
        if path == "/IpamDriver.GetCapabilities" {
            plugin.note_ipam_registration();
        }
        return Ok(reply);
    }
    let reply = match path {
        "/NetworkDriver.CreateNetwork" => call!(create_network, empty),
        "/NetworkDriver.DeleteNetwork" => call!(delete_network, empty),
        "/NetworkDriver.CreateEndpoint" => call!(create_endpoint),
        "/NetworkDriver.DeleteEndpoint" => call!(delete_endpoint, empty),
        "/NetworkDriver.EndpointOperInfo" => call!(endpoint_oper_info),
        "/NetworkDriver.Join" => call!(join),
        "/NetworkDriver.Leave" => call!(leave, empty),
        "/NetworkDriver.ProgramExternalConnectivity" => call!(program_external_connectivity, empty),
        "/NetworkDriver.RevokeExternalConnectivity" => call!(revoke_external_connectivity, empty),
        "/NetworkDriver.GwAllocCheck" => Reply::ok(plugin.gw_alloc_check(decode(path, body)?)?),
        "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => {
            plugin.discover(decode::<DiscoveryRequest>(path, body)?, path.ends_with("DiscoverNew"))?;
            Reply::ok(Empty {})
        }
        "/NetworkDriver.AllocateNetwork" => Reply::ok(plugin.allocate_network(decode(path, body)?)?),
        "/NetworkDriver.FreeNetwork" => {
            plugin.free_network(decode::<NetworkRequest>(path, body)?)?;
            Reply::ok(Empty {})
        }
        "/IpamDriver.RequestPool" => call!(request_pool),
        "/IpamDriver.ReleasePool" => call!(release_pool, empty),
        "/IpamDriver.RequestAddress" => call!(request_address),
        "/IpamDriver.ReleaseAddress" => call!(release_address, empty),
        // rustbridge's own operator calls (`rustbridge status`, `rustbridge gc`).
        "/Rustbridge.Status" => Reply::ok(crate::status::collect(plugin, crate::metrics::global()).await),
        "/Rustbridge.Gc" => Reply::ok(crate::gc::run(plugin, decode(path, body)?).await),
        _ => return Err(RouteError::NotFound),
    };
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    /// A call that claims its commit just before its answer is due, then
    /// takes a while to finish committing.
    async fn committing_call(deadline: CallDeadline, claim_after: Duration, commit_takes: Duration) -> Reply {
        tokio::time::sleep(claim_after).await;
        let claimed = deadline.claim_commit();
        tokio::time::sleep(commit_takes).await;
        if claimed {
            Reply::ok(json!({"committed": true}))
        } else {
            Reply::error(ErrorKey::Err, StatusCode::OK, "no".into())
        }
    }

    #[tokio::test]
    async fn a_call_that_claimed_its_commit_is_answered_truthfully_even_a_little_late() {
        let deadline = CallDeadline::new(Duration::from_millis(300), Duration::from_millis(100));
        let call =
            tokio::spawn(committing_call(deadline.clone(), Duration::from_millis(150), Duration::from_millis(400)));
        let reply = answer_in_time(&deadline, call, ErrorKey::Err, "/NetworkDriver.Join", &test_log()).await;
        assert_eq!(reply.outcome, Ok(()));
        assert_eq!(reply.body, json!({"committed": true}));
    }

    #[tokio::test]
    async fn a_call_still_running_at_its_deadline_is_abandoned_and_cannot_commit_afterwards() {
        let deadline = CallDeadline::new(Duration::from_millis(300), Duration::ZERO);
        let call = tokio::spawn(committing_call(deadline.clone(), Duration::from_millis(500), Duration::ZERO));
        let started = Instant::now();
        let reply = answer_in_time(&deadline, call, ErrorKey::Error, "/IpamDriver.RequestAddress", &test_log()).await;
        assert!(started.elapsed() < Duration::from_millis(450), "answered late: {:?}", started.elapsed());
        let message = reply.outcome.unwrap_err();
        assert!(message.contains("commits nothing"), "{message}");
        assert_eq!(reply.body, json!({"Error": message}));
        assert!(!deadline.claim_commit(), "an abandoned call must not commit");
    }
}
