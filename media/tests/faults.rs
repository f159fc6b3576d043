//! Network faults between the router and a subscriber: a seeded impairment relay (5 % random
//! loss each way, 0–30 ms random delay per packet, which reorders) carries a synthetic video
//! stream, and a model of a video decoder on the subscriber says whether the picture keeps
//! going. This proves that the two recovery mechanisms a browser relies on work through roomd on
//! a bad path: NACK retransmission (answered from the router's history for the subscriber) and
//! keyframe requests (a PLI from the subscriber reaches the publisher, whose next frame is a
//! keyframe). At 5 % loss NACKs alone keep every frame complete (no keyframe is needed); the
//! controls on the same path without retransmission show that the thresholds can fail, and
//! that there the PLI → keyframe path is what restarts decoding after each loss (without it,
//! decoding never restarts).
//!
//! The stream: 30 frames/s, a delta frame is 5 RTP packets and a keyframe 15; the payload says
//! which frame a packet belongs to, its index and the frame's packet count. The decoder model
//! ("keeps decoding", made concrete):
//! - a frame is *complete* when every packet of it arrived within `PLAYOUT_DELAY` of its
//!   sending (the jitter buffer waits that long for retransmissions, then gives up on it);
//! - a frame is *decodable* when it is complete and the reference chain is intact: it is a
//!   keyframe, or every frame since the last complete keyframe was decodable;
//! - a frame that misses its deadline breaks the chain; the decoder then sends a PLI, again
//!   every `PLI_RETRY` until a complete keyframe restores the chain, and skips to a complete
//!   keyframe as soon as it has one (as Chrome does).
//!
//! With recovery, over 300 frames (10 s) at least 90 % must be complete and decodable, and no
//! stretch without a decodable frame may last longer than 1 s (30 frames). A receiver that
//! needed more than one frame in ten repeated or frozen, or froze for over a second, would be
//! visibly broken; without retransmission the same path leaves only ≈ 0.95⁵ ≈ 77 % of delta
//! frames complete, which the control asserts falls below the threshold.
//!
//! Real UDP on 127.0.0.1, real DTLS-SRTP (the relay reads only the clear RTP header); every
//! wait is bounded; the sender is paced by an interval timer.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use media::EndpointKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Frames per second of the synthetic stream.
const FPS: u32 = 30;
/// Frames measured (10 s).
const MEASURED_FRAMES: u32 = 300;
const DELTA_PACKETS: u8 = 5;
const KEY_PACKETS: u8 = 15;
const PAYLOAD_BYTES: usize = 1000;
/// How long the decoder waits for a frame's missing packets after it was sent.
const PLAYOUT_DELAY: Duration = Duration::from_millis(500);
/// How often the decoder repeats its keyframe request while the chain is broken.
const PLI_RETRY: Duration = Duration::from_millis(250);
/// Impairment: random loss per packet, each direction, and the upper bound of the random delay.
const LOSS: f64 = 0.05;
const MAX_JITTER: Duration = Duration::from_millis(30);
/// The thresholds of "keeps decoding".
const MIN_RATIO: f64 = 0.90;
const MAX_FROZEN_FRAMES: u32 = FPS; // 1 s

// ---------------------------------------------------------------------------------------------
// The impairment relay.
// ---------------------------------------------------------------------------------------------

/// How the relay treats packets once `Relay::impair` is set.
#[derive(Clone, Copy, Debug)]
struct Impairment {
    seed: u64,
    /// Drop every server→client RTP packet whose sequence number went through before, i.e.
    /// every retransmission: NACKs then cannot help.
    drop_retransmissions: bool,
}

#[derive(Debug, Default)]
struct RelayCounters {
    /// Server→client and client→server datagrams forwarded / dropped at random while impairing.
    down_forwarded: AtomicU64,
    down_dropped: AtomicU64,
    up_forwarded: AtomicU64,
    up_dropped: AtomicU64,
    /// Server→client RTP packets that were a second (or later) copy of a sequence number.
    retransmissions: AtomicU64,
    /// Retransmissions the relay discarded (`drop_retransmissions`).
    retransmissions_dropped: AtomicU64,
}

struct Relay {
    /// Unset, the relay passes everything untouched.
    impair: Arc<AtomicBool>,
    counters: Arc<RelayCounters>,
    task: tokio::task::JoinHandle<()>,
}

/// The sequence number of `b` if it is an RTP packet (not RTCP, STUN or DTLS), by RFC 7983
/// demultiplexing and the RTCP packet-type range.
fn rtp_seq(b: &[u8]) -> Option<u16> {
    if b.len() < 12 || !(128..=191).contains(&b[0]) || (192..=223).contains(&b[1]) {
        return None;
    }
    Some(u16::from_be_bytes([b[2], b[3]]))
}

/// Relays datagrams between the client (whoever is not `server`) and `server`. Once `impair` is
/// set, each datagram is dropped with probability `LOSS` and otherwise delayed by a uniformly
/// random 0..=`MAX_JITTER` (packets overtake each other), from one seeded generator per
/// direction.
fn spawn_relay(sock: UdpSocket, server: SocketAddr, imp: Impairment) -> Relay {
    let sock = Arc::new(sock);
    let impair = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(RelayCounters::default());
    let (flag, c) = (Arc::clone(&impair), Arc::clone(&counters));
    let task = tokio::spawn(async move {
        let mut down_rng = StdRng::seed_from_u64(imp.seed);
        let mut up_rng = StdRng::seed_from_u64(imp.seed ^ 0x9E37_79B9_7F4A_7C15);
        let mut copies: HashMap<u16, u32> = HashMap::new();
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let pkt = Bytes::copy_from_slice(&buf[..n]);
            let down = from == server;
            let to = if down {
                let Some(to) = client else { continue };
                if let Some(seq) = rtp_seq(&pkt) {
                    let seen = copies.entry(seq).or_insert(0);
                    *seen += 1;
                    if *seen > 1 {
                        c.retransmissions.fetch_add(1, Ordering::Relaxed);
                        if imp.drop_retransmissions {
                            c.retransmissions_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                to
            } else {
                client = Some(from);
                server
            };
            let (forwarded, dropped) = if down {
                (&c.down_forwarded, &c.down_dropped)
            } else {
                (&c.up_forwarded, &c.up_dropped)
            };
            if !flag.load(Ordering::Relaxed) {
                let _ = sock.send_to(&pkt, to).await;
                continue;
            }
            let rng = if down { &mut down_rng } else { &mut up_rng };
            if rng.gen_bool(LOSS) {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            forwarded.fetch_add(1, Ordering::Relaxed);
            let max = u64::try_from(MAX_JITTER.as_micros()).unwrap_or(u64::MAX);
            let delay = Duration::from_micros(rng.gen_range(0..=max));
            let sock = Arc::clone(&sock);
            // The delay *is* the impairment (a network queue), not a wait for an event.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = sock.send_to(&pkt, to).await;
            });
        }
    });
    Relay {
        impair,
        counters,
        task,
    }
}

/// The port of the first `127.0.0.1` host candidate in `sdp`.
fn host_candidate_port(sdp: &str) -> u16 {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"127.0.0.1")).then(|| f.get(5)?.parse().ok())?
        })
        .expect("the router's answer carries a 127.0.0.1 host candidate")
}

// ---------------------------------------------------------------------------------------------
// The synthetic video stream.
// ---------------------------------------------------------------------------------------------

/// What a packet says about its frame: a VP8 payload descriptor and header (2 bytes: a frame's
/// first packet starts partition 0, its inverse key-frame bit says whether it is a keyframe;
/// the engine holds a new leg back until a keyframe starts), then 7 bytes of tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameTag {
    frame: u32,
    index: u8,
    count: u8,
    key: bool,
}

impl FrameTag {
    fn encode(self) -> Bytes {
        let mut p = vec![0x5Au8; PAYLOAD_BYTES];
        p[0] = if self.index == 0 { 0x10 } else { 0x00 };
        p[1] = if self.key { 0x00 } else { 0x01 };
        p[2..6].copy_from_slice(&self.frame.to_be_bytes());
        p[6] = self.index;
        p[7] = self.count;
        p[8] = u8::from(self.key);
        Bytes::from(p)
    }

    fn decode(p: &[u8]) -> Option<FrameTag> {
        if p.len() != PAYLOAD_BYTES || p[9..].iter().any(|b| *b != 0x5A) {
            return None;
        }
        let p = &p[2..];
        let tag = FrameTag {
            frame: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            index: p[4],
            count: p[5],
            key: p[6] == 1,
        };
        (tag.count > 0 && tag.index < tag.count).then_some(tag)
    }
}

/// What the sender tells the decoder out of band, as a capture clock would: frame `frame` left
/// at `at`, and (once) that the measured window starts at frame `frame`.
#[derive(Clone, Copy, Debug)]
enum SenderNote {
    Sent { frame: u32, at: Instant },
    WindowStarts { frame: u32 },
}

/// Sends frames at `FPS` until `MEASURED_FRAMES` frames have been sent after `go` turned true.
/// A keyframe goes out first, at the start of the measured window, and for every keyframe
/// request that reached the publisher since the previous frame (inside the window only when
/// `answer_pli`). Returns how many
/// keyframes were sent inside the window because of a request.
async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    mut go: watch::Receiver<bool>,
    answer_pli: bool,
    notes: mpsc::UnboundedSender<SenderNote>,
) -> u32 {
    let requests = count_keyframe_requests(Arc::clone(&track));
    let mut answered = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / FPS);
    let mut seq = 0u16;
    let mut window_start: Option<u32> = None;
    let mut requested_keyframes = 0u32;
    for frame in 0u32.. {
        ticker.tick().await;
        if window_start.is_none() && *go.borrow_and_update() {
            window_start = Some(frame);
            let _ = notes.send(SenderNote::WindowStarts { frame });
        }
        if window_start.is_some_and(|s| frame >= s + MEASURED_FRAMES) {
            break;
        }
        let pending = *requests.borrow();
        // Warm-up always answers (the subscription must start); the window only when told to.
        let requested = (answer_pli || window_start.is_none()) && pending > answered;
        answered = pending;
        let key = frame == 0 || window_start == Some(frame) || requested;
        if requested && window_start.is_some_and(|s| frame > s) {
            requested_keyframes += 1;
        }
        let count = if key { KEY_PACKETS } else { DELTA_PACKETS };
        let _ = notes.send(SenderNote::Sent {
            frame,
            at: Instant::now(),
        });
        for index in 0..count {
            let packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: CHROME.vp8,
                    sequence_number: seq,
                    timestamp: frame.wrapping_mul(90_000 / FPS),
                    ssrc: VIDEO_SSRC,
                    marker: index + 1 == count,
                    ..Default::default()
                },
                payload: FrameTag {
                    frame,
                    index,
                    count,
                    key,
                }
                .encode(),
            };
            track
                .write_rtp(packet)
                .await
                .expect("publisher track is bound");
            seq = seq.wrapping_add(1);
        }
    }
    requested_keyframes
}

// ---------------------------------------------------------------------------------------------
// The decoder model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Complete and its references intact.
    Decoded,
    /// Complete, but a frame it depends on was lost: waits for a keyframe.
    Undecodable,
    /// Not every packet arrived by the deadline.
    Incomplete,
}

#[derive(Debug, Default)]
struct Assembly {
    count: u8,
    key: bool,
    got: u64,
}

impl Assembly {
    fn complete(&self) -> bool {
        self.count > 0 && self.got.count_ones() == u32::from(self.count)
    }
}

/// Frames in sending order, decided one after another as a decoder consumes them.
#[derive(Debug, Default)]
struct Decoder {
    sent: BTreeMap<u32, Instant>,
    assembling: BTreeMap<u32, Assembly>,
    next: u32,
    chain_ok: bool,
    outcomes: BTreeMap<u32, Outcome>,
    decoded: u64,
}

impl Decoder {
    fn on_packet(&mut self, tag: FrameTag) {
        if tag.frame < self.next {
            return; // too late: already decided
        }
        let a = self.assembling.entry(tag.frame).or_default();
        a.count = tag.count;
        a.key = tag.key;
        a.got |= 1 << tag.index;
    }

    fn complete_keyframe_after(&self, frame: u32) -> bool {
        self.assembling
            .range(frame + 1..)
            .any(|(_, a)| a.key && a.complete())
    }

    /// Decides every frame that can be decided at `now`; returns the next deadline.
    fn advance(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let sent = *self.sent.get(&self.next)?;
            let frame = self.assembling.remove(&self.next);
            let outcome = match frame {
                Some(a) if a.complete() => {
                    if a.key {
                        self.chain_ok = true;
                    }
                    if self.chain_ok {
                        Outcome::Decoded
                    } else {
                        Outcome::Undecodable
                    }
                }
                // A complete keyframe further on: give up on this frame and jump ahead, as
                // Chrome's frame buffer does (nothing before a keyframe is needed after it).
                _ if self.complete_keyframe_after(self.next) => {
                    self.chain_ok = false;
                    Outcome::Incomplete
                }
                _ if now < sent + PLAYOUT_DELAY => {
                    if let Some(a) = frame {
                        self.assembling.insert(self.next, a);
                    }
                    return Some(sent + PLAYOUT_DELAY);
                }
                _ => {
                    self.chain_ok = false;
                    Outcome::Incomplete
                }
            };
            if outcome == Outcome::Decoded {
                self.decoded += 1;
            }
            self.outcomes.insert(self.next, outcome);
            self.next += 1;
        }
    }
}

#[derive(Debug, Default)]
struct DecoderReport {
    outcomes: BTreeMap<u32, Outcome>,
    window_start: u32,
    plis_sent: u32,
    out_of_order: u64,
    packets: u64,
}

/// Runs the decoder on `track` until every frame of the measured window is decided (bounded).
/// `decoded` counts decoded frames as they happen.
async fn decode(
    track: Arc<dyn TrackRemote>,
    mut notes: mpsc::UnboundedReceiver<SenderNote>,
    decoded: watch::Sender<u64>,
) -> DecoderReport {
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let (pkt_tx, mut packets) = mpsc::unbounded_channel::<(u16, Option<FrameTag>)>();
    let reader_track = Arc::clone(&track);
    let reader = tokio::spawn(async move {
        while let Some(ev) = reader_track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                let tag = FrameTag::decode(&p.payload);
                if pkt_tx.send((p.header.sequence_number, tag)).is_err() {
                    return;
                }
            }
        }
    });

    let mut d = Decoder::default();
    let mut report = DecoderReport::default();
    let mut window: Option<u32> = None;
    let mut highest: Option<u16> = None;
    let mut last_pli: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    let bound = tokio::time::sleep(WAIT + Duration::from_secs(u64::from(MEASURED_FRAMES / FPS)));
    tokio::pin!(bound);
    loop {
        let wake = deadline
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let retry = last_pli
            .filter(|_| !d.chain_ok)
            .map(|t| tokio::time::Instant::from_std(t + PLI_RETRY))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            p = packets.recv() => {
                let Some((seq, tag)) = p else { break };
                report.packets += 1;
                match highest {
                    Some(h) if seq.wrapping_sub(h) >= 0x8000 => report.out_of_order += 1,
                    _ => highest = Some(seq),
                }
                let tag = tag.expect("every packet carries an intact frame tag");
                d.on_packet(tag);
            }
            n = notes.recv() => match n {
                Some(SenderNote::Sent { frame, at }) => { d.sent.insert(frame, at); }
                Some(SenderNote::WindowStarts { frame }) => window = Some(frame),
                None => {}
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = tokio::time::sleep_until(retry) => {}
            _ = &mut bound => break,
        }
        let before = d.decoded;
        deadline = d.advance(Instant::now());
        if d.decoded != before {
            decoded.send_replace(d.decoded);
        }
        // Broken chain: ask for a keyframe now, and again every PLI_RETRY until one arrives.
        let due = last_pli.is_none_or(|t| t.elapsed() >= PLI_RETRY);
        if !d.chain_ok && d.next > 0 && due {
            last_pli = Some(Instant::now());
            if window.is_some() {
                report.plis_sent += 1;
            }
            let pli = PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc,
            };
            let _ = track.write_rtcp(vec![Box::new(pli)]).await;
        }
        if let Some(w) = window {
            if d.next >= w + MEASURED_FRAMES {
                report.window_start = w;
                break;
            }
        }
    }
    reader.abort();
    report.outcomes = std::mem::take(&mut d.outcomes);
    report
}

// ---------------------------------------------------------------------------------------------
// One run: publisher → router → relay → subscriber.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct RunResult {
    complete: f64,
    decodable: f64,
    /// Longest run of consecutive measured frames without a decoded one, in frames.
    longest_frozen: u32,
    /// How often decoding started again after frames that could not be decoded.
    recoveries: u32,
    plis_sent: u32,
    keyframes_on_request: u32,
    packets: u64,
    out_of_order: u64,
    down_loss: f64,
    up_loss: f64,
    up_dropped: u64,
    retransmissions: u64,
    retransmissions_dropped: u64,
    elapsed: Duration,
}

impl std::fmt::Display for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "complete {:.1} %, decodable {:.1} %, longest freeze {} frames ({} ms), \
             {} recoveries, PLIs {} → keyframes {}, {} packets ({} out of order), loss down {:.1} % / up {:.1} % \
             ({} datagrams), retransmissions {} ({} discarded), {:.1} s",
            self.complete * 100.0,
            self.decodable * 100.0,
            self.longest_frozen,
            self.longest_frozen * 1000 / FPS,
            self.recoveries,
            self.plis_sent,
            self.keyframes_on_request,
            self.packets,
            self.out_of_order,
            self.down_loss * 100.0,
            self.up_loss * 100.0,
            self.up_dropped,
            self.retransmissions,
            self.retransmissions_dropped,
            self.elapsed.as_secs_f64(),
        )
    }
}

async fn run(name: &str, imp: Impairment, answer_pli: bool) -> RunResult {
    let t0 = Instant::now();
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let opts = PublishOpts {
        audio: false,
        ..Default::default()
    };
    let (publ, _) = publish(&router, EndpointKey(1), opts, ev_tx.clone()).await;

    // As in nack.rs: the subscriber offers without candidates, so the router reaches it only
    // through the relay (peer-reflexive), and learns of the router only the relay's address.
    let mut client = Client::new(CHROME).await;
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
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let relay_port = sock.local_addr().expect("relay address").port();
    let relay = spawn_relay(sock, SocketAddr::from(([127, 0, 0, 1], server_port)), imp);
    let answer = answer.replace(
        &format!("127.0.0.1 {server_port} typ host"),
        &format!("127.0.0.1 {relay_port} typ host"),
    );
    client.apply_answer(answer).await;
    client.connected().await;

    // Warm-up on a clean path: frames flow until the subscriber has decoded one (both DTLS
    // sides are up, a keyframe went through); then the impairment starts together with the
    // measured window, which opens with a keyframe.
    let (go_tx, go_rx) = watch::channel(false);
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let sender = tokio::spawn(send_video(
        Arc::clone(&publ.video),
        go_rx,
        answer_pli,
        notes_tx,
    ));
    let track = client.next_track().await;
    let (decoded_tx, mut decoded_rx) = watch::channel(0u64);
    let decoder = tokio::spawn(decode(track, notes_rx, decoded_tx));
    tokio::time::timeout(WAIT, decoded_rx.wait_for(|n| *n >= 1))
        .await
        .expect("the subscriber decodes a first frame on the clean path")
        .expect("decoder running");
    relay.impair.store(true, Ordering::Relaxed);
    go_tx.send_replace(true);

    let keyframes_on_request = tokio::time::timeout(WAIT + Duration::from_secs(12), sender)
        .await
        .expect("the sender finishes its frames in time")
        .expect("sender task");
    let report = tokio::time::timeout(WAIT, decoder)
        .await
        .expect("the decoder decides every frame in time")
        .expect("decoder task");

    let window = report.window_start..report.window_start + MEASURED_FRAMES;
    let outcomes: Vec<Outcome> = window
        .map(|f| {
            *report
                .outcomes
                .get(&f)
                .expect("every measured frame decided")
        })
        .collect();
    let n = outcomes.len() as f64;
    let complete = outcomes
        .iter()
        .filter(|o| **o != Outcome::Incomplete)
        .count() as f64;
    let decodable = outcomes.iter().filter(|o| **o == Outcome::Decoded).count() as f64;
    let mut longest_frozen = 0u32;
    let mut recoveries = 0u32;
    let mut run_len = 0u32;
    for o in &outcomes {
        if *o == Outcome::Decoded {
            if run_len > 0 {
                recoveries += 1;
            }
            run_len = 0;
        } else {
            run_len += 1;
        }
        longest_frozen = longest_frozen.max(run_len);
    }
    let c = &relay.counters;
    let ratio = |dropped: &AtomicU64, fwd: &AtomicU64| {
        let d = dropped.load(Ordering::Relaxed) as f64;
        d / (d + fwd.load(Ordering::Relaxed) as f64).max(1.0)
    };
    let result = RunResult {
        complete: complete / n,
        decodable: decodable / n,
        longest_frozen,
        recoveries,
        plis_sent: report.plis_sent,
        keyframes_on_request,
        packets: report.packets,
        out_of_order: report.out_of_order,
        down_loss: ratio(&c.down_dropped, &c.down_forwarded),
        up_loss: ratio(&c.up_dropped, &c.up_forwarded),
        up_dropped: c.up_dropped.load(Ordering::Relaxed),
        retransmissions: c.retransmissions.load(Ordering::Relaxed),
        retransmissions_dropped: c.retransmissions_dropped.load(Ordering::Relaxed),
        elapsed: t0.elapsed(),
    };
    eprintln!("faults[{name}]: {result}");

    relay.task.abort();
    client.close().await;
    publ.client.close().await;
    router.release(EndpointKey(2)).await;
    router.release(EndpointKey(1)).await;
    result
}

/// Whether `r` meets the definition of "keeps decoding".
fn keeps_decoding(r: &RunResult) -> bool {
    r.complete >= MIN_RATIO && r.decodable >= MIN_RATIO && r.longest_frozen <= MAX_FROZEN_FRAMES
}

const SEED: u64 = 0xFA17_0001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_keeps_decoding_through_loss_and_jitter_with_nack_and_keyframes() {
    let imp = Impairment {
        seed: SEED,
        drop_retransmissions: false,
    };
    let r = run("nack+pli", imp, true).await;
    // The path really was bad: about 5 % of the media lost, uplink feedback lost too, and
    // packets overtook each other.
    assert!((0.03..0.07).contains(&r.down_loss), "{r}");
    assert!(r.up_dropped > 0, "{r}");
    assert!(r.out_of_order > 100, "the jitter reorders packets: {r}");
    assert!(
        r.retransmissions > 50,
        "lost packets were sent again after NACKs: {r}"
    );
    assert!(keeps_decoding(&r), "video keeps decoding: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retransmissions_the_same_path_breaks_decoding() {
    let no_nack = Impairment {
        seed: SEED,
        drop_retransmissions: true,
    };
    let (pli_only, nothing) =
        tokio::join!(run("pli-only", no_nack, true), run("none", no_nack, false));
    // Retransmissions were requested and discarded: without them whole frames go missing.
    assert!(pli_only.retransmissions_dropped > 50, "{pli_only}");
    assert!(
        pli_only.complete < MIN_RATIO && pli_only.decodable < MIN_RATIO,
        "both ratios fall below the threshold: {pli_only}"
    );
    assert!(!keeps_decoding(&pli_only), "{pli_only}");
    // Keyframe requests alone bring the picture back after losses, briefly (a 15-packet
    // keyframe arrives whole only ≈ 0.95¹⁵ ≈ 46 % of the time, the frames after it 77 %)…
    assert!(
        pli_only.keyframes_on_request >= 3 && pli_only.recoveries >= 2,
        "broken chains ask for keyframes, which restart decoding: {pli_only}"
    );
    // …and without them it never comes back after the first incomplete frame.
    assert!(!keeps_decoding(&nothing), "{nothing}");
    assert_eq!(nothing.recoveries, 0, "{nothing}");
    assert!(
        nothing.decodable < 0.2 && nothing.longest_frozen > 5 * FPS,
        "{nothing}"
    );
}
