//! Media end to end: webrtc-rs client peers speaking the Kurento protocol to roomd over a real
//! WebSocket, real DTLS-SRTP over UDP on 127.0.0.1, every peer connection of a room on one
//! shard's port (docs/protocol.md checklist 21–26, 28–31, 35, 39, 51, 65, and data channels).

mod common;

use std::time::Duration;

use common::peer::{self, directions, mids, publish, send, subscribe, AUDIO_SSRC, VIDEO_SSRC};
use common::{error_of, Client, Server};
use media::testing::{self, CHROME};
use serde_json::{json, Value};
use webrtc::media_stream::track_local::TrackLocal;

/// Starts roomd with `config` on two media shards (UDP ports chosen by the system), so that
/// the scenarios' rooms do not all share one.
async fn start_server(mut config: roomd::Config) -> Server {
    config.rtc_udp_port = 0;
    config.media_shards = Some(2);
    common::start_server_with(config).await
}

/// Two participants both publish and each subscribes to the other; media flows both ways
/// with payloads intact (checklist 21, 22, 23, 30, 31).
#[tokio::test]
async fn two_participants_exchange_media_both_ways() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("call", "alice", "bob").await;

    let pub_a = publish(&mut a, "alice", false, false).await;
    // 21: the answer's m-lines and mids match the offer; media is received, not sent back.
    assert_eq!(mids(&pub_a.answer), mids(&pub_a.offer));
    assert!(
        directions(&pub_a.answer).iter().all(|d| d == "recvonly"),
        "{}",
        pub_a.answer
    );
    // 22: bob hears about it; alice does not.
    let n = b.notification("participantPublished").await;
    assert_eq!(
        n["params"],
        json!({"id":"alice","streams":[{"id":"webcam"}]})
    );
    let pub_b = publish(&mut b, "bob", false, false).await;
    a.notification("participantPublished").await;

    let mut sub_b = subscribe(&mut b, "alice").await; // bob watches alice
    let mut sub_a = subscribe(&mut a, "bob").await; // alice watches bob
    assert!(
        directions(&sub_b.answer).iter().all(|d| d == "sendonly"),
        "{}",
        sub_b.answer
    );

    let n = 200;
    tokio::join!(
        send(&pub_a.video, VIDEO_SSRC, CHROME.vp8, n),
        send(&pub_a.audio, AUDIO_SSRC, CHROME.opus, n),
        send(&pub_b.video, VIDEO_SSRC, CHROME.vp8, n),
        send(&pub_b.audio, AUDIO_SSRC, CHROME.opus, n),
        sub_a.read_both_tracks(),
        sub_b.read_both_tracks(),
    );
    let (got_b, corrupt_b) = sub_b.wait_total(2 * u64::from(n)).await;
    let (got_a, corrupt_a) = sub_a.wait_total(2 * u64::from(n)).await;
    println!(
        "publish connect {:?} / {:?}, subscribe connect {:?} / {:?}; delivered alice->bob {got_b}/{}, bob->alice {got_a}/{}",
        pub_a.connect_time, pub_b.connect_time, sub_b.connect_time, sub_a.connect_time, 2 * n, 2 * n
    );
    assert_eq!((corrupt_a, corrupt_b), (0, 0), "payloads arrive intact");
    // Loopback UDP loses nothing in practice; allow a sliver for a loaded CI box.
    assert!(got_b >= u64::from(2 * n) * 95 / 100, "alice->bob {got_b}");
    assert!(got_a >= u64::from(2 * n) * 95 / 100, "bob->alice {got_a}");

    // 30: subscribing notified nobody.
    for c in [&mut a, &mut b] {
        c.room_barrier().await;
        for m in c.take_pending() {
            let method = m["method"].as_str().unwrap_or_default();
            assert!(
                method.is_empty() || method == "iceCandidate",
                "unexpected event after subscribing: {m}"
            );
        }
    }
}

/// 23 + 31: the iceCandidate events for an endpoint come after the response carrying its
/// answer, named after the publisher (own name, or the sender's bare name).
#[tokio::test]
async fn ice_candidates_follow_the_answer_and_use_kurento_endpoint_names() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let peer = testing::Client::new(CHROME).await;
    peer.add_send_track(testing::Kind::Video, VIDEO_SSRC, false)
        .await;
    let offer = peer.offer(true).await;
    let id = a
        .send(
            "publishVideo",
            json!({"sdpOffer": offer, "doLoopback": false}),
        )
        .await;
    let first = a.next_message().await;
    assert_eq!(first["id"], id, "the answer comes first: {first}");
    let ev = a.notification("iceCandidate").await;
    assert_eq!(ev["params"]["endpointName"], "alice");
    assert!(ev["params"]["sdpMLineIndex"].is_u64() && ev["params"]["sdpMid"].is_string());

    let sub = testing::Client::new(CHROME).await;
    sub.add_recv(testing::Kind::Video).await;
    let offer = sub.offer(true).await;
    let id = b
        .send(
            "receiveVideoFrom",
            json!({"sender":"alice_webcam","sdpOffer": offer}),
        )
        .await;
    // Bob may still hold participantPublished; the first *response-or-candidate* is the answer.
    loop {
        let m = b.next_message().await;
        if m["method"] == "iceCandidate" {
            panic!("a candidate overtook the answer: {m}");
        }
        if m["id"] == id {
            assert!(m["result"]["sdpAnswer"].is_string(), "{m}");
            break;
        }
    }
    let ev = b.notification("iceCandidate").await;
    assert_eq!(
        ev["params"]["endpointName"], "alice",
        "bare name, not alice_webcam"
    );
}

/// 24: doLoopback with a sendrecv offer answers sendrecv and the publisher receives its own
/// packets on the same peer connection.
#[tokio::test]
async fn loopback_returns_the_publishers_own_media() {
    let server = start_server(roomd::Config::default()).await;
    let mut a = server.client().await;
    a.join("r", "solo").await;
    let mut p = publish(&mut a, "solo", true, false).await;
    assert!(
        directions(&p.answer).iter().all(|d| d == "sendrecv"),
        "{}",
        p.answer
    );
    let n = 150;
    let (_, _, (t1, t2)) = tokio::join!(
        send(&p.video, VIDEO_SSRC, CHROME.vp8, n),
        send(&p.audio, AUDIO_SSRC, CHROME.opus, n),
        async { (p.peer.next_track().await, p.peer.next_track().await) }
    );
    let mut readers = [testing::read_track(t1), testing::read_track(t2)];
    let mut total = 0;
    for r in &mut readers {
        let seen = testing::wait_packets(r, 1, common::WAIT).await;
        assert_eq!(seen.corrupt, 0);
        total += seen.packets;
    }
    assert!(total > 0, "own media came back");
}

/// 25 + 26: publishVideo without doLoopback works; a second publish is refused and the
/// subscriber's media continues.
#[tokio::test]
async fn second_publish_is_refused_and_media_continues() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let p = publish(&mut a, "alice", false, false).await;
    let mut s = subscribe(&mut b, "alice").await;
    let offer = testing::Client::new(CHROME).await;
    offer.add_send_track(testing::Kind::Video, 77, false).await;
    let sdp = offer.offer(true).await;
    let r = a.call("publishVideo", json!({"sdpOffer": sdp})).await;
    assert!(r.get("error").is_some(), "second publish must fail: {r}");
    let (_, (got, _)) = tokio::join!(send(&p.video, VIDEO_SSRC, CHROME.vp8, 100), async {
        s.read_tracks(1).await;
        s.wait_total(50).await
    });
    assert!(got >= 50, "subscriber still receives: {got}");
}

/// 35: a second receiveVideoFrom for the same sender is 302.
#[tokio::test]
async fn duplicate_subscription_is_302() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let _p = publish(&mut a, "alice", false, false).await;
    let _s = subscribe(&mut b, "alice").await;
    let peer = testing::Client::new(CHROME).await;
    peer.add_recv(testing::Kind::Video).await;
    let offer = peer.offer(true).await;
    let r = b
        .call(
            "receiveVideoFrom",
            json!({"sender":"alice_webcam","sdpOffer": offer}),
        )
        .await;
    assert_eq!(
        error_of(&r),
        (
            302,
            "Unable to generate SDP answer when subscribing 'bob' to 'alice'".to_owned()
        )
    );
}

/// 28 + 29: unpublish tells the others, frees the subscriber's endpoint, the later
/// unsubscribe succeeds, and a republish is announced and can be subscribed again.
#[tokio::test]
async fn unpublish_then_republish() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let _p = publish(&mut a, "alice", false, false).await;
    b.notification("participantPublished").await;
    let _s = subscribe(&mut b, "alice").await;
    assert_eq!(media_endpoints(&server).await, 2);
    let r = a.call("unpublishVideo", json!({})).await;
    assert!(r["result"]["sessionId"].is_string());
    let n = b.notification("participantUnpublished").await;
    assert_eq!(n["params"], json!({"name":"alice"}));
    wait_media_endpoints(&server, 0).await;
    let r = b
        .call("unsubscribeFromVideo", json!({"sender":"alice_webcam"}))
        .await;
    assert!(r.get("result").is_some());
    let p2 = publish(&mut a, "alice", false, false).await;
    b.notification("participantPublished").await;
    let mut s2 = subscribe(&mut b, "alice").await;
    let (_, (got, _)) = tokio::join!(send(&p2.video, VIDEO_SSRC, CHROME.vp8, 100), async {
        s2.read_tracks(1).await;
        s2.wait_total(50).await
    });
    assert!(got >= 50, "republished media flows: {got}");
}

/// 51: when a publisher leaves, its subscribers get participantLeft and no
/// participantUnpublished, and every endpoint of that publication is released.
#[tokio::test]
async fn publisher_leaving_releases_everything() {
    let server = start_server(roomd::Config::default()).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let _p = publish(&mut a, "alice", false, false).await;
    let _s = subscribe(&mut b, "alice").await;
    a.call("leaveRoom", json!({})).await;
    let n = b.notification("participantLeft").await;
    assert_eq!(n["params"], json!({"name":"alice"}));
    b.room_barrier().await;
    assert!(!b
        .take_pending()
        .iter()
        .any(|m| m["method"] == "participantUnpublished"));
    wait_media_endpoints(&server, 0).await;
}

/// 39: candidates sent before publishVideo are accepted and the connection comes up.
#[tokio::test]
async fn early_candidates_before_publish_are_accepted() {
    let server = start_server(roomd::Config::default()).await;
    let mut a = server.client().await;
    a.join("r", "early").await;
    let mut peer = testing::Client::new(CHROME).await;
    peer.add_send_track(testing::Kind::Video, VIDEO_SSRC, false)
        .await;
    let offer = peer::strip_candidates(&peer.offer(false).await);
    let c = tokio::time::timeout(common::WAIT, peer.candidates.recv())
        .await
        .expect("a candidate in time")
        .expect("open");
    let r = a
        .call(
            "onIceCandidate",
            json!({"endpointName":"early","candidate":c.candidate,"sdpMid":c.sdp_mid,"sdpMLineIndex":c.sdp_mline_index}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = a
        .call(
            "publishVideo",
            json!({"sdpOffer": offer, "doLoopback": false}),
        )
        .await;
    let answer = r["result"]["sdpAnswer"]
        .as_str()
        .expect("answer")
        .to_owned();
    peer.apply_answer(peer::strip_candidates(&answer)).await;
    let ev = a.notification("iceCandidate").await;
    peer::apply_candidate(&peer, &ev["params"]).await;
    peer.connected().await;
}

/// Data channels: with dataChannels:true a publisher's data-channel message reaches a
/// subscriber's data channel.
#[tokio::test]
async fn data_channel_message_reaches_subscriber() {
    let server = start_server(roomd::Config::default()).await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.call(
        "joinRoom",
        json!({"user":"alice","room":"dc","dataChannels":true}),
    )
    .await;
    b.join("dc", "bob").await;
    let p = publish(&mut a, "alice", false, true).await;
    let pub_dc = p.channel.clone().expect("the publisher's channel");
    let sub_peer = testing::Client::new(CHROME).await;
    sub_peer.add_recv(testing::Kind::Video).await;
    let sub_dc = sub_peer
        .pc
        .create_data_channel("relay", None)
        .await
        .expect("subscriber channel");
    let (mut sub_open, mut sub_msgs) = testing::read_channel(sub_dc);
    let (mut pub_open, _) = testing::read_channel(pub_dc.clone());
    let offer = peer::strip_candidates(&sub_peer.offer(false).await);
    let r = b
        .call(
            "receiveVideoFrom",
            json!({"sender":"alice_webcam","sdpOffer": offer}),
        )
        .await;
    let answer = r["result"]["sdpAnswer"]
        .as_str()
        .expect("answer")
        .to_owned();
    sub_peer.apply_answer(answer).await;
    sub_peer.connected().await;
    for open in [&mut sub_open, &mut pub_open] {
        tokio::time::timeout(common::WAIT, open.wait_for(|o| *o))
            .await
            .expect("channel opens in time")
            .expect("open watch");
    }
    // Re-send until one arrives: the relay may still be attaching the subscriber's channel.
    let got = tokio::time::timeout(common::WAIT, async {
        loop {
            pub_dc
                .send_text("hello subscribers")
                .await
                .expect("send on open channel");
            if let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(200), sub_msgs.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("a data-channel message reaches the subscriber");
    assert_eq!(got, "hello subscribers");
}

/// 65: a publication racing five concurrent joins is learnt exactly once by each joiner.
#[tokio::test]
async fn joiners_during_a_publish_learn_of_it_exactly_once() {
    let server = start_server(roomd::Config::default()).await;
    let mut a = server.client().await;
    a.join("race", "pub").await;
    let url = server.ws_url();
    let joiners: Vec<_> = (0..5)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                let r = c.join("race", &format!("j{i}")).await;
                (c, r)
            })
        })
        .collect();
    let _p = publish(&mut a, "pub", false, false).await;
    for j in joiners {
        let (mut c, r) = j.await.expect("joiner task");
        let via_value = r["result"]["value"]
            .as_array()
            .expect("value")
            .iter()
            .filter(|p| p["id"] == "pub" && p.get("streams").is_some())
            .count();
        // A barrier through the room flushes any participantPublished already emitted; the
        // publication is complete once `publish` returned above.
        c.room_barrier().await;
        let via_event = c
            .take_pending()
            .iter()
            .filter(|m| m["method"] == "participantPublished")
            .count();
        assert_eq!(
            via_value + via_event,
            1,
            "value {via_value} + events {via_event}"
        );
    }
}

/// A join into a room with a publisher asks that publisher for a keyframe at once, before the
/// joiner subscribes, so that its subscription can start from a stored keyframe.
#[tokio::test]
async fn a_join_asks_the_rooms_publishers_for_a_keyframe() {
    let server = start_server(roomd::Config::default()).await;
    let mut a = server.client().await;
    a.join("kf", "alice").await;
    let publication = publish(&mut a, "alice", false, false).await;
    let mut plis = testing::count_keyframe_requests(publication.video.clone());
    // Delta frames only: the track opens, and nothing in it would answer a request.
    let video = publication.video.clone();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        for seq in 0..u16::MAX {
            ticker.tick().await;
            let p = testing::synthetic_delta_packet(seq, VIDEO_SSRC, CHROME.vp8, 400);
            if video.write_rtp(p).await.is_err() {
                break;
            }
        }
    });
    // The test client hands its application only PLI/FIR: no RTCP tells it that roomd has the
    // packets, so roomd's counter is polled (bounded).
    until_server_shows(|| async {
        let n = rtp_received(&server).await;
        if n >= 5.0 {
            Ok(())
        } else {
            Err(format!(
                "the publisher's packets never reached roomd ({n} received)"
            ))
        }
    })
    .await;
    assert_eq!(*plis.borrow(), 0, "nobody watches alice yet");
    let mut b = server.client().await;
    b.join("kf", "bob").await;
    tokio::time::timeout(common::WAIT, plis.wait_for(|n| *n >= 1))
        .await
        .expect("bob's join asks alice for a keyframe before bob subscribes")
        .expect("watch open");
    sender.abort();
}

/// `roomd_rtp_received_total` from `/metrics`.
async fn rtp_received(server: &Server) -> f64 {
    let text = common::http_get_text(server.addr, "/metrics").await;
    common::metric(&text, "roomd_rtp_received_total").unwrap_or(0.0)
}

/// Waits (bounded) for a state roomd shows only on its HTTP endpoints, which have no event a
/// client could wait on: `probe` is asked every 20 ms and answers `Err(what it saw)` until
/// the state is there.
async fn until_server_shows<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + common::WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        match probe().await {
            Ok(()) => return,
            Err(seen) => assert!(tokio::time::Instant::now() < deadline, "{seen}"),
        }
    }
}

async fn media_endpoints(server: &Server) -> u64 {
    let (_, health): (u16, Value) = server.get("/health").await;
    health["mediaEndpoints"].as_u64().expect("mediaEndpoints")
}

/// Waits (bounded) until the server reports `n` live media endpoints (endpoint teardown has
/// no event a client can see).
async fn wait_media_endpoints(server: &Server, n: u64) {
    until_server_shows(|| async {
        let now = media_endpoints(server).await;
        if now == n {
            Ok(())
        } else {
            Err(format!("media endpoints stuck at {now}, expected {n}"))
        }
    })
    .await;
}

/// Lifecycle: a publisher whose WebSocket drops keeps its media during the grace period and
/// loses it (publisher and subscriber peer connections released) when the grace ends.
#[tokio::test]
async fn dropped_publisher_is_torn_down_after_the_grace_period() {
    let config = roomd::Config {
        reconnection_grace_ms: 500,
        ..roomd::Config::default()
    };
    let server = start_server(config).await;
    let (mut a, mut b) = server.pair("r", "alice", "bob").await;
    let _p = publish(&mut a, "alice", false, false).await;
    let _s = subscribe(&mut b, "alice").await;
    assert_eq!(media_endpoints(&server).await, 2);
    a.drop_connection().await;
    let n = b.notification("participantLeft").await;
    assert_eq!(n["params"], json!({"name":"alice"}));
    wait_media_endpoints(&server, 0).await;
}
