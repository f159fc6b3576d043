//! Drain on shutdown over real sockets: once the shutdown signal arrives, `/readyz` turns 503
//! while `/healthz` stays 200, new rooms are refused (204) but existing calls go on, and the
//! server returns when the last room empties — or, past the drain timeout, after telling the
//! remaining participants `roomClosed` and closing their sockets (1001). The real binary exits 0
//! on SIGTERM after its drain, and at once on a second signal.

mod common;

use std::time::Duration;

use common::{error_of, http_request, Client, WAIT};
use serde_json::json;

struct Draining {
    addr: std::net::SocketAddr,
    signal: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(mut config: roomd::Config) -> Draining {
    // The tests run in parallel: media shards on ports of their own.
    config.rtc_udp_port = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(roomd::serve(config, listener, async move {
        let _ = signalled.await;
    }));
    Draining {
        addr,
        signal: Some(signal),
        done,
    }
}

impl Draining {
    async fn status(&self, path: &str) -> u16 {
        http_request(self.addr, "GET", path, &[]).await.0
    }

    async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/room", self.addr)).await
    }

    fn sigterm(&mut self) {
        let _ = self.signal.take().expect("signalled once").send(());
    }

    /// Waits (bounded) until `/readyz` answers 503.
    async fn until_draining(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.status("/readyz").await != 503 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never started draining"
            );
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn a_drain_lets_calls_finish_and_refuses_new_rooms() {
    let mut server = start(roomd::Config::default()).await;
    assert_eq!(server.status("/readyz").await, 200);
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.join("call", "alice").await;
    b.join("call", "bob").await;
    server.sigterm();
    server.until_draining().await;
    assert_eq!(server.status("/healthz").await, 200);
    // New rooms are refused; the existing one still takes joins and messages.
    let mut c = server.client().await;
    let r = c
        .call("joinRoom", json!({"room":"new","user":"carol"}))
        .await;
    assert_eq!(
        error_of(&r),
        (204, "Server is shutting down: no new rooms".into())
    );
    c.join("call", "carol").await;
    let r = a
        .call(
            "sendMessage",
            json!({"userMessage":"alice","roomMessage":"call","message":"still here"}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(!server.done.is_finished());
    for mut who in [a, b, c] {
        let r = who.call("leaveRoom", json!({})).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    tokio::time::timeout(WAIT, server.done)
        .await
        .expect("serve returns once the last room emptied")
        .expect("serve task")
        .expect("serve ends without error");
}

#[tokio::test]
async fn past_the_drain_timeout_rooms_are_closed_and_sockets_too() {
    let mut server = start(roomd::Config {
        drain_timeout_secs: 1,
        ..roomd::Config::default()
    })
    .await;
    let mut a = server.client().await;
    a.join("stuck", "alice").await;
    server.sigterm();
    let n = a.notification("roomClosed").await;
    assert_eq!(n["params"], json!({"room":"stuck"}));
    let close = a.closed().await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    tokio::time::timeout(WAIT, server.done)
        .await
        .expect("serve returns after the timeout")
        .expect("serve task")
        .expect("serve ends without error");
}

/// The real binary: SIGTERM with an idle server exits 0 promptly; with a call in progress and
/// a long drain timeout, a second SIGTERM exits at once.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_a_second_signal_exits_at_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_roomd"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--rtc-udp-port", "0"])
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start roomd")
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let up = || async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "roomd never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let term = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    };

    let mut idle = spawn();
    up().await;
    term(idle.id().expect("pid"));
    let status = tokio::time::timeout(WAIT, idle.wait())
        .await
        .expect("idle roomd exits after SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));

    let mut busy = spawn();
    up().await;
    let mut a = Client::connect(&format!("ws://{addr}/room")).await;
    a.join("busy", "alice").await;
    let pid = busy.id().expect("pid");
    term(pid);
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_request(addr, "GET", "/readyz", &[]).await.0 != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never started draining"
        );
    }
    term(pid);
    let status = tokio::time::timeout(WAIT, busy.wait())
        .await
        .expect("second signal exits at once")
        .expect("wait");
    assert_eq!(status.code(), Some(1));
}
