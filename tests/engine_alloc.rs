//! The v2 engine's forwarding objects (`media::engine::{track, leg, nack_ring, keyframe,
//! sender_report}`) allocate nothing per packet: a counting global allocator (`stats_alloc`)
//! watches a steady-state run of forwarding to several legs (extensions stamped, one leg with
//! RTX, one congested now and then so that it waits for keyframes), NACKs answered by plain
//! and RTX retransmissions, keyframe requests, and sender and receiver reports; nor does the
//! shard's send path (GSO planning and `sendmmsg`).
//!
//! One test in this binary on purpose: the allocator's counters are global.

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use media::engine::keyframe::Codec;
use media::engine::leg::{
    abs_send_time, extension_rules, uri, Leg, LegConfig, LegId, Outbound, PtMap, Sent,
};
use media::engine::sender_report::{ntp_middle, SenderReport};
use media::engine::track::{Egress, Track, TrackConfig};
use media::engine::wire::{Mid, Pt, SeqNo, Ssrc};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const LEGS: u64 = 4;
const CONGESTED: LegId = LegId(2);

/// Preallocated buffer, one transport counter, no queue: what a shard's egress looks like to
/// the track. Leg 2 is congested while `full` is set.
struct Sink {
    buf: Vec<u8>,
    transport_seq: u16,
    abs: u32,
    full: bool,
    sent: u64,
    bytes: u64,
}

impl Egress for Sink {
    fn outbound(&mut self, leg: LegId) -> Option<Outbound<'_>> {
        if self.full && leg == CONGESTED {
            return None;
        }
        Some(Outbound {
            buf: &mut self.buf,
            transport_seq: &mut self.transport_seq,
            abs_send_time: self.abs,
        })
    }

    fn commit(&mut self, _leg: LegId, sent: Sent) {
        self.sent += 1;
        self.bytes += sent.len as u64 + u64::from(black_box(self.buf[sent.len - 1]));
    }
}

/// A browser-like VP8 packet: abs-send-time, transport-cc and mid in the one-byte form, a
/// 1100-byte payload; every 30th packet starts a keyframe.
fn packet(seq: u16) -> Vec<u8> {
    let mut b = vec![0x90, 96];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(u32::from(seq / 3) * 3000).to_be_bytes());
    b.extend_from_slice(&0x1111_1111u32.to_be_bytes());
    b.extend_from_slice(&[0xBE, 0xDE, 0, 3]);
    b.extend_from_slice(&[0x32, 1, 2, 3, 0x51, 0, 7, 0x90, b'0', 0, 0, 0]);
    let descriptor: &[u8] = if seq % 30 == 0 {
        &[0x10, 0x00]
    } else if seq % 3 == 0 {
        &[0x10, 0x01]
    } else {
        &[0x00, 0x01]
    };
    b.extend_from_slice(descriptor);
    b.resize(b.len() + 1100, 0xA5);
    b
}

fn leg(id: u64, rtx: bool, now: Instant) -> Leg {
    let mut c = LegConfig::new(Ssrc(0x2000 + id as u32), 90_000);
    c.payload_types = vec![PtMap {
        publisher: Pt(96),
        subscriber: Pt(100),
        rtx: rtx.then_some(Pt(101)),
    }];
    c.rtx_ssrc = rtx.then_some(Ssrc(0x3000 + id as u32));
    c.extensions = extension_rules(
        &[
            (3, uri::ABS_SEND_TIME),
            (5, uri::TRANSPORT_CC),
            (9, uri::MID),
        ],
        &[
            (2, uri::ABS_SEND_TIME),
            (4, uri::TRANSPORT_CC),
            (1, uri::MID),
        ],
    );
    c.mid = Some(Mid(id.to_string()));
    c.gate_on_keyframes = true;
    c.first_seq = SeqNo(65_000);
    Leg::new(LegId(id), &c, now)
}

#[test]
fn forwarding_retransmitting_and_reporting_allocate_nothing() {
    let t0 = Instant::now();
    let mut track = Track::new(&TrackConfig::new(90_000, vec![(Pt(96), Codec::Vp8)]));
    for id in 1..=LEGS {
        track.add_leg(leg(id, id == 3, t0), t0);
    }
    let packets: Vec<Vec<u8>> = (0..4_000u16).map(packet).collect();
    let mut sink = Sink {
        buf: vec![0; 1500],
        transport_seq: 0,
        abs: 0,
        full: false,
        sent: 0,
        bytes: 0,
    };
    let nacks: Vec<[NackPair; 2]> = (0..4_000u16)
        .map(|i| {
            let out = 65_000u16.wrapping_add(i);
            [
                NackPair {
                    packet_id: out.wrapping_sub(20),
                    lost_packets: 0b101,
                },
                NackPair::new(out.wrapping_sub(3)),
            ]
        })
        .collect();
    let mut sr_buf = [0u8; SenderReport::LEN];
    let mut pli = 0u32;

    let mut run = |range: std::ops::Range<usize>, sink: &mut Sink, track: &mut Track| {
        for i in range {
            let now = t0 + Duration::from_micros(i as u64 * 3_000);
            sink.abs = abs_send_time(now - t0);
            sink.full = i % 97 < 3;
            let _ = track.on_rtp(&packets[i], now, sink);
            if i % 10 == 0 {
                track.on_nack(LegId(1 + (i as u64 / 10) % LEGS), &nacks[i], now, sink);
            }
            if i % 200 == 0 {
                track.on_keyframe_request(LegId(4), now);
                track.on_sender_report(Ssrc(0x1111_1111), (i as u64) << 32, i as u32, now);
            }
            if track.poll_keyframe_request(now) {
                pli += 1;
            }
            let mut srs = [(LegId(0), 0u32); LEGS as usize];
            let mut n = 0;
            track.poll_sender_reports(now, |id, sr| {
                sr.write_to(&mut sr_buf);
                srs[n] = (id, ntp_middle(sr.ntp));
                n += 1;
            });
            for (id, lsr) in &srs[..n] {
                track.on_receiver_report(*id, *lsr, 655, now + Duration::from_millis(15));
            }
        }
    };

    // Warm up: every slot of the ring and of the legs' histories written once.
    run(0..1_500, &mut sink, &mut track);
    let before = sink.sent;
    let region = Region::new(GLOBAL);
    run(1_500..4_000, &mut sink, &mut track);
    let change = region.change();

    let sent = sink.sent - before;
    assert!(sent > 2_500 * (LEGS - 1), "forwarded {sent}");
    let waits = track.leg(CONGESTED).unwrap().stats().keyframe_waits;
    assert!(
        waits > 10,
        "the congested leg waited for keyframes {waits} times"
    );
    let l3 = track.leg(LegId(3)).unwrap().stats();
    let l1 = track.leg(LegId(1)).unwrap().stats();
    assert!(
        l3.rtx_packets > 0 && l1.retransmissions > 0,
        "{l3:?} {l1:?}"
    );
    assert!(pli > 0 && track.stats().sender_reports_out > 0);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "{sent} packets sent, {change:?}"
    );

    forwarder_allocates_nothing_per_packet();
    sending_windows_allocates_nothing();
}

/// The shard-level forwarding path (`media::engine::forward::Forwarder`): `RtpIn` events of a
/// publisher's video track (and then its clear bytes, as the shard's own opening hands them)
/// fanned out to 9 subscriber legs, re-marshalled, rewritten, sealed
/// (AES-GCM) into pooled buffers and drained, plus subscribers' NACKs answered through the
/// same queue. The packets and RTCP are built before the measured region (rtc allocates them
/// when it parses what arrives, once per received packet whatever the fan-out). Part of the
/// one test: the counters are global.
fn forwarder_allocates_nothing_per_packet() {
    use media::engine::forward::{ForwardConfig, Forwarder, Source};
    use media::engine::peer::{
        CodecSpec, MediaKind, PeerId, PublishedTrack, PublisherAnswer, SentTrack, SubscriberAnswer,
    };
    use media::engine::shard::{Shard, ShardConfig, ShardEvent};
    use media::engine::srtp::{MasterKey, SrtpKeys, SrtpProfile};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    use rtc::shared::marshal::Unmarshal;

    const SUBS: u64 = 9;
    let t0 = Instant::now();
    let vp8 = |pt: u8| CodecSpec {
        pt: Pt(pt),
        mime: "video/VP8".to_owned(),
        clock_rate: 90_000,
        channels: 0,
        fmtp: String::new(),
        rtcp_feedback: vec![],
    };
    let mut shard = Shard::new(
        ShardConfig::new("192.0.2.1:3478".parse().expect("addr")),
        t0,
    )
    .expect("shard");
    let mut fw = Forwarder::new(ForwardConfig::default());
    let publisher = PeerId(1);
    fw.add_publisher(
        publisher,
        &PublisherAnswer {
            sdp: format!(
                "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=extmap:3 {}\r\na=extmap:5 {}\r\na=extmap:9 {}\r\n",
                uri::ABS_SEND_TIME,
                uri::TRANSPORT_CC,
                uri::MID
            ),
            tracks: vec![PublishedTrack {
                mid: Mid("1".into()),
                kind: MediaKind::Video,
                codecs: vec![vp8(96)],
            }],
            loopback: vec![],
        },
    );
    let keys = SrtpKeys {
        profile: SrtpProfile::AeadAes128Gcm,
        local: MasterKey::new(&[7; 16], &[9; 12]).expect("key"),
        remote: MasterKey::new(&[8; 16], &[10; 12]).expect("key"),
    };
    for i in 0..SUBS {
        let sub = PeerId(10 + i);
        fw.add_subscriber(
            sub,
            &SubscriberAnswer {
                sdp: format!(
                    "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 100\r\na=mid:0\r\na=extmap:2 {}\r\na=extmap:4 {}\r\na=extmap:1 {}\r\n",
                    uri::ABS_SEND_TIME,
                    uri::TRANSPORT_CC,
                    uri::MID
                ),
                tracks: vec![SentTrack {
                    index: 0,
                    mid: Mid("0".into()),
                    kind: MediaKind::Video,
                    ssrc: Ssrc(0x5000 + i as u32),
                    pt: Pt(100),
                    codecs: vec![vp8(100)],
                }],
                data: false,
            },
            &[Source {
                publisher,
                mid: Mid("1".into()),
            }],
            t0,
        );
        fw.install_keys(sub, &keys).expect("keys");
        fw.set_path(
            sub,
            "192.0.2.1:3478".parse().expect("addr"),
            format!("198.51.100.1:{}", 40_000 + i)
                .parse()
                .expect("addr"),
            rtc::shared::TransportProtocol::UDP,
        );
    }
    let _ = fw.handle_event(
        &mut shard,
        ShardEvent::TrackOpen {
            peer: publisher,
            mid: Some(Mid("1".into())),
            kind: Some(MediaKind::Video),
            ssrc: Ssrc(0x1111_1111),
            rid: None,
        },
        t0,
    );
    let rtp = |seq: u16| {
        let raw = packet(seq);
        ShardEvent::RtpIn {
            peer: publisher,
            packet: rtc::rtp::packet::Packet::unmarshal(&mut &raw[..]).expect("rtp"),
        }
    };
    let at = |seq: u16| t0 + Duration::from_micros(u64::from(seq) * 3_000);
    // (event, time); drained datagrams counted, and the last sequence number sent to each
    // subscriber (by destination port) noted.
    let mut out = 0u64;
    let mut bytes = 0u64;
    let mut last_seq = [0u16; SUBS as usize];
    let mut run = |events: Vec<(ShardEvent, Instant)>,
                   fw: &mut Forwarder,
                   shard: &mut Shard,
                   last_seq: &mut [u16; SUBS as usize]| {
        for (ev, now) in events {
            let _ = fw.handle_event(shard, ev, now);
            while let Some(d) = fw.peek_transmit() {
                out += 1;
                bytes += d.bytes.len() as u64 + u64::from(black_box(d.bytes[0]));
                last_seq[usize::from(d.dest.port() - 40_000)] =
                    u16::from_be_bytes([d.bytes[2], d.bytes[3]]);
                fw.pop_transmit();
            }
        }
    };
    // Warm-up: source packets 0..1500 (every pool buffer, ring slot and leg history used).
    const WARM: u16 = 1_500;
    run(
        (0..WARM).map(|s| (rtp(s), at(s))).collect(),
        &mut fw,
        &mut shard,
        &mut last_seq,
    );
    // Measured: 1500..4000, and every 10th packet a NACK from one subscriber for the packet
    // its leg sent 5 before (output numbers are continuous: the warm-up's last + distance).
    let last = last_seq;
    let mut events = Vec::new();
    for seq in WARM..4_000u16 {
        events.push((rtp(seq), at(seq)));
        if seq % 10 == 5 {
            let k = u64::from(seq / 10) % SUBS;
            let lost = last[k as usize].wrapping_add(seq - 5 - (WARM - 1));
            events.push((
                ShardEvent::RtcpIn {
                    peer: PeerId(10 + k),
                    packets: vec![Box::new(TransportLayerNack {
                        sender_ssrc: 1,
                        media_ssrc: 0x5000 + k as u32,
                        nacks: vec![NackPair {
                            packet_id: lost,
                            lost_packets: 0,
                        }],
                    })],
                },
                at(seq),
            ));
        }
    }
    let before = fw.stats();
    let region = Region::new(GLOBAL);
    run(events, &mut fw, &mut shard, &mut last_seq);
    let change = region.change();
    let st = fw.stats();
    let forwarded = st.queued - before.queued;
    assert!(forwarded > 2_000 * SUBS, "forwarded {forwarded}, {st:?}");
    assert_eq!(st.seal_errors, 0, "{st:?}");
    assert_eq!(st.nacks_in - before.nacks_in, 250, "{st:?}");
    assert_eq!(
        st.retransmitted - before.retransmitted,
        250,
        "every NACK answered byte-identically: {st:?}"
    );
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "forwarder: {forwarded} datagrams sealed, {change:?}, {st:?}"
    );
    println!("forwarder 1 → {SUBS}: {forwarded} sealed datagrams ({bytes} bytes), {change:?}");

    // The shard's own opening hands the forwarder clear bytes (`Forwarder::on_clear_rtp`), not
    // rtc's parsed packets: the same fan-out, measured from packets built beforehand.
    let clear: Vec<Vec<u8>> = (4_000..6_000u16).map(packet).collect();
    let before = fw.stats();
    let region = Region::new(GLOBAL);
    for (i, p) in clear.iter().enumerate() {
        fw.on_clear_rtp(&mut shard, publisher, p, at(4_000 + i as u16));
        while let Some(d) = fw.peek_transmit() {
            black_box(d.bytes[0]);
            fw.pop_transmit();
        }
    }
    assert_none_per_datagram(
        "clear bytes",
        region.change(),
        before,
        fw.stats(),
        1_500 * SUBS,
    );

    // A read batch's consecutive packets of the publisher, each leg taking them together
    // (`Forwarder::on_clear_rtp_run`): a frame of 5 packets per call. The first frame is the
    // warm-up: the buffer pool grows once to a frame's fan-out.
    let clear: Vec<Vec<u8>> = (6_000..8_000u16).map(packet).collect();
    let mut before = fw.stats();
    let mut region = Region::new(GLOBAL);
    for (k, frame) in clear.chunks(5).enumerate() {
        if k == 1 {
            before = fw.stats();
            region = Region::new(GLOBAL);
        }
        let mut packets: [&[u8]; 5] = [&[]; 5];
        for (slot, p) in packets.iter_mut().zip(frame) {
            *slot = p;
        }
        let mut done = 0;
        while done < frame.len() {
            done += fw.on_clear_rtp_run(
                &mut shard,
                publisher,
                &packets[done..frame.len()],
                at(6_000 + 5 * k as u16),
            );
            while let Some(d) = fw.peek_transmit() {
                black_box(d.bytes[0]);
                fw.pop_transmit();
            }
        }
    }
    assert_none_per_datagram(
        "runs of clear bytes",
        region.change(),
        before,
        fw.stats(),
        1_500 * SUBS,
    );
}

/// The forwarder sealed more than `least` datagrams between `before` and `after`, and the
/// allocator saw no allocation or reallocation (`change`) meanwhile.
fn assert_none_per_datagram(
    what: &str,
    change: stats_alloc::Stats,
    before: media::engine::forward::ForwardStats,
    after: media::engine::forward::ForwardStats,
    least: u64,
) {
    let forwarded = after.queued - before.queued;
    assert!(
        forwarded > least,
        "{what}: forwarded {forwarded}, {after:?}"
    );
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "forwarder, {what}: {forwarded} datagrams sealed, {change:?}, {after:?}"
    );
}

/// The shard's send path (`media::engine::udp_send::UdpSender`): windows of 45 sealed-size
/// datagrams (a frame of 5 packets fanned out to 9 clients) planned into GSO runs and sent
/// over real UDP on 127.0.0.1. Part of the one test: the counters are global.
fn sending_windows_allocates_nothing() {
    use media::engine::udp_send::{gso_supported, UdpSender};
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;

    let out = UdpSocket::bind("127.0.0.1:0").expect("bind the sending socket");
    // Unread receivers: once their buffers are full the kernel drops on their side, the send
    // itself still succeeds.
    let receivers: Vec<UdpSocket> = (0..9)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a receiver"))
        .collect();
    let dests: Vec<SocketAddr> = receivers
        .iter()
        .map(|r| r.local_addr().expect("bound address"))
        .collect();
    let packets: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1_216]).collect();
    let window: Vec<(SocketAddr, &[u8])> = packets
        .iter()
        .flat_map(|p| dests.iter().map(move |d| (*d, &p[..])))
        .collect();
    let mut sender = UdpSender::new(gso_supported(&out));
    for _ in 0..10 {
        sender.send(out.as_raw_fd(), &window);
    }
    let warm = sender.take_stats();
    assert_eq!(warm.datagrams_sent, 450, "{warm:?}");
    let region = Region::new(GLOBAL);
    for _ in 0..200 {
        sender.send(out.as_raw_fd(), black_box(&window));
    }
    let change = region.change();
    let st = sender.take_stats();
    assert_eq!(st.datagrams_sent, 200 * 45, "{st:?}");
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "send path: {st:?}, {change:?}"
    );
    println!("send path: {st:?}, {change:?}");
}
