//! Room semantics over a real WebSocket (docs/protocol.md §3, §5, §7; checklist 11–20, 27, 32–34,
//! 38, 43–52, 64, 66–68, 71): who is told what, in which order, and the REST calls.

mod common;

use common::{error_of, start_server, start_server_with, Client};
use serde_json::{json, Value};

/// Checklist 11–14: the first joiner gets `value:[]`; the second lists the first without
/// streams; the first is told participantJoined; the joiner is told nothing about itself.
#[tokio::test]
async fn join_results_and_participant_joined() {
    let server = start_server().await;
    let mut a = server.client().await;
    let r = a.join("room1", "alice").await;
    assert_eq!(r["result"]["value"], json!([]));
    let mut b = server.client().await;
    let r = b.join("room1", "bob").await;
    assert_eq!(r["result"]["value"], json!([{"id":"alice"}]));
    let n = a.notification("participantJoined").await;
    assert_eq!(
        n,
        json!({"method":"participantJoined","params":{"id":"bob"},"jsonrpc":"2.0"})
    );
    b.room_barrier().await;
    assert!(
        b.take_pending().is_empty(),
        "the joiner gets no event about itself"
    );
}

/// Checklist 15–17: duplicate names are 104; the same name joins another room; an empty name
/// is 999 and creates no room.
#[tokio::test]
async fn join_errors_and_rooms_listing() {
    let server = start_server().await;
    let mut a = server.client().await;
    a.join("r1", "bob").await;
    let mut b = server.client().await;
    let r = b.call("joinRoom", json!({"user":"bob","room":"r1"})).await;
    assert_eq!(
        error_of(&r),
        (104, "User 'bob' already exists in room 'r1'".to_owned())
    );
    assert!(
        r["error"]["sessionId"].is_string(),
        "room errors carry sessionId"
    );
    b.join("r2", "bob").await;
    let mut c = server.client().await;
    let r = c.call("joinRoom", json!({"user":"","room":"r3"})).await;
    assert_eq!(
        error_of(&r),
        (999, "Empty user name is not allowed".to_owned())
    );
    let (status, rooms) = server.get("/getAllRooms").await;
    assert_eq!(status, 200);
    let mut rooms: Vec<String> = serde_json::from_value(rooms).expect("array of names");
    rooms.sort();
    assert_eq!(rooms, vec!["r1", "r2"]);
}

/// Checklist 20, 43, 52: room methods before joinRoom answer 102; leaveRoom without a room
/// answers 102 and keeps the connection open.
#[tokio::test]
async fn requests_before_join_answer_102_and_connection_stays_open() {
    let server = start_server().await;
    let mut c = server.client().await;
    for (method, params) in [
        ("publishVideo", json!({"sdpOffer":"v=0","doLoopback":false})),
        ("unpublishVideo", json!({})),
        (
            "receiveVideoFrom",
            json!({"sender":"x_webcam","sdpOffer":"v=0"}),
        ),
        ("unsubscribeFromVideo", json!({"sender":"x_webcam"})),
        (
            "onIceCandidate",
            json!({"endpointName":"x","candidate":"c","sdpMid":"0","sdpMLineIndex":0}),
        ),
        (
            "sendMessage",
            json!({"userMessage":"x","roomMessage":"r","message":"m"}),
        ),
        ("leaveRoom", json!({})),
    ] {
        let r = c.call(method, params).await;
        let (code, message) = error_of(&r);
        assert_eq!(code, 102, "{method}");
        let sid = r["error"]["sessionId"]
            .as_str()
            .expect("sessionId in room error");
        assert_eq!(message, format!("No participant with id '{sid}' was found"));
    }
    assert_eq!(c.ping().await["result"]["value"], "pong");
}

/// Checklist 27, 32, 33, 34 over the wire.
#[tokio::test]
async fn publish_and_subscribe_errors_without_media() {
    let server = start_server().await;
    let (mut a, _b) = server.pair("r", "alice", "bob").await;
    let cases = [
        (
            "unpublishVideo",
            json!({}),
            105,
            "Participant 'alice' is not streaming media",
        ),
        (
            "receiveVideoFrom",
            json!({"sender":"zed_webcam","sdpOffer":"v=0"}),
            102,
            "User 'zed not found in room 'r'",
        ),
        (
            "receiveVideoFrom",
            json!({"sender":"bob_webcam","sdpOffer":"v=0"}),
            105,
            "User 'bob not streaming media in room 'r'",
        ),
        (
            "receiveVideoFrom",
            json!({"sender":"alice_webcam","sdpOffer":"v=0"}),
            105,
            "User 'alice not streaming media in room 'r'",
        ),
    ];
    for (method, params, code, message) in cases {
        let r = a.call(method, params).await;
        assert_eq!(error_of(&r), (code, message.to_owned()), "{method}");
    }
}

/// Checklist 38: unsubscribe from a stranger is 102 without quotes; from a member that was
/// never subscribed it succeeds with {sessionId} only.
#[tokio::test]
async fn unsubscribe_errors_and_success() {
    let server = start_server().await;
    let (mut a, _b) = server.pair("r", "alice", "bob").await;
    let r = a
        .call("unsubscribeFromVideo", json!({"sender":"zed_webcam"}))
        .await;
    assert_eq!(
        error_of(&r),
        (102, "User zed not found in room r".to_owned())
    );
    let r = a
        .call("unsubscribeFromVideo", json!({"sender":"bob_webcam"}))
        .await;
    let result = r["result"].as_object().expect("object result");
    assert_eq!(result.keys().collect::<Vec<_>>(), vec!["sessionId"]);
}

/// Checklist 40–42 (signaling part): onIceCandidate with a string index, an unknown endpoint
/// name and the empty end-of-candidates marker all answer success.
#[tokio::test]
async fn ice_candidates_are_accepted_in_every_client_shape() {
    let server = start_server().await;
    let mut a = server.client().await;
    a.join("r", "alice").await;
    for params in [
        json!({"endpointName":"alice","candidate":"candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":"0"}),
        json!({"endpointName":"nobody","candidate":"candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}),
        json!({"endpointName":"alice","candidate":"","sdpMid":"0","sdpMLineIndex":0}),
        json!({"endpointName":"alice","candidate":"candidate:2 1 udp 1 abc.local 5000 typ host","sdpMid":null,"sdpMLineIndex":0}),
    ] {
        let r = a.call("onIceCandidate", params.clone()).await;
        assert!(r["result"]["sessionId"].is_string(), "{params} -> {r}");
    }
}

/// Checklist 44–46: sendMessage answers first, then everyone including the sender gets the
/// event; mismatched user/room are refused.
#[tokio::test]
async fn send_message_reaches_everyone_including_sender() {
    let server = start_server().await;
    let (mut a, mut b) = server.pair("room1", "alice", "bob").await;
    let id = a
        .send(
            "sendMessage",
            json!({"message":"hello","userMessage":"alice","roomMessage":"room1"}),
        )
        .await;
    let first = a.next_message().await;
    assert_eq!(
        first["id"], id,
        "the response comes before the echo: {first}"
    );
    let expected = json!({"method":"sendMessage","params":{"room":"room1","user":"alice","message":"hello"},"jsonrpc":"2.0"});
    assert_eq!(a.notification("sendMessage").await, expected);
    assert_eq!(b.notification("sendMessage").await, expected);
    let r = a
        .call(
            "sendMessage",
            json!({"message":"m","userMessage":"bob","roomMessage":"room1"}),
        )
        .await;
    assert_eq!(
        error_of(&r),
        (
            102,
            "Provided username 'bob' differs from the participant's name".to_owned()
        )
    );
    let r = a
        .call(
            "sendMessage",
            json!({"message":"m","userMessage":"alice","roomMessage":"x"}),
        )
        .await;
    assert_eq!(
        error_of(&r),
        (
            202,
            "Provided room name 'x' differs from the participant's room".to_owned()
        )
    );
}

/// Checklist 47: customRequest is -1 "Unsupported method", in a room or not.
#[tokio::test]
async fn custom_request_is_unsupported() {
    let server = start_server().await;
    let mut a = server.client().await;
    let r = a.call("customRequest", json!({"hat":true})).await;
    assert_eq!(
        error_of(&r),
        (
            -1,
            "java.lang.RuntimeException:Unsupported method".to_owned()
        )
    );
    a.join("r", "alice").await;
    let r = a.call("customRequest", json!({"marker":1})).await;
    assert_eq!(error_of(&r).0, -1);
}

/// Checklist 48–50: leaveRoom sends participantLeft to the others before the leaver's
/// response, then the server closes the leaver's socket with 1000; the last leaver removes
/// the room without roomClosed; the same name rejoins at once with an empty room.
#[tokio::test]
async fn leave_order_close_room_removal_and_quick_reentry() {
    let server = start_server().await;
    let (mut a, mut b) = server.pair("room1", "alice", "bob").await;
    let r = a.call("leaveRoom", json!({})).await;
    assert_eq!(r["result"].as_object().map(|o| o.len()), Some(1), "{r}");
    let frame = a.closed().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(
        b.notification("participantLeft").await["params"],
        json!({"name":"alice"})
    );
    let r = b.call("leaveRoom", json!({})).await;
    assert!(r.get("result").is_some());
    b.closed().await;
    assert_eq!(server.get("/getAllRooms").await.1, json!([]));
    let mut b2 = server.client().await;
    let r = b2.join("room1", "bob").await;
    assert_eq!(r["result"]["value"], json!([]));
    for m in a.take_pending().iter().chain(b.take_pending().iter()) {
        assert_ne!(
            m["method"], "roomClosed",
            "no roomClosed when a room empties"
        );
    }
}

/// OneUserQuickReentry: five leave/rejoin cycles with the same name.
#[tokio::test]
async fn quick_reentry_five_times() {
    let server = start_server().await;
    for _ in 0..5 {
        let mut c = server.client().await;
        let r = c.join("room", "browser0").await;
        assert_eq!(r["result"]["value"], json!([]));
        c.call("leaveRoom", json!({})).await;
        c.closed().await;
    }
}

/// Checklist 64: ten clients joining one room in parallel each learn of the nine others
/// exactly once, through `value` or participantJoined.
#[tokio::test]
async fn ten_parallel_joiners_learn_of_each_other_exactly_once() {
    let server = start_server().await;
    let url = server.ws_url();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let me = format!("user{i}");
            let r = c.join("crowd", &me).await;
            let mut known: Vec<String> = r["result"]["value"]
                .as_array()
                .expect("value array")
                .iter()
                .map(|p| p["id"].as_str().expect("peer id").to_owned())
                .collect();
            while known.len() < 9 {
                let n = c.notification("participantJoined").await;
                known.push(n["params"]["id"].as_str().expect("id").to_owned());
            }
            // Everybody has joined by now; a barrier flushes anything still in flight.
            c.room_barrier().await;
            for m in c.take_pending() {
                assert_ne!(m["method"], "participantJoined", "duplicate: {m}");
            }
            (me, known, c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        let (me, mut known, c) = t.await.expect("joiner task");
        known.sort();
        let mut expected: Vec<String> = (0..10)
            .map(|i| format!("user{i}"))
            .filter(|n| *n != me)
            .collect();
        expected.sort();
        assert_eq!(known, expected, "{me}");
        clients.push(c);
    }
}

/// Checklist 66–68: the REST calls of the room server and the demo's client config.
#[tokio::test]
async fn rest_endpoints_answer_kurento_defaults() {
    let server = start_server().await;
    assert_eq!(server.get("/getAllRooms").await, (200, json!([])));
    assert_eq!(
        server.get("/getUpdateSpeakerInterval").await,
        (200, json!(1800))
    );
    assert_eq!(server.get("/getThresholdSpeaker").await, (200, json!(-50)));
    let (status, cfg) = server.get("/getClientConfig").await;
    assert_eq!(status, 200);
    assert!(cfg["loopbackRemote"].is_boolean());
    assert!(cfg["loopbackAndLocal"].is_boolean());
    assert!(cfg["filterRequestParam"].is_string());
    let mut c = server.client().await;
    c.join("listed", "u").await;
    assert_eq!(server.get("/getAllRooms").await.1, json!(["listed"]));
}

/// Checklist 71: an admin close sends roomClosed to everyone and no participantLeft; the
/// sockets stay open; later room calls answer 102 and leaveRoom answers -1. (The close is an
/// authenticated POST: see tests/security.rs.)
#[tokio::test]
async fn admin_close_sends_room_closed_only() {
    let server = start_server_with(roomd::Config {
        admin_token: Some("s3cret".into()),
        ..roomd::Config::default()
    })
    .await;
    let (mut a, mut b) = server.pair("doomed", "alice", "bob").await;
    assert_eq!(server.admin_post("/close?room=nope", "s3cret").await, 404);
    assert_eq!(server.admin_post("/close", "s3cret").await, 400);
    assert_eq!(server.admin_post("/close?room=doomed", "s3cret").await, 200);
    for c in [&mut a, &mut b] {
        let n = c.notification("roomClosed").await;
        assert_eq!(n["params"], json!({"room":"doomed"}));
    }
    let r = a
        .call(
            "sendMessage",
            json!({"userMessage":"alice","roomMessage":"doomed","message":"m"}),
        )
        .await;
    assert_eq!(error_of(&r).0, 102);
    let r = b.call("leaveRoom", json!({})).await;
    assert_eq!(
        error_of(&r),
        (
            -1,
            "org.kurento.room.exception.RoomException:Room 'doomed' not found".to_owned()
        )
    );
    for m in a.take_pending().iter().chain(b.take_pending().iter()) {
        assert_ne!(m["method"], "participantLeft", "{m}");
    }
    assert_eq!(server.get("/getAllRooms").await.1, json!([]));
}

/// Health reports counts as JSON.
#[tokio::test]
async fn health_reports_rooms_and_participants() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.join("h", "u").await;
    let (status, body): (u16, Value) = server.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["participants"], 1);
}

/// `/metrics` exposes room gauges and media counters in Prometheus text format.
#[tokio::test]
async fn metrics_expose_rooms_and_media_counters() {
    let server = start_server().await;
    let mut c = server.client().await;
    c.join("m", "u").await;
    let text = common::http_get_text(server.addr, "/metrics").await;
    assert!(text.contains("# TYPE roomd_participants gauge"), "{text}");
    assert!(text.contains("\nroomd_participants 1\n"), "{text}");
    assert!(
        text.contains("roomd_rtp_dropped_total{reason=\"SubscriberQueueFull\"}"),
        "{text}"
    );
    for series in [
        "# TYPE roomd_udp_datagrams_sent_total counter",
        "# TYPE roomd_udp_gso_datagrams_total counter",
        "\nroomd_publisher_outages_total 0\n",
    ] {
        assert!(text.contains(series), "{series}: {text}");
    }
}
