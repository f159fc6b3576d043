//! Several announced addresses on the sharded engine: a shard bound to `::` (dual-stack)
//! announces an IPv4 and an IPv6 address, one UDP and one ICE-TCP candidate each, and carries
//! media from an IPv4-only client to an IPv6-only one on its one port.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use media::{EndpointKey, MediaConfig, MediaRouter};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

const PACE: Duration = Duration::from_millis(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_publisher_reaches_an_ipv6_subscriber_through_one_dual_stack_shard() {
    init_logs();
    let v4: IpAddr = "127.0.0.1".parse().expect("ip");
    let v6: IpAddr = "::1".parse().expect("ip");
    let router = MediaRouter::start(MediaConfig {
        shards: 1,
        udp_port: 0,
        bind_ip: "::".parse().expect("ip"),
        public_ips: vec![v4, v6],
        ..MediaConfig::default()
    })
    .expect("a dual-stack shard on an ephemeral port");
    let port = router.shard_addrs()[0].port();
    let (ev_tx, _ev_rx) = events();

    // IPv4 publisher (the common helper's client is on 127.0.0.1).
    let (publ, _) = publish(
        &router,
        EndpointKey(1),
        PublishOpts::default(),
        ev_tx.clone(),
    )
    .await;
    for want in [
        format!(" udp 2130706431 127.0.0.1 {port} typ host\r\n"),
        format!(" 127.0.0.1 {port} typ host tcptype passive"),
        format!(" ::1 {port} typ host\r\n"),
        format!(" ::1 {port} typ host tcptype passive"),
    ] {
        assert!(
            publ.answer.contains(&want),
            "the answer announces `{want}`:\n{}",
            publ.answer
        );
    }

    // IPv6 subscriber.
    let mut sub = Client::ipv6(CHROME).await;
    sub.add_recv(RtpCodecKind::Audio).await;
    sub.add_recv(RtpCodecKind::Video).await;
    let offer = sub.offer(true).await;
    assert!(
        offer.contains(" ::1 "),
        "the subscriber offers IPv6:\n{offer}"
    );
    assert!(!offer.contains(" 127.0.0.1 "), "and only IPv6:\n{offer}");
    let answer = router
        .subscribe(EndpointKey(2), EndpointKey(1), offer, ev_tx.clone())
        .await
        .expect("subscribe");
    sub.apply_answer(answer).await;
    sub.connected().await;

    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, CHROME.vp8, 1000, 200, PACE).await;
    });
    let mut reader = None;
    while reader.is_none() {
        let t = sub.next_track().await;
        if t.kind().await == RtpCodecKind::Video {
            reader = Some(read_track(t));
        }
    }
    sender.await.expect("sender task");
    let mut rx = reader.expect("a video track");
    let seen = wait_packets(&mut rx, 200, WAIT).await;
    assert_eq!(seen.packets, 200, "every video packet from IPv4 to IPv6");
    assert_eq!(seen.corrupt, 0);
    router.release(EndpointKey(2)).await;
    router.release(EndpointKey(1)).await;
    publ.client.close().await;
    sub.close().await;
}
