//! Proof in a real browser that a cluster's media goes to the room's owner: a redis-server and
//! three roomd node processes announcing media on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all of
//! 127/8 is loopback), then the `cluster-two-nodes` scenario of `tests/browser/run.mjs`: two
//! headless-Chromium pages on the demo pages of two different nodes (each page's /room
//! WebSocket on its own node) join one room, decode each other's video and audio, and every
//! peer connection of both pages has selected a candidate pair whose remote address is the
//! room owner's — the owner found by the scenario through each node's `GET /admin/rooms`, so the
//! page on the other node is relayed for signalling only.
//!
//! Prerequisites (installed by `bash tests/browser/setup.sh`, which `bash tests/run.sh` runs):
//! Debian's chromium and redis-server, tests/browser's npm packages.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::cluster::{self, NodeProcess};
use common::redis_server::RedisServer;
use serde_json::json;

/// Claims last this long (as in the other cluster tests).
const TTL_MS: u64 = 3000;
/// The harness run must end within this (Chromium start-up, two joins, media both ways; the
/// scenario aborts itself at 60 s).
const BOUND: Duration = Duration::from_secs(120);
const TOKEN: &str = "cluster-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_call_across_two_nodes_sends_media_to_the_room_owner() {
    let started = Instant::now();
    let redis = RedisServer::start().await;
    let mut nodes = Vec::new();
    for (id, ip) in [
        ("n1", "127.0.0.1"),
        ("n2", "127.0.0.2"),
        ("n3", "127.0.0.3"),
    ] {
        let node =
            NodeProcess::start(id, &redis.url(), ip, TTL_MS, &["--admin-token", TOKEN]).await;
        nodes.push(node);
    }
    let mut watch = cluster::redis(&redis.url()).await;
    cluster::wait_ready(&mut watch, &["n1", "n2", "n3"]).await;
    let listed: Vec<_> = nodes
        .iter()
        .map(|n| json!({"id": n.id, "url": n.url(), "media": n.media_ip}))
        .collect();
    let output = common::browser::run_harness(
        &[
            "--url",
            &nodes[0].url(),
            "--only",
            "cluster-two-nodes",
            "--cluster",
            &json!(listed).to_string(),
            "--admin-token",
            TOKEN,
        ],
        &[],
        BOUND,
    )
    .await;
    let _ = writeln!(
        std::io::stderr(),
        "cluster browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.contains("ok   cluster-two-nodes") && output.contains("1 passed, 0 failed"),
        "the cluster scenario reported no success; output:\n{output}"
    );
}
