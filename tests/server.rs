//! The server against hostile or broken clients (issue 11, items 4 and 9):
//! through the router (`server::answer`), and over a real Unix socket in a
//! temporary directory, with the plugin on the fake data plane and firewall.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};

use rustbridge::driver::Plugin;
use rustbridge::server;
use rustbridge::testing::{FakeDataPlane, FakePlugin};

// ---------------------------------------------------------------- harness

struct Fixture {
    plugin: Arc<Plugin>,
    fake: Arc<FakeDataPlane>,
    // Dropped last: it closes the store, then removes the directory.
    _inner: FakePlugin,
}

fn fixture(tag: &str) -> Fixture {
    let inner = FakePlugin::new(tag);
    Fixture { plugin: inner.plugin().clone(), fake: inner.fake.clone(), _inner: inner }
}

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

async fn ok(plugin: &Plugin, path: &str, body: Value) -> Value {
    server::answer(plugin, path, body.to_string().as_bytes()).await.unwrap_or_else(|e| panic!("{path} {body}: {e}"))
}

/// A network from an IPAM pool of the plugin's own, an endpoint with an
/// allocated address, joined: what a running container has.
struct Running {
    network: String,
    endpoint: String,
    pool_id: String,
    address: String,
}

async fn running_container(plugin: &Plugin) -> Running {
    let pool =
        ok(plugin, "/IpamDriver.RequestPool", json!({"AddressSpace": "", "Pool": "10.77.0.0/24", "V6": false})).await;
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let gateway = ok(
        plugin,
        "/IpamDriver.RequestAddress",
        json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    )
    .await;
    let (network, endpoint) = (id('a'), id('b'));
    ok(
        plugin,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": network, "Options": {}, "IPv4Data": [{"AddressSpace": "", "Pool": "10.77.0.0/24", "Gateway": gateway["Address"]}]}),
    )
    .await;
    let address = ok(plugin, "/IpamDriver.RequestAddress", json!({"PoolID": pool_id, "Address": ""})).await;
    let address = address["Address"].as_str().unwrap().to_string();
    ok(
        plugin,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": network, "EndpointID": endpoint, "Interface": {"Address": address}}),
    )
    .await;
    ok(plugin, "/NetworkDriver.Join", json!({"NetworkID": network, "EndpointID": endpoint, "SandboxKey": "/x"})).await;
    Running { network, endpoint, pool_id, address }
}

/// What a leak would change: records, the endpoint's veth, the address.
async fn snapshot(f: &Fixture, r: &Running) -> String {
    let state = f.plugin.lock_state().await;
    let addr: std::net::IpAddr = r.address.split('/').next().unwrap().parse().unwrap();
    format!(
        "networks={:?} endpoints={:?} joined={:?} pools={:?} allocated={:?} links={:?}",
        state.networks.keys().collect::<Vec<_>>(),
        state.endpoints.keys().collect::<Vec<_>>(),
        state.endpoints.get(&r.endpoint).map(|e| e.joined),
        state.ipam.pools().map(|p| p.id.clone()).collect::<Vec<_>>(),
        state.ipam.addresses(&r.pool_id).map(|a| a.is_allocated(addr)),
        f.fake.names(),
    )
}

// ---------------------------------------------------------------- empty retries (item 9)

/// dockerd re-sends a call with an empty body after a transport failure
/// (moby/moby#39331). Answered "ok" having done nothing, an empty
/// DeleteEndpoint, Leave or ReleaseAddress leaked; each is now refused,
/// naming what is missing, and nothing changes.
#[tokio::test]
async fn empty_bodies_are_refused_by_every_call_that_needs_ids() {
    let f = fixture("empty-retries");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let cases = [
        ("/NetworkDriver.CreateNetwork", "NetworkID"),
        ("/NetworkDriver.DeleteNetwork", "NetworkID"),
        ("/NetworkDriver.CreateEndpoint", "NetworkID and EndpointID"),
        ("/NetworkDriver.DeleteEndpoint", "EndpointID"),
        ("/NetworkDriver.EndpointOperInfo", "EndpointID"),
        ("/NetworkDriver.Join", "EndpointID"),
        ("/NetworkDriver.Leave", "EndpointID"),
        ("/NetworkDriver.ProgramExternalConnectivity", "EndpointID"),
        ("/NetworkDriver.RevokeExternalConnectivity", "EndpointID"),
        ("/IpamDriver.RequestPool", "AddressSpace"),
        ("/IpamDriver.ReleasePool", "PoolID"),
        ("/IpamDriver.RequestAddress", "PoolID"),
        ("/IpamDriver.ReleaseAddress", "PoolID and Address"),
    ];
    for (path, fields) in cases {
        for body in ["", " \n"] {
            let err = server::answer(&f.plugin, path, body.as_bytes()).await.expect_err(path);
            assert!(err.contains("empty request body") && err.contains(&format!("needs {fields}")), "{path}: {err}");
        }
        assert_eq!(snapshot(&f, &r).await, before, "{path} with an empty body changed something");
    }
    // Calls without arguments still answer an empty body.
    for path in ["/Plugin.Activate", "/NetworkDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces"] {
        server::answer(&f.plugin, path, b"").await.unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    // And the real calls still work afterwards.
    let (network, endpoint) = (&r.network, &r.endpoint);
    ok(&f.plugin, "/NetworkDriver.Leave", json!({"NetworkID": network, "EndpointID": endpoint})).await;
    ok(&f.plugin, "/NetworkDriver.DeleteEndpoint", json!({"NetworkID": network, "EndpointID": endpoint})).await;
    ok(&f.plugin, "/IpamDriver.ReleaseAddress", json!({"PoolID": r.pool_id, "Address": r.address})).await;
    assert!(f.plugin.lock_state().await.endpoints.is_empty());
}

/// An object with the ID left out is refused the same way, naming the field.
#[tokio::test]
async fn missing_ids_in_a_body_are_named() {
    let f = fixture("missing-ids");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let cases = [
        ("/NetworkDriver.Leave", json!({"NetworkID": r.network}), "EndpointID is missing"),
        ("/NetworkDriver.DeleteEndpoint", json!({"NetworkID": r.network}), "EndpointID is missing"),
        ("/NetworkDriver.DeleteNetwork", json!({}), "NetworkID is missing"),
        ("/IpamDriver.ReleaseAddress", json!({"PoolID": r.pool_id}), "Address is missing"),
        ("/IpamDriver.ReleaseAddress", json!({"Address": r.address}), "PoolID is missing"),
        ("/IpamDriver.ReleasePool", json!({}), "PoolID is missing"),
    ];
    for (path, body, expected) in cases {
        let err = server::answer(&f.plugin, path, body.to_string().as_bytes()).await.expect_err(path);
        assert!(err.contains(expected), "{path} {body}: {err}");
    }
    assert_eq!(snapshot(&f, &r).await, before);
}

// ---------------------------------------------------------------- IDs (item 4)

/// An EndpointID with non-ASCII characters made `short()` slice inside a
/// character and panic; every ID is now checked before use, with an error
/// naming the field.
#[tokio::test]
async fn non_ascii_and_oversized_ids_are_refused_naming_the_field() {
    let f = fixture("bad-ids");
    let r = running_container(&f.plugin).await;
    let before = snapshot(&f, &r).await;
    let bad_ids = ["0123456789aé0123456789", "ééééééééééééééé", "😀".repeat(20).as_str(), &"a".repeat(10_000)]
        .map(str::to_string);
    for bad in &bad_ids {
        for path in [
            "/NetworkDriver.DeleteEndpoint",
            "/NetworkDriver.Leave",
            "/NetworkDriver.Join",
            "/NetworkDriver.EndpointOperInfo",
            "/NetworkDriver.ProgramExternalConnectivity",
            "/NetworkDriver.RevokeExternalConnectivity",
        ] {
            let body = json!({"NetworkID": r.network, "EndpointID": bad});
            let err = server::answer(&f.plugin, path, body.to_string().as_bytes()).await.expect_err(path);
            assert!(err.contains("EndpointID") && err.contains("not a Docker ID"), "{path}: {err}");
            assert!(err.len() < 400, "{path}: the error echoes the whole ID: {} bytes", err.len());
        }
        let body = json!({"NetworkID": bad, "EndpointID": id('c')});
        let err =
            server::answer(&f.plugin, "/NetworkDriver.CreateEndpoint", body.to_string().as_bytes()).await.unwrap_err();
        assert!(err.contains("NetworkID") && err.contains("not a Docker ID"), "{err}");
        let body = json!({"PoolID": format!("{}{bad}", r.pool_id), "Address": ""});
        let err =
            server::answer(&f.plugin, "/IpamDriver.RequestAddress", body.to_string().as_bytes()).await.unwrap_err();
        assert!(err.contains("PoolID"), "{err}");
    }
    assert_eq!(snapshot(&f, &r).await, before);
}

// ---------------------------------------------------------------- over the socket (item 4)

mod socket {
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use common::http_post_within;
    use rustbridge::server::Limits;

    /// The server on a socket in a temporary directory, in a runtime of its own.
    pub struct Server {
        pub socket: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        _fixture: Fixture,
        _socket_dir: rustbridge::testing::TempDir,
    }

    impl Server {
        pub fn start(tag: &str, limits: Limits) -> Server {
            Server::start_logging(tag, limits, slog::Logger::root(slog::Discard, slog::o!()))
        }

        pub fn start_logging(tag: &str, limits: Limits, log: slog::Logger) -> Server {
            let fixture = fixture(tag);
            let socket_dir = rustbridge::testing::TempDir::new(tag);
            let socket = socket_dir.0.join("plugin.sock");
            let listener_path = socket.clone();
            let plugin = fixture.plugin.clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = server::bind(&listener_path).expect("bind");
                    ready_tx.send(()).unwrap();
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    server::serve_with(
                        vec![(listener_path, listener)],
                        plugin,
                        log,
                        shutdown,
                        Duration::from_millis(200),
                        limits,
                    )
                    .await;
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            });
            ready_rx.recv_timeout(Duration::from_secs(10)).expect("server bound its socket");
            Server { socket, stop: Some(stop), thread: Some(thread), _fixture: fixture, _socket_dir: socket_dir }
        }

        pub fn activate_within(&self, limit: Duration) -> Duration {
            let started = Instant::now();
            let (status, body) = http_post_within(&self.socket, "/Plugin.Activate", b"", limit)
                .unwrap_or_else(|e| panic!("a normal call got no answer within {limit:?}: {e}"));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["Implements"], json!(["NetworkDriver", "IpamDriver"]));
            started.elapsed()
        }

        /// A connection that sent `bytes` and then nothing more.
        pub fn stalled(&self, bytes: &[u8]) -> UnixStream {
            let mut stream = UnixStream::connect(&self.socket).expect("connect");
            stream.write_all(bytes).expect("write a partial request");
            stream
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    const HALF_HEADERS: &[u8] = b"POST /NetworkDriver.Leave HTTP/1.1\r\nHost: plugin\r\nContent-Le";
    const HALF_BODY: &[u8] =
        b"POST /NetworkDriver.Leave HTTP/1.1\r\nHost: plugin\r\nContent-Length: 100\r\n\r\n{\"Endpoi";

    /// True when the server closed the connection (EOF or reset) within `limit`;
    /// what it sent before closing, if anything, is returned too.
    fn closed_by_server(stream: &mut UnixStream, limit: Duration) -> Option<String> {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(String::from_utf8_lossy(&got).into_owned());
                }
                Err(_) => return None, // timed out: still open
            }
        }
    }

    /// The fault suite's "slow client": 200 connections holding half-sent
    /// headers or half-sent bodies must not delay a normal call (bound 2 s).
    #[test]
    fn two_hundred_slow_connections_do_not_delay_a_normal_call() {
        let server = Server::start("slow-200", Limits::default());
        let mut slow: Vec<UnixStream> = (0..100).map(|_| server.stalled(HALF_HEADERS)).collect();
        slow.extend((0..100).map(|_| server.stalled(HALF_BODY)));
        std::thread::sleep(Duration::from_millis(200));
        let took = server.activate_within(Duration::from_secs(2));
        assert!(took <= Duration::from_secs(2), "normal call took {took:?}");
        drop(slow);
    }

    /// More half-sent connections than the connection limit: the oldest idle
    /// ones are closed for new ones, so a normal call still gets in at once.
    #[test]
    fn past_the_connection_limit_the_oldest_idle_connections_are_closed() {
        let limits = Limits { max_connections: 16, header_timeout: Duration::from_secs(60), ..Limits::default() };
        let server = Server::start("conn-limit", limits);
        let mut slow: Vec<UnixStream> = (0..64).map(|_| server.stalled(HALF_HEADERS)).collect();
        server.activate_within(Duration::from_secs(2));
        let closed = slow.iter_mut().filter_map(|s| closed_by_server(s, Duration::from_millis(20))).count();
        assert!(closed >= 64 - 16, "only {closed} of 64 idle connections were closed at a limit of 16");
        // The newest connections are the ones kept.
        assert!(closed_by_server(slow.last_mut().unwrap(), Duration::from_millis(20)).is_none());
    }

    /// A client that sends part of its headers and stops is closed after the header timeout.
    #[test]
    fn half_sent_headers_are_closed_after_the_header_timeout() {
        let limits = Limits { header_timeout: Duration::from_millis(300), ..Limits::default() };
        let server = Server::start("header-timeout", limits);
        let mut stalled = server.stalled(HALF_HEADERS);
        let started = Instant::now();
        assert!(closed_by_server(&mut stalled, Duration::from_secs(5)).is_some(), "still open after 5 s");
        assert!(started.elapsed() < Duration::from_secs(3), "closed only after {:?}", started.elapsed());
        server.activate_within(Duration::from_secs(2));
    }

    /// A body that stops half-way is answered 408 with a clear error after the body timeout.
    #[test]
    fn half_sent_bodies_are_refused_after_the_body_timeout() {
        let limits = Limits { body_timeout: Duration::from_millis(300), ..Limits::default() };
        let server = Server::start("body-timeout", limits);
        let mut stalled = server.stalled(HALF_BODY);
        let answer = closed_by_server(&mut stalled, Duration::from_secs(5)).expect("closed within 5 s");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""Err":"request body refused: not received within 0.3s""#), "{answer}");
    }

    /// Streams `total` bytes of body after `head`; returns how many were
    /// written before the server stopped reading, and its answer.
    fn send_huge(server: &Server, head: &str, total: usize, chunked: bool) -> (usize, String) {
        let mut stream = UnixStream::connect(&server.socket).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0;
        while written < total {
            let sent = if chunked {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                stream.write_all(&framed)
            } else {
                stream.write_all(&chunk)
            };
            if sent.is_err() {
                break;
            }
            written += chunk.len();
        }
        let answer = closed_by_server(&mut stream, Duration::from_secs(5)).expect("answered and closed");
        (written, answer)
    }

    /// The fault suite's 64 MiB body: refused (413, a clear error) without being read.
    #[test]
    fn a_64_mib_body_is_refused_without_being_read() {
        let server = Server::start("huge-body", Limits::default());
        let total = 64 << 20;
        let head = format!("POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: p\r\nContent-Length: {total}\r\n\r\n");
        let (written, answer) = send_huge(&server, &head, total, false);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let limit = rustbridge::server::MAX_BODY_BYTES;
        assert!(answer.contains(&format!("67108864 bytes declared, the limit is {limit} bytes")), "{answer}");
        assert!(written < 8 << 20, "the server read {written} bytes of a refused body");
        // Without a declared length, reading stops at the limit.
        let head = "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (written, answer) = send_huge(&server, head, total, true);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(&format!("limit {limit} bytes")), "{answer}");
        assert!(written < 8 << 20, "the server read {written} bytes of a refused body");
        server.activate_within(Duration::from_secs(2));
    }

    /// Only root (the owner) may connect: mode 0600, owned by the server's user.
    #[test]
    fn the_socket_is_private_to_its_owner() {
        let server = Server::start("socket-mode", Limits::default());
        let meta = std::fs::metadata(&server.socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode {:o}", meta.permissions().mode());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let euid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert_eq!(meta.uid(), euid);
    }

    /// Messages the server logged, for counting.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<String>>>);

    impl slog::Drain for Lines {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0.lock().unwrap().push(record.msg().to_string());
            Ok(())
        }
    }

    const FD_LIMIT_CHILD: &str = "RUSTBRIDGE_TEST_FD_LIMIT_CHILD";

    /// With the server's file limit reached by connections that never finish
    /// their request, it still accepts and answers a normal call (it closes
    /// the oldest idle connection to get a descriptor), without spinning or
    /// logging every failed accept. The server runs in a child process with a
    /// file limit of 64; this process makes the 200 connections.
    #[test]
    fn at_the_file_limit_the_server_keeps_accepting() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--exact", "socket::fd_limit_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(FD_LIMIT_CHILD, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let (pid, done) = (child.id() as i32, Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let watched = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !watched.load(std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: kill(2) on our own child, not yet reaped (done is set after wait).
                unsafe { libc::kill(pid, libc::SIGKILL) }; // a hung child must not hang the suite
            }
        });
        let mut line = String::new();
        let socket = loop {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "child ended before serving");
            // libtest prints the test's name on the same line first.
            if let Some((_, path)) = line.trim().split_once("SOCKET ") {
                break PathBuf::from(path);
            }
        };
        let stalled: Vec<UnixStream> = (0..200)
            .map(|_| {
                let mut s = UnixStream::connect(&socket).expect("connect");
                s.write_all(HALF_HEADERS).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let answer = http_post_within(&socket, "/Plugin.Activate", b"", Duration::from_secs(5));
        let took = started.elapsed();
        drop(stalled);
        drop(stdin);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (code, body) = answer.unwrap_or_else(|e| panic!("no answer at the file limit: {e}\nchild:\n{rest}"));
        assert_eq!(code, 200, "{body}");
        assert!(took < Duration::from_secs(3), "normal call took {took:?}");
        assert!(status.success() && rest.contains("1 passed"), "child failed:\n{rest}");
        let failures = rest.lines().filter(|l| l.starts_with("LOG accept failed")).count();
        assert!(
            (1..=3).contains(&failures),
            "accept failures logged {failures} times (once per burst expected):\n{rest}"
        );
    }

    #[test]
    #[ignore = "the server half of at_the_file_limit_the_server_keeps_accepting, run in a child process"]
    fn fd_limit_child() {
        assert!(std::env::var_os(FD_LIMIT_CHILD).is_some(), "run through at_the_file_limit_the_server_keeps_accepting");
        let lines = Lines::default();
        let log = slog::Logger::root(slog::Fuse(lines.clone()), slog::o!());
        // Only eviction can free a descriptor here: no header timeout helps within the test.
        let limits = Limits { header_timeout: Duration::from_secs(120), ..Limits::default() };
        let server = Server::start_logging("fd-limit", limits, log);
        let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
        // SAFETY: setrlimit with a valid, initialised struct; this process only runs this test.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "setrlimit");
        println!("SOCKET {}", server.socket.display());
        let mut until_closed = String::new();
        let _ = std::io::stdin().read_to_string(&mut until_closed);
        for message in lines.0.lock().unwrap().iter() {
            println!("LOG {message}");
        }
    }
}

/// With a state database it cannot use, the plugin serves the refusal: the
/// registration handshake as usual (so dockerd keeps the driver and shows the
/// answers), every other call the reason, under the key dockerd reads.
#[tokio::test]
async fn a_refusing_server_answers_the_handshake_and_gives_the_reason_for_the_rest() {
    let dir = rustbridge::testing::TempDir::new("refusing");
    let socket = dir.0.join("plugin.sock");
    let listener = server::bind(&socket).expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reason: Arc<str> = Arc::from("state database /x/rustbridge.redb is empty (0 bytes)");
    let serving = server::Serving::Refusing(reason.clone());
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(server::serve(
        vec![(socket.clone(), listener)],
        serving,
        log,
        shutdown,
        std::time::Duration::from_millis(100),
    ));
    let call = |path: &'static str, body: Value| {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            common::http_post_within(&socket, path, body.to_string().as_bytes(), std::time::Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        })
    };
    let (status, body) = call("/Plugin.Activate", json!({})).await.unwrap();
    assert_eq!((status, body["Implements"].clone()), (200, json!(["NetworkDriver", "IpamDriver"])));
    let (status, body) = call("/NetworkDriver.GetCapabilities", json!({})).await.unwrap();
    assert_eq!((status, body["Scope"].clone()), (200, json!("local")), "{body}");
    let (status, body) = call("/IpamDriver.GetDefaultAddressSpaces", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = call("/NetworkDriver.CreateNetwork", json!({"NetworkID": id('a')})).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["Err"], json!(reason.as_ref()), "{body}");
    let (status, body) = call("/IpamDriver.RequestPool", json!({"Pool": "10.1.0.0/16"})).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body["Error"], json!(reason.as_ref()), "IPAM errors must use the key dockerd shows: {body}");
    stop.send(()).unwrap();
    task.await.unwrap();
}
