//! Shared end-to-end helpers: start the real server on 127.0.0.1:0 and speak raw Kurento
//! JSON-RPC frames to it over a real WebSocket client (tokio-tungstenite).
//!
//! Every wait is bounded ([`WAIT`]); a test that does not get the event it waits for fails
//! instead of hanging.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod browser;
pub mod cluster;
pub mod netns;
pub mod peer;
pub mod redis_server;
pub mod tls;

/// The longest any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// The value of one series (`name` or `name{labels}`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A running server; stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// With [`THROUGH_RELAY`]: the Redis and the node owning the rooms behind this one.
    behind: Option<Box<(redis_server::RedisServer, Server)>>,
}

/// When this environment variable is set, every server the tests start is a cluster: a
/// relay-only node (the one the tests talk to) in front of a node that owns every room, with
/// their own redis-server. `ROOMD_TEST_THROUGH_RELAY=1 cargo test --test ws_rooms` runs a
/// signaling suite through the relay (conformance of relayed and direct connections).
pub const THROUGH_RELAY: &str = "ROOMD_TEST_THROUGH_RELAY";

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts roomd with default configuration on an ephemeral port.
pub async fn start_server() -> Server {
    start_server_with(roomd::Config::default()).await
}

/// Starts roomd with `config` on an ephemeral port of 127.0.0.1 (the sharded media engine's
/// UDP ports too: tests of one binary run in parallel); behind a relay node with
/// [`THROUGH_RELAY`].
pub async fn start_server_with(config: roomd::Config) -> Server {
    if std::env::var_os(THROUGH_RELAY).is_none() || config.redis_url.is_some() {
        return start_one(config).await;
    }
    let redis = redis_server::RedisServer::start().await;
    let clustered = |id: &str, relay_only: bool| roomd::Config {
        redis_url: Some(redis.url()),
        cluster_secret: Some("test-secret".into()),
        cluster_node_id: Some(id.into()),
        cluster_relay_only: relay_only,
        cluster_claim_ttl_ms: 3000,
        ..config.clone()
    };
    let owner = start_one(clustered("owner", false)).await;
    let mut edge = start_one(clustered("edge", true)).await;
    // Ready when the owner is registered and a fresh Redis's quarantine of new claims is over.
    let mut redis_conn = ::redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("the test's redis-server accepts connections");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready: (bool, bool) = ::redis::pipe()
            .exists("roomd:node:owner")
            .exists("roomd:quarantine")
            .query(&mut redis_conn)
            .expect("redis-server answers");
        if ready == (true, false) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    edge.behind = Some(Box::new((redis, owner)));
    edge
}

async fn start_one(mut config: roomd::Config) -> Server {
    config.rtc_udp_port = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port on loopback");
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    if config.redis_url.is_some() && config.cluster_internal_url.is_none() {
        // Cluster tests: other nodes reach this one where it really listens.
        config.cluster_internal_url = Some(format!("http://{addr}"));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = roomd::serve(config, listener, shutdown).await {
            panic!("server failed: {e}");
        }
    });
    Server {
        addr,
        stop: Some(stop),
        behind: None,
    }
}

impl Server {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/room", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Two clients joined to `room` as `first` then `second`; the first has consumed the
    /// participantJoined about the second.
    pub async fn pair(&self, room: &str, first: &str, second: &str) -> (Client, Client) {
        let mut a = self.client().await;
        let mut b = self.client().await;
        a.join(room, first).await;
        b.join(room, second).await;
        a.notification("participantJoined").await;
        (a, b)
    }

    /// POSTs an admin path with `Authorization: Bearer <token>`; returns the status.
    pub async fn admin_post(&self, path: &str, token: &str) -> u16 {
        let auth = format!("Bearer {token}");
        http_request(self.addr, "POST", path, &[("Authorization", &auth)])
            .await
            .0
    }

    /// GETs a REST path and returns the status and the JSON body (Null if empty).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        http_get(self.addr, path).await
    }
}

/// GETs a path and returns the body as text (any status).
pub async fn http_get_text(addr: SocketAddr, path: &str) -> String {
    http_get_raw(addr, path).await.1
}

/// A minimal HTTP/1.1 GET over a real TCP socket (no extra client dependency): status and
/// the JSON body (Null if empty).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get_raw(addr, path).await;
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).expect("JSON body")
    };
    (status, value)
}

async fn http_get_raw(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[]).await
}

/// A minimal HTTP/1.1 request with extra headers over a real TCP socket: status and body text.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect to server");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{extra}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read response");
        let text = String::from_utf8(buf).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("http response");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("HTTP response in time")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// A Kurento room client speaking raw JSON-RPC frames, over plain TCP by default or over any
/// other stream (TLS in tests/tls.rs).
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
    next_id: i64,
    /// Messages received while waiting for something else, in arrival order.
    pending: VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connect in time")
            .expect("websocket upgrade");
        Self::from_ws(ws)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// A client on an already upgraded WebSocket.
    pub fn from_ws(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            next_id: 0,
            pending: VecDeque::new(),
        }
    }

    /// Sends one raw text frame.
    pub async fn send_raw(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send frame");
    }

    /// Sends a binary frame (Kurento clients never do; it must be ignored).
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::Binary(data.into()))
            .await
            .expect("send binary frame");
    }

    /// Sends a text frame, tolerating a server that cuts the connection meanwhile.
    pub async fn try_send_raw(&mut self, text: String) -> Result<(), String> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until the connection ends in any way (close frame, error, end of stream).
    pub async fn ended(&mut self) {
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("connection ended in time");
    }

    /// Sends a request with the next id (JS-client field order) and returns the id.
    pub async fn send(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"jsonrpc":"2.0","method":method,"params":params,"id":id});
        self.send_raw(frame.to_string()).await;
        id
    }

    /// Sends a request and waits for the response with its id; other messages are kept.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params).await;
        self.response(id).await
    }

    /// Waits for the response with `id`.
    pub async fn response(&mut self, id: i64) -> Value {
        if let Some(pos) = self.pending.iter().position(|m| is_response_to(m, id)) {
            return self.pending.remove(pos).expect("position is in range");
        }
        loop {
            let msg = self.next_frame().await;
            if is_response_to(&msg, id) {
                return msg;
            }
            self.pending.push_back(msg);
        }
    }

    /// Waits for the next notification called `method` whose params satisfy `pred`.
    pub async fn notification_where(
        &mut self,
        method: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let matches = |m: &Value| m["method"] == method && pred(&m["params"]);
        if let Some(pos) = self.pending.iter().position(matches) {
            return self.pending.remove(pos).expect("position is in range");
        }
        loop {
            let msg = self.next_frame().await;
            if matches(&msg) {
                return msg;
            }
            self.pending.push_back(msg);
        }
    }

    /// Waits for the next notification called `method` (earlier ones kept aside first).
    pub async fn notification(&mut self, method: &str) -> Value {
        self.notification_within(method, WAIT).await
    }

    /// Like [`Client::notification`], with a per-frame bound other than [`WAIT`].
    pub async fn notification_within(&mut self, method: &str, bound: Duration) -> Value {
        if let Some(pos) = self.pending.iter().position(|m| m["method"] == method) {
            return self.pending.remove(pos).expect("position is in range");
        }
        loop {
            let msg = self.next_frame_within(bound).await;
            if msg["method"] == method {
                return msg;
            }
            self.pending.push_back(msg);
        }
    }

    /// The next message, whatever it is (kept-aside ones first).
    pub async fn next_message(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(m) => m,
            None => self.next_frame().await,
        }
    }

    /// Everything received so far and not yet consumed.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// A round trip through this session's room: every event the room emitted for this
    /// session before handling the barrier has then been received (kept aside).
    pub async fn room_barrier(&mut self) {
        let r = self
            .call(
                "onIceCandidate",
                json!({"endpointName":"__barrier__","candidate":"","sdpMid":"0","sdpMLineIndex":0}),
            )
            .await;
        assert!(r.get("result").is_some(), "barrier failed: {r}");
    }

    /// Waits for the server to close the socket; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                        self.pending.push_back(v);
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => return None,
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("server closed the socket in time")
    }

    /// Closes the socket from the client side (an abrupt tab close).
    pub async fn drop_connection(mut self) {
        let _ = self.ws.close(None).await;
    }

    async fn next_frame(&mut self) -> Value {
        self.next_frame_within(WAIT).await
    }

    async fn next_frame_within(&mut self, bound: Duration) -> Value {
        let fut = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return serde_json::from_str::<Value>(&t).expect("server sends JSON")
                    }
                    Some(Ok(Message::Close(f))) => panic!("socket closed by server: {f:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("websocket error: {e}"),
                    None => panic!("socket ended"),
                }
            }
        };
        tokio::time::timeout(bound, fut)
            .await
            .expect("a message from the server in time")
    }

    // ----- Kurento room calls -----

    pub async fn join(&mut self, room: &str, user: &str) -> Value {
        let r = self
            .call("joinRoom", json!({"user": user, "room": room}))
            .await;
        assert!(r.get("result").is_some(), "join failed: {r}");
        r
    }

    pub async fn ping(&mut self) -> Value {
        self.call("ping", json!({})).await
    }
}

fn is_response_to(msg: &Value, id: i64) -> bool {
    msg.get("method").is_none() && msg["id"] == json!(id)
}

/// The error object of a response (panics with the message when it is a success).
pub fn error_of(resp: &Value) -> (i64, String) {
    let e = resp
        .get("error")
        .unwrap_or_else(|| panic!("expected an error: {resp}"));
    (
        e["code"].as_i64().expect("integer error code"),
        e["message"].as_str().expect("string message").to_owned(),
    )
}
