//! Cluster mode end to end: two roomd servers sharing one `redis-server`, a room owned by one
//! node, a client of it connected to the other and relayed there (`src/cluster/relay.rs`).

mod common;

use common::cluster::{candidate_addresses, start_node, NodeOptions};
use common::peer;
use common::redis_server::RedisServer;
use common::{start_server_with, Server};
use serde_json::{json, Value};

/// The claim TTL of these clusters: short for quick tests, long enough that a loaded machine
/// does not miss renewals (which would close rooms, by design).
const TTL_MS: u64 = 3000;

/// A node of the test cluster announcing media on `media_ip` (all of 127/8 is loopback), with
/// a short reconnection grace; returns once it is registered.
async fn node(redis: &RedisServer, id: &str, media_ip: &str) -> Server {
    let options = NodeOptions {
        reconnection_grace_ms: Some(1000),
        ..NodeOptions::default()
    };
    let server = start_node(&redis.url(), id, media_ip, TTL_MS, options).await;
    registered(redis, id).await;
    server
}

/// A node of the test cluster with the admin API on (token `tok`); returns as soon as it
/// listens, not registered yet.
async fn admin_node(redis: &RedisServer, id: &str, media_ip: &str) -> Server {
    let options = NodeOptions {
        admin_token: Some("tok"),
        ..NodeOptions::default()
    };
    start_node(&redis.url(), id, media_ip, TTL_MS, options).await
}

/// Polls `key` of `redis` until it exists, at most [`common::WAIT`].
async fn key_exists(redis: &RedisServer, key: &str) {
    let mut conn = ::redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("the test's redis-server accepts connections");
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let exists: bool = ::redis::cmd("EXISTS")
            .arg(key)
            .query(&mut conn)
            .expect("redis-server answers");
        if exists {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Until node `id` has written its record (in the background at its start): before that, a
/// placement does not count it, and a node's first room could go to a node already registered.
async fn registered(redis: &RedisServer, id: &str) {
    key_exists(redis, &format!("roomd:node:{id}")).await;
}

/// Until the session directory names the node holding session `sid` (written in the background
/// right after its join was answered): a reconnection through another node looks it up there.
async fn session_published(redis: &RedisServer, sid: &Value) {
    let sid = sid.as_str().expect("a session id");
    key_exists(redis, &format!("roomd:session:{sid}")).await;
}

fn names(join: &Value) -> Vec<String> {
    join["result"]["value"]
        .as_array()
        .expect("joinRoom lists the room's participants")
        .iter()
        .map(|p| p["id"].as_str().expect("participant id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_client_on_another_node_is_relayed_to_the_owner_for_signaling_and_media() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;

    // b creates R on n2 (a node places an unowned room on itself when it is as idle as any).
    let mut b = n2.client().await;
    assert!(names(&b.join("R", "b").await).is_empty());
    let b_pub = peer::publish(&mut b, "b", false, false).await;
    assert_eq!(candidate_addresses(&b_pub.answer), ["127.0.0.2"]);

    // a connects to n1 and joins R: relayed to n2, whose participants it sees.
    let mut a = n1.client().await;
    let joined = a.join("R", "a").await;
    assert_eq!(names(&joined), ["b"]);
    let a_session = joined["result"]["sessionId"].clone();
    let ev = b.notification("participantJoined").await;
    assert_eq!(ev["params"], json!({"id": "a"}));

    // ping is answered by n1 itself, with the session id the client echoes.
    let pong = a
        .call("ping", json!({"interval": 3000, "sessionId": a_session}))
        .await;
    assert_eq!(pong["result"]["value"], "pong");

    // Media through the relay: the answers carry the owner's address, and ICE connects there.
    let a_pub = peer::publish(&mut a, "a", false, false).await;
    assert_eq!(candidate_addresses(&a_pub.answer), ["127.0.0.2"]);
    let ev = b.notification("participantPublished").await;
    assert_eq!(ev["params"]["id"], "a");
    let a_sub = peer::subscribe(&mut a, "b").await;
    assert_eq!(candidate_addresses(&a_sub.answer), ["127.0.0.2"]);

    // Each learnt of the other once: nothing more about a is pending at b after a barrier.
    b.room_barrier().await;
    a.room_barrier().await;
    let joined_again = b
        .take_pending()
        .into_iter()
        .filter(|m| m["method"] == "participantJoined")
        .count();
    assert_eq!(joined_again, 0, "participantJoined about a delivered once");
    assert!(!a
        .take_pending()
        .iter()
        .any(|m| m["method"] == "participantJoined"));

    // leaveRoom through the relay.
    let left = a.call("leaveRoom", json!({})).await;
    assert!(left.get("result").is_some(), "{left}");
    let ev = b.notification("participantLeft").await;
    assert_eq!(ev["params"], json!({"name": "a"}));
    drop((a_pub, a_sub, b_pub));
}

#[tokio::test]
async fn a_relayed_client_whose_socket_drops_leaves_after_the_grace_period() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;
    let mut c = n1.client().await;
    assert_eq!(names(&c.join("R", "c").await), ["b"]);
    assert_eq!(
        b.notification("participantJoined").await["params"],
        json!({"id": "c"})
    );
    c.drop_connection().await;
    let ev = b.notification("participantLeft").await;
    assert_eq!(ev["params"], json!({"name": "c"}));

    // The room stays on n2: a join through n1 again is relayed there.
    let mut d = n1.client().await;
    assert_eq!(names(&d.join("R", "d").await), ["b"]);
    assert_eq!(
        b.notification("participantJoined").await["params"],
        json!({"id": "d"})
    );
}

/// Polls `f` until it returns `Some`, at most [`common::WAIT`]: for state that other nodes
/// publish on their own schedule (a third of the claim TTL here).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn get_all_rooms_lists_every_nodes_rooms_on_every_node() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;
    let mut on1 = n1.client().await;
    on1.join("one", "u1").await;
    let mut on2 = n2.client().await;
    on2.join("two", "u2").await;
    // A room of n2 joined only through a relay from n1 is listed too.
    let mut owner = n2.client().await;
    owner.join("three", "u3").await;
    let mut relayed = n1.client().await;
    relayed.join("three", "u4").await;
    let all = json!(["one", "three", "two"]);
    for server in [&n1, &n2] {
        eventually("every room listed on every node", || async {
            let (status, rooms) = server.get("/getAllRooms").await;
            (status == 200 && rooms == all).then_some(())
        })
        .await;
    }
}

/// A node as a real process, so that it can be SIGKILLed.
async fn node_process(
    redis: &RedisServer,
    id: &str,
    media_ip: &str,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomd"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--rtc-udp-port", "0", "--media-ip", media_ip, "--no-demo"])
        .args([
            "--redis-url",
            &redis.url(),
            "--cluster-secret",
            "test-secret",
        ])
        .args([
            "--cluster-node-id",
            id,
            "--cluster-claim-ttl-ms",
            &TTL_MS.to_string(),
        ])
        .args(["--cluster-internal-url", &format!("http://{addr}")])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start roomd");
    eventually("the node process listens", || async {
        tokio::net::TcpStream::connect(addr).await.ok().map(drop)
    })
    .await;
    (child, addr)
}

#[tokio::test]
async fn when_the_owner_dies_relayed_clients_get_room_closed_and_the_room_is_placed_again() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let (mut n3, n3_addr) = node_process(&redis, "n3", "127.0.0.3").await;
    let mut b = common::Client::connect(&format!("ws://{n3_addr}/room")).await;
    b.join("R", "b").await;
    let mut a = n1.client().await;
    assert_eq!(names(&a.join("R", "a").await), ["b"]);

    let killed = tokio::time::Instant::now();
    n3.kill().await.expect("SIGKILL the owner");
    let ev = a.notification("roomClosed").await;
    assert_eq!(ev["params"], json!({"room": "R"}));
    let close = a.closed().await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1011));
    assert!(
        killed.elapsed() < std::time::Duration::from_millis(TTL_MS),
        "within the TTL"
    );

    // Until the dead owner's claim expires a join is refused with a clear error; then the
    // room is placed again (here, on n1, the only node left) and works.
    let mut c = n1.client().await;
    let deadline = killed + std::time::Duration::from_millis(TTL_MS * 3);
    let joined = loop {
        let r = c.call("joinRoom", json!({"user": "c", "room": "R"})).await;
        if r.get("result").is_some() {
            break r;
        }
        let (code, message) = common::error_of(&r);
        assert_eq!(code, 204, "{message}");
        assert!(message.contains("Cannot place the room"), "{message}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "R never placed again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(names(&joined).is_empty(), "a new room: {joined}");
    let mut d = n1.client().await;
    assert_eq!(names(&d.join("R", "d").await), ["c"]);
}

#[tokio::test]
async fn an_owner_that_hangs_without_closing_tcp_is_noticed_by_the_relay_heartbeat() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let (n3, n3_addr) = node_process(&redis, "n3", "127.0.0.3").await;
    let mut b = common::Client::connect(&format!("ws://{n3_addr}/room")).await;
    b.join("R", "b").await;
    let mut a = n1.client().await;
    assert_eq!(names(&a.join("R", "a").await), ["b"]);

    // SIGSTOP: the process keeps its sockets open but answers nothing, like a vanished host.
    let pid = n3.id().expect("running").to_string();
    let stopped = tokio::time::Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -STOP {pid}");
    let ev = a.notification("roomClosed").await;
    assert_eq!(ev["params"], json!({"room": "R"}));
    let within = stopped.elapsed();
    assert!(
        within < std::time::Duration::from_millis(TTL_MS * 3 / 2),
        "heartbeat noticed the hung owner in {within:?} (TTL {TTL_MS} ms)"
    );
    drop(n3); // SIGKILL (kill_on_drop) ends the stopped process too.
}

#[tokio::test]
async fn a_client_reconnecting_through_another_node_gets_its_session_back() {
    let redis = RedisServer::start().await;
    let grace = NodeOptions {
        reconnection_grace_ms: Some(10_000),
        ..NodeOptions::default()
    };
    let n1 = start_node(&redis.url(), "n1", "127.0.0.1", TTL_MS, grace).await;
    let n2 = start_node(&redis.url(), "n2", "127.0.0.2", TTL_MS, grace).await;
    registered(&redis, "n1").await;
    registered(&redis, "n2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;

    // a joins directly on the owner n2, then its socket drops and it reconnects through n1.
    let mut a = n2.client().await;
    let sid = a.join("R", "a").await["result"]["sessionId"].clone();
    assert_eq!(
        b.notification("participantJoined").await["params"],
        json!({"id": "a"})
    );
    session_published(&redis, &sid).await;
    a.drop_connection().await;
    let mut a = n1.client().await;
    let r = a.call("connect", json!({"sessionId": sid})).await;
    assert_eq!(r["result"]["sessionId"], sid, "{r}");
    let sent = a
        .call(
            "sendMessage",
            json!({"message": "back", "userMessage": "a", "roomMessage": "R"}),
        )
        .await;
    assert!(sent.get("result").is_some(), "{sent}");
    let msg = b.notification("sendMessage").await;
    assert_eq!(msg["params"]["message"], "back");

    // Relayed through n1 from the start, then reconnecting through n1 again: same session.
    let mut c = n1.client().await;
    let sid = c.join("R", "c").await["result"]["sessionId"].clone();
    assert_eq!(
        b.notification("participantJoined").await["params"],
        json!({"id": "c"})
    );
    session_published(&redis, &sid).await;
    c.drop_connection().await;
    let mut c = n1.client().await;
    let r = c.call("connect", json!({"sessionId": sid})).await;
    assert_eq!(r["result"]["sessionId"], sid, "{r}");
    let sent = c
        .call(
            "sendMessage",
            json!({"message": "c too", "userMessage": "c", "roomMessage": "R"}),
        )
        .await;
    assert!(sent.get("result").is_some(), "{sent}");
    assert_eq!(
        b.notification("sendMessage").await["params"]["message"],
        "c too"
    );
    b.room_barrier().await;
    assert!(
        !b.take_pending()
            .iter()
            .any(|m| m["method"] == "participantLeft"),
        "nobody left: both reconnected within the grace period"
    );

    // An unknown session is refused as by a single server.
    let mut x = n1.client().await;
    let r = x
        .call("connect", json!({"sessionId": "nosuchsession"}))
        .await;
    assert_eq!(common::error_of(&r).1, "reconnection error");
}

#[tokio::test]
async fn thirty_clients_on_three_nodes_in_five_rooms_each_learn_of_every_other_once() {
    let redis = RedisServer::start().await;
    let nodes = [
        node(&redis, "n1", "127.0.0.1").await,
        node(&redis, "n2", "127.0.0.2").await,
        node(&redis, "n3", "127.0.0.3").await,
    ];
    let mut clients = Vec::new();
    for k in 0..30 {
        let room = format!("room{}", k % 5);
        let user = format!("u{k}");
        let mut c = nodes[k % 3].client().await;
        let joined = c.join(&room, &user).await;
        clients.push((room, user, c, names(&joined)));
    }
    for (room, user, c, listed) in &mut clients {
        c.room_barrier().await;
        let mut learnt = listed.clone();
        learnt.extend(
            c.take_pending()
                .into_iter()
                .filter(|m| m["method"] == "participantJoined")
                .map(|m| m["params"]["id"].as_str().expect("id").to_owned()),
        );
        learnt.sort();
        let mut expected: Vec<String> = (0..30)
            .filter(|k| format!("room{}", k % 5) == *room && format!("u{k}") != *user)
            .map(|k| format!("u{k}"))
            .collect();
        expected.sort();
        assert_eq!(
            learnt, expected,
            "{user} in {room}: every other participant exactly once"
        );
    }
    let all = json!(["room0", "room1", "room2", "room3", "room4"]);
    for server in &nodes {
        eventually("every node lists the five rooms", || async {
            let (status, rooms) = server.get("/getAllRooms").await;
            (status == 200 && rooms == all).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_draining_node_keeps_its_rooms_and_sends_new_ones_to_a_serving_node() {
    let redis = RedisServer::start().await;
    let config = roomd::Config {
        redis_url: Some(redis.url()),
        cluster_secret: Some("test-secret".into()),
        cluster_node_id: Some("n1".into()),
        cluster_claim_ttl_ms: TTL_MS,
        drain_timeout_secs: 60,
        ..Default::default()
    };
    let n1 = start_server_with(config).await;
    registered(&redis, "n1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;
    let mut keep = n1.client().await;
    assert!(names(&keep.join("kept", "k").await).is_empty());
    let n1_addr = n1.addr;
    drop(n1); // The stop signal: n1 drains (its room keeps it alive).
    eventually("n1 is draining", || async {
        (common::http_request(n1_addr, "GET", "/readyz", &[]).await.0 == 503).then_some(())
    })
    .await;

    // A new room asked of n1 is placed on n2 (relayed), not refused.
    let mut a = common::Client::connect(&format!("ws://{n1_addr}/room")).await;
    assert!(names(&a.join("fresh", "a").await).is_empty());
    let mut b = n2.client().await;
    assert_eq!(
        names(&b.join("fresh", "b").await),
        ["a"],
        "fresh lives on n2"
    );
    // The draining node's own room still takes joins.
    let mut k2 = common::Client::connect(&format!("ws://{n1_addr}/room")).await;
    assert_eq!(names(&k2.join("kept", "k2").await), ["k"]);
}

#[tokio::test]
async fn admin_actions_on_any_node_reach_the_room_owner() {
    let redis = RedisServer::start().await;
    let n1 = admin_node(&redis, "n1", "127.0.0.1").await;
    let n2 = admin_node(&redis, "n2", "127.0.0.2").await;
    registered(&redis, "n1").await;
    registered(&redis, "n2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;
    let mut a = n1.client().await;
    a.join("R", "a").await;
    b.notification("participantJoined").await;

    // Evict b (a direct participant of n2) through n1's admin API.
    assert_eq!(
        n1.admin_post("/admin/rooms/R/participants/b/evict", "tok")
            .await,
        200
    );
    b.notification("participantEvicted").await;
    let ev = a.notification("participantLeft").await;
    assert_eq!(ev["params"], json!({"name": "b"}));
    // A wrong token is refused by the owner as it would be directly.
    assert_eq!(n1.admin_post("/admin/rooms/R/close", "nope").await, 401);
    // Close R through n1: its relayed participant a hears roomClosed from the owner.
    assert_eq!(n1.admin_post("/close?room=R", "tok").await, 200);
    let ev = a.notification("roomClosed").await;
    assert_eq!(ev["params"], json!({"room": "R"}));
    assert_eq!(n1.admin_post("/admin/rooms/nosuch/close", "tok").await, 404);
}

#[tokio::test]
async fn the_relay_endpoint_needs_the_cluster_secret_and_cluster_mode() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let url = format!("ws://{}/cluster/relay", n1.addr);
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    let single = common::start_server().await;
    let url = format!("ws://{}/cluster/relay", single.addr);
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404),
        "{refused:?}"
    );
    // Cluster mode with an empty secret does not start.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let config = roomd::Config {
        redis_url: Some(redis.url()),
        cluster_secret: Some(String::new()),
        rtc_udp_port: 0,
        ..Default::default()
    };
    let err = roomd::serve(config, listener, std::future::pending())
        .await
        .expect_err("an empty cluster secret is refused");
    assert!(err.to_string().contains("cluster-secret"), "{err}");
}

/// A join that waits on the directory does not hold up the socket: a `ping` sent after it is
/// answered at once, before the join; a room request sent after the ping still waits for the
/// join, in order. The wait here is the quarantine of new claims after Redis lost its data
/// (`claims.rs`), set by the test to a known length.
#[tokio::test]
async fn a_ping_is_answered_while_a_join_waits_on_the_directory() {
    const QUARANTINE_MS: u64 = 2500;
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let mut conn = ::redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("the test's redis-server accepts connections");
    // n1's first registration marks the Redis as booted; from then on only the test sets the
    // quarantine.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let booted: bool = ::redis::cmd("EXISTS")
            .arg("roomd:boot")
            .query(&mut conn)
            .expect("redis-server answers");
        if booted {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _: () = ::redis::cmd("SET")
        .arg("roomd:quarantine")
        .arg("1")
        .arg("PX")
        .arg(QUARANTINE_MS)
        .query(&mut conn)
        .expect("redis-server answers");

    let mut a = n1.client().await;
    let sent = tokio::time::Instant::now();
    let join = a.send("joinRoom", json!({"user": "a", "room": "R"})).await;
    let ping = a.send("ping", json!({"interval": 3000})).await;
    let message = a
        .send(
            "sendMessage",
            json!({"message": "m", "userMessage": "a", "roomMessage": "R"}),
        )
        .await;
    let first = a.next_message().await;
    let ponged = sent.elapsed();
    assert_eq!(
        first["id"],
        json!(ping),
        "the ping is answered first: {first}"
    );
    assert_eq!(first["result"]["value"], "pong", "{first}");
    let joined = a.next_message().await;
    let waited = sent.elapsed();
    assert_eq!(joined["id"], json!(join), "{joined}");
    assert!(joined.get("result").is_some(), "{joined}");
    let answered = a.response(message).await;
    assert!(
        answered.get("result").is_some(),
        "sent after the join: {answered}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(QUARANTINE_MS / 2),
        "the join waited on the directory ({waited:?})"
    );
    assert!(
        ponged * 4 < waited,
        "pong after {ponged:?}, join after {waited:?}"
    );
}

/// A relayed client whose room its owner closed, and that joins again on the same socket, is
/// placed afresh: into a room of its own node (the former owner would refuse it), then, after
/// that room closed too, into a room of the other node again; it keeps its session id.
#[tokio::test]
async fn a_relayed_client_joining_again_after_room_closed_is_placed_afresh() {
    let redis = RedisServer::start().await;
    let n1 = admin_node(&redis, "n1", "127.0.0.1").await;
    let n2 = admin_node(&redis, "n2", "127.0.0.2").await;
    registered(&redis, "n1").await;
    registered(&redis, "n2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;
    let mut c = n1.client().await;
    c.join("S", "c").await;
    let mut d = n2.client().await;
    d.join("T", "d").await;

    // a joins R through n1: relayed to n2. R is closed there.
    let mut a = n1.client().await;
    let first = a.join("R", "a").await;
    let sid = first["result"]["sessionId"].clone();
    assert_eq!(names(&first), ["b"]);
    assert_eq!(n2.admin_post("/admin/rooms/R/close", "tok").await, 200);
    assert_eq!(
        a.notification("roomClosed").await["params"],
        json!({"room": "R"})
    );

    // S lives on n1: joined there, not over the link to n2.
    let joined = a.join("S", "a").await;
    assert_eq!(names(&joined), ["c"], "{joined}");
    assert_eq!(
        joined["result"]["sessionId"], sid,
        "the client keeps its session id"
    );
    assert_eq!(
        c.notification("participantJoined").await["params"],
        json!({"id": "a"})
    );
    let pong = a.call("ping", json!({"interval": 3000})).await;
    assert_eq!(pong["result"]["value"], "pong");

    // S closes; T lives on n2: relayed there afresh.
    assert_eq!(n1.admin_post("/admin/rooms/S/close", "tok").await, 200);
    a.notification("roomClosed").await;
    let joined = a.join("T", "a").await;
    assert_eq!(names(&joined), ["d"], "{joined}");
    assert_eq!(joined["result"]["sessionId"], sid);
    assert_eq!(
        d.notification("participantJoined").await["params"],
        json!({"id": "a"})
    );
    let sent = a
        .call(
            "sendMessage",
            json!({"message": "hi", "userMessage": "a", "roomMessage": "T"}),
        )
        .await;
    assert!(sent.get("result").is_some(), "{sent}");
    assert_eq!(
        d.notification("sendMessage").await["params"]["message"],
        "hi"
    );
}

/// `/metrics` of a cluster node counts its owned rooms, relay links both ways, relayed frames
/// and placements; a single server has no cluster series.
#[tokio::test]
async fn cluster_metrics_count_rooms_links_frames_and_placements() {
    let redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;
    let mut a = n1.client().await;
    a.join("R", "a").await;
    let sent = a
        .call(
            "sendMessage",
            json!({"message": "m", "userMessage": "a", "roomMessage": "R"}),
        )
        .await;
    assert!(sent.get("result").is_some(), "{sent}");
    a.notification("sendMessage").await; // The owner's frames to a are all through now.
    a.ping().await;

    let m1 = common::http_get_text(n1.addr, "/metrics").await;
    let m2 = common::http_get_text(n2.addr, "/metrics").await;
    let at = |m: &str, s: &str| common::metric(m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(
        at(&m1, "roomd_cluster_placements_total{result=\"relayed\"}"),
        1.0
    );
    assert_eq!(
        at(&m1, "roomd_cluster_placements_total{result=\"local\"}"),
        0.0
    );
    assert_eq!(at(&m1, "roomd_cluster_relay_links{direction=\"out\"}"), 1.0);
    assert_eq!(at(&m1, "roomd_cluster_relay_links{direction=\"in\"}"), 0.0);
    assert_eq!(at(&m1, "roomd_cluster_rooms_owned"), 0.0);
    // The join and sendMessage went to n2 and their answers came back (the ping did not).
    assert_eq!(
        at(
            &m1,
            "roomd_cluster_relay_frames_total{direction=\"to_owner\"}"
        ),
        2.0
    );
    assert_eq!(
        at(
            &m1,
            "roomd_cluster_relay_frames_total{direction=\"to_client\"}"
        ),
        3.0
    );
    assert_eq!(
        at(&m2, "roomd_cluster_placements_total{result=\"local\"}"),
        1.0
    );
    assert_eq!(at(&m2, "roomd_cluster_relay_links{direction=\"in\"}"), 1.0);
    assert_eq!(at(&m2, "roomd_cluster_rooms_owned"), 1.0);
    for m in [&m1, &m2] {
        assert_eq!(at(m, "roomd_cluster_redis_errors_total"), 0.0);
        assert_eq!(at(m, "roomd_cluster_claim_renew_failures_total"), 0.0);
        assert_eq!(
            at(m, "roomd_cluster_rooms_stopped_total{reason=\"deadline\"}"),
            0.0
        );
        assert_eq!(at(m, "roomd_cluster_relay_links_lost_total"), 0.0);
    }

    // leaveRoom ends the link on both sides.
    let left = a.call("leaveRoom", json!({})).await;
    assert!(left.get("result").is_some(), "{left}");
    for (server, series) in [
        (&n1, "roomd_cluster_relay_links{direction=\"out\"}"),
        (&n2, "roomd_cluster_relay_links{direction=\"in\"}"),
    ] {
        eventually("the link is closed", || async {
            let m = common::http_get_text(server.addr, "/metrics").await;
            (common::metric(&m, series) == Some(0.0)).then_some(())
        })
        .await;
    }

    let single = common::start_server().await;
    let m = common::http_get_text(single.addr, "/metrics").await;
    assert!(!m.contains("roomd_cluster_"), "{m}");
}
