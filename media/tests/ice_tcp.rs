//! ICE-TCP on the sharded engine: a client without any UDP socket reaches the router only
//! through the shard's passive TCP candidate (RFC 6544, RFC 4571 framing) and gets media both
//! ways; raw STUN over a TCP connection is answered only when its MESSAGE-INTEGRITY verifies.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use media::{EndpointKey, MediaConfig, MediaEvent, MediaRouter};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST, BINDING_SUCCESS};
use rtc::stun::textattrs::TextAttribute;
use tokio::sync::mpsc;

const PACE: Duration = Duration::from_millis(3);

/// A sharded router (one shard) on an ephemeral port: tests run in parallel with others'.
fn tcp_router() -> MediaRouter {
    init_logs();
    MediaRouter::start(MediaConfig {
        shards: 1,
        udp_port: 0,
        ..MediaConfig::default()
    })
    .expect("the shard binds an ephemeral port")
}

/// The passive TCP candidate's address in an answer.
fn tcp_candidate(answer: &str) -> SocketAddr {
    let line = answer
        .lines()
        .find(|l| l.contains(" tcp ") && l.contains("tcptype passive"))
        .unwrap_or_else(|| panic!("a passive TCP candidate in the answer:\n{answer}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    // candidate:<foundation> <component> tcp <priority> <address> <port> typ host tcptype passive
    let ip = f[4].parse().expect("candidate address");
    let port = f[5].parse().expect("candidate port");
    SocketAddr::new(ip, port)
}

fn sdp_attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in\n{sdp}"))
}

/// Applies the router's answer and the candidates it trickled for `key`, as a room client does
/// with `iceCandidate` events (webrtc-rs clients, like browsers, open their ICE-TCP connections
/// to trickled passive candidates), until the passive TCP candidate on `ip`; then waits for the
/// connection.
async fn apply_and_connect(
    client: &Client,
    answer: String,
    key: EndpointKey,
    events: &mut mpsc::Receiver<MediaEvent>,
    ip: &str,
) {
    client.apply_answer(answer).await;
    let mut tcp = 0;
    let want = format!(" {ip} ");
    while tcp == 0 {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("the router trickles its candidates")
            .expect("events open");
        if let MediaEvent::LocalCandidate {
            endpoint,
            candidate,
        } = ev
        {
            if endpoint == key && !candidate.candidate.is_empty() {
                tcp += usize::from(
                    candidate.candidate.contains("tcptype passive")
                        && candidate.candidate.contains(&want),
                );
                client
                    .pc
                    .add_ice_candidate(to_init(&candidate))
                    .await
                    .expect("client takes the router's candidate");
            }
        }
    }
    client.connected().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_only_tcp_publishes_and_subscribes() {
    let router = tcp_router();
    let (ev_tx, mut ev_rx) = events();

    let publisher = Client::tcp_only(CHROME).await;
    let audio = publisher
        .add_send_track(RtpCodecKind::Audio, AUDIO_SSRC, false)
        .await;
    let video = publisher
        .add_send_track(RtpCodecKind::Video, VIDEO_SSRC, false)
        .await;
    let offer = publisher.offer(true).await;
    assert!(
        !offer.lines().any(|l| l.contains(" udp ")),
        "the client has no UDP candidate:\n{offer}"
    );
    let answer = router
        .publish(EndpointKey(1), offer, false, ev_tx.clone())
        .await
        .expect("publish");
    let tcp = tcp_candidate(&answer);
    assert!(
        answer
            .lines()
            .any(|l| l.contains(" udp ") && l.contains(&format!(" {} typ host", tcp.port()))),
        "UDP and TCP candidates share the shard's port number:\n{answer}"
    );
    apply_and_connect(&publisher, answer, EndpointKey(1), &mut ev_rx, "127.0.0.1").await;

    let mut subscriber = Client::tcp_only(CHROME).await;
    subscriber.add_recv(RtpCodecKind::Audio).await;
    subscriber.add_recv(RtpCodecKind::Video).await;
    let offer = subscriber.offer(true).await;
    let answer = router
        .subscribe(EndpointKey(2), EndpointKey(1), offer, ev_tx.clone())
        .await
        .expect("subscribe");
    apply_and_connect(&subscriber, answer, EndpointKey(2), &mut ev_rx, "127.0.0.1").await;

    let sender = tokio::spawn(async move {
        tokio::join!(
            send_packets(&video, VIDEO_SSRC, CHROME.vp8, 1000, 300, PACE),
            send_packets(&audio, AUDIO_SSRC, CHROME.opus, 5000, 150, PACE * 2),
        );
    });
    let mut readers = Vec::new();
    for _ in 0..2 {
        let t = subscriber.next_track().await;
        let kind = t.kind().await;
        readers.push((kind, read_track(t)));
    }
    sender.await.expect("sender task");
    for (kind, mut rx) in readers {
        let want = if kind == RtpCodecKind::Video {
            300
        } else {
            150
        };
        let seen = wait_packets(&mut rx, want, WAIT).await;
        // TCP is reliable and nothing here is congested: every packet arrives.
        assert_eq!(seen.packets, want, "{kind}: every packet over TCP");
        assert_eq!(seen.corrupt, 0, "{kind}: payload bytes intact");
    }
    let during = router.stats();
    assert!(
        during.ice_tcp_connections >= 2 && during.ice_tcp_dropped == 0,
        "both clients on ICE-TCP, nothing dropped: {during:?}"
    );
    router.release(EndpointKey(2)).await;
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
    // Released peers' connections are closed by the server, before the clients close theirs.
    wait_stats(&router, |s| s.ice_tcp_connections == 0).await;
    publisher.close().await;
    subscriber.close().await;
}

/// Waits (bounded) until the router's counters, republished by each shard every 100 ms,
/// satisfy `ok`.
async fn wait_stats(router: &MediaRouter, ok: impl Fn(&media::MediaStats) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = router.stats();
        if ok(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters never got there: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Binding request as a browser sends it over ICE-TCP, framed (RFC 4571).
fn framed_request(username: &str, pwd: &str) -> Vec<u8> {
    let crypto = rtc::crypto::default_provider().expect("crypto provider");
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter + '_>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    m.build(&setters).expect("build a binding request");
    let len = u16::try_from(m.raw.len()).expect("a STUN message is short");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&m.raw);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_stun_over_tcp_is_answered_only_with_valid_integrity() {
    let router = tcp_router();
    let (ev_tx, _ev_rx) = events();
    // A real offer, so that the router has a peer connection with known credentials; this
    // client never connects (its UDP candidates are of no use to the raw test).
    let client = Client::new(CHROME).await;
    client.add_recv(RtpCodecKind::Video).await;
    let offer = client.offer(true).await;
    let answer = router
        .publish(EndpointKey(1), offer.clone(), false, ev_tx)
        .await
        .expect("publish");
    let addr = tcp_candidate(&answer);
    let username = format!(
        "{}:{}",
        sdp_attr(&answer, "a=ice-ufrag:"),
        sdp_attr(&offer, "a=ice-ufrag:")
    );
    let pwd = sdp_attr(&answer, "a=ice-pwd:").to_owned();

    let exchange = move |pwd: String| {
        let username = username.clone();
        move || -> Vec<u8> {
            let mut s = TcpStream::connect(addr).expect("connect to the passive candidate");
            s.set_read_timeout(Some(WAIT)).expect("read timeout");
            s.write_all(&framed_request(&username, &pwd))
                .expect("write");
            // A success response, or end of stream when the server refuses the connection.
            let mut head = [0u8; 2];
            if s.read_exact(&mut head).is_err() {
                return Vec::new();
            }
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(head))];
            s.read_exact(&mut body).expect("a whole frame");
            body
        }
    };
    let good = tokio::task::spawn_blocking(exchange(pwd.clone()))
        .await
        .expect("exchange");
    let mut m = Message::new();
    m.unmarshal_binary(&good).expect("a STUN response");
    assert_eq!(m.typ, BINDING_SUCCESS, "valid integrity is answered");

    let bad = tokio::task::spawn_blocking(exchange("wrong-password-wrong-pwd".into()))
        .await
        .expect("exchange");
    assert!(
        bad.is_empty(),
        "bad integrity gets no answer, the connection is closed"
    );
    router.release(EndpointKey(1)).await;
    client.close().await;
}

/// ICE-TCP over IPv6 and IPv4 on one dual-stack shard: a TCP-only client on ::1 publishes, a
/// TCP-only client on 127.0.0.1 subscribes, both to the same port number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_over_ipv6_and_ipv4_on_a_dual_stack_shard() {
    init_logs();
    let router = MediaRouter::start(MediaConfig {
        shards: 1,
        udp_port: 0,
        bind_ip: "::".parse().expect("ip"),
        public_ips: vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
        ..MediaConfig::default()
    })
    .expect("a dual-stack shard on an ephemeral port");
    let (ev_tx, mut ev_rx) = events();

    let publisher = Client::tcp_only_ipv6(CHROME).await;
    let video = publisher
        .add_send_track(RtpCodecKind::Video, VIDEO_SSRC, false)
        .await;
    let offer = publisher.offer(true).await;
    let answer = router
        .publish(EndpointKey(1), offer, false, ev_tx.clone())
        .await
        .expect("publish");
    apply_and_connect(&publisher, answer, EndpointKey(1), &mut ev_rx, "::1").await;

    let mut subscriber = Client::tcp_only(CHROME).await;
    subscriber.add_recv(RtpCodecKind::Video).await;
    let offer = subscriber.offer(true).await;
    let answer = router
        .subscribe(EndpointKey(2), EndpointKey(1), offer, ev_tx.clone())
        .await
        .expect("subscribe");
    apply_and_connect(&subscriber, answer, EndpointKey(2), &mut ev_rx, "127.0.0.1").await;

    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, CHROME.vp8, 1000, 200, PACE).await;
    });
    let mut rx = read_track(subscriber.next_track().await);
    sender.await.expect("sender task");
    let seen = wait_packets(&mut rx, 200, WAIT).await;
    assert_eq!(seen.packets, 200, "every packet, IPv6 TCP in, IPv4 TCP out");
    assert_eq!(seen.corrupt, 0);
    assert!(router.stats().ice_tcp_connections >= 2);
    router.release(EndpointKey(2)).await;
    router.release(EndpointKey(1)).await;
    publisher.close().await;
    subscriber.close().await;
}
