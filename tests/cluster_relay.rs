//! Cluster mode end to end: two roomd servers sharing one `redis-server`, a room owned by one
//! node, a client of it connected to the other and relayed there (`src/cluster/relay.rs`).

mod common;

use common::peer;
use common::redis_server::RedisServer;
use common::{start_server_with, Server};
use serde_json::{json, Value};

/// A node of the test cluster announcing media on `media_ip` (all of 127/8 is loopback).
async fn node(redis: &RedisServer, id: &str, media_ip: &str) -> Server {
    let config = roomd::Config {
        redis_url: Some(redis.url()),
        cluster_secret: Some("test-secret".into()),
        cluster_node_id: Some(id.into()),
        cluster_claim_ttl_ms: 1500,
        reconnection_grace_ms: 1000,
        media_ip: media_ip.parse().expect("an IP"),
        ..Default::default()
    };
    start_server_with(config).await
}

/// The distinct addresses of the `a=candidate` lines of an SDP.
fn candidate_addresses(sdp: &str) -> Vec<String> {
    let mut addresses: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4).map(str::to_owned))
        .collect();
    addresses.dedup();
    addresses
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
