//! Loss recovery end to end: a UDP relay between the router and a subscribing client drops
//! chosen RTP packets on their first trip (the 20th, 40th and 60th of the subscriber's leg: it
//! has its own sequence space, so the relay counts from the first sequence number it sees); the client's NACKs must make the router's subscriber
//! connection send them again, so every packet arrives intact. Real UDP on 127.0.0.1, real
//! DTLS-SRTP (the relay reads only the clear RTP header); every wait is bounded.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use media::EndpointKey;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::net::UdpSocket;

const PACE: Duration = Duration::from_millis(5);
const SENT: u16 = 80;
const DROPPED: [u16; 3] = [20, 40, 60];

/// Server→client RTP (not RTCP) packets seen by the relay, by position in the leg's sequence
/// space (0 = the first sequence number seen).
type Seen = Arc<Mutex<HashMap<u16, u32>>>;

/// Whether `b` is an RTP packet (not RTCP, STUN or DTLS), by RFC 7983 demultiplexing and the
/// RTCP packet-type range.
fn rtp_seq(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || !(128..=191).contains(&b[0]) || (192..=223).contains(&b[1]) {
        return None;
    }
    Some(u16::from_be_bytes([b[2], b[3]]))
}

/// Relays between the client (whoever is not `server`) and `server`; drops the first copy of
/// every server→client RTP packet whose position is in `DROPPED`.
fn spawn_relay(sock: UdpSocket, server: SocketAddr, seen: Seen) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut first_seq: Option<u16> = None;
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let pkt = &buf[..n];
            if from == server {
                let Some(to) = client else { continue };
                if let Some(seq) = rtp_seq(pkt) {
                    let seq = seq.wrapping_sub(*first_seq.get_or_insert(seq));
                    let copies = {
                        let mut seen = seen.lock().expect("relay map lock");
                        let c = seen.entry(seq).or_insert(0);
                        *c += 1;
                        *c
                    };
                    if copies == 1 && DROPPED.contains(&seq) {
                        continue;
                    }
                }
                let _ = sock.send_to(pkt, to).await;
            } else {
                client = Some(from);
                let _ = sock.send_to(pkt, server).await;
            }
        }
    })
}

/// The `127.0.0.1 <port>` of the first host candidate in `sdp`.
fn host_candidate_port(sdp: &str) -> u16 {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"127.0.0.1")).then(|| f.get(5)?.parse().ok())?
        })
        .expect("the router's answer carries a 127.0.0.1 host candidate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_recovered_by_nack_retransmission() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;

    // The subscriber offers without candidates, so the router can reach it only through the
    // relay (as a peer-reflexive candidate), and learns of the router only the relay's address.
    let client = Client::new(CHROME).await;
    client.add_recv(RtpCodecKind::Video).await;
    let offer: String = client
        .offer(true)
        .await
        .lines()
        .filter(|l| !l.starts_with("a=candidate:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let answer = router
        .subscribe(EndpointKey(2), EndpointKey(1), offer, ev_tx)
        .await
        .expect("router accepts the subscribe offer");
    let server_port = host_candidate_port(&answer);
    let relay = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let relay_port = relay.local_addr().expect("relay address").port();
    let seen: Seen = Arc::default();
    let relay_task = spawn_relay(
        relay,
        SocketAddr::from(([127, 0, 0, 1], server_port)),
        Arc::clone(&seen),
    );
    let answer = answer.replace(
        &format!("127.0.0.1 {server_port} typ host"),
        &format!("127.0.0.1 {relay_port} typ host"),
    );
    client.apply_answer(answer).await;
    client.connected().await;

    let mut client = client;
    let video = publ.video.clone();
    let sender = tokio::spawn(async move {
        send_packets(&video, VIDEO_SSRC, CHROME.vp8, 0, SENT, PACE).await;
    });
    let mut rx = read_track(client.next_track().await);
    sender.await.expect("sender");
    let got = wait_packets(&mut rx, u64::from(SENT), Duration::from_secs(10)).await;
    let copies: Vec<u32> = {
        let seen = seen.lock().expect("relay map lock");
        DROPPED
            .iter()
            .map(|s| seen.get(s).copied().unwrap_or(0))
            .collect()
    };
    eprintln!(
        "nack recovery: {}/{SENT} delivered, copies of the dropped packets {copies:?}",
        got.packets
    );
    assert!(
        copies.iter().all(|c| *c >= 2),
        "every dropped packet was sent again: {copies:?}"
    );
    assert_eq!(
        got.packets,
        u64::from(SENT),
        "every packet arrives, the dropped ones after a NACK: {got:?}"
    );
    assert_eq!(got.corrupt, 0);

    relay_task.abort();
    client.close().await;
    router.release(EndpointKey(1)).await;
}
