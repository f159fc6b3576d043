//! `GET /iceServers` over real HTTP: the STUN/TURN servers a page passes to
//! `new RTCPeerConnection(…)`, with TURN REST credentials made per request (username
//! `<expiry>:<user>`, password base64(HMAC-SHA1(secret, username))), static credentials as
//! configured, an empty list by default, and a start-up refusal of TURN without credentials.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw response head and body of `GET path` (headers matter here: `Cache-Control`).
async fn get_with_head(addr: std::net::SocketAddr, path: &str) -> (String, Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to server");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    (
        head.to_ascii_lowercase(),
        serde_json::from_str(body).expect("JSON body"),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// With `--turn-secret`, each response carries `<now + ttl>:<user>` and the HMAC-SHA1 of it
/// under the secret (checked here with ring's own verification, not roomd's code), STUN URLs
/// carry no credentials, and the response must not be cached.
#[tokio::test]
async fn turn_rest_credentials_are_fresh_and_verify_under_the_secret() {
    let ttl = 3_600;
    let server = common::start_server_with(roomd::Config {
        ice_servers: vec![
            "stun:stun.example.org:3478".into(),
            "turn:turn.example.org:3478?transport=udp".into(),
            "turns:turn.example.org:5349?transport=tcp".into(),
        ],
        turn_secret: Some("north-star-secret".into()),
        turn_username: Some("alice".into()),
        turn_ttl_secs: ttl,
        ..roomd::Config::default()
    })
    .await;
    let before = unix_now();
    let (head, body) = get_with_head(server.addr, "/iceServers").await;
    let after = unix_now();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");

    let servers = body["iceServers"].as_array().expect("iceServers array");
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example.org:3478"]}));
    let turn = &servers[1];
    assert_eq!(
        turn["urls"],
        json!([
            "turn:turn.example.org:3478?transport=udp",
            "turns:turn.example.org:5349?transport=tcp"
        ])
    );
    let username = turn["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<user>");
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().expect("numeric expiry");
    assert!(
        (before + ttl..=after + ttl).contains(&expiry),
        "expiry {expiry} not now + {ttl} (now {before}..{after})"
    );
    let credential = base64::engine::general_purpose::STANDARD
        .decode(turn["credential"].as_str().expect("credential"))
        .expect("base64 credential");
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        b"north-star-secret",
    );
    ring::hmac::verify(&key, username.as_bytes(), &credential)
        .expect("credential is HMAC-SHA1(secret, username)");
    assert!(
        ring::hmac::verify(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"other"),
            username.as_bytes(),
            &credential
        )
        .is_err(),
        "a different secret must not verify"
    );
}

/// Static credentials are handed out as configured; without `--ice-servers` the list is empty;
/// `/getClientConfig` keeps exactly its legacy members either way.
#[tokio::test]
async fn static_credentials_and_the_default_empty_list() {
    let server = common::start_server_with(roomd::Config {
        ice_servers: vec!["turn:127.0.0.1:3478".into()],
        turn_username: Some("u".into()),
        turn_credential: Some("p".into()),
        ..roomd::Config::default()
    })
    .await;
    let (status, body) = server.get("/iceServers").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"iceServers": [{"urls": ["turn:127.0.0.1:3478"], "username": "u", "credential": "p"}]})
    );
    let (_, legacy) = server.get("/getClientConfig").await;
    assert_eq!(
        legacy,
        json!({"loopbackRemote": false, "loopbackAndLocal": false, "filterRequestParam": "hat"})
    );

    let plain = common::start_server().await;
    let (status, body) = plain.get("/iceServers").await;
    assert_eq!((status, body), (200, json!({"iceServers": []})));
}

/// A TURN URL without credentials would make browsers throw in `new RTCPeerConnection`: the
/// server refuses to start instead, naming the flags to set.
#[tokio::test]
async fn turn_without_credentials_refuses_to_start() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let config = roomd::Config {
        ice_servers: vec!["turn:turn.example.org:3478".into()],
        rtc_udp_port: 0,
        ..roomd::Config::default()
    };
    let err = tokio::time::timeout(
        common::WAIT,
        roomd::serve(config, listener, std::future::pending()),
    )
    .await
    .expect("refused at once")
    .expect_err("no credentials");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("--turn-secret"), "{err}");
}
