//! roomd nodes of a test cluster as real processes (the binary cargo built), each with its own
//! runtime, keeper and Redis connection, as in a deployment: a node can be SIGKILLed, stopped,
//! or cut off from Redis alone. Each node's log is kept and printed only when the test fails.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{start_server_with, Client, Server, WAIT};

/// The cluster secret of every test node.
pub const SECRET: &str = "test-secret";

/// What sets an in-process test node apart beyond its id and media address; the default is a
/// node with roomd's defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeOptions<'a> {
    /// Turns the admin API on with this token.
    pub admin_token: Option<&'a str>,
    /// A grace period for dropped sockets other than the default.
    pub reconnection_grace_ms: Option<u64>,
}

/// Starts node `id` of the cluster whose Redis is `redis_url` in this process (a [`Server`]),
/// announcing media on `media_ip` (all of 127/8 is loopback), claims lasting `ttl_ms`. Returns
/// once it listens, not once it registered in Redis (callers that need that wait for it).
pub async fn start_node(
    redis_url: &str,
    id: &str,
    media_ip: &str,
    ttl_ms: u64,
    options: NodeOptions<'_>,
) -> Server {
    let defaults = roomd::Config::default();
    start_server_with(roomd::Config {
        redis_url: Some(redis_url.to_owned()),
        cluster_secret: Some(SECRET.into()),
        cluster_node_id: Some(id.into()),
        cluster_claim_ttl_ms: ttl_ms,
        admin_token: options.admin_token.map(str::to_owned),
        reconnection_grace_ms: options
            .reconnection_grace_ms
            .unwrap_or(defaults.reconnection_grace_ms),
        media_ip: media_ip.parse().expect("an IP"),
        ..defaults
    })
    .await
}

/// A roomd node process, killed (SIGKILL) when dropped.
pub struct NodeProcess {
    /// `--cluster-node-id`.
    pub id: String,
    /// Where its HTTP/WebSocket port listens (127.0.0.1).
    pub addr: SocketAddr,
    /// The address its media binds to and announces (`--media-ip`).
    pub media_ip: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Starts node `id` of the cluster whose Redis is `redis_url`, announcing media on
    /// `media_ip` (all of 127/8 is loopback), claims lasting `ttl_ms`, with `extra` flags; waits
    /// until it listens.
    pub async fn start(
        id: &str,
        redis_url: &str,
        media_ip: &str,
        ttl_ms: u64,
        extra: &[&str],
    ) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomd"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--rtc-udp-port", "0", "--media-ip", media_ip])
            .args(["--redis-url", redis_url, "--cluster-secret", SECRET])
            .args(["--cluster-node-id", id])
            .args(["--cluster-claim-ttl-ms", &ttl_ms.to_string()])
            .args(["--cluster-internal-url", &format!("http://{addr}")])
            .args(extra)
            .env("RUST_LOG", "roomd=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start roomd");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::fs::File::from(stderr.into_owned_fd().expect("stderr pipe"));
        // Not joined: the thread ends with the process's stderr.
        drop(super::browser::pump(stderr, Arc::clone(&log), None));
        let mut node = NodeProcess {
            id: id.to_owned(),
            addr,
            media_ip: media_ip.to_owned(),
            child,
            log,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("roomd {id} exited ({status}):\n{}", node.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "roomd {id} never listened on {addr}:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A WebSocket client on this node's `/room`.
    pub async fn client(&self) -> Client {
        Client::connect(&format!("ws://{}/room", self.addr)).await
    }

    /// The rooms this node itself serves (its own `/getAllRooms`, asked as another node asks
    /// it, so not merged with the other nodes').
    pub async fn local_rooms(&self) -> Vec<String> {
        let (status, body) = super::http_request(
            self.addr,
            "GET",
            "/getAllRooms",
            &[("x-roomd-forwarded", "1")],
        )
        .await;
        assert_eq!(status, 200, "GET /getAllRooms on {}: {body}", self.id);
        serde_json::from_str(&body).expect("a JSON list of room names")
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of roomd node {} ----\n{}", self.id, self.log());
        }
    }
}

/// A connection to the test's Redis, for looking at what the nodes wrote there.
pub async fn redis(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the test's redis-server accepts connections")
}

/// The owner of room `room` in the directory (`roomd:room:<room>`), with how long its claim
/// has left (ms).
pub async fn owner(
    redis: &mut ::redis::aio::MultiplexedConnection,
    room: &str,
) -> (Option<String>, i64) {
    let key = format!("roomd:room:{room}");
    ::redis::pipe()
        .get(&key)
        .pttl(&key)
        .query_async(redis)
        .await
        .expect("redis-server answers")
}

/// Waits until every node of `ids` is registered and a fresh Redis's quarantine of new claims
/// is over (`src/cluster/claims.rs`): from then on a join creates its room at once.
pub async fn wait_ready(redis: &mut ::redis::aio::MultiplexedConnection, ids: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut pipe = ::redis::pipe();
        pipe.exists("roomd:quarantine");
        for id in ids {
            pipe.exists(format!("roomd:node:{id}"));
        }
        let found: Vec<bool> = pipe.query_async(redis).await.expect("redis-server answers");
        if !found[0] && found[1..].iter().all(|&f| f) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster never ready (quarantine, then registered {ids:?}): {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The distinct addresses of the `a=candidate` lines of an SDP, sorted (what a cluster test
/// compares with the owner's announced address).
pub fn candidate_addresses(sdp: &str) -> Vec<String> {
    let mut addresses: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4).map(str::to_owned))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}
