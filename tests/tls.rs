//! HTTPS and `wss://` end to end: roomd started with a throw-away self-signed certificate serves
//! the REST calls and the `/room` protocol over TLS to a real rustls client, survives clients
//! that do not speak TLS, and refuses to start with unusable certificate files.

mod common;

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use common::tls::TestCert;
use common::{Client, WAIT};

async fn tls_connect(
    cert: &TestCert,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect to roomd");
    let name = ServerName::try_from("localhost").expect("valid DNS name");
    tokio::time::timeout(WAIT, cert.connector().connect(name, tcp))
        .await
        .expect("TLS handshake within the bound")
        .expect("TLS handshake with roomd's certificate")
}

/// One HTTP/1.1 GET over TLS; returns (status line, body).
async fn https_get(cert: &TestCert, addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut tls = tls_connect(cert, addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut raw))
        .await
        .expect("response within the bound")
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("an HTTP response has a header block");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

async fn wss_connect(cert: &TestCert, addr: std::net::SocketAddr) -> Wss {
    let tls = tls_connect(cert, addr).await;
    let url = format!("wss://localhost:{}/room", addr.port());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket upgrade within the bound")
        .expect("WebSocket upgrade over TLS");
    ws
}

/// With `--tls-cert`/`--tls-key`, the REST calls answer over HTTPS and `/room` speaks the
/// same protocol over `wss://`: ping, joinRoom (with the Kurento result shape), and the
/// participantJoined another TLS client receives.
#[tokio::test]
async fn https_and_wss_serve_the_same_protocol() {
    let cert = TestCert::new("proto");
    let server = common::start_server_with(cert.config()).await;

    let (status, body) = https_get(&cert, server.addr, "/getUpdateSpeakerInterval").await;
    assert!(status.contains(" 200 "), "status line: {status}");
    assert_eq!(body.trim(), "1800");
    let (status, body) = https_get(&cert, server.addr, "/").await;
    assert!(status.contains(" 200 "), "status line: {status}");
    assert!(body.contains("/demo/app.js"), "the demo page over https");

    let mut a = Client::from_ws(wss_connect(&cert, server.addr).await);
    let pong = a.call("ping", json!({"interval": 3000})).await;
    assert_eq!(pong["result"]["value"], "pong");
    let joined = a.join("r", "tls-a").await;
    assert_eq!(joined["result"]["value"], json!([]), "{joined}");
    assert!(joined["result"]["sessionId"].is_string(), "{joined}");

    let mut b = Client::from_ws(wss_connect(&cert, server.addr).await);
    let joined = b.join("r", "tls-b").await;
    assert_eq!(joined["result"]["value"][0]["id"], "tls-a", "{joined}");
    let note = a.notification("participantJoined").await;
    assert_eq!(note["method"], "participantJoined");
    assert_eq!(note["params"]["id"], "tls-b");

    let (_, rooms) = https_get(&cert, server.addr, "/getAllRooms").await;
    assert_eq!(
        serde_json::from_str::<Value>(&rooms).expect("JSON"),
        json!(["r"])
    );
}

/// Clients that do not complete a TLS handshake (plain HTTP, garbage, silence) are closed or
/// left to time out on their own; a TLS client connecting meanwhile is served.
#[tokio::test]
async fn non_tls_clients_do_not_stop_the_tls_server() {
    let cert = TestCert::new("garbage");
    let server = common::start_server_with(cert.config()).await;

    // Silent: connects and never speaks (its handshake task waits for it, nobody else does).
    let _silent = TcpStream::connect(server.addr).await.expect("connect");
    for junk in [
        &b"GET /getAllRooms HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0u8; 64][..],
    ] {
        let mut plain = TcpStream::connect(server.addr).await.expect("connect");
        plain.write_all(junk).await.expect("write");
        let mut buf = [0u8; 512];
        // rustls may answer with an alert; the connection must then end.
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                match plain.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a non-TLS client is disconnected");
    }

    let (status, body) = https_get(&cert, server.addr, "/getThresholdSpeaker").await;
    assert!(status.contains(" 200 "), "status line: {status}");
    assert_eq!(body.trim(), "-50");
}

/// Missing or mismatched certificate files stop `serve` with an InvalidInput error that names
/// the problem, instead of a server that accepts and then fails every handshake.
#[tokio::test]
async fn unusable_certificate_files_fail_start_up() {
    let cert = TestCert::new("bad");
    let other = TestCert::new("bad-other");
    let missing = roomd::Config {
        tls_cert: Some(Path::new("/nonexistent/roomd/cert.pem").to_owned()),
        ..cert.config()
    };
    let mismatched = roomd::Config {
        tls_key: Some(other.key()),
        ..cert.config()
    };
    let not_pem = roomd::Config {
        tls_cert: Some(cert.key()),
        ..cert.config()
    };
    for (config, expect) in [
        (missing, "/nonexistent/roomd/cert.pem"),
        (mismatched, "do not form a usable pair"),
        (not_pem, "no certificate"),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let result = tokio::time::timeout(WAIT, roomd::serve(config, listener, async {})).await;
        let err = result
            .expect("serve returns at once")
            .expect_err("serve refuses unusable TLS files");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(expect), "{err}");
    }
}
