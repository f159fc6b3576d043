//! `/metrics` over a real call: build info and process figures are exported, every answered
//! room request lands in its method's latency histogram, and a participant's first connected
//! media endpoint lands in the join → media histogram.

mod common;

use common::metric;
use common::peer::publish;
use common::start_server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_the_process_requests_and_join_to_media() {
    let server = start_server().await;
    let mut a = server.client().await;
    a.join("m", "alice").await;
    let r = a
        .call(
            "sendMessage",
            json!({"userMessage":"alice","roomMessage":"m","message":"x"}),
        )
        .await;
    assert!(r.get("result").is_some());
    let publication = publish(&mut a, "alice", false, false).await;
    publication.peer.connected().await;
    let text = common::http_get_text(server.addr, "/metrics").await;
    assert!(text.contains("roomd_build_info{version=\""), "{text}");
    assert!(metric(&text, "process_open_fds").is_some_and(|n| n > 0.0));
    assert!(metric(&text, "process_resident_memory_bytes").is_some_and(|n| n > 1e6));
    for method in ["joinRoom", "sendMessage", "publishVideo"] {
        let series = format!("roomd_request_duration_seconds_count{{method=\"{method}\"}}");
        assert_eq!(metric(&text, &series), Some(1.0), "{series} in\n{text}");
    }
    let series = "roomd_request_duration_seconds_count{method=\"leaveRoom\"}";
    assert_eq!(metric(&text, series), Some(0.0));
    // The server side may see its connection up a moment after the client: wait for it.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let text = common::http_get_text(server.addr, "/metrics").await;
        if metric(&text, "roomd_join_to_media_seconds_count{}") == Some(1.0) {
            let inf = "roomd_join_to_media_seconds_bucket{le=\"+Inf\"}";
            assert_eq!(metric(&text, inf), Some(1.0));
            shard_load_is_exported(&text);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "join → media never recorded:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// After a negotiation and a connection, shard 0 has worked: its busy time, its turns (every
/// turn in the `+Inf` bucket, the histogram's sum its busy time) and its longest turn are
/// there, and so is the kernel's drop count of its socket.
fn shard_load_is_exported(text: &str) {
    let busy = metric(text, "roomd_media_shard_busy_seconds_total{shard=\"0\"}");
    assert!(busy.is_some_and(|b| b > 0.0), "busy {busy:?} in\n{text}");
    let count = metric(text, "roomd_media_shard_turn_seconds_count{shard=\"0\"}");
    assert!(count.is_some_and(|c| c > 0.0), "turns {count:?} in\n{text}");
    let inf = "roomd_media_shard_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"}";
    assert_eq!(metric(text, inf), count);
    let sum = metric(text, "roomd_media_shard_turn_seconds_sum{shard=\"0\"}");
    assert_eq!(sum, busy);
    let longest = metric(text, "roomd_media_shard_longest_turn_seconds{shard=\"0\"}");
    assert!(
        longest.is_some_and(|l| l > 0.0 && Some(l) <= busy),
        "longest {longest:?}, busy {busy:?}"
    );
    assert!(
        metric(text, "roomd_udp_receive_drops_total").is_some(),
        "{text}"
    );
}
