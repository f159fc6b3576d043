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
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "join → media never recorded:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
