//! What happens when a publisher's stream comes back after a network outage: the frames lost
//! in it are written off and replaced by a keyframe. [`OutageDetector`] notices the resumption
//! (the track then rebases its video legs and asks for the keyframe, `track.rs`) and
//! [`NackFilter`], an rtc interceptor on publisher connections, stops NACKs for the
//! written-off packets (resending them would only delay the keyframe: a browser's send rate
//! has collapsed right after an outage) and swaps a NACK that was never answered for a
//! keyframe request. Measured in tests/browser_outage.rs: without these, Chrome's picture came
//! back ≈ 3 s after a 3 s outage (its own keyframe timeout); with them, in 0.03–0.26 s on an
//! idle machine.
//!
//! A publisher may also come back with a backlog: frames it captured during the outage and
//! held back, flushed in a burst before anything fresh. [`BacklogDetector`] recognises them by
//! their RTP timestamps; the track then treats the resumption as an outage too and lets no
//! stale keyframe reopen a leg (a subscriber fed stale and fresh frames back to back froze for
//! 2.2–2.6 s in 1 of 5 runs of the same test; with the detector, 0 of 25).
//!
//! Owns [`OutageDetector`], [`BacklogDetector`], [`NackFilter`] and their thresholds. Pure
//! timing and RTCP rewriting: no I/O.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use rtc::sansio;
use rtc::shared::error::Error;

/// How long a publisher's stream may fall silent, packets missing when it resumes, before the
/// lost packets are written off and a keyframe is asked for. Longer than a receiver's jitter
/// buffer waits for retransmissions; far shorter than Chrome's own 3 s decodable-frame timeout,
/// which was otherwise the first keyframe request after an outage of both legs.
pub(crate) const OUTAGE_SILENCE: Duration = Duration::from_millis(500);

/// How long after a silence of [`OUTAGE_SILENCE`] packets still count as the stream resuming:
/// a browser's pacer first flushes what it held back during the outage (no gap), and the jump
/// over the packets it sent into the void comes right after.
pub(crate) const RESUME_WINDOW: Duration = Duration::from_millis(300);

/// Notices a publisher stream resuming after an outage with packets missing: after at least
/// [`OUTAGE_SILENCE`] of silence, the first sequence-number jump within [`RESUME_WINDOW`]. The
/// packets it skips cannot be recovered in time (nor served to subscribers' NACKs: they never
/// reached us), so subscribers need a keyframe; a stream that merely paused (nothing missing)
/// needs none. Later gaps are ordinary losses, NACKed as usual (the keyframe may be among them).
#[derive(Debug, Default)]
pub(crate) struct OutageDetector {
    /// The newest packet so far: arrival, sequence number, RTP timestamp.
    last: Option<(Instant, u16, u32)>,
    /// Until when the stream counts as resuming.
    resuming: Option<Instant>,
    /// When the packet registered last ended a silence: the packet before the silence (arrival,
    /// RTP timestamp).
    silence_ended: Option<(Instant, u32)>,
}

impl OutageDetector {
    /// Registers a packet with sequence number `seq` and RTP timestamp `ts` received at `now`;
    /// returns, when the stream just jumped over packets lost in an outage, the sequence number
    /// they all precede (the moment to ask for a keyframe).
    pub(crate) fn on_packet(&mut self, seq: u16, ts: u32, now: Instant) -> Option<u16> {
        self.silence_ended = None;
        let Some((at, last_seq, last_ts)) = self.last else {
            self.last = Some((now, seq, ts));
            return None;
        };
        let ahead = seq.wrapping_sub(last_seq);
        if ahead == 0 || ahead >= 0x8000 {
            return None; // duplicate or late (reordered, retransmitted)
        }
        self.last = Some((now, seq, ts));
        if now.saturating_duration_since(at) >= OUTAGE_SILENCE {
            self.resuming = Some(now + RESUME_WINDOW);
            self.silence_ended = Some((at, last_ts));
        }
        let until = self.resuming?;
        if now > until {
            self.resuming = None;
            return None;
        }
        if ahead == 1 {
            return None;
        }
        self.resuming = None;
        Some(seq)
    }

    /// Whether the packet registered last was the first of the stream to advance after a
    /// silence of [`OUTAGE_SILENCE`]: then the packet before the silence (arrival, RTP
    /// timestamp), what [`BacklogDetector`] measures staleness from.
    pub(crate) fn silence_ended(&self) -> Option<(Instant, u32)> {
        self.silence_ended
    }
}

/// How much older than the stream's pace a packet that arrives after a silence of
/// [`OUTAGE_SILENCE`] may be before it counts as part of a backlog (see [`BacklogDetector`]):
/// above a fresh keyframe's encoding and pacing delay, far below an outage.
pub(crate) const STALE_LAG: Duration = Duration::from_millis(250);

/// How long after a silence packets are still checked for staleness when no fresh one came.
const BACKLOG_WINDOW: Duration = Duration::from_secs(3);

/// Notices a publisher flushing, after an outage, the frames it captured and held back during
/// it. Chrome's pacer does this when its sends were refused: seconds-old frames arrive in a
/// burst, then the fresh keyframe asked for. Forwarded as they are, the stale frames and the
/// fresh ones right behind them reach the subscriber's jitter buffer seconds apart in RTP time
/// but together in arrival time; seen in tests/browser_outage.rs, Chrome then held every frame
/// after the keyframe for 2.2–2.6 s before showing anything. A stale packet is recognised by
/// its RTP timestamp: counted from the last packet before the silence, it was captured more
/// than [`STALE_LAG`] before the stream resumed (a frame captured after that is fresh, however
/// long the publisher's pacer then holds it).
#[derive(Debug)]
pub(crate) struct BacklogDetector {
    clock_rate: u32,
    /// After a silence: the last packet before it (arrival, RTP timestamp), when the stream
    /// resumed, and until when packets are checked. Ends at the first fresh packet.
    resumed: Option<Resumed>,
}

#[derive(Clone, Copy, Debug)]
struct Resumed {
    before_at: Instant,
    before_ts: u32,
    at: Instant,
}

/// What [`BacklogDetector::on_packet`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backlog {
    /// Fresh, or no silence before it.
    No,
    /// The first stale packet after a silence: the publisher is flushing a backlog.
    Starts,
    /// A further stale packet of the backlog.
    Continues,
}

impl BacklogDetector {
    pub(crate) fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            resumed: None,
        }
    }

    /// Registers a packet (sequence number `seq`, RTP timestamp `ts`) received at `now`, after
    /// the stream's [`OutageDetector`] registered it: `silence_ended` is what its
    /// [`OutageDetector::silence_ended`] says of it.
    pub(crate) fn on_packet(
        &mut self,
        silence_ended: Option<(Instant, u32)>,
        seq: u16,
        ts: u32,
        now: Instant,
    ) -> Backlog {
        let starts = silence_ended.is_some();
        if let Some((before_at, before_ts)) = silence_ended {
            self.resumed = Some(Resumed {
                before_at,
                before_ts,
                at: now,
            });
        }
        let Some(r) = self.resumed else {
            return Backlog::No;
        };
        let advanced = ts.wrapping_sub(r.before_ts);
        // Older than the last packet before the silence: captured at the latest then.
        let media = if advanced < 0x8000_0000 {
            u64::from(advanced) * 1_000_000 / u64::from(self.clock_rate)
        } else {
            0
        };
        let captured = r.before_at + Duration::from_micros(media);
        let stale = now <= r.at + BACKLOG_WINDOW && captured + STALE_LAG < r.at;
        if !stale {
            self.resumed = None;
            return Backlog::No;
        }
        if starts {
            tracing::debug!(
                silent_ms = r.at.saturating_duration_since(r.before_at).as_millis() as u64,
                captured_ms = media / 1_000,
                seq,
                "stream resumes with a backlog of stale packets"
            );
            Backlog::Starts
        } else {
            Backlog::Continues
        }
    }
}

/// Sequence numbers this far behind the newest can no longer be NACKed (webrtc-rs's NACK
/// generator keeps 512 packets): their bookkeeping is dropped, well before 16-bit comparisons
/// could wrap.
const NACK_HORIZON: u16 = 2048;

/// How many NACKs a missing packet gets before it is given up on and a keyframe is asked for
/// instead: 1 s at webrtc-rs's 100 ms NACK interval, as Chrome and mediasoup retry 10 times.
/// A browser that has just come back from an outage sometimes never answers (its RTT estimate
/// or send history is off), and its subscribers then stall until their own 3 s timeout.
const MAX_NACKS: u8 = 10;

/// Whether `seq` comes before `other` (16-bit sequence-number order).
fn seq_before(seq: u16, other: u16) -> bool {
    let d = other.wrapping_sub(seq);
    d != 0 && d < 0x8000
}

#[derive(Debug, Default)]
struct NackedStream {
    detector: OutageDetector,
    newest: Option<u16>,
    /// Packets before this sequence number were lost in an outage: never NACK them.
    written_off_before: Option<u16>,
    /// NACKs sent per missing sequence number; `MAX_NACKS` and more mean given up.
    nacks: HashMap<u16, u8>,
    /// When this filter last asked the publisher for a keyframe.
    last_keyframe_request: Option<Instant>,
}

impl NackedStream {
    fn on_packet(&mut self, seq: u16, ts: u32, now: Instant) {
        if let Some(before) = self.detector.on_packet(seq, ts, now) {
            self.written_off_before = Some(before);
        }
        if self.newest.is_none_or(|n| seq_before(n, seq)) {
            self.newest = Some(seq);
        }
        self.nacks.remove(&seq);
        if let Some(newest) = self.newest {
            let horizon = newest.wrapping_sub(NACK_HORIZON);
            if self
                .written_off_before
                .is_some_and(|b| seq_before(b, horizon))
            {
                self.written_off_before = None;
            }
            if self.nacks.len() > 64 {
                self.nacks.retain(|s, _| !seq_before(*s, horizon));
            }
        }
    }

    /// Counts a NACK for `seq`: whether it may still be sent, and whether this is the moment it
    /// is given up on.
    fn nack(&mut self, seq: u16) -> (bool, bool) {
        if self.written_off_before.is_some_and(|b| seq_before(seq, b)) {
            return (false, false);
        }
        let n = self.nacks.entry(seq).or_insert(0);
        let send = *n < MAX_NACKS;
        let gives_up = *n == MAX_NACKS;
        *n = n.saturating_add(1).min(MAX_NACKS + 1);
        (send, gives_up)
    }

    /// Whether a packet was just given up on and no keyframe was asked for recently.
    fn wants_keyframe(&mut self, gave_up: bool, now: Instant) -> bool {
        let due = self
            .last_keyframe_request
            .is_none_or(|t| now.saturating_duration_since(t) >= OUTAGE_SILENCE);
        if gave_up && due {
            self.last_keyframe_request = Some(now);
        }
        gave_up && due
    }
}

/// On publisher connections, between the wire and the NACK generator, shapes the generator's
/// NACKs (webrtc-rs's asks for every missing packet every 100 ms, forever):
/// - packets lost in an outage ([`OutageDetector`]) are not NACKed at all: a browser that has
///   just come back from an outage would otherwise spend its collapsed send rate resending
///   hundreds of stale packets before the keyframe that actually restores the picture;
/// - a packet NACKed [`MAX_NACKS`] times is given up on, and a PLI goes to the publisher.
///
/// A NACK left empty is not sent. Watches incoming RTP per SSRC to do so.
#[derive(Default)]
pub(crate) struct NackFilter {
    streams: HashMap<u32, NackedStream>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

/// Registry slot of [`NackFilter`]: wire-ward of the NACK generator (7_000), so it sees
/// incoming RTP first and the generator's NACKs on their way out; above the FEC decoder.
pub(crate) const NACK_FILTER_SLOT: usize = 6_500;

impl NackFilter {
    /// `packet` without the NACKs it should not carry (`None` if nothing is left), and whether
    /// the publisher of the stream should be asked for a keyframe.
    fn filter(
        &mut self,
        packet: &dyn rtc::rtcp::Packet,
        now: Instant,
    ) -> (Option<Box<dyn rtc::rtcp::Packet>>, Option<u32>) {
        let Some(nack) = packet.as_any().downcast_ref::<TransportLayerNack>() else {
            return (Some(packet.cloned()), None);
        };
        let stream = self.streams.entry(nack.media_ssrc).or_default();
        let mut gave_up = false;
        let wanted: Vec<u16> = nack
            .nacks
            .iter()
            .flat_map(|pair| pair.packet_list())
            .filter(|seq| {
                let (send, gives_up) = stream.nack(*seq);
                gave_up |= gives_up;
                send
            })
            .collect();
        let keyframe = stream
            .wants_keyframe(gave_up, now)
            .then_some(nack.media_ssrc);
        let kept = (!wanted.is_empty()).then(|| {
            Box::new(TransportLayerNack {
                sender_ssrc: nack.sender_ssrc,
                media_ssrc: nack.media_ssrc,
                nacks: nack_pairs_from_sequence_numbers(&wanted),
            }) as Box<dyn rtc::rtcp::Packet>
        });
        (kept, keyframe)
    }
}

impl sansio::Protocol<TaggedPacket, TaggedPacket, ()> for NackFilter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            self.streams.entry(p.header.ssrc).or_default().on_packet(
                p.header.sequence_number,
                p.header.timestamp,
                msg.now,
            );
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if !packets.is_empty() {
                let mut kept: Vec<Box<dyn rtc::rtcp::Packet>> = Vec::with_capacity(packets.len());
                for p in packets {
                    let (p, keyframe) = self.filter(p.as_ref(), msg.now);
                    kept.extend(p);
                    if let Some(media_ssrc) = keyframe {
                        kept.push(Box::new(PictureLossIndication {
                            sender_ssrc: 0,
                            media_ssrc,
                        }));
                    }
                }
                if kept.is_empty() {
                    return Ok(());
                }
                msg.message.packet = Packet::Rtcp(kept);
            }
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for NackFilter {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_detector_writes_off_what_a_lossy_silence_skipped() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = OutageDetector::default();
        assert_eq!(d.on_packet(65_534, 0, ms(0)), None);
        // Continuous, across the wrap; a short gap with loss is NACK territory.
        assert_eq!(d.on_packet(65_535, 0, ms(10)), None);
        assert_eq!(d.on_packet(0, 0, ms(20)), None);
        assert_eq!(d.on_packet(5, 0, ms(100)), None);
        // A pause without loss (e.g. a muted camera sending nothing) needs no keyframe.
        assert_eq!(d.on_packet(6, 0, ms(2_000)), None);
        assert_eq!(d.on_packet(7, 0, ms(2_010)), None);
        // Late packets do not count as progress.
        assert_eq!(d.on_packet(3, 0, ms(2_100)), None);
        assert_eq!(d.on_packet(7, 0, ms(2_200)), None);
        // Silence, then a jump: what it skipped is written off, once.
        assert_eq!(d.on_packet(300, 0, ms(3_000)), Some(300));
        assert_eq!(d.on_packet(305, 0, ms(3_010)), None);
        // Silence, the held-back packets first, then the jump within RESUME_WINDOW.
        assert_eq!(d.on_packet(306, 0, ms(4_000)), None);
        assert_eq!(d.on_packet(307, 0, ms(4_005)), None);
        assert_eq!(d.on_packet(350, 0, ms(4_010)), Some(350));
        assert_eq!(d.on_packet(360, 0, ms(4_020)), None);
        // A jump after the window is an ordinary loss.
        assert_eq!(d.on_packet(361, 0, ms(6_000)), None);
        let later = 6_000 + u64::try_from(RESUME_WINDOW.as_millis()).unwrap_or(0) + 1;
        assert_eq!(d.on_packet(370, 0, ms(later)), None);
    }

    #[test]
    fn backlog_detector_tells_a_flushed_backlog_from_fresh_frames() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // RTP time of a capture `n` ms after t0 (90 kHz), from a base near the wrap.
        let base = u32::MAX - 45_000;
        let at = |n: u32| base.wrapping_add(n * 90);
        // As the track does: the outage detector first, which tells the backlog detector when
        // a silence ended.
        let mut outage = OutageDetector::default();
        let mut backlog = BacklogDetector::new(90_000);
        let mut d = |seq: u16, ts: u32, now: Instant| {
            outage.on_packet(seq, ts, now);
            backlog.on_packet(outage.silence_ended(), seq, ts, now)
        };
        assert_eq!(d(10, at(0), ms(0)), Backlog::No);
        assert_eq!(d(11, at(33), ms(33)), Backlog::No);
        // A pause, then a frame captured after it: fresh.
        assert_eq!(d(12, at(1_000), ms(1_010)), Backlog::No);
        // 3 s of outage, then frames captured during it (the timestamp wrapped meanwhile).
        assert_eq!(d(13, at(1_033), ms(4_000)), Backlog::Starts);
        assert_eq!(d(14, at(2_500), ms(4_010)), Backlog::Continues);
        // A late packet from before the silence is stale too, and starts nothing.
        assert_eq!(d(12, at(1_000), ms(4_015)), Backlog::Continues);
        // Captured less than STALE_LAG before the stream resumed: fresh, the backlog is over.
        let fresh = 4_000 - u32::try_from(STALE_LAG.as_millis()).unwrap_or(0) + 10;
        assert_eq!(d(15, at(fresh), ms(4_020)), Backlog::No);
        assert_eq!(d(16, at(2_600), ms(4_030)), Backlog::No);
        // A backlog that never ends is given up after BACKLOG_WINDOW.
        assert_eq!(d(17, at(2_633), ms(6_000)), Backlog::Starts);
        let window = u64::try_from(BACKLOG_WINDOW.as_millis()).unwrap_or(0);
        for i in 1..=window / 100 {
            let seq = 17 + u16::try_from(i).unwrap_or(0);
            assert_eq!(d(seq, at(2_633), ms(6_000 + i * 100)), Backlog::Continues);
        }
        assert_eq!(d(100, at(2_633), ms(6_001 + window)), Backlog::No);
    }

    fn rtp(ssrc: u32, seq: u16, now: Instant) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: Default::default(),
            message: rtc::interceptor::AttributedPacket::new(Packet::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    ssrc,
                    sequence_number: seq,
                    ..Default::default()
                },
                ..Default::default()
            })),
        }
    }

    fn nack(ssrc: u32, seqs: &[u16], now: Instant) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: Default::default(),
            message: rtc::interceptor::AttributedPacket::new(Packet::Rtcp(vec![Box::new(
                TransportLayerNack {
                    sender_ssrc: 1,
                    media_ssrc: ssrc,
                    nacks: nack_pairs_from_sequence_numbers(seqs),
                },
            )])),
        }
    }

    /// What the filter lets out for a NACK of `seqs` on `ssrc`: the sequence numbers still
    /// NACKed, and the SSRCs a PLI was added for.
    fn filtered(f: &mut NackFilter, ssrc: u32, seqs: &[u16], now: Instant) -> (Vec<u16>, Vec<u32>) {
        sansio::Protocol::handle_write(f, nack(ssrc, seqs, now)).expect("write");
        let (mut nacked, mut plis) = (vec![], vec![]);
        let Some(out) = sansio::Protocol::poll_write(f) else {
            return (nacked, plis);
        };
        let Packet::Rtcp(packets) = out.message.packet else {
            panic!("an RTCP packet stays RTCP");
        };
        for p in &packets {
            if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                nacked.extend(n.nacks.iter().flat_map(|pair| pair.packet_list()));
            } else if let Some(pli) = p.as_any().downcast_ref::<PictureLossIndication>() {
                plis.push(pli.media_ssrc);
            } else {
                panic!("only NACKs and PLIs leave the filter");
            }
        }
        (nacked, plis)
    }

    fn nacked(f: &mut NackFilter, ssrc: u32, seqs: &[u16], now: Instant) -> Vec<u16> {
        let (nacked, plis) = filtered(f, ssrc, seqs, now);
        assert!(plis.is_empty(), "no keyframe request: {plis:?}");
        nacked
    }

    #[test]
    fn nacks_for_packets_lost_in_an_outage_are_not_sent() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut f = NackFilter::default();
        let read = |f: &mut NackFilter, ssrc, seq, at| {
            sansio::Protocol::handle_read(f, rtp(ssrc, seq, at)).expect("read");
            assert!(sansio::Protocol::poll_read(f).is_some(), "RTP passes on");
        };
        read(&mut f, 7, 100, ms(0));
        read(&mut f, 7, 102, ms(10));
        // Ordinary loss: NACKed.
        assert_eq!(nacked(&mut f, 7, &[101], ms(20)), vec![101]);
        // Three seconds of nothing, 200 packets gone: written off…
        read(&mut f, 7, 303, ms(3_000));
        assert!(nacked(&mut f, 7, &[101, 200, 302], ms(3_010)).is_empty());
        // …but later losses, and other streams', are NACKed.
        read(&mut f, 7, 310, ms(3_020));
        assert_eq!(nacked(&mut f, 7, &[250, 309], ms(3_030)), vec![309]);
        read(&mut f, 9, 5, ms(3_040));
        assert_eq!(nacked(&mut f, 9, &[4], ms(3_050)), vec![4]);
        // Far enough on, the write-off is forgotten, before 16-bit comparisons could wrap and
        // write off new packets.
        read(&mut f, 7, 303 + NACK_HORIZON + 1, ms(3_500));
        assert_eq!(f.streams[&7].written_off_before, None);
    }

    #[test]
    fn a_packet_nacked_in_vain_is_given_up_for_a_keyframe() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut f = NackFilter::default();
        sansio::Protocol::handle_read(&mut f, rtp(7, 10, ms(0))).expect("read");
        sansio::Protocol::handle_read(&mut f, rtp(7, 13, ms(5))).expect("read");
        // 11 is answered after two NACKs; 12 never is.
        for round in 0..u64::from(MAX_NACKS) {
            let want: &[u16] = if round < 2 { &[11, 12] } else { &[12] };
            assert_eq!(nacked(&mut f, 7, want, ms(100 * round + 10)), want.to_vec());
            if round == 1 {
                sansio::Protocol::handle_read(&mut f, rtp(7, 11, ms(100 * round + 20)))
                    .expect("read");
            }
        }
        // The next NACK of 12 is dropped and replaced by a PLI, once: the generator keeps
        // asking, and nothing more goes out.
        assert_eq!(filtered(&mut f, 7, &[12], ms(1_010)), (vec![], vec![7]));
        assert_eq!(filtered(&mut f, 7, &[12], ms(1_110)), (vec![], vec![]));
        assert_eq!(filtered(&mut f, 7, &[12], ms(2_110)), (vec![], vec![]));
        // (The stream kept flowing, so later losses are no outage.)
        for (seq, at) in [(15, 400), (17, 800), (20, 1_150)] {
            sansio::Protocol::handle_read(&mut f, rtp(7, seq, ms(at))).expect("read");
        }
        assert_eq!(nacked(&mut f, 7, &[12, 19], ms(1_210)), vec![19]);
        // Another stream's NACKs are its own.
        assert_eq!(nacked(&mut f, 9, &[12], ms(1_220)), vec![12]);
    }
}
