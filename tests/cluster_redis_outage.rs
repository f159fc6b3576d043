//! Cluster mode when Redis goes away, through whole servers: a short restart (empty) leaves
//! calls running; a long outage closes the rooms at their owners' deadlines (fail-stop, so
//! that no second owner can ever appear), refuses joins clearly, and everything works again
//! once Redis is back.

mod common;

use std::time::Duration;

use common::cluster::{start_node, NodeOptions};
use common::redis_server::RedisServer;
use common::Server;
use serde_json::json;

const TTL_MS: u64 = 3000;

async fn node(redis: &RedisServer, id: &str, media_ip: &str) -> Server {
    start_node(&redis.url(), id, media_ip, TTL_MS, NodeOptions::default()).await
}

#[tokio::test]
async fn a_redis_restart_during_a_call_leaves_the_call_running() {
    let mut redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let n2 = node(&redis, "n2", "127.0.0.2").await;
    let mut b = n2.client().await;
    b.join("R", "b").await;
    let mut a = n1.client().await;
    a.join("R", "a").await;
    b.notification("participantJoined").await;

    redis.restart().await;
    // Two TTLs: every owner deadline from before the restart has passed.
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2)).await;
    let sent = a
        .call(
            "sendMessage",
            json!({"message": "still here", "userMessage": "a", "roomMessage": "R"}),
        )
        .await;
    assert!(sent.get("result").is_some(), "{sent}");
    assert_eq!(
        b.notification("sendMessage").await["params"]["message"],
        "still here"
    );
    b.room_barrier().await;
    assert!(
        !b.take_pending().iter().any(|m| m["method"] == "roomClosed"),
        "the room survived the restart"
    );
    // The room is still n2's: a new client through n1 lands in it.
    let mut c = n1.client().await;
    let joined = c.join("R", "c").await;
    let names: Vec<&str> = joined["result"]["value"]
        .as_array()
        .expect("participants")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{joined}");
}

#[tokio::test]
async fn a_long_redis_outage_closes_rooms_by_their_deadline_and_joins_work_again_afterwards() {
    let mut redis = RedisServer::start().await;
    let n1 = node(&redis, "n1", "127.0.0.1").await;
    let mut a = n1.client().await;
    a.join("R", "a").await;

    let killed = tokio::time::Instant::now();
    redis.kill().await;
    let ev = a.notification("roomClosed").await;
    assert_eq!(ev["params"], json!({"room": "R"}));
    assert!(
        killed.elapsed() < Duration::from_millis(TTL_MS),
        "closed before its claim could expire ({:?})",
        killed.elapsed()
    );
    // Joins needing the directory are refused with a clear error meanwhile.
    let mut b = n1.client().await;
    let r = b.call("joinRoom", json!({"user": "b", "room": "S"})).await;
    let (code, message) = common::error_of(&r);
    assert_eq!(code, 204);
    assert!(
        message.starts_with("Cannot place the room: cluster directory unavailable"),
        "{message}"
    );
    // The node counts what happened.
    let m = common::http_get_text(n1.addr, "/metrics").await;
    let at = |series: &str| -> f64 {
        common::metric(&m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert_eq!(
        at("roomd_cluster_rooms_stopped_total{reason=\"deadline\"}"),
        1.0
    );
    assert_eq!(at("roomd_cluster_rooms_owned"), 0.0);
    assert!(at("roomd_cluster_claim_renew_failures_total") >= 1.0);
    assert!(at("roomd_cluster_redis_errors_total") >= 1.0);
    assert_eq!(
        at("roomd_cluster_placements_total{result=\"refused\"}"),
        1.0
    );

    redis.start_again().await;
    // The first join waits out the quarantine of an empty Redis inside the server.
    let r = b.call("joinRoom", json!({"user": "b", "room": "S"})).await;
    assert!(r.get("result").is_some(), "{r}");
}
