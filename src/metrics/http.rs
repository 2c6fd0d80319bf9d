//! The operator's HTTP listener (`RUSTBRIDGE_METRICS_ADDR`, off by default):
//! `GET /metrics` in the Prometheus text format, `GET /health` (200 `ok`, or
//! 503 with the reason). Read-only; a separate TCP listener, not the plugin socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use slog::{Logger, debug, warn};
use tokio::net::TcpListener;

use super::{ProcessStats, global};
use crate::driver::Plugin;

pub const CONTENT_TYPE_TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(listener: TcpListener, plugin: Arc<Plugin>, log: Logger, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let plugin = plugin.clone();
                    let log = log.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(plugin.clone(), req));
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            debug!(log, "metrics connection ended with an error"; "error" => %e);
                        }
                    });
                }
                Err(e) => {
                    warn!(log, "metrics accept failed"; "error" => %e);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => return,
        }
    }
}

async fn answer(plugin: Arc<Plugin>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into()));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let gauges = {
                let state = plugin.lock_state().await;
                crate::status::gauges(&state)
            };
            let text = global().render(&gauges, &ProcessStats::read());
            reply(StatusCode::OK, CONTENT_TYPE_TEXT_0_0_4, text)
        }
        "/health" => match global().health() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{reason}\n")),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /health\n".into()),
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
