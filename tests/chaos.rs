//! Chaos over the wire: the real server (in this process, on 127.0.0.1) against clients that
//! vanish at the worst moments, churn, and stop reading.
//!
//! - **Join-and-vanish (the ghost race)**: hundreds of clients send `joinRoom` and drop their
//!   socket before the answer (TCP FIN without a close frame, TCP RST, a close frame), mixed
//!   with clients that drop right after the answer. Once the grace period has run out nobody
//!   is left: `/health` counts no participant or session, `/getAllRooms` does not list the
//!   room, every `participantJoined` an observer saw is matched by a `participantLeft`, and
//!   every name can be joined again (no 104).
//! - **Media requests in flight**: the same with `publishVideo` / `receiveVideoFrom` (real
//!   webrtc-rs offers) on the wire when the socket goes: every endpoint, peer connection,
//!   media task and UDP port is released after the grace period (`/health`, `/metrics`).
//! - **Abrupt drops during negotiation**: before the answer, right after it, during trickle
//!   ICE and right after the connection is up, for publishing and subscribing: the others get
//!   `participantLeft` no sooner than the grace period after the drop, and media is released.
//! - **Churn back to baseline**: 150 cycles of join / publish / subscribe / media /
//!   leave-or-drop in four parallel rooms; after a warm-up, after 50 and after 150 cycles the
//!   process's open file descriptors and tokio tasks are back to the baseline, the server is
//!   idle, and resident memory did not grow with the number of cycles.
//! - **A member that stops reading** its socket (tiny TCP receive buffer) in a busy chat room:
//!   the others' round trips stay fast throughout, the server's memory stays bounded, and the
//!   non-reader is disconnected and evicted (the others get `participantLeft`).
//!
//! Every wait is bounded and waits for an event or a state (polling `/health` and `/metrics`
//! for a state is the only polling). The tests run one at a time ([`serially`]): they measure
//! process-wide resources (fds, RSS) and time round trips on a 2-core machine.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::peer::{self, apply_candidate, strip_candidates};
use common::{start_server_with, Client, Server, WAIT};
use futures_util::future::join_all;
use media::testing::{self, Kind, CHROME};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::MaybeTlsStream;

/// The reconnection grace period of every server here: short, so the tests are quick.
const GRACE_MS: u64 = 300;
/// How long after the grace period a state may take to be reached on a loaded machine.
const SETTLE: Duration = Duration::from_secs(10);
/// Interval between two samples of `/health` + `/metrics` while waiting for a state.
const POLL: Duration = Duration::from_millis(25);

fn grace() -> Duration {
    Duration::from_millis(GRACE_MS)
}

/// One chaos test at a time: they measure process-wide resources and time round trips.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a chaos test alone in the process, on a runtime of its own that is built after the
/// lock is taken and dropped before it is released: another test's runtime (its epoll and
/// waker fds, its worker threads) then never comes or goes while one measures the process's
/// fds and tasks.
fn serially(test: impl Future<Output = ()>) {
    // A panicked chaos test poisons the lock; the next one still runs alone.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime builds (threads and an epoll fd are available)");
    runtime.block_on(test);
    drop(runtime);
}

async fn start() -> Server {
    start_server_with(roomd::Config {
        reconnection_grace_ms: GRACE_MS,
        ..roomd::Config::default()
    })
    .await
}

// ----- clients that vanish -----

/// How a client leaves without saying goodbye.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vanish {
    /// The socket is dropped: TCP FIN, no WebSocket close frame.
    Fin,
    /// The socket is dropped with `SO_LINGER` 0: TCP RST (unread data may be discarded).
    Reset,
    /// A WebSocket close frame, then the socket is dropped.
    CloseFrame,
}

const VANISHES: [Vanish; 3] = [Vanish::Fin, Vanish::Reset, Vanish::CloseFrame];

/// A WebSocket client on a socket of our own making: `SO_LINGER` 0 for [`Vanish::Reset`], and
/// an optional small receive buffer (set before connecting, so the window stays small).
async fn connect(addr: SocketAddr, how: Vanish, recv_buffer: Option<u32>) -> Client {
    let socket = TcpSocket::new_v4().expect("TCP socket");
    if let Some(bytes) = recv_buffer {
        socket
            .set_recv_buffer_size(bytes)
            .expect("set SO_RCVBUF before connecting");
    }
    let tcp = timeout(WAIT, socket.connect(addr))
        .await
        .expect("TCP connect in time")
        .expect("TCP connect");
    if how == Vanish::Reset {
        tcp.set_zero_linger().expect("set SO_LINGER 0");
    }
    let url = format!("ws://{addr}/room");
    let (ws, _) = timeout(
        WAIT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("websocket upgrade in time")
    .expect("websocket upgrade");
    Client::from_ws(ws)
}

async fn vanish(client: Client, how: Vanish) {
    match how {
        Vanish::CloseFrame => client.drop_connection().await,
        Vanish::Fin | Vanish::Reset => drop(client),
    }
}

/// `leaveRoom`, then the server closes the socket.
async fn leave(c: &mut Client) {
    let r = c.call("leaveRoom", json!({})).await;
    assert!(r.get("result").is_some(), "leaveRoom failed: {r}");
    c.closed().await;
}

// ----- the server's and the process's state -----

/// `/health`, `/getAllRooms` and `/metrics` sampled together.
struct Gauges {
    health: Value,
    rooms: Value,
    metrics: BTreeMap<String, u64>,
}

/// A state of the server to wait for.
#[derive(Clone, Copy, Debug, Default)]
struct Expect {
    participants: u64,
    sessions: u64,
    endpoints: u64,
    peer_connections: u64,
    publishers: u64,
    subscribers: u64,
}

const IDLE: Expect = Expect {
    participants: 0,
    sessions: 0,
    endpoints: 0,
    peer_connections: 0,
    publishers: 0,
    subscribers: 0,
};

impl Gauges {
    async fn sample(server: &Server) -> Self {
        let (status, health) = server.get("/health").await;
        assert_eq!(status, 200, "/health: {health}");
        let (status, rooms) = server.get("/getAllRooms").await;
        assert_eq!(status, 200, "/getAllRooms: {rooms}");
        let text = common::http_get_text(server.addr, "/metrics").await;
        let metrics = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self {
            health,
            rooms,
            metrics,
        }
    }

    fn health(&self, key: &str) -> u64 {
        self.health[key].as_u64().unwrap_or(u64::MAX)
    }

    fn metric(&self, name: &str) -> u64 {
        self.metrics.get(name).copied().unwrap_or(u64::MAX)
    }

    fn matches(&self, e: &Expect) -> bool {
        let media_idle =
            e.peer_connections > 0 || self.metric("roomd_media_shard_peer_connections") == 0;
        let rooms_listed = self.rooms.as_array().map_or(usize::MAX, Vec::len);
        self.health("participants") == e.participants
            && self.health("sessions") == e.sessions
            && self.health("mediaEndpoints") == e.endpoints
            && self.metric("roomd_peer_connections") == e.peer_connections
            && self.metric("roomd_publishers") == e.publishers
            && self.metric("roomd_subscribers") == e.subscribers
            && (e.participants > 0 || rooms_listed == 0)
            && media_idle
    }
}

impl fmt::Display for Gauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/health {} /getAllRooms {} media: {} peer connections, {} publishers, {} \
             subscribers, {} in the shards",
            self.health,
            self.rooms,
            self.metric("roomd_peer_connections"),
            self.metric("roomd_publishers"),
            self.metric("roomd_subscribers"),
            self.metric("roomd_media_shard_peer_connections"),
        )
    }
}

/// Polls `probe` until it yields `Ok`, for at most `bound`; `Err` carries the last state seen.
async fn poll_until<T, F, Fut>(bound: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + bound;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits until the server is in state `e`; panics naming `what` and the last state seen.
async fn wait_state(server: &Server, e: Expect, bound: Duration, what: &str) -> Gauges {
    let started = Instant::now();
    let reached = poll_until(bound, || async {
        let g = Gauges::sample(server).await;
        if g.matches(&e) {
            Ok(g)
        } else {
            Err(g.to_string())
        }
    })
    .await;
    match reached {
        Ok(g) => g,
        Err(last) => panic!(
            "{what}: not reached within {:?} (expected {e:?}); last seen: {last}",
            started.elapsed()
        ),
    }
}

/// Names listed by a fresh `joinRoom` into `room` (the probe leaves again).
async fn members(server: &Server, room: &str) -> Vec<String> {
    let mut probe = server.client().await;
    let r = probe.join(room, "__probe__").await;
    leave(&mut probe).await;
    r["result"]["value"]
        .as_array()
        .expect("join value is an array")
        .iter()
        .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// participantJoined minus participantLeft per name, from an observer's events; only the
/// names that do not balance out.
fn unbalanced(events: &[Value]) -> BTreeMap<String, i64> {
    let mut balance = BTreeMap::<String, i64>::new();
    for e in events {
        match e["method"].as_str() {
            Some("participantJoined") => {
                *balance
                    .entry(e["params"]["id"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
            Some("participantLeft") => {
                *balance
                    .entry(e["params"]["name"].as_str().unwrap_or_default().to_owned())
                    .or_default() -= 1;
            }
            _ => {}
        }
    }
    balance.retain(|_, n| *n != 0);
    balance
}

fn count_method(events: &[Value], method: &str) -> usize {
    events.iter().filter(|e| e["method"] == method).count()
}

/// Open file descriptors of this process (server, clients and peers all live here).
fn open_fds() -> usize {
    testing::open_fds()
}

/// What each open fd of this process is (`/proc/self/fd` link targets), for failure messages.
fn fd_targets() -> String {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return "unreadable".into();
    };
    let mut all: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("{}→{target}", e.file_name().to_string_lossy())
        })
        .collect();
    all.sort();
    all.join(", ")
}

/// Tasks alive in this test's runtime (the server's, the peers' and ours).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Resident set size of this process in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

// ----- 1. the ghost race -----

/// Hundreds of clients send joinRoom and vanish before the answer (FIN, RST, close frame),
/// interleaved with clients that vanish right after it; 240 clients over 200 names, so some
/// joins race for the same name (104). After the grace period only the observer is left,
/// every participantJoined it saw has its participantLeft, every name joins again, and once
/// the observer leaves the room is gone and the server idle.
#[test]
fn join_and_vanish_leaves_no_ghost() {
    serially(join_and_vanish_leaves_no_ghost_body())
}

async fn join_and_vanish_leaves_no_ghost_body() {
    const CLIENTS: usize = 240;
    const NAMES: usize = 200;
    const ROOM: &str = "ghosts";
    let server = start().await;
    let mut observer = server.client().await;
    observer.join(ROOM, "observer").await;

    let answered = Arc::new(AtomicUsize::new(0));
    let vanishers = (0..CLIENTS).map(|i| {
        let addr = server.addr;
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let user = format!("g{}", i % NAMES);
            // Every fourth waits for the answer (joined or 104), then drops (FIN).
            let wait_answer = i % 4 == 3;
            let how = VANISHES[i % 3];
            let mut c = connect(addr, how, None).await;
            let id = c
                .send("joinRoom", json!({"user": user, "room": ROOM}))
                .await;
            if wait_answer {
                let r = c.response(id).await;
                if r.get("result").is_some() {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(common::error_of(&r).0, 104, "join of {user}: {r}");
                }
            }
            vanish(c, how).await;
        })
    });
    let results = timeout(3 * WAIT, join_all(vanishers))
        .await
        .expect("all join-and-vanish clients done in time");
    for r in results {
        r.expect("a join-and-vanish client panicked");
    }
    let last_drop = Instant::now();
    println!(
        "{CLIENTS} clients joined and vanished; {} joins were answered before the drop",
        answered.load(Ordering::Relaxed)
    );

    // After the grace period: the observer alone, one session (its own).
    let only_observer = Expect {
        participants: 1,
        sessions: 1,
        ..IDLE
    };
    let reached = poll_until(grace() + SETTLE, || async {
        let g = Gauges::sample(&server).await;
        if g.matches(&only_observer) {
            Ok(())
        } else {
            Err(g.to_string())
        }
    })
    .await;
    if let Err(last) = reached {
        let mut ghosts = members(&server, ROOM).await;
        ghosts.retain(|n| n != "observer");
        panic!(
            "ghost participants: {} vanished clients are still in room '{ROOM}' {:?} after the \
             last drop (grace {GRACE_MS} ms): {ghosts:?}; last seen: {last}",
            ghosts.len(),
            last_drop.elapsed(),
        );
    }
    println!(
        "only the observer left {:?} after the last drop",
        last_drop.elapsed()
    );

    observer.room_barrier().await;
    let events = observer.take_pending();
    let joined = count_method(&events, "participantJoined");
    assert_eq!(
        unbalanced(&events),
        BTreeMap::new(),
        "every participantJoined the observer saw is followed by a participantLeft \
         ({joined} joined)"
    );

    // Every name is free again: join it (no 104), then leave.
    let names: Vec<String> = (0..NAMES).map(|i| format!("g{i}")).collect();
    for chunk in names.chunks(25) {
        let rejoins = chunk.iter().map(|name| {
            let server = &server;
            async move {
                let mut c = server.client().await;
                let r = c
                    .call("joinRoom", json!({"user": name, "room": ROOM}))
                    .await;
                assert!(
                    r.get("result").is_some(),
                    "'{name}' cannot join again after the grace period: {r}"
                );
                leave(&mut c).await;
            }
        });
        join_all(rejoins).await;
    }
    leave(&mut observer).await;
    wait_state(&server, IDLE, SETTLE, "room gone and server idle").await;
}

/// Browser-like offers, made once and sent by many clients.
struct Offers {
    publisher: testing::Client,
    subscriber: testing::Client,
    publish: String,
    subscribe: String,
    /// One of the publishing peer's candidates (the server may send checks to it; harmless).
    candidate: Value,
}

impl Offers {
    async fn new() -> Self {
        let mut publisher = testing::Client::new(CHROME).await;
        publisher
            .add_send_track(Kind::Audio, peer::AUDIO_SSRC, false)
            .await;
        publisher
            .add_send_track(Kind::Video, peer::VIDEO_SSRC, false)
            .await;
        let publish = strip_candidates(&publisher.offer(false).await);
        let c = timeout(WAIT, publisher.candidates.recv())
            .await
            .expect("the offering peer gathers a candidate in time")
            .expect("candidate channel open");
        let candidate = json!({"candidate": c.candidate, "sdpMid": c.sdp_mid,
                               "sdpMLineIndex": c.sdp_mline_index});
        let subscriber = testing::Client::new(CHROME).await;
        subscriber.add_recv(Kind::Audio).await;
        subscriber.add_recv(Kind::Video).await;
        let subscribe = strip_candidates(&subscriber.offer(false).await);
        Self {
            publisher,
            subscriber,
            publish,
            subscribe,
            candidate,
        }
    }

    async fn close(self) {
        self.publisher.close().await;
        self.subscriber.close().await;
    }
}

/// Joined clients send publishVideo or receiveVideoFrom (real offers; a third of them also
/// pipeline an onIceCandidate) and vanish before the answer, or right after it. After the grace
/// period only the host and its own publication are left; once the host leaves, no endpoint,
/// peer connection, media task or port is left.
#[test]
fn media_requests_in_flight_when_the_socket_closes_are_released() {
    serially(media_requests_in_flight_when_the_socket_closes_are_released_body())
}

async fn media_requests_in_flight_when_the_socket_closes_are_released_body() {
    const CLIENTS: usize = 64;
    const ROOM: &str = "inflight";
    let server = start().await;
    let mut host = server.client().await;
    host.join(ROOM, "host").await;
    let host_pub = peer::publish(&mut host, "host", false, false).await;
    let offers = Arc::new(Offers::new().await);

    let vanishers = (0..CLIENTS).map(|i| {
        let addr = server.addr;
        let offers = Arc::clone(&offers);
        tokio::spawn(async move {
            let user = format!("m{i}");
            let publishing = i % 2 == 0;
            let wait_answer = (i / 2) % 4 == 3;
            let how = VANISHES[(i / 2) % 3];
            let mut c = connect(addr, how, None).await;
            c.join(ROOM, &user).await;
            let (id, endpoint) = if publishing {
                let params = json!({"sdpOffer": offers.publish, "doLoopback": false});
                (c.send("publishVideo", params).await, user.as_str())
            } else {
                let params = json!({"sender": "host_webcam", "sdpOffer": offers.subscribe});
                (c.send("receiveVideoFrom", params).await, "host")
            };
            if i % 3 == 0 {
                let mut params = offers.candidate.clone();
                params["endpointName"] = json!(endpoint);
                c.send("onIceCandidate", params).await;
            }
            if wait_answer {
                let r = c.response(id).await;
                assert!(
                    r["result"]["sdpAnswer"].is_string(),
                    "{user}'s negotiation failed: {r}"
                );
            }
            vanish(c, how).await;
        })
    });
    let results = timeout(3 * WAIT, join_all(vanishers))
        .await
        .expect("all vanishing clients done in time");
    for r in results {
        r.expect("a vanishing client panicked");
    }
    let only_host = Expect {
        participants: 1,
        sessions: 1,
        endpoints: 1,
        peer_connections: 1,
        publishers: 1,
        subscribers: 0,
    };
    let dropped = Instant::now();
    wait_state(
        &server,
        only_host,
        grace() + SETTLE,
        "vanished clients' endpoints released after the grace period",
    )
    .await;
    println!(
        "{CLIENTS} vanished mid-negotiation; released {:?} after the last drop",
        dropped.elapsed()
    );
    host.room_barrier().await;
    let events = host.take_pending();
    assert_eq!(
        unbalanced(&events),
        BTreeMap::new(),
        "every participantJoined the host saw is followed by a participantLeft"
    );
    assert_eq!(count_method(&events, "participantJoined"), CLIENTS);
    leave(&mut host).await;
    host_pub.peer.close().await;
    if let Ok(offers) = Arc::try_unwrap(offers) {
        offers.close().await;
    }
    wait_state(
        &server,
        IDLE,
        SETTLE,
        "everything released after the host left",
    )
    .await;
}

// ----- 3. abrupt drops during negotiation -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The request is sent; the socket goes before the answer.
    BeforeAnswer,
    /// The answer arrived; the socket goes before anything else.
    AfterAnswer,
    /// The answer is applied and one candidate trickled; the peer may still connect.
    DuringTrickle,
    /// The peer connection is up.
    Connected,
}

const STAGES: [Stage; 4] = [
    Stage::BeforeAnswer,
    Stage::AfterAnswer,
    Stage::DuringTrickle,
    Stage::Connected,
];

/// Joins as `user`, publishes (or subscribes to `host`) up to `stage`, vanishes `how`.
/// Returns when it dropped and its peer (kept alive: the server must not rely on it leaving).
async fn negotiate_and_vanish(
    addr: SocketAddr,
    room: &str,
    user: &str,
    publishing: bool,
    stage: Stage,
    how: Vanish,
) -> (Instant, testing::Client) {
    let mut c = connect(addr, how, None).await;
    c.join(room, user).await;
    let mut peer = testing::Client::new(CHROME).await;
    let (method, endpoint) = if publishing {
        peer.add_send_track(Kind::Audio, peer::AUDIO_SSRC, false)
            .await;
        peer.add_send_track(Kind::Video, peer::VIDEO_SSRC, false)
            .await;
        ("publishVideo", user)
    } else {
        peer.add_recv(Kind::Audio).await;
        peer.add_recv(Kind::Video).await;
        ("receiveVideoFrom", "host")
    };
    let offer = strip_candidates(&peer.offer(false).await);
    let params = if publishing {
        json!({"sdpOffer": offer, "doLoopback": false})
    } else {
        json!({"sender": "host_webcam", "sdpOffer": offer})
    };
    let id = c.send(method, params).await;
    if stage != Stage::BeforeAnswer {
        let r = c.response(id).await;
        let answer = r["result"]["sdpAnswer"]
            .as_str()
            .unwrap_or_else(|| panic!("{user}: {method} answered {r}"))
            .to_owned();
        if stage != Stage::AfterAnswer {
            peer.apply_answer(strip_candidates(&answer)).await;
            let mine = timeout(WAIT, peer.candidates.recv())
                .await
                .expect("the peer gathers a candidate in time")
                .expect("candidate channel open");
            let r = c
                .call(
                    "onIceCandidate",
                    json!({"endpointName": endpoint, "candidate": mine.candidate,
                           "sdpMid": mine.sdp_mid, "sdpMLineIndex": mine.sdp_mline_index}),
                )
                .await;
            assert!(r.get("result").is_some(), "{user}: onIceCandidate {r}");
            if stage == Stage::Connected {
                let ev = c
                    .notification_where("iceCandidate", |p| p["endpointName"] == endpoint)
                    .await;
                apply_candidate(&peer, &ev["params"]).await;
                peer.connected().await;
            }
        }
    }
    let dropped = Instant::now();
    vanish(c, how).await;
    (dropped, peer)
}

/// 24 participants (publish and subscribe × 4 negotiation stages × 3 ways to vanish) drop
/// their socket mid-negotiation, all at once. The host gets participantLeft for each, no
/// sooner than the grace period after its drop; afterwards only the host's publication is
/// left, and nothing once the host leaves.
#[test]
fn abrupt_drops_during_negotiation_release_everything() {
    serially(abrupt_drops_during_negotiation_release_everything_body())
}

async fn abrupt_drops_during_negotiation_release_everything_body() {
    const ROOM: &str = "negotiation";
    let server = start().await;
    let mut host = server.client().await;
    host.join(ROOM, "host").await;
    let host_pub = peer::publish(&mut host, "host", false, false).await;

    let mut cases = Vec::new();
    for publishing in [true, false] {
        for stage in STAGES {
            for how in VANISHES {
                let verb = if publishing { "pub" } else { "sub" };
                cases.push((format!("{verb}-{stage:?}-{how:?}"), publishing, stage, how));
            }
        }
    }
    let expected: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let drops = cases.iter().map(|(user, publishing, stage, how)| {
        negotiate_and_vanish(server.addr, ROOM, user, *publishing, *stage, *how)
    });
    // The host reads its events while the others negotiate and vanish.
    let host_reads = async {
        let mut left = BTreeMap::new();
        let deadline = Instant::now() + 3 * WAIT + grace() + SETTLE;
        while left.len() < expected.len() {
            let n = timeout(
                deadline.saturating_duration_since(Instant::now()),
                host.notification_within("participantLeft", 3 * WAIT),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "participantLeft for only {:?} of {expected:?}",
                    left.keys().collect::<Vec<_>>()
                )
            });
            let name = n["params"]["name"].as_str().expect("name").to_owned();
            left.insert(name, Instant::now());
        }
        left
    };
    let (dropped, left) = tokio::join!(
        async {
            timeout(3 * WAIT, join_all(drops))
                .await
                .expect("every negotiation reached its stage in time")
        },
        host_reads
    );
    let names: Vec<&String> = left.keys().collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(
        names,
        sorted.iter().collect::<Vec<_>>(),
        "one participantLeft per vanished participant"
    );
    for (name, (at, _)) in expected.iter().zip(&dropped) {
        let after = left[name].saturating_duration_since(*at);
        assert!(
            after >= grace(),
            "{name}: participantLeft {after:?} after the drop, before the grace period"
        );
    }
    wait_state(
        &server,
        Expect {
            participants: 1,
            sessions: 1,
            endpoints: 1,
            peer_connections: 1,
            publishers: 1,
            subscribers: 0,
        },
        SETTLE,
        "only the host's publication left",
    )
    .await;
    for (_, p) in &dropped {
        p.close().await;
    }
    leave(&mut host).await;
    host_pub.peer.close().await;
    wait_state(
        &server,
        IDLE,
        SETTLE,
        "everything released after the host left",
    )
    .await;
}

// ----- 2. churn -----

/// Cycles done by all lanes together.
struct Churn {
    next: AtomicUsize,
}

/// One cycle in `room`: two fresh participants, a publication, a subscription, then one of
/// four endings. `c` picks the ending and makes the names unique.
async fn cycle(addr: SocketAddr, room: &str, c: usize) {
    let (an, bn) = (format!("a{c}"), format!("b{c}"));
    let kind = c % 4;
    let how = VANISHES[c % 3];
    let mut a = connect(addr, how, None).await;
    let mut b = connect(addr, how, None).await;
    a.join(room, &an).await;
    b.join(room, &bn).await;
    match kind {
        // Full call, both leave cleanly.
        0 => {
            let p = peer::publish(&mut a, &an, false, false).await;
            let mut s = peer::subscribe(&mut b, &an).await;
            let (_, (got, corrupt)) = tokio::join!(
                peer::send(&p.video, peer::VIDEO_SSRC, CHROME.vp8, 20),
                async {
                    s.read_tracks(1).await;
                    s.wait_total(5).await
                }
            );
            assert!(
                got >= 5 && corrupt == 0,
                "cycle {c}: {got} packets, {corrupt} corrupt"
            );
            let r = b
                .call(
                    "unsubscribeFromVideo",
                    json!({"sender": format!("{an}_webcam")}),
                )
                .await;
            assert!(r.get("result").is_some(), "cycle {c}: unsubscribe {r}");
            let r = a.call("unpublishVideo", json!({})).await;
            assert!(r.get("result").is_some(), "cycle {c}: unpublish {r}");
            leave(&mut b).await;
            leave(&mut a).await;
            p.peer.close().await;
            s.peer.close().await;
        }
        // Full call, the publisher vanishes; the subscriber waits for it to be evicted.
        1 => {
            let p = peer::publish(&mut a, &an, false, false).await;
            let s = peer::subscribe(&mut b, &an).await;
            vanish(a, how).await;
            b.notification_where("participantLeft", |n| n["name"] == an.as_str())
                .await;
            leave(&mut b).await;
            p.peer.close().await;
            s.peer.close().await;
        }
        // The subscriber vanishes right after its answer; the publisher ends its session.
        2 => {
            let p = peer::publish(&mut a, &an, false, false).await;
            let sub = testing::Client::new(CHROME).await;
            sub.add_recv(Kind::Video).await;
            let offer = strip_candidates(&sub.offer(false).await);
            let r = b
                .call(
                    "receiveVideoFrom",
                    json!({"sender": format!("{an}_webcam"), "sdpOffer": offer}),
                )
                .await;
            assert!(r["result"]["sdpAnswer"].is_string(), "cycle {c}: {r}");
            vanish(b, how).await;
            let id = a.send("closeSession", json!({})).await;
            assert_eq!(a.response(id).await["result"], "bye", "cycle {c}");
            a.closed().await;
            p.peer.close().await;
            sub.close().await;
        }
        // Both vanish with their answers in hand, nothing connected; nobody waits.
        _ => {
            let pubr = testing::Client::new(CHROME).await;
            pubr.add_send_track(Kind::Video, peer::VIDEO_SSRC, false)
                .await;
            let offer = strip_candidates(&pubr.offer(false).await);
            let r = a
                .call(
                    "publishVideo",
                    json!({"sdpOffer": offer, "doLoopback": false}),
                )
                .await;
            assert!(r["result"]["sdpAnswer"].is_string(), "cycle {c}: {r}");
            let sub = testing::Client::new(CHROME).await;
            sub.add_recv(Kind::Video).await;
            let offer = strip_candidates(&sub.offer(false).await);
            let r = b
                .call(
                    "receiveVideoFrom",
                    json!({"sender": format!("{an}_webcam"), "sdpOffer": offer}),
                )
                .await;
            assert!(r["result"]["sdpAnswer"].is_string(), "cycle {c}: {r}");
            vanish(a, how).await;
            vanish(b, how).await;
            pubr.close().await;
            sub.close().await;
        }
    }
}

/// Runs cycles on `LANES` rooms in parallel until `until` cycles are done in total.
async fn churn_until(server: &Server, churn: &Arc<Churn>, until: usize) {
    const LANES: usize = 4;
    let lanes = (0..LANES).map(|lane| {
        let churn = Arc::clone(churn);
        let addr = server.addr;
        tokio::spawn(async move {
            let room = format!("churn{lane}");
            loop {
                let c = churn.next.fetch_add(1, Ordering::Relaxed);
                if c >= until {
                    churn.next.fetch_min(until, Ordering::Relaxed);
                    return;
                }
                timeout(4 * WAIT, cycle(addr, &room, c))
                    .await
                    .unwrap_or_else(|_| panic!("cycle {c} (kind {}) stuck", c % 4));
            }
        })
    });
    for r in join_all(lanes).await {
        r.expect("a churn lane panicked");
    }
}

/// What the process holds once the server is idle again.
#[derive(Clone, Copy, Debug)]
struct Footprint {
    fds: usize,
    tasks: usize,
    rss_kib: u64,
}

/// Waits for the server to be idle and the process's fds and tasks to be down to `target`
/// (without a target, as soon as the server is idle); returns the footprint then.
async fn settle(server: &Server, target: Option<Footprint>, what: &str) -> Footprint {
    wait_state(server, IDLE, grace() + SETTLE, what).await;
    let reached = poll_until(SETTLE, || async {
        let now = (open_fds(), alive_tasks());
        match target {
            Some(t) if now.0 <= t.fds && now.1 <= t.tasks => Ok(now),
            Some(t) => Err(format!(
                "{} fds (baseline {}), {} tasks (baseline {}); open fds: {}",
                now.0,
                t.fds,
                now.1,
                t.tasks,
                fd_targets()
            )),
            None => Ok(now),
        }
    })
    .await;
    match reached {
        Ok((fds, tasks)) => Footprint {
            fds,
            tasks,
            rss_kib: rss_kib(),
        },
        Err(last) => panic!("{what}: process resources not back to the baseline: {last}"),
    }
}

/// 150 cycles (`ROOMD_CHAOS_CYCLES`) of join / publish / subscribe / media / leave-or-vanish in
/// four parallel rooms. After a warm-up the process's footprint is the baseline; after a third
/// and after all cycles
/// the server is idle, fds and tokio tasks are back to the baseline, and resident memory
/// grew by less between cycle 50 and 150 than a leak of one peer connection per cycle would.
#[test]
fn churn_returns_to_baseline() {
    serially(churn_returns_to_baseline_body())
}

async fn churn_returns_to_baseline_body() {
    const WARM_UP: usize = 12;
    // The long run: `ROOMD_CHAOS_CYCLES=3000 cargo test --release --test chaos churn`.
    let total: usize = std::env::var("ROOMD_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
        .max(WARM_UP + 3);
    let middle = total / 3;
    let started = Instant::now();
    let server = start().await;
    let pre = settle(&server, None, "idle before the first cycle").await;
    println!("before any cycle: {pre:?}");
    let churn = Arc::new(Churn {
        next: AtomicUsize::new(0),
    });
    let bound = Duration::from_secs(420.max(3 * total as u64));
    timeout(bound, async {
        churn_until(&server, &churn, WARM_UP).await;
        // A warmed-up idle process holds the fds and tasks it held before any client (peer
        // tasks of the warm-up may take a moment to end); its RSS then is the baseline.
        let base = settle(
            &server,
            Some(pre),
            "the start's fds and tasks after the warm-up",
        )
        .await;
        println!(
            "baseline after {WARM_UP} cycles: {base:?} ({:?})",
            started.elapsed()
        );
        churn_until(&server, &churn, middle).await;
        let at_middle = settle(&server, Some(base), "back to baseline after a third").await;
        println!(
            "after {middle} cycles: {at_middle:?} ({:?})",
            started.elapsed()
        );
        churn_until(&server, &churn, total).await;
        let end = settle(&server, Some(base), "back to baseline at the end").await;
        println!("after {total} cycles: {end:?} ({:?})", started.elapsed());
        // Allocator caching of the busiest moment is already in the footprint at cycle 50 and
        // does not scale with the number of cycles (measured: -0.3 to +1.8 MB). 100 more
        // cycles open 350 peer connections on each side; a leak of 80 kB per cycle (a third of
        // a subscriber stream's memory, BENCHMARKS.md) would exceed the bound.
        let growth = end.rss_kib.saturating_sub(at_middle.rss_kib);
        assert!(
            growth < 8 * 1024,
            "RSS grew {growth} KiB between cycle {middle} and {total} (baseline {} KiB, \
             {} KiB at {middle}, {} KiB at {total})",
            base.rss_kib,
            at_middle.rss_kib,
            end.rss_kib
        );
    })
    .await
    .unwrap_or_else(|_| panic!("churn did not finish within {bound:?}"));
}

// ----- 4. a member that stops reading -----

/// A member joins with a tiny TCP receive buffer and never reads again while four others
/// exchange 4 KB messages at 40 requests a second each (under the default per-connection
/// rate limit). Every round trip of the others stays short (far from the 10 s write timeout
/// a talker waiting on the non-reader would hit) and the pace holds, the server's memory
/// stays bounded while the non-reader's messages have nowhere to go, the server closes the
/// non-reader's socket and, after the grace period, evicts it: the others get
/// participantLeft and only they are left.
#[test]
fn a_member_that_stops_reading_does_not_slow_the_room() {
    serially(a_member_that_stops_reading_does_not_slow_the_room_body())
}

async fn a_member_that_stops_reading_does_not_slow_the_room_body() {
    const ROOM: &str = "busy";
    const TALKERS: usize = 4;
    const MESSAGE_BYTES: usize = 4 * 1024;
    /// Requests per second per talker: below roomd's default rate limit (50 per connection).
    const PACE: u32 = 40;
    /// The server's write timeout for this test (`--write-timeout-ms`): how long a stuck
    /// write may last.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
    /// Far below the write timeout: a talker held up by the non-reader would exceed it.
    const MAX_ROUND_TRIP: Duration = Duration::from_secs(1);
    /// Frames the server queues for one connection (OUTBOUND_CAPACITY) before closing it.
    const OUTBOUND_CAPACITY: u64 = 1024;
    let server = start_server_with(roomd::Config {
        reconnection_grace_ms: GRACE_MS,
        write_timeout_ms: WRITE_TIMEOUT.as_millis() as u64,
        ..roomd::Config::default()
    })
    .await;
    let mut sloth = connect(server.addr, Vanish::Fin, Some(4096)).await;
    sloth.join(ROOM, "sloth").await;
    let mut talkers = Vec::new();
    for i in 0..TALKERS {
        let mut t = server.client().await;
        t.join(ROOM, &format!("t{i}")).await;
        talkers.push(t);
    }
    for t in &mut talkers {
        t.room_barrier().await;
        t.take_pending();
    }
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    // Samples the resident set size while the room is busy (a measurement, not a wait).
    let monitor = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    // Its socket fills within seconds; the server then gives up on it after at most one write
    // timeout (or sooner, when its queue overflows) and evicts it a grace later.
    let deadline = started + 2 * WRITE_TIMEOUT + grace() + 2 * SETTLE;
    let body = "x".repeat(MESSAGE_BYTES);
    let runs = talkers.iter_mut().enumerate().map(|(i, t)| {
        let body = &body;
        async move {
            let me = format!("t{i}");
            let mut pace = tokio::time::interval(Duration::from_secs(1) / PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut sent, mut slowest) = (0usize, Duration::ZERO);
            loop {
                pace.tick().await;
                let t0 = Instant::now();
                let r = t
                    .call(
                        "sendMessage",
                        json!({"userMessage": me, "roomMessage": ROOM, "message": body}),
                    )
                    .await;
                assert!(r.get("result").is_some(), "{me}: sendMessage {r}");
                slowest = slowest.max(t0.elapsed());
                sent += 1;
                assert!(
                    slowest < MAX_ROUND_TRIP,
                    "{me}: a round trip took {slowest:?} after {sent} messages ({:?} in)",
                    started.elapsed()
                );
                let evicted = t
                    .take_pending()
                    .iter()
                    .any(|e| e["method"] == "participantLeft" && e["params"]["name"] == "sloth");
                if evicted || Instant::now() >= deadline {
                    return (sent, slowest, started.elapsed(), evicted);
                }
            }
        }
    });
    let results = join_all(runs).await;
    done.store(true, Ordering::Relaxed);
    monitor.await.expect("memory monitor");
    let total: usize = results.iter().map(|r| r.0).sum();
    let slowest = results.iter().map(|r| r.1).max().unwrap_or_default();
    let elapsed = results.iter().map(|r| r.2).max().unwrap_or_default();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    println!(
        "{total} messages of {MESSAGE_BYTES} B in {elapsed:?}; slowest round trip {slowest:?}; \
         peak RSS +{growth} KiB"
    );
    // The pace held: at least half the paced rate over the whole run.
    let floor = elapsed.as_secs() as usize * TALKERS * PACE as usize / 2;
    assert!(
        total >= floor,
        "only {total} messages in {elapsed:?} (paced for {} a second)",
        TALKERS * PACE as usize
    );
    // At most OUTBOUND_CAPACITY frames wait for the non-reader (5 MB here); everything else
    // addressed to it is dropped. Twice that plus 6 MB allows for allocator overhead and the
    // talkers' side (measured: +8.7 MB). A queue without bound would hold every frame sent
    // while the write is stuck (≈ 20 s × 160 a second ≈ 3,200 frames, ≈ 26 MB of RSS).
    let frame_kib = (MESSAGE_BYTES as u64 + 200).div_ceil(1024);
    let bound = 2 * OUTBOUND_CAPACITY * frame_kib + 6 * 1024;
    assert!(
        growth < bound,
        "RSS grew {growth} KiB (bound {bound} KiB) while sloth did not read \
         ({total} messages of {MESSAGE_BYTES} B were addressed to it)"
    );
    // The server closed the non-reader's socket: whatever was buffered, then the end.
    sloth.ended().await;
    let evicted = results.iter().all(|r| r.3);
    if !evicted {
        let g = Gauges::sample(&server).await;
        panic!(
            "sloth's socket was closed but sloth was never evicted: no participantLeft {:?} \
             after it stopped reading (grace {GRACE_MS} ms); {g}",
            started.elapsed()
        );
    }
    wait_state(
        &server,
        Expect {
            participants: TALKERS as u64,
            sessions: TALKERS as u64,
            ..IDLE
        },
        SETTLE,
        "only the talkers left",
    )
    .await;
}
