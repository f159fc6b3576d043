//! Admin door, origins and limits over real sockets: the admin close needs `POST` and the
//! bearer token and is off without one; `--allowed-origins` refuses other pages; the
//! connection limits refuse upgrades (503 total, 429 per IP) and give places back; the room
//! limits answer with Kurento-style errors and the connection survives; a request flood is
//! refused (-32000) and a persistent abuser is closed (1008). Every refusal is counted in
//! `/metrics`.

mod common;

use common::{error_of, http_request, start_server_with, Client, WAIT};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn config() -> roomd::Config {
    roomd::Config::default()
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let text = common::http_get_text(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Defect 3: `/close` answered any method from anyone, so `<img src="/close?room=R">` on any
/// page closed rooms. Now: off without a token (403), `POST` only (405), bearer token
/// required (401), and only then the room closes.
#[tokio::test]
async fn admin_close_needs_post_and_the_token_and_is_off_without_one() {
    let open = start_server_with(config()).await;
    let mut a = open.client().await;
    a.join("kept", "alice").await;
    let get = |addr, path| async move { http_request(addr, "GET", path, &[]).await.0 };
    assert_eq!(get(open.addr, "/close?room=kept").await, 403);
    assert_eq!(open.admin_post("/close?room=kept", "").await, 403);
    assert_eq!(open.admin_post("/close?room=kept", "guess").await, 403);
    assert_eq!(open.get("/getAllRooms").await.1, json!(["kept"]));
    assert_eq!(metric(open.addr, "roomd_admin_refused_total").await, 3);

    let guarded = start_server_with(roomd::Config {
        admin_token: Some("t0ken".into()),
        ..config()
    })
    .await;
    let mut b = guarded.client().await;
    b.join("doomed", "bob").await;
    // What an <img src> or a link does: GET, no credentials.
    assert_eq!(get(guarded.addr, "/close?room=doomed").await, 405);
    let with = |t: &'static str| [("Authorization", t)];
    assert_eq!(
        http_request(
            guarded.addr,
            "GET",
            "/close?room=doomed",
            &with("Bearer t0ken")
        )
        .await
        .0,
        405
    );
    assert_eq!(
        http_request(guarded.addr, "POST", "/close?room=doomed", &[])
            .await
            .0,
        401
    );
    assert_eq!(guarded.admin_post("/close?room=doomed", "t0ke").await, 401);
    assert_eq!(
        guarded.admin_post("/close?room=doomed", "t0kenX").await,
        401
    );
    assert_eq!(guarded.get("/getAllRooms").await.1, json!(["doomed"]));
    assert_eq!(guarded.admin_post("/close?room=doomed", "t0ken").await, 200);
    b.notification("roomClosed").await;
    assert_eq!(guarded.get("/getAllRooms").await.1, json!([]));
}

async fn upgrade_status(url: &str, origin: Option<&str>) -> Result<(), u16> {
    let mut req = url.into_client_request().expect("valid ws url");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).expect("header value"));
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
    {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected handshake failure: {e}"),
    }
}

/// `--allowed-origins`: other pages are refused (403); listed ones and non-browser clients
/// (no Origin) are let in. Without the flag every origin is accepted, as the original.
#[tokio::test]
async fn allowed_origins_refuse_other_pages() {
    let any = start_server_with(config()).await;
    assert_eq!(
        upgrade_status(&any.ws_url(), Some("https://evil.example")).await,
        Ok(())
    );
    let strict = start_server_with(roomd::Config {
        allowed_origins: vec!["https://meet.example".into()],
        ..config()
    })
    .await;
    let url = strict.ws_url();
    assert_eq!(
        upgrade_status(&url, Some("https://evil.example")).await,
        Err(403)
    );
    assert_eq!(
        upgrade_status(&url, Some("https://meet.example")).await,
        Ok(())
    );
    assert_eq!(upgrade_status(&url, None).await, Ok(()));
    assert_eq!(
        metric(strict.addr, "roomd_connections_refused_origin_total").await,
        1
    );
}

/// Connection limits: past the per-IP limit 429, past the total 503; a closed connection
/// gives its place back.
#[tokio::test]
async fn connection_limits_refuse_and_give_places_back() {
    let server = start_server_with(roomd::Config {
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let url = server.ws_url();
    let first = server.client().await;
    let _second = server.client().await;
    assert_eq!(upgrade_status(&url, None).await, Err(429));
    first.drop_connection().await;
    wait_for("a place to come back", || async {
        server.get("/health").await.1["connections"] == json!(1)
    })
    .await;
    let _third = server.client().await;
    assert_eq!(
        metric(server.addr, "roomd_connections_refused_per_ip_total").await,
        1
    );

    let total = start_server_with(roomd::Config {
        max_connections: 1,
        ..config()
    })
    .await;
    let _only = total.client().await;
    assert_eq!(upgrade_status(&total.ws_url(), None).await, Err(503));
}

async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Room limits answer with an error and the connection goes on: a full room (201), one room
/// too many (204), an oversized SDP offer (-1).
#[tokio::test]
async fn room_limits_answer_errors_and_the_connection_survives() {
    let server = start_server_with(roomd::Config {
        max_participants_per_room: 2,
        max_rooms: 2,
        max_sdp_bytes: 1000,
        ..config()
    })
    .await;
    let (_a, _b) = server.pair("small", "a", "b").await;
    let mut c = server.client().await;
    let r = c.call("joinRoom", json!({"room":"small","user":"c"})).await;
    assert_eq!(
        error_of(&r),
        (201, "Room 'small' is full (2 participants)".into())
    );
    c.join("second", "c").await;
    let mut d = server.client().await;
    let r = d.call("joinRoom", json!({"room":"third","user":"d"})).await;
    assert_eq!(
        error_of(&r),
        (204, "No resources left to create new room".into())
    );
    let big = "v=0\r\n".repeat(300);
    let r = c
        .call(
            "publishVideo",
            json!({"sdpOffer": big, "doLoopback": false}),
        )
        .await;
    let (code, msg) = error_of(&r);
    assert_eq!(code, -1);
    assert!(msg.contains("exceeds the limit of 1000"), "{msg}");
    for (limit, n) in [("participants_per_room", 1), ("rooms", 1), ("sdp_bytes", 1)] {
        let series = format!("roomd_room_limit_refusals_total{{limit=\"{limit}\"}}");
        assert_eq!(metric(server.addr, &series).await, n, "{series}");
    }
    // Still a participant, still answered.
    let r = c
        .call(
            "sendMessage",
            json!({"userMessage":"c","roomMessage":"second","message":"hi"}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
}

/// A request flood: past the burst, -32000 and the connection survives; refused `burst`
/// times in a row, closed with 1008.
#[tokio::test]
async fn a_request_flood_is_refused_then_closed() {
    let server = start_server_with(roomd::Config {
        request_burst: 10,
        requests_per_second: 1,
        ..config()
    })
    .await;
    let mut c: Client = server.client().await;
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..15 {
        let r = c.call("ping", json!({})).await;
        if r.get("result").is_some() {
            ok += 1;
        } else {
            assert_eq!(error_of(&r).0, -32000, "{r}");
            refused += 1;
        }
    }
    assert!(ok >= 10 && refused >= 4, "ok {ok}, refused {refused}");
    for _ in 0..10 {
        if c.try_send_raw(json!({"jsonrpc":"2.0","id":99,"method":"ping"}).to_string())
            .await
            .is_err()
        {
            break;
        }
    }
    let close = c.closed().await;
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1008));
    assert_eq!(
        metric(server.addr, "roomd_connections_closed_for_abuse_total").await,
        1
    );
}

/// `--no-demo` serves the API without the page; `--metrics-bind` moves `/metrics` off the
/// public port onto its own listener.
#[tokio::test]
async fn no_demo_and_a_separate_metrics_listener() {
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr")
    };
    let server = start_server_with(roomd::Config {
        no_demo: true,
        metrics_bind: Some(metrics_addr),
        ..config()
    })
    .await;
    assert_eq!(http_request(server.addr, "GET", "/", &[]).await.0, 404);
    assert_eq!(
        http_request(server.addr, "GET", "/metrics", &[]).await.0,
        404
    );
    assert_eq!(server.get("/getAllRooms").await.0, 200);
    let (status, body) = http_request(metrics_addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("roomd_rooms"), "{body}");
    let plain = start_server_with(config()).await;
    assert_eq!(http_request(plain.addr, "GET", "/", &[]).await.0, 200);
    assert_eq!(
        http_request(plain.addr, "GET", "/metrics", &[]).await.0,
        200
    );
}
