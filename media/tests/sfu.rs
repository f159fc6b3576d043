//! End-to-end SFU tests: webrtc-rs client peers ("browsers") ↔ `MediaRouter`, real UDP on
//! 127.0.0.1, real DTLS-SRTP. Every wait is bounded.

mod common;

use std::time::Duration;

use common::*;
use media::{EndpointKey, IceCandidate, MediaEvent, PublishError, SubscribeError};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use webrtc::media_stream::track_local::TrackLocal;

const PACE: Duration = Duration::from_millis(3);

fn video_pt(n: Numbering) -> u8 {
    n.vp8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_to_subscriber_delivers_rtp_intact() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let (publ, _) = publish(
        &router,
        EndpointKey(1),
        PublishOpts::default(),
        ev_tx.clone(),
    )
    .await;
    assert!(
        publ.answer.contains("a=recvonly"),
        "publisher answer receives only"
    );
    assert!(
        !publ.answer.contains("a=sendrecv"),
        "no loopback without loopback"
    );
    assert!(publ.answer.contains("VP8/90000"));
    assert!(
        publ.answer.contains("127.0.0.1"),
        "host candidate on 127.0.0.1 in the answer"
    );

    // Subscribe before any RTP reached the router: tracks come from the negotiated SDP.
    let (mut sub, sub_connect, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx.clone(),
    )
    .await;
    eprintln!(
        "connect: publisher {:?}, subscriber {:?}",
        publ.connect_time, sub_connect
    );

    let video = publ.video.clone();
    let audio = publ.audio.clone().expect("audio track");
    let sender = tokio::spawn(async move {
        tokio::join!(
            send_packets(&video, VIDEO_SSRC, CHROME.vp8, 1000, 300, PACE),
            send_packets(&audio, AUDIO_SSRC, CHROME.opus, 5000, 150, PACE * 2),
        );
    });
    let mut readers = Vec::new();
    for _ in 0..2 {
        let t = sub.next_track().await;
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
        eprintln!("{kind}: received {}/{want}", seen.packets);
        assert_eq!(seen.packets, want, "{kind}: every packet delivered");
        assert_eq!(seen.corrupt, 0, "{kind}: payload bytes intact");
        assert_eq!(seen.ssrcs.len(), 1);
        assert_ne!(seen.ssrcs[0], VIDEO_SSRC);
        assert_ne!(seen.ssrcs[0], AUDIO_SSRC);
        let pt = if kind == RtpCodecKind::Video {
            CHROME.vp8
        } else {
            CHROME.opus
        };
        assert_eq!(seen.payload_types, vec![pt]);
    }
    let s = stats_when(&router, "received packets counted", |s| {
        s.packets_received >= 256
    })
    .await;
    assert_eq!(s.peer_connections, 2);
    router.release(EndpointKey(2)).await;
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
    publ.client.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_types_are_mapped_per_leg() {
    // Firefox-numbered publisher (VP8 120 / Opus 109), Chrome-numbered subscriber (96 / 111).
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        numbering: FIREFOX,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    assert!(
        publ.answer.contains("a=rtpmap:120 VP8/90000"),
        "answer keeps the offered PT"
    );
    assert!(
        publ.answer.contains("a=rtpmap:109 opus/48000"),
        "answer keeps the offered PT"
    );

    let (mut sub, _, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx.clone(),
    )
    .await;
    let (mut sub_ff, _, _) = subscribe(
        &router,
        EndpointKey(3),
        EndpointKey(1),
        FIREFOX,
        false,
        ev_tx,
    )
    .await;
    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, video_pt(FIREFOX), 0, 100, PACE).await;
    });
    let t = sub.next_track().await;
    let mut rx = read_track(t);
    let t2 = sub_ff.next_track().await;
    let mut rx2 = read_track(t2);
    sender.await.expect("sender");
    let seen = wait_packets(&mut rx, 100, WAIT).await;
    assert_eq!(seen.packets, 100);
    assert_eq!(seen.corrupt, 0);
    assert_eq!(
        seen.payload_types,
        vec![CHROME.vp8],
        "rewritten to the subscriber's VP8 PT"
    );
    let seen2 = wait_packets(&mut rx2, 100, WAIT).await;
    assert_eq!(seen2.packets, 100);
    assert_eq!(seen2.payload_types, vec![FIREFOX.vp8]);
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_ten_subscribers() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    let mut subs = Vec::new();
    let t0 = std::time::Instant::now();
    for i in 0..10u64 {
        let (c, _, _) = subscribe(
            &router,
            EndpointKey(100 + i),
            EndpointKey(1),
            CHROME,
            false,
            ev_tx.clone(),
        )
        .await;
        subs.push(c);
    }
    eprintln!("10 subscribers connected in {:?}", t0.elapsed());
    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, CHROME.vp8, 0, 200, PACE).await;
    });
    let mut readers = Vec::new();
    for s in subs.iter_mut() {
        readers.push(read_track(s.next_track().await));
    }
    sender.await.expect("sender");
    let mut total = 0;
    for rx in readers.iter_mut() {
        let seen = wait_packets(rx, 200, WAIT).await;
        assert_eq!(seen.packets, 200, "every subscriber gets every packet");
        assert_eq!(seen.corrupt, 0);
        total += seen.packets;
    }
    eprintln!("10 subscribers: {total}/2000 packets delivered");
    assert_eq!(router.stats().subscribers, 10);
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_returns_own_media_on_the_same_pc() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        loopback: true,
        ..Default::default()
    };
    let (mut publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    assert!(
        publ.answer.contains("a=sendrecv"),
        "loopback answer is sendrecv"
    );
    // A normal subscriber too.
    let (mut sub, _, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx,
    )
    .await;

    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, CHROME.vp8, 0, 200, PACE).await;
    });
    // Only video is sent, so only the video tracks fire `on_track`.
    let t = publ.client.next_track().await;
    assert_eq!(
        t.kind().await,
        RtpCodecKind::Video,
        "video comes back on the publisher's own PC"
    );
    let mut back = read_track(t);
    let t = sub.next_track().await;
    assert_eq!(t.kind().await, RtpCodecKind::Video);
    let mut fwd = read_track(t);
    sender.await.expect("sender");
    let seen = wait_packets(&mut back, 200, WAIT).await;
    eprintln!("loopback: {}/200 packets came back", seen.packets);
    assert_eq!(seen.packets, 200);
    assert_eq!(seen.corrupt, 0);
    assert_ne!(seen.ssrcs, vec![VIDEO_SSRC], "loopback uses its own SSRC");
    let seen = wait_packets(&mut fwd, 200, WAIT).await;
    assert_eq!(
        seen.packets, 200,
        "loopback does not replace normal forwarding"
    );
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_subscriber_does_not_hurt_a_healthy_one() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    let (mut healthy, _, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx.clone(),
    )
    .await;
    let (gone, _, _) = subscribe(
        &router,
        EndpointKey(3),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx,
    )
    .await;
    // The second subscriber's client goes away without a release: the shard keeps sealing
    // and sending to it until its connection fails, and that must cost the other nothing.
    gone.close().await;

    const N: u16 = 800;
    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(
            &video,
            VIDEO_SSRC,
            CHROME.vp8,
            0,
            N,
            Duration::from_millis(1),
        )
        .await;
    });
    let mut rx = read_track(healthy.next_track().await);
    sender.await.expect("sender");
    let seen = wait_packets(&mut rx, u64::from(N), WAIT).await;
    assert_eq!(
        seen.packets,
        u64::from(N),
        "healthy subscriber receives everything"
    );
    assert_eq!(seen.corrupt, 0);
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_pli_reaches_the_publisher() {
    let router = router_with(|c| c.keyframe_request_interval = Duration::from_millis(100));
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    let mut plis = count_keyframe_requests(publ.video.clone());
    // Media flowing before the subscription, so the router knows the publisher's SSRC; delta
    // frames, so that no stored keyframe makes the subscription's request unnecessary.
    send_delta_packets(&publ.video, VIDEO_SSRC, CHROME.vp8, 0, 20, PACE).await;

    let (mut sub, _, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx,
    )
    .await;
    // A new subscription asks for a keyframe by itself, once its connection is up (`subscribe`
    // returns connected; a request made at join time would only have been lost).
    tokio::time::timeout(WAIT, plis.wait_for(|n| *n >= 1))
        .await
        .expect("a connected subscription sends a PLI")
        .expect("watch open");
    let before = *plis.borrow();

    // One keyframe, then delta frames only: a keyframe in the stream would answer the
    // subscriber's request before it is due (the engine then rightly sends none).
    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PACE);
        for i in 0..400u16 {
            ticker.tick().await;
            let p = if i == 0 {
                synthetic_packet(20 + i, VIDEO_SSRC, CHROME.vp8, 400)
            } else {
                synthetic_delta_packet(20 + i, VIDEO_SSRC, CHROME.vp8, 400)
            };
            video.write_rtp(p).await.expect("client track is bound");
        }
    });
    let track = sub.next_track().await;
    let ssrc = track.ssrcs().await[0];
    let mut rx = read_track(track.clone());
    wait_packets(&mut rx, 5, WAIT).await;
    track
        .write_rtcp(vec![Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: ssrc,
        })])
        .await
        .expect("subscriber sends a PLI");
    tokio::time::timeout(WAIT, plis.wait_for(|n| *n > before))
        .await
        .expect("the subscriber's PLI is relayed to the publisher")
        .expect("watch open");
    stats_when(&router, "the PLI counted", |s| {
        s.keyframe_requests_received >= 1
    })
    .await;
    sender.abort();
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expected_subscriber_asks_the_publisher_for_a_keyframe_before_it_subscribes() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx).await;
    let plis = count_keyframe_requests(publ.video.clone());
    // Delta frames only, so that the track is open and nothing in the stream answers a request.
    send_delta_packets(&publ.video, VIDEO_SSRC, CHROME.vp8, 0, 20, PACE).await;
    stats_when(&router, "the publisher's packets arrived", |s| {
        s.packets_received >= 20
    })
    .await;
    assert_eq!(*plis.borrow(), 0, "no subscriber, no keyframe request");
    // An unknown endpoint is ignored; the publisher's hint asks.
    router.expect_subscriber(EndpointKey(99)).await;
    router.expect_subscriber(EndpointKey(1)).await;
    let mut plis = plis;
    tokio::time::timeout(WAIT, plis.wait_for(|n| *n >= 1))
        .await
        .expect("the publisher is asked for a keyframe before any subscription exists")
        .expect("watch open");
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_stops_delivery_and_frees_everything() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let (publ, _) = publish(
        &router,
        EndpointKey(1),
        PublishOpts::default(),
        ev_tx.clone(),
    )
    .await;
    let (mut sub, _, _) = subscribe(
        &router,
        EndpointKey(2),
        EndpointKey(1),
        CHROME,
        false,
        ev_tx,
    )
    .await;
    let s = router.stats();
    assert_eq!(
        (
            s.peer_connections,
            s.publishers,
            s.subscribers,
            s.shard_peers
        ),
        (2, 1, 1, 2)
    );

    send_packets(&publ.video, VIDEO_SSRC, CHROME.vp8, 0, 50, PACE).await;
    let mut rx = loop {
        let t = sub.next_track().await;
        if t.kind().await == RtpCodecKind::Video {
            break read_track(t);
        }
    };
    let seen = wait_packets(&mut rx, 50, WAIT).await;
    assert_eq!(seen.packets, 50);

    router.release(EndpointKey(1)).await; // also closes the subscriber PC it feeds
    assert_idle(&router);
    router.release(EndpointKey(2)).await; // already gone: ignored
    router.release(EndpointKey(99)).await; // unknown: ignored

    // Further packets go nowhere.
    let _ = publ
        .video
        .write_rtp(synthetic_packet(50, VIDEO_SSRC, CHROME.vp8, 400))
        .await;
    send_packets(&publ.video, VIDEO_SSRC, CHROME.vp8, 51, 30, PACE).await;
    let more =
        tokio::time::timeout(Duration::from_millis(500), rx.wait_for(|s| s.packets > 50)).await;
    assert!(more.is_err(), "no delivery after release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_message_reaches_subscriber() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        data_channel: true,
        ..Default::default()
    };
    let (publ, pub_dc) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;
    let pub_dc = pub_dc.expect("publisher channel");
    let (_pub_open, _pub_msgs) = read_channel(pub_dc.clone());
    let (sub, _, sub_dc) =
        subscribe(&router, EndpointKey(2), EndpointKey(1), CHROME, true, ev_tx).await;
    let (mut open, mut msgs) = read_channel(sub_dc.expect("subscriber channel"));
    tokio::time::timeout(WAIT, open.wait_for(|o| *o))
        .await
        .expect("subscriber channel opens")
        .expect("watch open");

    // The router's side of the subscriber channel may open a moment after the client's; send
    // until one arrives (bounded), then check content.
    let got = tokio::time::timeout(WAIT, async {
        let mut i = 0u32;
        loop {
            let _ = pub_dc.send_text(&format!("hello {i}")).await;
            i += 1;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), msgs.recv()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("a publisher data-channel message reaches the subscriber");
    assert!(got.starts_with("hello "), "got {got:?}");
    stats_when(&router, "the relayed message counted", |s| {
        s.data_messages_relayed >= 1
    })
    .await;
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
    publ.client.close().await;
    sub.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_sdp_is_an_error_not_a_panic() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let garbage = [
        "",
        "hello",
        "v=0\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11\r\nm=foo 9 RTP/AVP x y z\r\na=mid:0\r\n",
        "\u{0}\u{1}\u{2}m=audio\r\n",
    ];
    for (i, g) in garbage.iter().enumerate() {
        let r = router
            .publish(
                EndpointKey(1000 + i as u64),
                (*g).to_owned(),
                false,
                ev_tx.clone(),
            )
            .await;
        match r {
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.len() < 160 && !text.contains('\n'),
                    "short error: {text:?}"
                );
                assert!(!matches!(e, PublishError::Unavailable));
            }
            Ok(_) => panic!("garbage #{i} accepted"),
        }
    }
    // A valid publisher so subscribe reaches offer parsing.
    let (_publ, _) = publish(
        &router,
        EndpointKey(1),
        PublishOpts::default(),
        ev_tx.clone(),
    )
    .await;
    for (i, g) in garbage.iter().enumerate() {
        let r = router
            .subscribe(
                EndpointKey(2000 + i as u64),
                EndpointKey(1),
                (*g).to_owned(),
                ev_tx.clone(),
            )
            .await;
        assert!(r.is_err(), "garbage #{i} accepted for subscribe");
    }
    let s = router.stats();
    assert_eq!(
        (s.peer_connections, s.subscribers, s.publishers),
        (1, 0, 1),
        "{s:?}"
    );
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_and_duplicates() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    // Harmless: unknown endpoint, mDNS and empty candidates.
    for c in [
        "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
        "candidate:1 1 udp 2122260223 abcd-1234.local 5000 typ host",
        "",
    ] {
        router
            .add_candidate(
                EndpointKey(77),
                IceCandidate {
                    candidate: c.to_owned(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            )
            .await;
    }
    let client = Client::new(CHROME).await;
    client.add_recv(RtpCodecKind::Video).await;
    let offer = client.offer(true).await;
    assert!(matches!(
        router
            .subscribe(EndpointKey(2), EndpointKey(1), offer.clone(), ev_tx.clone())
            .await,
        Err(SubscribeError::PublisherNotFound)
    ));
    let (_publ, _) = publish(
        &router,
        EndpointKey(1),
        PublishOpts::default(),
        ev_tx.clone(),
    )
    .await;
    let c2 = Client::new(CHROME).await;
    c2.add_send_track(RtpCodecKind::Video, 5, false).await;
    let offer2 = c2.offer(true).await;
    assert!(matches!(
        router
            .publish(EndpointKey(1), offer2, false, ev_tx.clone())
            .await,
        Err(PublishError::AlreadyExists)
    ));
    // mDNS candidate for a live endpoint: ignored silently.
    router
        .add_candidate(
            EndpointKey(1),
            IceCandidate {
                candidate: "candidate:1 1 udp 2122260223 abcd-1234.local 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
            },
        )
        .await;
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_ice_both_ways() {
    let router = router();
    let (ev_tx, mut ev_rx) = events();

    // Publisher client: offer without waiting for gathering, candidates trickled.
    let client = Client::new(CHROME).await;
    let video = client
        .add_send_track(RtpCodecKind::Video, VIDEO_SSRC, false)
        .await;
    let offer = client.offer(false).await;
    let answer = router
        .publish(EndpointKey(1), offer, false, ev_tx)
        .await
        .expect("publish");
    // Only trickled server candidates may be used: strip them from the answer.
    let stripped: String = answer
        .split("\r\n")
        .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>();
    let stripped = stripped.trim_end_matches("\r\n").to_owned() + "\r\n";
    client.apply_answer(stripped).await;

    let t0 = std::time::Instant::now();
    let Client {
        pc,
        mut state,
        mut candidates,
        ..
    } = client;
    let mut client_cands = 0;
    let mut server_cands = 0;
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                c = candidates.recv() => {
                    if let Some(c) = c {
                        client_cands += 1;
                        router.add_candidate(EndpointKey(1), IceCandidate {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_m_line_index: c.sdp_mline_index,
                        }).await;
                    }
                }
                ev = ev_rx.recv() => {
                    if let Some(MediaEvent::LocalCandidate { endpoint, candidate }) = ev {
                        assert_eq!(endpoint, EndpointKey(1));
                        assert!(candidate.candidate.starts_with("candidate:"));
                        server_cands += 1;
                        pc.add_ice_candidate(to_init(&candidate)).await.expect("client takes server candidate");
                    }
                }
                r = state.wait_for(|s| *s == webrtc::peer_connection::RTCPeerConnectionState::Connected) => {
                    r.expect("state watch");
                    break;
                }
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "trickle connect timed out");
    eprintln!(
        "trickle: connected in {:?} ({client_cands} client / {server_cands} server candidates)",
        t0.elapsed()
    );
    assert!(server_cands >= 1, "server candidates came as events");
    assert!(
        client_cands >= 1,
        "client candidates went through add_candidate"
    );
    send_packets(&video, VIDEO_SSRC, CHROME.vp8, 0, 10, PACE).await;
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_failure_is_reported_as_failed_event() {
    // A connection whose DTLS handshake fails is reported Failed, by the DTLS failure itself
    // or at the latest by the connect timeout.
    let router = router_with(|c| c.connect_timeout = Duration::from_secs(2));
    let (ev_tx, mut ev_rx) = events();
    let client = Client::new(CHROME).await;
    client
        .add_send_track(RtpCodecKind::Video, VIDEO_SSRC, false)
        .await;
    let offer = client.offer(true).await;
    // Corrupt the client's certificate fingerprint: ICE connects, DTLS verification fails.
    let tampered: String = offer
        .split("\r\n")
        .map(|l| {
            if let Some(rest) = l.strip_prefix("a=fingerprint:sha-256 ") {
                let flipped: String = rest
                    .chars()
                    .map(|c| match c {
                        '0' => '1',
                        '1' => '0',
                        'A' => 'B',
                        'B' => 'A',
                        other => other,
                    })
                    .collect();
                format!("a=fingerprint:sha-256 {flipped}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    let tampered = tampered.trim_end_matches("\r\n").to_owned() + "\r\n";
    let answer = router
        .publish(EndpointKey(1), tampered, false, ev_tx)
        .await
        .expect("offer accepted (the fingerprint is only checked during DTLS)");
    client.apply_answer(answer).await;
    let failed = tokio::time::timeout(WAIT, async {
        loop {
            match ev_rx.recv().await {
                Some(MediaEvent::Failed {
                    endpoint,
                    description,
                }) => break (endpoint, description),
                Some(_) => continue,
                None => panic!("event channel closed"),
            }
        }
    })
    .await
    .expect("a Failed event arrives");
    assert_eq!(failed.0, EndpointKey(1));
    assert!(!failed.1.is_empty() && failed.1.len() < 80, "{failed:?}");
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
    client.close().await;
}
