//! A throw-away `redis-server` for the cluster tests: started on 127.0.0.1 (or on several
//! loopback addresses, so that each node can reach it at an address of its own) with a free port
//! and no persistence, restartable empty on the same port, killed when dropped.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

/// A running `redis-server` (Debian's, `/usr/bin/redis-server`, or the first on `PATH`).
pub struct RedisServer {
    pub port: u16,
    /// The addresses it listens on (`bind`), the first one that of [`RedisServer::url`].
    bind: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_on(&["127.0.0.1"]).await
    }

    /// Starts a server listening on each of `addresses` (loopback addresses: all of 127/8 is
    /// local) at one free port, and waits until it accepts connections.
    pub async fn start_on(addresses: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let bind = addresses.iter().map(|a| (*a).to_owned()).collect();
        let mut server = Self {
            port,
            bind,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `redis://<first address>:<port>/0`.
    pub fn url(&self) -> String {
        self.url_at(&self.bind[0])
    }

    /// `redis://<address>:<port>/0`, `address` one of those given to [`RedisServer::start_on`].
    pub fn url_at(&self, address: &str) -> String {
        assert!(
            self.bind.iter().any(|a| a == address),
            "redis-server does not listen on {address}"
        );
        format!("redis://{address}:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind"])
            .args(&self.bind)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (.ci/run installs Debian's redis-server)");
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            ready,
            Ok(true),
            "redis-server on port {} did not start",
            self.port
        );
        // Keep reading its log so that a full pipe never blocks the server.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL: its data is gone) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts an empty server again on the same port after [`RedisServer::kill`].
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    /// Kills the server and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}
