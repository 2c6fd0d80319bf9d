//! The operator's client commands (`status`, `gc`): one HTTP/1.0 request over
//! a Unix socket, blocking, no runtime needed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::config::{GcArgs, StatusArgs};
use crate::gc::{GcReport, GcRequest};
use crate::status::Status;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One request; returns the status code and the body.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", socket.display());
    let mut stream = UnixStream::connect(socket).map_err(|e| ctx("connect to", e))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| ctx("set timeout on", e))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| ctx("write to", e))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| ctx("read from", e))?;
    parse_response(&raw).map_err(|e| format!("{}: {e}", socket.display()))
}

pub(crate) fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response (no header end)")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status line: {:?}", head.lines().next().unwrap_or("")))?;
    Ok((code, body.to_string()))
}

/// Asks the plugin; its errors come back as `{"Err": ...}`.
fn plugin_call(socket: &Path, path: &str, body: &str) -> Result<String, String> {
    let (code, body) = request(socket, "POST", path, body)
        .map_err(|e| format!("{e}\n(is the plugin running? `docker plugin ls`; another socket: --socket)"))?;
    if code != 200 {
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("Err").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(body);
        return Err(format!("plugin answered {code}: {message}"));
    }
    Ok(body)
}

pub fn status(args: &StatusArgs) -> Result<String, String> {
    let body = plugin_call(&args.client.socket, "/Rustbridge.Status", "{}")?;
    let mut status: Status = serde_json::from_str(&body).map_err(|e| format!("status answer: {e}"))?;
    if !args.docker_socket.is_empty() {
        name_networks(&mut status, Path::new(&args.docker_socket));
    }
    if args.client.json {
        Ok(serde_json::to_string_pretty(&status).expect("status serializes") + "\n")
    } else {
        Ok(crate::status::render_text(&status))
    }
}

/// Names come from dockerd's API when it answers; without it they stay unknown.
fn name_networks(status: &mut Status, docker: &Path) {
    let Ok((200, body)) = request(docker, "GET", "/networks", "") else { return };
    let Ok(Value::Array(networks)) = serde_json::from_str::<Value>(&body) else { return };
    for n in &mut status.networks {
        n.name = networks
            .iter()
            .find(|d| d.get("Id").and_then(Value::as_str) == Some(n.id.as_str()))
            .and_then(|d| d.get("Name").and_then(Value::as_str))
            .map(str::to_string);
    }
}

/// The text (or JSON) to print, and whether gc had errors.
pub fn gc(args: &GcArgs) -> Result<(String, bool), String> {
    let req = serde_json::to_string(&GcRequest { remove: args.yes }).expect("request serializes");
    let body = plugin_call(&args.client.socket, "/Rustbridge.Gc", &req)?;
    let report: GcReport = serde_json::from_str(&body).map_err(|e| format!("gc answer: {e}"))?;
    let failed = !report.errors.is_empty();
    let text = if args.client.json {
        serde_json::to_string_pretty(&report).expect("report serializes") + "\n"
    } else {
        crate::gc::render_text(&report)
    };
    Ok((text, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_code_and_body() {
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n{\"x\":1}").unwrap(), (200, "{\"x\":1}".into()));
        assert_eq!(parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap(), (503, String::new()));
        assert!(parse_response(b"garbage").unwrap_err().contains("no header end"));
        assert!(parse_response(b"HTTP/1.0 abc\r\n\r\n").unwrap_err().contains("status line"));
    }
}
