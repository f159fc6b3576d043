//! kurento-jsonrpc transport habits over a real WebSocket (docs/protocol.md §1, checklist 1–10,
//! 55–63, 69, 70) and robustness against bad input.

mod common;

use std::time::{Duration, Instant};

use common::{error_of, start_server, start_server_with, WAIT};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Checklist 1: the upgrade succeeds with any Origin and no subprotocol.
#[tokio::test]
async fn upgrade_succeeds_with_any_origin() {
    let server = start_server().await;
    let mut req = server.ws_url().into_client_request().expect("valid ws url");
    req.headers_mut().insert(
        "Origin",
        "https://evil.example".parse().expect("valid header"),
    );
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("in time")
        .expect("upgrade accepted");
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","method":"ping","id":0}"#.into(),
    ))
    .await
    .expect("send");
}

/// Checklist 3 + 4: ping answers {"value":"pong"} with no sessionId, with or without params.
#[tokio::test]
async fn ping_answers_pong_without_session_id() {
    let server = start_server().await;
    let mut c = server.client().await;
    let id = c.send("ping", json!({"interval":3000})).await;
    assert_eq!(
        c.response(id).await,
        json!({"id":0,"result":{"value":"pong"},"jsonrpc":"2.0"})
    );
    c.send_raw(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#)
        .await;
    let r = c.response(1).await;
    assert_eq!(r["result"]["value"], "pong");
    assert!(r["result"].get("sessionId").is_none());
}

/// Checklist 5: a ping is answered at once even while room requests of the same session are
/// waiting their turn (each room request is dispatched only after the previous one has been
/// answered, so 100 of them take 100 round trips through the room task; the ping takes none).
#[tokio::test]
async fn ping_is_answered_out_of_band_while_room_requests_are_queued() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.join("r", "alice").await;
    let mut last = 0;
    for i in 0..100 {
        last = c
            .send(
                "sendMessage",
                json!({"userMessage":"alice","roomMessage":"r","message":format!("m{i}")}),
            )
            .await;
    }
    let ping = c.send("ping", json!({})).await;
    let mut replies = Vec::new();
    loop {
        let m = c.next_message().await;
        if m.get("method").is_none() {
            let id = m["id"].as_i64().expect("integer id");
            replies.push(id);
            if id == ping {
                break;
            }
        }
    }
    assert!(
        !replies.contains(&last),
        "the pong waited for the whole queue: {} replies before it",
        replies.len() - 1
    );
}

/// Checklist 63: responses come back in request order, even when a publishVideo (which waits
/// for the media engine) is followed by several onIceCandidate requests.
#[tokio::test]
async fn room_replies_keep_request_order_behind_a_publish() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.join("r", "alice").await;
    let mut expected = vec![
        c.send(
            "publishVideo",
            json!({"sdpOffer": common_offer(), "doLoopback": false}),
        )
        .await,
    ];
    for i in 0..5 {
        expected.push(
            c.send(
                "onIceCandidate",
                json!({"endpointName":"alice","candidate":format!("candidate:{i} 1 udp 1 127.0.0.1 9 typ host"),"sdpMid":"0","sdpMLineIndex":0}),
            )
            .await,
        );
    }
    let mut order = Vec::new();
    while order.len() < expected.len() {
        let m = c.next_message().await;
        if m.get("method").is_none() {
            order.push(m["id"].as_i64().expect("integer id"));
        }
    }
    assert_eq!(order, expected);
}

/// Checklist 6: without pings for 3 × the announced interval the server closes with 1000;
/// checklist 7 (shortened): a connection that never pinged is not closed by the watchdog.
#[tokio::test]
async fn watchdog_closes_silent_pinger_but_not_a_client_that_never_pinged() {
    let server = start_server().await;
    let mut quiet = server.client().await;
    quiet.join("r", "never-pings").await;
    let mut c = server.client().await;
    let started = Instant::now();
    c.call("ping", json!({"interval": 300})).await;
    let frame = c.closed().await.expect("a close frame");
    let elapsed = started.elapsed();
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(
        frame.reason.as_str(),
        "Close for not receive ping from client"
    );
    assert!(
        elapsed >= Duration::from_millis(850),
        "closed too early: {elapsed:?}"
    );
    // Far past its own 3 × 300 ms, the client that never pinged is still served.
    let r = quiet
        .call(
            "sendMessage",
            json!({"userMessage":"never-pings","roomMessage":"r","message":"hi"}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
}

/// Checklist 8 + 9: one connection's responses share one non-empty sessionId in Kurento's
/// format; two connections get different ones.
#[tokio::test]
async fn session_id_is_stable_per_connection_and_unique_across_connections() {
    let server = start_server().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let ra = a.join("r", "a").await;
    let sid = ra["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    assert!(!sid.is_empty() && sid.len() <= 26);
    assert!(sid
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c)));
    let r2 = a
        .call(
            "sendMessage",
            json!({"userMessage":"a","roomMessage":"r","message":"x"}),
        )
        .await;
    assert_eq!(r2["result"]["sessionId"], sid.as_str());
    let rb = b.join("r", "b").await;
    assert_ne!(rb["result"]["sessionId"], sid.as_str());
}

/// Checklist 2 + 10: every server message has "jsonrpc":"2.0"; notifications have neither
/// id nor sessionId.
#[tokio::test]
async fn every_message_has_jsonrpc_and_notifications_have_no_id_or_session_id() {
    let server = start_server().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut seen = vec![a.join("r", "a").await, b.join("r", "b").await];
    seen.push(a.notification("participantJoined").await);
    seen.push(
        b.call(
            "sendMessage",
            json!({"userMessage":"b","roomMessage":"r","message":"m"}),
        )
        .await,
    );
    seen.push(a.notification("sendMessage").await);
    seen.push(b.notification("sendMessage").await);
    seen.push(a.call("unpublishVideo", json!({})).await);
    for m in &seen {
        assert_eq!(m["jsonrpc"], "2.0", "{m}");
        if m.get("method").is_some() {
            assert!(
                m.get("id").is_none() && m["params"].get("sessionId").is_none(),
                "{m}"
            );
        }
    }
}

/// Checklist 58 + 59: malformed JSON, a batch and a client-sent response get no answer, and
/// a following ping on the same connection is answered.
#[tokio::test]
async fn malformed_frames_are_ignored_and_connection_keeps_working() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.send_raw("{this is not json").await;
    c.send_raw(r#"[{"jsonrpc":"2.0","method":"ping","id":50}]"#)
        .await;
    c.send_raw(r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"unknown"}}"#)
        .await;
    c.send_raw(r#"{"jsonrpc":"2.0","result":{},"id":7}"#).await;
    c.send_raw("42").await;
    c.send_raw(r#"{"jsonrpc":"2.0","method":"ping","id":"x"}"#)
        .await;
    c.send_binary(vec![0, 1, 2]).await;
    c.send_raw(r#"{"jsonrpc":"2.0","method":"ping","id":99}"#)
        .await;
    let first = c.next_message().await;
    assert_eq!(
        first["id"], 99,
        "nothing may answer the ignored frames: {first}"
    );
    assert_eq!(first["result"]["value"], "pong");
}

/// Checklist 60 + 69: an unknown method answers -32601 with the request id; the connection
/// stays open.
#[tokio::test]
async fn unknown_method_answers_method_not_found() {
    let server = start_server().await;
    let mut c = server.client().await;
    let r = c.call("frobnicate", json!({})).await;
    assert_eq!(r["id"], 0);
    assert_eq!(error_of(&r), (-32601, "Method not found".to_owned()));
    assert_eq!(c.ping().await["result"]["value"], "pong");
}

/// Checklist 61: a room request without id is not executed (no participantJoined).
#[tokio::test]
async fn request_without_id_is_not_executed() {
    let server = start_server().await;
    let mut a = server.client().await;
    a.join("r", "a").await;
    let mut b = server.client().await;
    b.send_raw(r#"{"jsonrpc":"2.0","method":"joinRoom","params":{"user":"ghost","room":"r"}}"#)
        .await;
    // If the join had run, "ghost" would be taken now and a would have been told.
    let r = b.call("joinRoom", json!({"user":"ghost","room":"r"})).await;
    assert!(r.get("result").is_some(), "{r}");
    a.room_barrier().await;
    let joined: Vec<Value> = a
        .take_pending()
        .into_iter()
        .filter(|m| m["method"] == "participantJoined")
        .collect();
    assert_eq!(joined.len(), 1, "exactly the one real join: {joined:?}");
}

/// Checklist 62 + 19: params carrying sessionId (and extra keys) are processed normally and
/// the key does not leak into events.
#[tokio::test]
async fn params_session_id_and_extra_keys_are_accepted() {
    let server = start_server().await;
    let mut a = server.client().await;
    a.join("r", "a").await;
    let mut b = server.client().await;
    let r = b
        .call(
            "joinRoom",
            json!({"user":"b","room":"r","sessionId":"stale","token":"t","dataChannels":true}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let n = a.notification("participantJoined").await;
    assert_eq!(n["params"], json!({"id":"b"}));
}

/// Checklist 69: every error response has an integer code, a string message and the id.
#[tokio::test]
async fn error_responses_have_code_message_and_request_id() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.send_raw(r#"{"jsonrpc":"2.0","method":"publishVideo","params":{"sdpOffer":"x","doLoopback":false},"id":"17"}"#)
        .await;
    let r = c.response(17).await;
    let (code, message) = error_of(&r);
    assert_eq!(code, 102);
    assert!(message.starts_with("No participant with id '"));
    let r = c.call("joinRoom", json!({"user":"u"})).await;
    assert_eq!(
        error_of(&r),
        (
            -1,
            "java.lang.RuntimeException:Request element 'room' is missing".to_owned()
        )
    );
    assert!(r["error"].get("sessionId").is_none());
}

/// Wrong parameter types and non-object params get clear errors; nothing panics.
#[tokio::test]
async fn wrong_types_in_params_get_errors_and_connection_survives() {
    let server = start_server().await;
    let mut c = server.client().await;
    let r = c.call("joinRoom", json!({"user":{"x":1},"room":"r"})).await;
    assert_eq!(error_of(&r).0, -1);
    let r = c.call("joinRoom", json!([1, 2])).await;
    assert_eq!(error_of(&r).0, -32602);
    let r = c.call("joinRoom", json!({"user":["a"],"room":7})).await;
    assert_eq!(error_of(&r).0, -1);
    let r = c
        .call(
            "onIceCandidate",
            json!({"endpointName":"a","candidate":"c","sdpMid":"0","sdpMLineIndex":{"a":1}}),
        )
        .await;
    assert_eq!(error_of(&r).0, -1);
    assert_eq!(c.ping().await["result"]["value"], "pong");
}

/// Checklist 70: a 900 kB publishVideo frame is accepted (answered, connection kept).
#[tokio::test]
async fn large_publish_frame_is_accepted() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.join("r", "big").await;
    let offer = format!("{}a=x-pad:{}\r\n", common_offer(), "p".repeat(900_000));
    let r = c
        .call(
            "publishVideo",
            json!({"sdpOffer": offer, "doLoopback": false}),
        )
        .await;
    assert!(r.get("result").is_some() || r.get("error").is_some(), "{r}");
    assert_eq!(c.ping().await["result"]["value"], "pong");
}

/// A 100 MB frame is refused by the size cap: that connection is closed, the server keeps
/// serving everyone else.
#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let server = start_server().await;
    let mut other = server.client().await;
    other.join("r", "other").await;
    let mut c = server.client().await;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"ping","params":{{"pad":"{}"}},"id":1}}"#,
        "x".repeat(100 * 1024 * 1024)
    );
    // The server may cut the connection while the frame is still being written.
    let _ = c.try_send_raw(huge).await;
    c.ended().await;
    assert_eq!(other.ping().await["result"]["value"], "pong");
    let mut fresh = server.client().await;
    assert_eq!(fresh.ping().await["result"]["value"], "pong");
}

/// Checklist 57: closeSession answers a plain "bye", closes the socket, and the others learn
/// of the departure at once (no grace period).
#[tokio::test]
async fn close_session_says_bye_closes_and_evicts_immediately() {
    let server = start_server().await;
    let (mut a, mut b) = server.pair("r", "a", "b").await;
    let id = b.send("closeSession", json!({})).await;
    assert_eq!(
        b.response(id).await,
        json!({"id":id,"result":"bye","jsonrpc":"2.0"})
    );
    b.closed().await;
    let started = Instant::now();
    let left = a.notification("participantLeft").await;
    assert_eq!(left["params"], json!({"name":"b"}));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no grace period for closeSession"
    );
}

/// Checklist 55: connect with the sessionId within the grace period resumes the session; the
/// others see no departure and the session keeps receiving events.
#[tokio::test]
async fn connect_within_grace_resumes_the_session() {
    let server = start_server().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    let sid = a.join("r", "a").await["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    b.join("r", "b").await;
    a.drop_connection().await;
    let mut a2 = server.client().await;
    let r = a2.call("connect", json!({"sessionId": sid})).await;
    assert_eq!(
        r["result"],
        json!({"value":"reconnection successful","sessionId":sid})
    );
    b.call(
        "sendMessage",
        json!({"userMessage":"b","roomMessage":"r","message":"still there?"}),
    )
    .await;
    let n = a2.notification("sendMessage").await;
    assert_eq!(n["params"]["message"], "still there?");
    // The resumed session is still the participant "a".
    let r = a2
        .call(
            "sendMessage",
            json!({"userMessage":"a","roomMessage":"r","message":"yes"}),
        )
        .await;
    assert_eq!(r["result"]["sessionId"], sid.as_str());
    b.room_barrier().await;
    assert!(
        !b.take_pending()
            .iter()
            .any(|m| m["method"] == "participantLeft"),
        "no participantLeft for a resumed session"
    );
}

/// `connect` from a second socket while the first is still open takes the session over: the
/// first socket is closed with 1000 and says why (not as if its queue had overflowed), and the
/// session goes on through the second.
#[tokio::test]
async fn a_takeover_closes_the_old_socket_with_its_reason() {
    let server = start_server().await;
    let mut a = server.client().await;
    let sid = a.join("r", "a").await["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let mut a2 = server.client().await;
    let r = a2.call("connect", json!({"sessionId": sid})).await;
    assert_eq!(r["result"]["value"], "reconnection successful");
    let close = a.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(
        close.reason.as_str(),
        "Session taken over by a new connection"
    );
    let r = a2
        .call(
            "sendMessage",
            json!({"userMessage":"a","roomMessage":"r","message":"moved"}),
        )
        .await;
    assert_eq!(r["result"]["sessionId"], sid.as_str());
}

/// Checklist 56: connect with an unknown id is 40007; without one it answers OK + sessionId.
#[tokio::test]
async fn connect_with_unknown_or_without_session_id() {
    let server = start_server().await;
    let mut c = server.client().await;
    let r = c.call("connect", json!({"sessionId":"nope"})).await;
    assert_eq!(error_of(&r), (40007, "reconnection error".to_owned()));
    let r = c.call("connect", json!({})).await;
    assert_eq!(r["result"]["value"], "OK");
    let sid = r["result"]["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let j = c.join("r", "c").await;
    assert_eq!(j["result"]["sessionId"], sid.as_str());
}

/// Checklist 53 + 54: after an abrupt drop the others get participantLeft after the grace
/// period (10 s by default, ±1 s), not before; meanwhile the name is taken (104).
#[tokio::test]
async fn dropped_participant_leaves_after_the_grace_period() {
    let server = start_server().await;
    let (a, mut b) = server.pair("r", "a", "b").await;
    let dropped = Instant::now();
    a.drop_connection().await;
    let mut a2 = server.client().await;
    let r = a2.call("joinRoom", json!({"user":"a","room":"r"})).await;
    assert_eq!(error_of(&r).0, 104);
    let left = b
        .notification_within("participantLeft", Duration::from_secs(13))
        .await;
    let elapsed = dropped.elapsed();
    assert_eq!(left["params"], json!({"name":"a"}));
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(12),
        "participantLeft after {elapsed:?}"
    );
    let r = a2.call("joinRoom", json!({"user":"a","room":"r"})).await;
    assert!(r.get("result").is_some(), "name free after the grace: {r}");
}

/// A shorter configured grace period is honoured.
#[tokio::test]
async fn reconnection_grace_is_configurable() {
    let config = roomd::Config {
        reconnection_grace_ms: 300,
        ..roomd::Config::default()
    };
    let server = start_server_with(config).await;
    let (a, mut b) = server.pair("r", "a", "b").await;
    let dropped = Instant::now();
    a.drop_connection().await;
    b.notification("participantLeft").await;
    assert!(dropped.elapsed() < Duration::from_secs(5));
}

fn common_offer() -> String {
    // A syntactically valid browser-like offer; whether media accepts it does not matter to
    // these transport tests (they accept an answer or an error).
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=ssrc:1111 cname:x",
        "",
    ]
    .join("\r\n")
}
