//! Proof in a real browser that calls work through a TURN server alone: starts Debian's coturn on
//! free loopback ports with the TURN REST scheme (`use-auth-secret` + `static-auth-secret`), a
//! roomd that hands out that server with REST credentials derived from the same secret
//! (`--ice-servers`, `--turn-secret`), and runs the opt-in `turn-relay` scenario of
//! `tests/browser/run.mjs`: a 2-person call in headless Chromium with
//! `iceTransportPolicy: "relay"`, asserting decoded media both ways and relay candidates on
//! every selected pair. coturn is killed when the test ends, passed or not.
//!
//! Prerequisites (Debian's `chromium` and `coturn`, `npm ci` in tests/browser):
//! `bash tests/browser/setup.sh`, which `bash tests/run.sh` runs before `cargo test`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const TURNSERVER: &str = "/usr/bin/turnserver";
/// The harness (Chromium start, a 2-person call, the checks) must finish within this.
const HARNESS_BOUND: Duration = Duration::from_secs(60);
/// coturn must answer a STUN Binding request within this after it is started.
const COTURN_READY_BOUND: Duration = Duration::from_secs(10);
/// UDP ports of coturn's relay allocations, apart from the other tests' ports (roomd's media
/// shards get theirs from the system, `start_server_with`).
const RELAY_PORTS: (u16, u16) = (44_200, 44_399);

fn text(log: &Arc<Mutex<String>>) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A directory of this test's own (coturn's pid file and user database), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "roomd-turn-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running coturn; killed when dropped (`kill_on_drop`), also when the test panics.
struct Coturn {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Coturn {
    /// Starts coturn on a free UDP port of 127.0.0.1 with the TURN REST scheme for `secret`,
    /// relaying to loopback peers (roomd's candidates are 127.0.0.1), logging every request
    /// (`--verbose`), and waits until it answers STUN.
    async fn start(secret: &str) -> Self {
        let dir = TempDir::new();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port();
        let arg = |k: &str, v: &dyn std::fmt::Display| format!("--{k}={v}");
        let mut child = Command::new(TURNSERVER)
            // No configuration file (not Debian's /etc/turnserver.conf): only these settings.
            .arg("-n")
            .args([
                arg("listening-ip", &"127.0.0.1"),
                arg("listening-port", &port),
                arg("relay-ip", &"127.0.0.1"),
                arg("min-port", &RELAY_PORTS.0),
                arg("max-port", &RELAY_PORTS.1),
                arg("static-auth-secret", &secret),
                arg("realm", &"roomd.test"),
                arg("pidfile", &dir.0.join("turnserver.pid").display()),
                arg("userdb", &dir.0.join("turndb").display()),
                arg("log-file", &"stdout"),
            ])
            .args([
                "--verbose",
                "--use-auth-secret",
                "--no-tls",
                "--no-dtls",
                "--no-tcp",
                "--allow-loopback-peers",
                "--no-cli",
                "--simple-log",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start turnserver");
        let log = Arc::new(Mutex::new(String::new()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|o| std::fs::File::from(o.into_owned_fd().expect("stdout pipe"))),
            child
                .stderr
                .take()
                .map(|o| std::fs::File::from(o.into_owned_fd().expect("stderr pipe"))),
        ]
        .into_iter()
        .flatten()
        .map(|out| common::browser::pump(out, Arc::clone(&log), None))
        .collect();
        let mut coturn = Self {
            child,
            port,
            log,
            pumps,
            _dir: dir,
        };
        coturn.wait_ready().await;
        coturn
    }

    /// Stops coturn: whether it had exited by itself, and its whole log.
    async fn stop(mut self) -> (Option<std::process::ExitStatus>, String) {
        let exited = self.child.try_wait().ok().flatten();
        let _ = self.child.kill().await;
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        (exited, text(&self.log))
    }

    /// Sends STUN Binding requests until one is answered (coturn is listening) or the bound
    /// passes; fails early if coturn exits.
    async fn wait_ready(&mut self) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a UDP socket");
        let txid: [u8; 12] = rand::random();
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        request.extend_from_slice(&txid);
        let deadline = Instant::now() + COTURN_READY_BOUND;
        let mut buf = [0u8; 1500];
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited ({status}):\n{}", text(&self.log));
            }
            assert!(
                Instant::now() < deadline,
                "turnserver did not answer STUN on 127.0.0.1:{} within {COTURN_READY_BOUND:?}:\n{}",
                self.port,
                text(&self.log)
            );
            socket
                .send_to(&request, ("127.0.0.1", self.port))
                .await
                .expect("send a STUN Binding request");
            // Retransmitted every 200 ms until answered (UDP: the first may precede the bind).
            let reply =
                tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await;
            if let Ok(Ok(n)) = reply {
                // A Binding success response (0x0101) to our transaction.
                if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == txid {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_call_through_turn_relay_only() {
    let started = Instant::now();
    common::browser::harness_dir();
    assert!(
        Path::new(TURNSERVER).exists(),
        "{TURNSERVER} missing: run `bash tests/browser/setup.sh` (or `bash tests/run.sh`)"
    );

    let secret = format!("{:032x}", rand::random::<u128>());
    let coturn = Coturn::start(&secret).await;
    let config = roomd::Config {
        ice_servers: vec![format!("turn:127.0.0.1:{}?transport=udp", coturn.port)],
        turn_secret: Some(secret),
        turn_ttl_secs: 600,
        ..roomd::Config::default()
    };
    let server = common::start_server_with(config).await;
    let url = format!("http://{}", server.addr);

    // The harness aborts itself before the bound.
    let limit = (HARNESS_BOUND - Duration::from_secs(5))
        .as_millis()
        .to_string();
    let outcome = common::browser::try_run_harness(
        &["--url", &url, "--only", "turn-relay"],
        &[("BROWSER_SUITE_LIMIT_MS", &limit)],
        HARNESS_BOUND,
    )
    .await;
    drop(server);
    let (coturn_exited, coturn_log) = coturn.stop().await;
    if let Err(failure) = outcome {
        panic!("the turn-relay scenario: {failure}\ncoturn:\n{coturn_log}");
    }
    assert!(
        coturn_exited.is_none(),
        "coturn exited during the call ({coturn_exited:?}):\n{coturn_log}"
    );
    // coturn's side: it accepted the REST credentials roomd made (`<expiry>:roomd`) for the
    // allocations of the 4 peer connections, and opened permissions towards roomd.
    let allocated = coturn_log
        .lines()
        .filter(|l| l.contains(":roomd>: incoming packet ALLOCATE processed, success"))
        .count();
    assert!(
        allocated >= 4 && coturn_log.contains("CREATE_PERMISSION processed, success"),
        "coturn logged {allocated} successful allocations for roomd's REST users (want >= 4) \
         or no permission:\n{coturn_log}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "browser_turn: coturn + roomd + 2-person relay-only call in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
