//! One publisher track (mediasoup's shape): the only place where the publisher's and the
//! subscribers' roles meet. It takes the publisher's clear packets, keeps them in its
//! [`NackRing`], watches for keyframes, forwards each packet to its [`Leg`]s and answers the
//! subscribers' NACKs, keyframe requests and receiver reports, and the publisher's sender
//! reports.
//!
//! Owns the ring, the legs, the [`KeyframeRequester`], the publisher's [`PublisherClock`] and
//! the sender-report timer. Does not own sockets, SRTP, RTCP parsing or peer connections: the
//! shard decrypts, demultiplexes and parses, calls the methods below, and seals and sends what
//! they write through its [`Egress`]. Pure (time comes in as [`Instant`]) and allocation-free
//! per packet; a leg joining or leaving allocates.
//!
//! What the shard calls, when:
//! - [`Track::prime`] when a subscription to the track is created (before its transport is
//!   up): a keyframe is asked for at once, so that it is on its way while ICE and DTLS run.
//! - [`Track::add_leg`] once the subscriber's transport can carry media (DTLS done, SRTP keys
//!   captured): a video leg waits for a keyframe; one is requested unless a recent one is in
//!   the ring. [`Track::start_leg`] a moment later: a leg still waiting is sent the newest
//!   stored keyframe and every packet since, if recent and complete, or a keyframe is
//!   requested. [`Track::remove_leg`] when the subscription ends.
//! - [`Track::on_rtp`] for every clear RTP packet of the publisher's media SSRC, or
//!   [`Track::on_rtp_burst`] for several read together (each leg then takes a run of them at
//!   once); [`Track::on_rtx`] for its RTX SSRC (unwrapped in place, then the same).
//! - [`Track::on_nack`] for a generic NACK (RFC 4585) whose media SSRC is a leg's SSRC;
//!   [`Track::on_keyframe_request`] for a PLI or FIR about a leg; [`Track::on_receiver_report`]
//!   for a report block about a leg; [`Track::on_sender_report`] for the publisher's SR.
//! - After any of these and whenever [`Track::poll_timeout`] is reached:
//!   [`Track::poll_keyframe_request`] (`true`: send a PLI for the publisher's SSRC now) and
//!   [`Track::poll_sender_reports`] (send each SR given, through rtc's `write_rtcp` on the leg's
//!   connection).

use std::time::{Duration, Instant};

use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

use super::keyframe::{is_keyframe_start, Codec, KeyframeRequester, KeyframeStats};
use super::leg::{DropReason, Leg, LegId, Outbound, Sent};
use super::nack_ring::{self, NackRing, NotStored, RingId};
use super::outage::{Backlog, BacklogDetector, OutageDetector};
use super::sender_report::{PublisherClock, SenderReport};
use super::wire::{Pt, SeqNo, Ssrc};

/// One clear RTP packet of the publisher, parsed once and seen by every leg.
#[derive(Clone, Copy, Debug)]
pub struct SourcePacket<'a> {
    /// The whole packet.
    pub bytes: &'a [u8],
    /// Publisher SSRC.
    pub ssrc: Ssrc,
    /// Publisher sequence number.
    pub seq: SeqNo,
    /// Publisher RTP timestamp.
    pub timestamp: u32,
    /// Publisher payload type.
    pub pt: Pt,
    /// Marker bit.
    pub marker: bool,
    /// Bytes before the payload: fixed header, CSRCs, extension block.
    pub header_len: usize,
    /// Payload bytes (padding excluded).
    pub payload_len: usize,
    /// Where the track's ring stored it, if it did.
    pub ring_id: Option<RingId>,
    /// Its payload starts a keyframe.
    pub keyframe_start: bool,
    /// Its payload format has keyframe detection (legs may be gated on it).
    pub gateable: bool,
}

impl<'a> SourcePacket<'a> {
    /// A placeholder (no bytes) for fixed arrays.
    const NONE: SourcePacket<'static> = SourcePacket {
        bytes: &[],
        ssrc: Ssrc(0),
        seq: SeqNo(0),
        timestamp: 0,
        pt: Pt(0),
        marker: false,
        header_len: 0,
        payload_len: 0,
        ring_id: None,
        keyframe_start: false,
        gateable: false,
    };

    /// Parses the RTP header of `bytes` (version 2, CSRCs, extension block and padding within
    /// bounds). Not stored, no keyframe information yet.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < 12 || bytes[0] >> 6 != 2 {
            return None;
        }
        let mut header_len = 12 + 4 * usize::from(bytes[0] & 0x0F);
        if bytes[0] & 0x10 != 0 {
            let h = bytes.get(header_len..header_len + 4)?;
            header_len += 4 + 4 * usize::from(u16::from_be_bytes([h[2], h[3]]));
        }
        if header_len > bytes.len() {
            return None;
        }
        let padding = if bytes[0] & 0x20 != 0 {
            let p = usize::from(*bytes.last()?);
            if p == 0 || header_len + p > bytes.len() {
                return None;
            }
            p
        } else {
            0
        };
        Some(Self {
            bytes,
            ssrc: Ssrc(u32::from_be_bytes([
                bytes[8], bytes[9], bytes[10], bytes[11],
            ])),
            seq: SeqNo(u16::from_be_bytes([bytes[2], bytes[3]])),
            timestamp: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            pt: Pt(bytes[1] & 0x7F),
            marker: bytes[1] & 0x80 != 0,
            header_len,
            payload_len: bytes.len() - header_len - padding,
            ring_id: None,
            keyframe_start: false,
            gateable: false,
        })
    }

    /// The payload (padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..self.header_len + self.payload_len]
    }
}

/// Unwraps an RFC 4588 RTX packet in place into the original packet (sequence number = OSN,
/// payload type `apt`, SSRC `media_ssrc`, payload shifted over the OSN); returns its length.
/// `None` for an RTX packet without OSN (a padding-only bandwidth probe) or a malformed one.
pub fn unwrap_rtx(buf: &mut [u8], media_ssrc: Ssrc, apt: Pt) -> Option<usize> {
    let p = SourcePacket::parse(buf)?;
    if p.payload_len < 2 {
        return None;
    }
    let hl = p.header_len;
    let osn = [buf[hl], buf[hl + 1]];
    buf.copy_within(hl + 2.., hl);
    buf[1] = (buf[1] & 0x80) | (apt.0 & 0x7F);
    buf[2..4].copy_from_slice(&osn);
    buf[8..12].copy_from_slice(&media_ssrc.0.to_be_bytes());
    Some(buf.len() - 2)
}

/// Where a track's legs send: the shard's per-leg buffers and sealing.
pub trait Egress {
    /// A buffer for the next packet of `leg` (with the transport's transport-wide sequence
    /// counter and abs-send-time), or `None` when the leg's send queue is full: the leg then
    /// skips the packet (congestion). Must have no effect until [`commit`](Self::commit).
    fn outbound(&mut self, leg: LegId) -> Option<Outbound<'_>>;
    /// The leg wrote `sent` into the buffer last given for it: seal it for `sent.ssrc` and
    /// queue it.
    fn commit(&mut self, leg: LegId, sent: Sent);
    /// Reads (and does nothing with) the state [`outbound`](Self::outbound) and
    /// [`commit`](Self::commit) will use for `leg`'s next packet, `ssrc` `seq`: see
    /// [`Leg::touch`]. Optional.
    fn touch(&self, _leg: LegId, _ssrc: Ssrc, _seq: SeqNo) {}
}

/// How to build a [`Track`].
#[derive(Clone, Debug)]
pub struct TrackConfig {
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Payload format of each publisher payload type (unlisted: [`Codec::Opaque`]).
    pub codecs: Vec<(Pt, Codec)>,
    /// The publisher's RTX payload types and their `apt`, for [`Track::on_rtx`].
    pub rtx: Vec<(Pt, Pt)>,
    /// Ring capacity in packets (power of two; give the legs the same history).
    pub ring_capacity: u16,
    /// Largest packet the ring stores.
    pub ring_slot_size: usize,
    /// Oldest packet the ring retransmits.
    pub max_age: Duration,
    /// Minimum gap between keyframe requests to the publisher.
    pub keyframe_interval: Duration,
    /// While a leg waits for a keyframe, ask again this long after the last request.
    pub keyframe_retry: Duration,
    /// A joining video leg starts at the newest keyframe if it arrived at most this long ago
    /// (and it and every packet since are still in the ring); older, the leg waits for a new
    /// one. Zero: never.
    pub keyframe_replay: Duration,
    /// Sender report interval of every leg.
    pub sender_report_interval: Duration,
}

impl TrackConfig {
    /// A track with a `clock_rate` Hz clock and the given payload formats: ring of 512 packets
    /// of 1500 bytes kept 1 s, keyframe requests at most every 500 ms and again after 1 s,
    /// joining legs started at a keyframe up to 500 ms old, sender reports every second.
    pub fn new(clock_rate: u32, codecs: Vec<(Pt, Codec)>) -> Self {
        Self {
            clock_rate,
            codecs,
            rtx: Vec::new(),
            ring_capacity: nack_ring::VIDEO_CAPACITY,
            ring_slot_size: nack_ring::SLOT_SIZE,
            max_age: nack_ring::MAX_AGE,
            keyframe_interval: Duration::from_millis(500),
            keyframe_retry: Duration::from_secs(1),
            // As long as the request interval: a keyframe that recent is never later than the
            // one a new request could bring (coalesced until the interval has passed).
            keyframe_replay: Duration::from_millis(500),
            sender_report_interval: Duration::from_secs(1),
        }
    }
}

/// Counters of one track (the legs and the ring count their own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Packets received (RTX unwrapped included).
    pub received: u64,
    /// Their bytes.
    pub octets: u64,
    /// Not RTP.
    pub malformed: u64,
    /// Duplicates (same SSRC and sequence number as a stored packet): dropped for every leg.
    pub duplicates: u64,
    /// RTX packets unwrapped.
    pub rtx: u64,
    /// RTX packets without OSN (probes) or of an unknown RTX payload type.
    pub rtx_dropped: u64,
    /// Packets sent by the legs (first transmissions).
    pub forwarded: u64,
    /// Retransmissions sent (plain or RTX).
    pub retransmitted: u64,
    /// PLI/FIR received from subscribers.
    pub keyframe_requests: u64,
    /// Publisher sender reports accepted.
    pub sender_reports_in: u64,
    /// Sender reports produced for legs.
    pub sender_reports_out: u64,
    /// Resumptions after an outage with packets lost or with a backlog of stale packets (gated
    /// legs rebased, keyframe asked).
    pub outages: u64,
    /// Joining legs started at a stored keyframe (see [`Track::start_leg`]).
    pub replays: u64,
    /// Packets sent by those starts.
    pub replayed: u64,
}

/// The longest run [`Track::on_rtp_burst`] gives each leg in one go (a read batch's worth).
const MAX_RUN: usize = 32;

/// A packet as [`Track::observe`] classified it.
struct Observed<'a> {
    packet: SourcePacket<'a>,
    arrived: Instant,
    /// The stream resumed with it after an outage with packets lost.
    lost: bool,
    /// It starts a backlog of stale frames (the publisher flushing what it held back).
    backlog_starts: bool,
}

impl Observed<'_> {
    /// Whether the legs must have forwarded every earlier packet before this one is applied:
    /// a keyframe answers pending keyframe requests, an outage rebases the legs.
    fn orders_legs(&self) -> bool {
        self.packet.keyframe_start || self.lost || self.backlog_starts
    }
}

/// Where the newest keyframe starts in the ring.
#[derive(Clone, Copy, Debug)]
struct KeyframeMark {
    ssrc: Ssrc,
    seq: SeqNo,
    arrived: Instant,
}

const NO_PT: u8 = 0xFF;

/// A publisher track and its subscriber legs.
#[derive(Debug)]
pub struct Track {
    clock_rate: u32,
    codec: [Codec; 128],
    rtx_apt: [u8; 128],
    ring: NackRing,
    keyframes: KeyframeRequester,
    keyframe_retry: Duration,
    keyframe_replay: Duration,
    /// Whether any payload format has keyframe detection (only then are keyframes asked for
    /// ahead of a leg).
    gateable: bool,
    /// The newest keyframe start stored in the ring.
    last_keyframe: Option<KeyframeMark>,
    /// The newest packet stored in the ring (the end of a replay).
    newest: Option<(Ssrc, SeqNo)>,
    legs: Vec<Leg>,
    source: Option<Ssrc>,
    clock: Option<PublisherClock>,
    sr_interval: Duration,
    next_sr: Option<Instant>,
    /// Since when at least one leg waits for a keyframe.
    waiting_since: Option<Instant>,
    /// Notices the stream resuming after an outage with packets lost (see `resume_after_outage`
    /// in `leg.rs` and `outage.rs`).
    outage: OutageDetector,
    /// Notices the publisher flushing frames it held back during an outage (`outage.rs`), from
    /// the silences `outage` notices.
    backlog: BacklogDetector,
    stats: TrackStats,
}

impl Track {
    /// A track without legs. Allocates the ring.
    pub fn new(config: &TrackConfig) -> Self {
        let mut codec = [Codec::Opaque; 128];
        for &(pt, c) in &config.codecs {
            codec[usize::from(pt.0 & 0x7F)] = c;
        }
        let mut rtx_apt = [NO_PT; 128];
        for &(rtx, apt) in &config.rtx {
            rtx_apt[usize::from(rtx.0 & 0x7F)] = apt.0 & 0x7F;
        }
        Self {
            clock_rate: config.clock_rate,
            codec,
            rtx_apt,
            ring: NackRing::new(config.ring_capacity, config.ring_slot_size, config.max_age),
            keyframes: KeyframeRequester::new(config.keyframe_interval),
            keyframe_retry: config.keyframe_retry,
            keyframe_replay: config.keyframe_replay,
            gateable: codec.iter().any(|c| c.is_gateable()),
            last_keyframe: None,
            newest: None,
            legs: Vec::new(),
            source: None,
            clock: None,
            sr_interval: config.sender_report_interval,
            next_sr: None,
            waiting_since: None,
            outage: OutageDetector::default(),
            backlog: BacklogDetector::new(config.clock_rate),
            stats: TrackStats::default(),
        }
    }

    /// A subscription to this track is coming or was created at `now`; its leg will be added
    /// once its transport is up. A keyframe is requested now (coalesced like any request), so
    /// that it is in the ring, or on its way, when [`add_leg`](Self::add_leg) comes: the
    /// publisher's reaction time then overlaps the subscriber's negotiation, ICE and DTLS
    /// instead of following them. Not when the ring holds a keyframe young enough to be
    /// replayed still after half the replay age (the time a subscription takes to connect):
    /// a participant's join primes, and its subscriptions' creation would otherwise ask the
    /// publisher for a second keyframe 100–200 ms after the first.
    pub fn prime(&mut self, now: Instant) {
        if !self.gateable {
            return;
        }
        let fresh = self
            .last_keyframe
            .is_some_and(|k| now.saturating_duration_since(k.arrived) <= self.keyframe_replay / 2)
            && self.replay_span(now).is_some();
        if !fresh {
            self.keyframes.request(now);
        }
    }

    /// Adds (or replaces, by id) a leg whose transport is up, at `now`. A leg waiting for a
    /// keyframe gets one requested, unless a recent one is in the ring for
    /// [`start_leg`](Self::start_leg) to send.
    pub fn add_leg(&mut self, mut leg: Leg, now: Instant) {
        self.legs.retain(|l| l.id() != leg.id());
        if leg.take_keyframe_request() && self.replay_span(now).is_none() {
            self.keyframes.request(now);
        }
        self.legs.push(leg);
        self.update_waiting(now);
    }

    /// Starts leg `id` if it still waits for a keyframe: when the newest keyframe arrived at
    /// most [`TrackConfig::keyframe_replay`] ago and it and every packet after it are still in
    /// the ring, they are sent to the leg now, through `egress`, as if they were arriving (the
    /// subscriber's jitter buffer absorbs the burst of at most that much media); otherwise a
    /// keyframe is requested. Called a moment after [`add_leg`](Self::add_leg), once the
    /// subscriber surely has its keys (see the forwarder's `attach_delay`).
    pub fn start_leg(&mut self, id: LegId, now: Instant, egress: &mut impl Egress) {
        let Some(i) = self.legs.iter().position(|l| l.id() == id) else {
            return;
        };
        if !self.legs[i].is_waiting_for_keyframe() {
            return;
        }
        let Some((ssrc, from, span)) = self.replay_span(now) else {
            tracing::debug!(
                leg = id.0,
                "leg starts without a stored keyframe: keyframe requested"
            );
            self.keyframes.request(now);
            return;
        };
        let leg = &mut self.legs[i];
        leg.rewind_for_replay(from);
        let mut sent = 0u64;
        let mut refused = None;
        for k in 0..=span {
            let seq = from.wrapping_add(k);
            let Some((ring_id, bytes)) = self
                .ring
                .find(ssrc, seq)
                .and_then(|rid| Some((rid, self.ring.get(rid, seq, now).ok()?)))
            else {
                break;
            };
            let Some(mut p) = SourcePacket::parse(bytes) else {
                break;
            };
            p.ring_id = Some(ring_id);
            let codec = self.codec[usize::from(p.pt.0 & 0x7F)];
            p.gateable = codec.is_gateable();
            p.keyframe_start = p.gateable && is_keyframe_start(codec, p.payload());
            match leg.forward(&p, egress.outbound(id), now) {
                Ok(s) => {
                    egress.commit(id, s);
                    sent += 1;
                }
                Err(e) => {
                    refused.get_or_insert((k, e, p.keyframe_start));
                }
            }
        }
        let started = !leg.is_waiting_for_keyframe();
        self.stats.replayed += sent;
        tracing::debug!(
            leg = id.0,
            packets = sent,
            span,
            started,
            first_refused = ?refused,
            "leg started from the stored keyframe (not started: keyframe requested)"
        );
        if started {
            self.stats.replays += 1;
        } else {
            self.keyframes.request(now);
        }
        self.update_waiting(now);
    }

    /// The SSRC a replay would be of, where it would start (the newest keyframe) and how many
    /// packets follow it, if it is recent and it and all of them are in the ring.
    fn replay_span(&self, now: Instant) -> Option<(Ssrc, SeqNo, u16)> {
        let (k, (ssrc, newest)) = (self.last_keyframe?, self.newest?);
        if self.keyframe_replay.is_zero()
            || k.ssrc != ssrc
            || now.saturating_duration_since(k.arrived) > self.keyframe_replay
        {
            return None;
        }
        let span = u16::try_from(newest.since(k.seq)).ok()?;
        if usize::from(span) >= self.ring.capacity() {
            return None;
        }
        // All or nothing: a hole would leave the subscriber a frame it cannot complete.
        let stored = |seq: SeqNo| {
            self.ring
                .find(ssrc, seq)
                .is_some_and(|id| self.ring.get(id, seq, now).is_ok())
        };
        (0..=span)
            .all(|i| stored(k.seq.wrapping_add(i)))
            .then_some((ssrc, k.seq, span))
    }

    /// Removes a leg; returns it.
    pub fn remove_leg(&mut self, id: LegId, now: Instant) -> Option<Leg> {
        let i = self.legs.iter().position(|l| l.id() == id)?;
        let leg = self.legs.swap_remove(i);
        self.update_waiting(now);
        Some(leg)
    }

    /// A leg.
    pub fn leg(&self, id: LegId) -> Option<&Leg> {
        self.legs.iter().find(|l| l.id() == id)
    }

    /// The legs.
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// The publisher SSRC last forwarded.
    pub fn source(&self) -> Option<Ssrc> {
        self.source
    }

    /// The retransmission ring.
    pub fn ring(&self) -> &NackRing {
        &self.ring
    }

    /// Keyframe counters.
    pub fn keyframe_stats(&self) -> &KeyframeStats {
        self.keyframes.stats()
    }

    /// Counters.
    pub fn stats(&self) -> &TrackStats {
        &self.stats
    }

    fn update_waiting(&mut self, now: Instant) {
        let any = self.legs.iter().any(Leg::is_waiting_for_keyframe);
        self.set_waiting(any, now);
    }

    fn set_waiting(&mut self, any: bool, now: Instant) {
        match (any, self.waiting_since) {
            (true, None) => self.waiting_since = Some(now),
            (false, Some(since)) => {
                tracing::debug!(
                    waited_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "every leg of the track has its keyframe"
                );
                self.waiting_since = None;
            }
            _ => {}
        }
    }

    /// One clear RTP packet of the publisher's media SSRC, received at `now`: stored,
    /// inspected for a keyframe and forwarded to every leg through `egress`. Returns how many
    /// legs sent it; `Err` when no leg could see it (malformed or duplicate). No allocation.
    pub fn on_rtp(
        &mut self,
        bytes: &[u8],
        now: Instant,
        egress: &mut impl Egress,
    ) -> Result<usize, DropReason> {
        let o = self.observe(bytes, now)?;
        self.apply(&o);
        Ok(self.fan_out(std::slice::from_ref(&o.packet), now, egress))
    }

    /// HOT PATH. Consecutive clear RTP packets of the publisher's media SSRC, read together at
    /// `now`: the same as [`on_rtp`](Self::on_rtp) for each in turn, except that each leg is
    /// given a run of them before the next leg is. A leg's state (sequence map, history,
    /// sealer, AES key) is then loaded from memory once per run instead of once per packet,
    /// and its packets of a run leave together (one GSO message, a frame complete sooner).
    /// A run ends before a packet that starts a keyframe or resumes the stream after an
    /// outage: the legs must have forwarded everything before such a packet when the track
    /// answers pending keyframe requests with it or rebases them at it, exactly as packet
    /// by packet. Returns how many packets the legs sent. No allocation.
    pub fn on_rtp_burst(
        &mut self,
        packets: &[&[u8]],
        now: Instant,
        egress: &mut impl Egress,
    ) -> usize {
        let mut run = [SourcePacket::NONE; MAX_RUN];
        let mut n = 0;
        let mut sent = 0;
        for bytes in packets {
            let Ok(o) = self.observe(bytes, now) else {
                continue;
            };
            if n > 0 && (o.orders_legs() || n == MAX_RUN) {
                sent += self.fan_out(&run[..n], now, egress);
                n = 0;
            }
            self.apply(&o);
            run[n] = o.packet;
            n += 1;
        }
        sent + self.fan_out(&run[..n], now, egress)
    }

    /// The track's own part of a packet's arrival: parsed, stored in the ring, seen by the
    /// outage and backlog detectors, classified. Nothing the legs read changes here.
    fn observe<'a>(&mut self, bytes: &'a [u8], now: Instant) -> Result<Observed<'a>, DropReason> {
        let Some(mut p) = SourcePacket::parse(bytes) else {
            self.stats.malformed += 1;
            return Err(DropReason::Malformed);
        };
        self.stats.received += 1;
        self.stats.octets += bytes.len() as u64;
        if p.payload_len > 0 {
            match self.ring.insert(p.ssrc, p.seq, bytes, now) {
                Ok(id) => p.ring_id = Some(id),
                Err(NotStored::Duplicate) => {
                    self.stats.duplicates += 1;
                    return Err(DropReason::Duplicate);
                }
                // Forwarded all the same; a NACK for it will not be answered.
                Err(NotStored::TooOld | NotStored::TooLarge) => {}
            }
        }
        let codec = self.codec[usize::from(p.pt.0 & 0x7F)];
        p.gateable = codec.is_gateable();
        let lost = p.gateable && self.outage.on_packet(p.seq.0, p.timestamp, now).is_some();
        let backlog = if p.gateable {
            let silence_ended = self.outage.silence_ended();
            self.backlog
                .on_packet(silence_ended, p.seq.0, p.timestamp, now)
        } else {
            Backlog::No
        };
        // A keyframe from a backlog opens no gate and answers no request: what follows it
        // is stale too.
        p.keyframe_start =
            p.gateable && backlog == Backlog::No && is_keyframe_start(codec, p.payload());
        Ok(Observed {
            packet: p,
            arrived: now,
            lost,
            backlog_starts: backlog == Backlog::Starts,
        })
    }

    /// A packet's effects on the keyframe bookkeeping and, after an outage, on the legs; in
    /// arrival order with the fan-out of the packets before it.
    fn apply(&mut self, o: &Observed<'_>) {
        let p = &o.packet;
        if p.keyframe_start {
            self.keyframes.on_keyframe();
            self.last_keyframe = p.ring_id.map(|_| KeyframeMark {
                ssrc: p.ssrc,
                seq: p.seq,
                arrived: o.arrived,
            });
        }
        if p.ring_id.is_some() {
            match self.newest {
                Some((s, n)) if s == p.ssrc && p.seq.since(n) <= 0 => {}
                _ => self.newest = Some((p.ssrc, p.seq)),
            }
        }
        self.source = Some(p.ssrc);
        if o.lost || o.backlog_starts {
            tracing::debug!(
                ssrc = p.ssrc.0,
                seq = p.seq.0,
                lost = o.lost,
                backlog = o.backlog_starts,
                "publisher stream resumed after an outage: gated legs rebased"
            );
            self.stats.outages += 1;
            for leg in &mut self.legs {
                leg.resume_after_outage(p.seq);
            }
        }
    }

    /// HOT PATH. Forwards `run` (packets of this track, in arrival order, already observed and
    /// applied) to every leg, leg by leg. Returns how many packets the legs sent.
    fn fan_out(
        &mut self,
        run: &[SourcePacket<'_>],
        now: Instant,
        egress: &mut impl Egress,
    ) -> usize {
        let Some(first) = run.first() else {
            return 0;
        };
        let mut sent = 0;
        let mut any_waiting = false;
        // A fan-out's legs' state is cold (the packets of the other tracks went through the
        // cache in between): read it all first, so the misses overlap (BENCHMARKS §4.11).
        if self.legs.len() > 1 {
            for leg in &self.legs {
                leg.touch(first.seq);
                egress.touch(leg.id(), leg.ssrc(), leg.next_seq());
            }
        }
        for leg in &mut self.legs {
            let id = leg.id();
            for p in run {
                if let Ok(s) = leg.forward(p, egress.outbound(id), now) {
                    egress.commit(id, s);
                    sent += 1;
                }
                if leg.take_keyframe_request() {
                    self.keyframes.request(now);
                }
            }
            any_waiting |= leg.is_waiting_for_keyframe();
        }
        self.stats.forwarded += sent as u64;
        self.set_waiting(any_waiting, now);
        sent
    }

    /// One clear RTX packet of the publisher (its RTX SSRC): unwrapped in place (see
    /// [`unwrap_rtx`]) into the current source's packet, then as [`on_rtp`](Self::on_rtp).
    pub fn on_rtx(
        &mut self,
        buf: &mut [u8],
        now: Instant,
        egress: &mut impl Egress,
    ) -> Result<usize, DropReason> {
        let apt = match SourcePacket::parse(buf) {
            Some(p) => self.rtx_apt[usize::from(p.pt.0)],
            None => {
                self.stats.malformed += 1;
                return Err(DropReason::Malformed);
            }
        };
        let (Some(ssrc), true) = (self.source, apt != NO_PT) else {
            self.stats.rtx_dropped += 1;
            return Err(DropReason::UnmappedPayloadType);
        };
        let Some(n) = unwrap_rtx(buf, ssrc, Pt(apt)) else {
            self.stats.rtx_dropped += 1;
            return Err(DropReason::PaddingOnly);
        };
        self.stats.rtx += 1;
        self.on_rtp(&buf[..n], now, egress)
    }

    /// A generic NACK from the subscriber of leg `id`: retransmits what the leg may (see
    /// `leg.rs`), through `egress`. Returns how many packets were sent. No allocation.
    pub fn on_nack(
        &mut self,
        id: LegId,
        pairs: &[NackPair],
        now: Instant,
        egress: &mut impl Egress,
    ) -> usize {
        let Some(leg) = self.legs.iter_mut().find(|l| l.id() == id) else {
            return 0;
        };
        let mut sent = 0;
        for pair in pairs {
            let mut one = |seq: u16| {
                if let Ok(s) = leg.retransmit(SeqNo(seq), &self.ring, egress.outbound(id), now) {
                    egress.commit(id, s);
                    sent += 1;
                }
            };
            one(pair.packet_id);
            for bit in 0..16u16 {
                if pair.lost_packets & (1 << bit) != 0 {
                    one(pair.packet_id.wrapping_add(bit + 1));
                }
            }
        }
        self.stats.retransmitted += sent as u64;
        sent
    }

    /// A PLI or FIR from the subscriber of leg `id`: a keyframe is requested (coalesced).
    pub fn on_keyframe_request(&mut self, id: LegId, now: Instant) {
        let Some(leg) = self.legs.iter_mut().find(|l| l.id() == id) else {
            return;
        };
        leg.on_keyframe_request();
        self.stats.keyframe_requests += 1;
        self.keyframes.request(now);
    }

    /// The publisher's sender report for `ssrc` (NTP `ntp`, RTP `rtp`) at `now`. The first
    /// one starts the legs' sender reports at once. Ignored for another SSRC than the source
    /// being forwarded.
    pub fn on_sender_report(&mut self, ssrc: Ssrc, ntp: u64, rtp: u32, now: Instant) {
        if self.source.is_some_and(|s| s != ssrc) {
            return;
        }
        self.stats.sender_reports_in += 1;
        self.clock = Some(PublisherClock::new(ssrc, ntp, rtp, now, self.clock_rate));
        self.next_sr.get_or_insert(now);
    }

    /// A receiver report block about leg `id`; returns the RTT it gives, if any.
    pub fn on_receiver_report(
        &mut self,
        id: LegId,
        lsr: u32,
        dlsr: u32,
        now: Instant,
    ) -> Option<Duration> {
        self.legs
            .iter_mut()
            .find(|l| l.id() == id)?
            .on_receiver_report(lsr, dlsr, now)
    }

    /// `true`: send a keyframe request (PLI) to the publisher now. Also asks again while a
    /// leg has waited `keyframe_retry` since the last request.
    pub fn poll_keyframe_request(&mut self, now: Instant) -> bool {
        if let Some(due) = self.retry_due() {
            if due <= now {
                self.keyframes.request(now);
            }
        }
        self.keyframes.poll(now)
    }

    fn retry_due(&self) -> Option<Instant> {
        let since = self.waiting_since?;
        if self.keyframes.is_pending() {
            return None;
        }
        let base = self.keyframes.last_sent().map_or(since, |l| l.max(since));
        Some(base + self.keyframe_retry)
    }

    /// When it is time for the legs' sender reports, calls `f` with each (a leg that sent
    /// nothing yet, or before the publisher's first SR, has none). Returns how many.
    pub fn poll_sender_reports(
        &mut self,
        now: Instant,
        mut f: impl FnMut(LegId, &SenderReport),
    ) -> usize {
        let (Some(clock), Some(due)) = (self.clock, self.next_sr) else {
            return 0;
        };
        if now < due {
            return 0;
        }
        self.next_sr = Some(now + self.sr_interval);
        let mut n = 0;
        for leg in &mut self.legs {
            if let Some(sr) = leg.sender_report(&clock, now) {
                f(leg.id(), &sr);
                n += 1;
            }
        }
        self.stats.sender_reports_out += n as u64;
        n
    }

    /// The next instant at which [`poll_keyframe_request`](Self::poll_keyframe_request) or
    /// [`poll_sender_reports`](Self::poll_sender_reports) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sr = self.next_sr.filter(|_| !self.legs.is_empty());
        [self.keyframes.poll_timeout(), self.retry_due(), sr]
            .into_iter()
            .flatten()
            .min()
    }
}

/// RTP packet builders for the engine's tests.
#[cfg(test)]
pub(super) mod build {
    /// A header-extension block: RFC 8285 one-byte or two-byte form, `(id, data)` elements.
    #[derive(Clone, Copy)]
    pub(crate) enum Ext<'a> {
        One(&'a [(u8, &'a [u8])]),
        Two(&'a [(u8, &'a [u8])]),
    }

    /// Fields of a test packet.
    #[derive(Clone, Copy)]
    pub(crate) struct Rtp<'a> {
        pub(crate) pt: u8,
        pub(crate) seq: u16,
        pub(crate) ts: u32,
        pub(crate) ssrc: u32,
        pub(crate) marker: bool,
        pub(crate) csrcs: &'a [u32],
        pub(crate) ext: Option<Ext<'a>>,
        pub(crate) payload: &'a [u8],
        pub(crate) padding: u8,
    }

    impl Default for Rtp<'_> {
        fn default() -> Self {
            Self {
                pt: 96,
                seq: 0,
                ts: 0,
                ssrc: 0x1111_1111,
                marker: false,
                csrcs: &[],
                ext: None,
                payload: &[0xAB; 20],
                padding: 0,
            }
        }
    }

    impl Rtp<'_> {
        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut b = vec![
                0x80 | (u8::from(self.padding > 0) << 5)
                    | (u8::from(self.ext.is_some()) << 4)
                    | self.csrcs.len() as u8,
                (u8::from(self.marker) << 7) | self.pt,
            ];
            b.extend_from_slice(&self.seq.to_be_bytes());
            b.extend_from_slice(&self.ts.to_be_bytes());
            b.extend_from_slice(&self.ssrc.to_be_bytes());
            for c in self.csrcs {
                b.extend_from_slice(&c.to_be_bytes());
            }
            if let Some(ext) = self.ext {
                let (profile, mut body) = match ext {
                    Ext::One(els) => (0xBEDEu16, {
                        let mut v = Vec::new();
                        for (id, d) in els {
                            v.push((id << 4) | (d.len() as u8 - 1));
                            v.extend_from_slice(d);
                        }
                        v
                    }),
                    Ext::Two(els) => (0x1000u16, {
                        let mut v = Vec::new();
                        for (id, d) in els {
                            v.push(*id);
                            v.push(d.len() as u8);
                            v.extend_from_slice(d);
                        }
                        v
                    }),
                };
                while body.len() % 4 != 0 {
                    body.push(0);
                }
                b.extend_from_slice(&profile.to_be_bytes());
                b.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
                b.extend_from_slice(&body);
            }
            b.extend_from_slice(self.payload);
            if self.padding > 0 {
                b.resize(b.len() + usize::from(self.padding) - 1, 0);
                b.push(self.padding);
            }
            b
        }
    }

    /// VP8 payloads: a keyframe start, a delta frame start, a continuation packet.
    pub(crate) const VP8_KEY: &[u8] = &[0x10, 0x00, 0x9D, 0x01, 0x2A, 0x11, 0x22];
    pub(crate) const VP8_DELTA: &[u8] = &[0x10, 0x01, 0x33, 0x44, 0x55, 0x66];
    pub(crate) const VP8_MORE: &[u8] = &[0x00, 0x77, 0x88, 0x99, 0xAA];

    /// A packet of source `ssrc` with sequence number `seq` (timestamp `seq × 3000`) whose
    /// payload is `payload` followed by `seq` (so that tests can tell packets apart).
    pub(crate) fn pkt(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
        pkt_ts(ssrc, seq, u32::from(seq).wrapping_mul(3000), payload)
    }

    /// As [`pkt`], with RTP timestamp `ts`.
    pub(crate) fn pkt_ts(ssrc: u32, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = payload.to_vec();
        p.extend_from_slice(&seq.to_be_bytes());
        Rtp {
            seq,
            ts,
            ssrc,
            payload: &p,
            ..Rtp::default()
        }
        .bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::build::{pkt, pkt_ts, Ext, Rtp, VP8_DELTA, VP8_KEY, VP8_MORE};
    use super::*;
    use crate::engine::leg::{uri, DropReason, ExtRule, LegConfig, NackMiss, PtMap, SendKind};
    use crate::engine::sender_report::ntp_middle;
    use rtc::shared::marshal::Unmarshal;
    use std::collections::HashSet;

    const SRC: u32 = 0x1111_1111;

    /// Records what the legs send; legs in `full` have no buffer (congestion).
    struct Rec {
        buf: Vec<u8>,
        tseq: u16,
        abs: u32,
        full: HashSet<LegId>,
        out: Vec<(LegId, Sent, Vec<u8>)>,
    }

    impl Rec {
        fn new() -> Self {
            Self {
                buf: vec![0; 1600],
                tseq: 0,
                abs: 0,
                full: HashSet::new(),
                out: Vec::new(),
            }
        }

        fn take(&mut self) -> Vec<(LegId, Sent, Vec<u8>)> {
            std::mem::take(&mut self.out)
        }

        fn seqs(&mut self, leg: LegId) -> Vec<u16> {
            self.take()
                .into_iter()
                .filter(|(l, _, _)| *l == leg)
                .map(|(_, s, _)| s.seq.0)
                .collect()
        }
    }

    impl Egress for Rec {
        fn outbound(&mut self, leg: LegId) -> Option<Outbound<'_>> {
            if self.full.contains(&leg) {
                return None;
            }
            Some(Outbound {
                buf: &mut self.buf,
                transport_seq: &mut self.tseq,
                abs_send_time: self.abs,
            })
        }

        fn commit(&mut self, leg: LegId, sent: Sent) {
            let bytes = self.buf[..sent.len].to_vec();
            self.out.push((leg, sent, bytes));
        }
    }

    fn vp8_track() -> Track {
        let mut cfg = TrackConfig::new(90_000, vec![(Pt(96), Codec::Vp8)]);
        cfg.rtx = vec![(Pt(97), Pt(96))];
        Track::new(&cfg)
    }

    fn video_leg(id: u64, first_seq: u16, now: Instant) -> Leg {
        let mut c = LegConfig::new(Ssrc(0x2000 + id as u32), 90_000);
        c.payload_types = vec![PtMap {
            publisher: Pt(96),
            subscriber: Pt(100),
            rtx: None,
        }];
        c.gate_on_keyframes = true;
        c.first_seq = SeqNo(first_seq);
        Leg::new(LegId(id), &c, now)
    }

    fn payload_seq(bytes: &[u8]) -> u16 {
        let n = bytes.len();
        u16::from_be_bytes([bytes[n - 2], bytes[n - 1]])
    }

    fn nack(seqs: &[u16]) -> Vec<NackPair> {
        seqs.iter().map(|s| NackPair::new(*s)).collect()
    }

    #[test]
    fn parses_headers_and_refuses_what_is_not_rtp() {
        let b = Rtp {
            csrcs: &[1, 2],
            ext: Some(Ext::One(&[(3, &[1, 2, 3])])),
            padding: 4,
            marker: true,
            ..Rtp::default()
        }
        .bytes();
        let p = SourcePacket::parse(&b).unwrap();
        assert_eq!(p.header_len, 12 + 8 + 4 + 4);
        assert_eq!(p.payload_len, 20);
        assert!(p.marker);
        assert_eq!(p.payload(), &[0xAB; 20]);
        let bad: [&[u8]; 4] = [
            &b[..11],                                  // short
            &[0x40; 12],                               // version 1
            &b[..b.len() - 4 - 20 - 2],                // extension block cut
            &[0xA0, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // padding byte 0 with P set
        ];
        for (i, b) in bad.iter().enumerate() {
            assert!(SourcePacket::parse(b).is_none(), "case {i}");
        }
    }

    #[test]
    fn forwards_to_every_leg_and_a_congested_leg_waits_for_the_next_keyframe() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 100, t0), t0);
        track.add_leg(video_leg(2, 500, t0), t0);
        assert!(track.poll_keyframe_request(t0), "joining legs ask once");
        assert!(!track.poll_keyframe_request(t0));

        // Gated until the keyframe.
        assert_eq!(track.on_rtp(&pkt(SRC, 1, VP8_DELTA), t0, &mut eg), Ok(0));
        assert_eq!(track.on_rtp(&pkt(SRC, 2, VP8_KEY), t0, &mut eg), Ok(2));
        assert_eq!(track.on_rtp(&pkt(SRC, 3, VP8_MORE), t0, &mut eg), Ok(2));
        assert_eq!(eg.seqs(LegId(1)), [100, 101]);

        // Leg 2 congested for one packet: it skips, waits, asks once.
        eg.full.insert(LegId(2));
        track.on_rtp(&pkt(SRC, 4, VP8_DELTA), t0, &mut eg).unwrap();
        eg.full.clear();
        track.on_rtp(&pkt(SRC, 5, VP8_DELTA), t0, &mut eg).unwrap();
        let t1 = t0 + Duration::from_millis(600);
        assert!(track.poll_keyframe_request(t1));
        // (Captured then: after 600 ms of silence, an older frame would be a stale backlog.)
        track
            .on_rtp(&pkt_ts(SRC, 6, 600 * 90, VP8_KEY), t1, &mut eg)
            .unwrap();
        let out = eg.take();
        let leg2: Vec<_> = out.iter().filter(|o| o.0 == LegId(2)).collect();
        assert_eq!(leg2.len(), 1, "only the keyframe reached leg 2");
        assert_eq!(leg2[0].1.seq, SeqNo(502), "no gap for what leg 2 skipped");
        assert_eq!(payload_seq(&leg2[0].2), 6);
        assert_eq!(out.iter().filter(|o| o.0 == LegId(1)).count(), 3);
        let s2 = track.leg(LegId(2)).unwrap().stats();
        assert_eq!(s2.dropped(DropReason::Congestion), 1);
        assert_eq!(s2.dropped(DropReason::WaitingForKeyframe), 2);
        assert_eq!(s2.keyframe_waits, 2);
        assert_eq!(track.keyframe_stats().sent, 2);
        assert_eq!(track.stats().forwarded, 2 + 2 + 1 + 1 + 2);
    }

    /// `on_rtp_burst` is `on_rtp` packet by packet, leg by leg instead: over a stream with
    /// gated joins, a congested leg, a duplicate, a late packet, a loss, keyframes in the
    /// middle of a read and an outage, every leg sends the same packets with the same
    /// numbers, and the track asks for the same keyframes at the same moments.
    #[test]
    fn a_burst_forwards_what_packet_by_packet_forwards() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let v = |seq: u16, at_ms: u32, payload: &[u8]| pkt_ts(SRC, seq, at_ms * 90, payload);
        // (time in ms, packets read together, legs joining then, legs congested then)
        type Read = (u64, Vec<Vec<u8>>, Vec<u64>, Vec<u64>);
        let reads: Vec<Read> = vec![
            (
                0,
                vec![v(1, 0, VP8_DELTA), v(2, 0, VP8_KEY), v(3, 0, VP8_MORE)],
                vec![],
                vec![],
            ),
            (
                33,
                (4..9).map(|q| v(q, 33, VP8_DELTA)).collect(),
                vec![4],
                vec![],
            ),
            (
                66,
                vec![
                    v(9, 66, VP8_DELTA),
                    v(9, 66, VP8_DELTA),
                    v(11, 66, VP8_DELTA),
                ],
                vec![],
                vec![2],
            ),
            (
                100,
                vec![
                    v(10, 66, VP8_DELTA),
                    v(12, 100, VP8_DELTA),
                    v(13, 100, VP8_KEY),
                    v(14, 100, VP8_MORE),
                ],
                vec![5],
                vec![],
            ),
            (
                133,
                (15..47)
                    .map(|q| v(q, 133, VP8_DELTA))
                    .chain([v(47, 133, VP8_KEY)])
                    .collect(),
                vec![],
                vec![],
            ),
            // 3 s of silence, then a jump over what the outage swallowed.
            (
                3_200,
                vec![
                    v(400, 3_200, VP8_DELTA),
                    v(300, 3_100, VP8_DELTA),
                    v(401, 3_200, VP8_KEY),
                    v(402, 3_200, VP8_MORE),
                ],
                vec![],
                vec![],
            ),
            (
                3_233,
                (403..408).map(|q| v(q, 3_233, VP8_DELTA)).collect(),
                vec![],
                vec![],
            ),
        ];
        let mut tracks = [vp8_track(), vp8_track()];
        let mut egs = [Rec::new(), Rec::new()];
        let mut asked = [Vec::new(), Vec::new()];
        for (i, (track, eg)) in tracks.iter_mut().zip(&mut egs).enumerate() {
            for id in 1..=3 {
                track.add_leg(video_leg(id, 100 * id as u16, t0), t0);
            }
            for (at, packets, joining, congested) in &reads {
                let now = ms(*at);
                for id in joining {
                    track.add_leg(video_leg(*id, 100 * *id as u16, now), now);
                }
                eg.full = congested.iter().map(|id| LegId(*id)).collect();
                if i == 0 {
                    for p in packets {
                        let _ = track.on_rtp(p, now, eg);
                    }
                } else {
                    let burst: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
                    track.on_rtp_burst(&burst, now, eg);
                }
                asked[i].push(track.poll_keyframe_request(now));
            }
        }
        let [one, burst] = &mut egs;
        let (one, burst) = (one.take(), burst.take());
        assert!(one.len() > 150, "the scenario forwards: {}", one.len());
        for id in 1..=5 {
            let of = |out: &[(LegId, Sent, Vec<u8>)]| -> Vec<(u16, Vec<u8>)> {
                out.iter()
                    .filter(|o| o.0 == LegId(id))
                    .map(|o| (o.1.seq.0, o.2.clone()))
                    .collect()
            };
            assert_eq!(of(&one), of(&burst), "leg {id}");
            assert_eq!(
                tracks[0].leg(LegId(id)).map(|l| *l.stats()),
                tracks[1].leg(LegId(id)).map(|l| *l.stats()),
                "leg {id}"
            );
        }
        assert_eq!(asked[0], asked[1]);
        assert_eq!(tracks[0].stats(), tracks[1].stats());
        assert_eq!(tracks[0].keyframe_stats(), tracks[1].keyframe_stats());
        assert_eq!(tracks[1].stats().outages, 1, "the scenario has its outage");
        assert_eq!(tracks[1].stats().duplicates, 1);
        // Leg by leg: a burst's output changes leg far less often than packet by packet.
        let switches =
            |out: &[(LegId, Sent, Vec<u8>)]| out.windows(2).filter(|w| w[0].0 != w[1].0).count();
        assert!(
            switches(&burst) * 4 < switches(&one),
            "{} leg switches in bursts, {} packet by packet",
            switches(&burst),
            switches(&one)
        );
    }

    #[test]
    fn a_stream_resuming_after_an_outage_leaves_no_gap_and_asks_for_a_keyframe_at_once() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 100, t0), t0);
        assert!(track.poll_keyframe_request(t0));
        track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 2, VP8_DELTA), t0, &mut eg).unwrap();
        assert_eq!(eg.seqs(LegId(1)), [100, 101]);

        // A pause without loss is no outage: nothing asked, numbering goes on (the frame after
        // it was captured after it: no backlog).
        let t1 = t0 + Duration::from_secs(2);
        track
            .on_rtp(&pkt_ts(SRC, 3, 2 * 90_000, VP8_DELTA), t1, &mut eg)
            .unwrap();
        assert_eq!(eg.seqs(LegId(1)), [102]);
        assert!(!track.poll_keyframe_request(t1));

        // 3 s of silence, then the stream jumps over 300 packets the outage swallowed.
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(track.on_rtp(&pkt(SRC, 304, VP8_DELTA), t2, &mut eg), Ok(0));
        assert!(
            track.poll_keyframe_request(t2),
            "asked at once, not after a retry"
        );
        // The swallowed packets, retransmitted late by the publisher, go nowhere.
        assert_eq!(track.on_rtp(&pkt(SRC, 200, VP8_DELTA), t2, &mut eg), Ok(0));
        assert_eq!(track.on_rtp(&pkt(SRC, 305, VP8_KEY), t2, &mut eg), Ok(1));
        assert_eq!(
            eg.seqs(LegId(1)),
            [103],
            "the keyframe takes the next number: no gap for the receiver to NACK"
        );
        assert_eq!(track.stats().outages, 1);
        // Later gaps are ordinary losses: numbers reserved, no keyframe asked.
        let t3 = t2 + Duration::from_millis(20);
        track
            .on_rtp(&pkt(SRC, 306, VP8_DELTA), t3, &mut eg)
            .unwrap();
        track
            .on_rtp(&pkt(SRC, 308, VP8_DELTA), t3, &mut eg)
            .unwrap();
        assert_eq!(eg.seqs(LegId(1)), [104, 106]);
        assert!(!track.poll_keyframe_request(t3));
        assert_eq!(track.stats().outages, 1);
    }

    #[test]
    fn a_backlog_flushed_after_an_outage_reaches_no_leg_until_a_fresh_keyframe() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // RTP time of a frame captured `n` ms after t0 (90 kHz).
        let at = |n: u32| n * 90;
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 100, t0), t0);
        assert!(track.poll_keyframe_request(t0));
        track
            .on_rtp(&pkt_ts(SRC, 1, at(0), VP8_KEY), ms(0), &mut eg)
            .unwrap();
        track
            .on_rtp(&pkt_ts(SRC, 2, at(33), VP8_DELTA), ms(33), &mut eg)
            .unwrap();
        assert_eq!(eg.seqs(LegId(1)), [100, 101]);

        // 3 s of outage; the publisher held back what it captured meanwhile and now flushes
        // it, without a gap, a keyframe among it: none of it is fresh, so none goes out, and a
        // keyframe is asked for at once.
        assert_eq!(
            track.on_rtp(&pkt_ts(SRC, 3, at(66), VP8_DELTA), ms(3_040), &mut eg),
            Ok(0)
        );
        assert!(track.poll_keyframe_request(ms(3_040)), "asked at once");
        for (seq, captured, payload) in
            [(4, 99, VP8_KEY), (5, 132, VP8_DELTA), (6, 2_900, VP8_DELTA)]
        {
            assert_eq!(
                track.on_rtp(&pkt_ts(SRC, seq, at(captured), payload), ms(3_045), &mut eg),
                Ok(0),
                "stale packet {seq} forwarded"
            );
        }
        assert!(eg.seqs(LegId(1)).is_empty());
        assert_eq!(
            track.keyframe_stats().keyframes,
            1,
            "a stale keyframe is no keyframe (nor one to replay to a joining leg)"
        );
        // The fresh keyframe, captured after the stream came back, restarts the leg with the
        // next output number; what follows flows again.
        assert_eq!(
            track.on_rtp(&pkt_ts(SRC, 7, at(3_060), VP8_KEY), ms(3_080), &mut eg),
            Ok(1)
        );
        assert_eq!(
            track.on_rtp(&pkt_ts(SRC, 8, at(3_093), VP8_DELTA), ms(3_100), &mut eg),
            Ok(1)
        );
        assert_eq!(eg.seqs(LegId(1)), [102, 103]);
        assert_eq!(track.stats().outages, 1);
        assert_eq!(track.keyframe_stats().keyframes, 2);
    }

    /// The leg for the byte-identity and RTX tests: extensions stamped and remapped, a mid.
    fn stamped_leg(id: u64, rtx: bool, now: Instant) -> Leg {
        let mut c = LegConfig::new(Ssrc(0xAAAA_0000 + id as u32), 90_000);
        c.payload_types = vec![PtMap {
            publisher: Pt(96),
            subscriber: Pt(98),
            rtx: rtx.then_some(Pt(99)),
        }];
        c.rtx_ssrc = rtx.then_some(Ssrc(0xBBBB_0000 + id as u32));
        c.first_rtx_seq = SeqNo(65_535);
        c.extensions = extension_rules_for_tests();
        c.mid = Some(crate::engine::wire::Mid("1".into()));
        c.first_seq = SeqNo(65_534);
        c.first_timestamp = 1_000_000;
        Leg::new(LegId(id), &c, now)
    }

    fn extension_rules_for_tests() -> Vec<(u8, ExtRule)> {
        crate::engine::leg::extension_rules(
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
        )
    }

    fn ext_pkt(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = payload.to_vec();
        p.extend_from_slice(&seq.to_be_bytes());
        Rtp {
            seq,
            ts: u32::from(seq) * 3000,
            ext: Some(Ext::One(&[(3, &[9, 9, 9]), (5, &[7, 7]), (9, b"0")])),
            payload: &p,
            marker: seq % 2 == 0,
            ..Rtp::default()
        }
        .bytes()
    }

    #[test]
    fn a_plain_retransmission_is_byte_identical_to_the_first_transmission() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(stamped_leg(1, false, t0), t0);
        let mut first = Vec::new();
        for (i, seq) in (10u16..20).enumerate() {
            eg.abs = 1000 + i as u32; // our send time moves on
            let payload = if seq == 10 { VP8_KEY } else { VP8_DELTA };
            track
                .on_rtp(
                    &ext_pkt(seq, payload),
                    t0 + Duration::from_millis(i as u64),
                    &mut eg,
                )
                .unwrap();
            first.extend(eg.take());
        }
        assert_eq!(first.len(), 10);
        assert_eq!(eg.tseq, 10, "one transport-wide number per packet");
        // Across the output sequence wrap: 65534, 65535, 0, 1, ...
        let wanted: Vec<u16> = first.iter().map(|f| f.1.seq.0).collect();
        assert_eq!(wanted[..3], [65_534, 65_535, 0]);
        eg.abs = 0xFFFF;
        let t1 = t0 + Duration::from_millis(50);
        let n = track.on_nack(LegId(1), &nack(&wanted), t1, &mut eg);
        assert_eq!(n, 10);
        let again = eg.take();
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(b.1.kind, SendKind::Retransmission);
            assert_eq!((a.1.seq, a.1.ssrc, a.1.len), (b.1.seq, b.1.ssrc, b.1.len));
            assert_eq!(a.2, b.2, "retransmission of {} differs", a.1.seq.0);
        }
        assert_eq!(
            eg.tseq, 10,
            "a plain retransmission reuses its transport-wide number"
        );
        let s = track.leg(LegId(1)).unwrap().stats();
        assert_eq!((s.packets, s.retransmissions), (20, 10));
    }

    #[test]
    fn rtx_retransmissions_follow_rfc_4588() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(stamped_leg(1, true, t0), t0);
        eg.abs = 0x12_3456;
        track.on_rtp(&ext_pkt(10, VP8_KEY), t0, &mut eg).unwrap();
        track.on_rtp(&ext_pkt(11, VP8_DELTA), t0, &mut eg).unwrap();
        let first = eg.take();
        eg.abs = 0x65_4321;
        let t1 = t0 + Duration::from_millis(30);
        // 65534 and 65535 in one pair (PID + BLP bit 0).
        let pair = NackPair {
            packet_id: 65_534,
            lost_packets: 1,
        };
        assert_eq!(track.on_nack(LegId(1), &[pair], t1, &mut eg), 2);
        let rtx = eg.take();
        for (k, ((_, orig, ob), (_, sent, rb))) in first.iter().zip(&rtx).enumerate() {
            assert_eq!(sent.kind, SendKind::Rtx);
            assert_eq!(sent.ssrc, Ssrc(0xBBBB_0001));
            assert_eq!(sent.len, orig.len + 2);
            let o = rtc::rtp::packet::Packet::unmarshal(&mut &ob[..]).unwrap();
            let r = rtc::rtp::packet::Packet::unmarshal(&mut &rb[..]).unwrap();
            assert_eq!(r.header.ssrc, 0xBBBB_0001);
            assert_eq!(r.header.payload_type, 99);
            // Own sequence space, from first_rtx_seq, wrapping.
            assert_eq!(r.header.sequence_number, [65_535, 0][k]);
            assert_eq!(r.header.timestamp, o.header.timestamp);
            assert_eq!(r.header.marker, o.header.marker);
            // OSN = the original's output sequence number, then the original payload.
            assert_eq!(&r.payload[..2], &o.header.sequence_number.to_be_bytes());
            assert_eq!(&r.payload[2..], &o.payload[..]);
            // Same extensions, with a fresh transport-wide number and send time.
            assert_eq!(r.header.get_extension(1), o.header.get_extension(1));
            assert_eq!(
                r.header.get_extension(4).unwrap()[..],
                (2 + k as u16).to_be_bytes()
            );
            assert_eq!(r.header.get_extension(2).unwrap()[..], [0x65, 0x43, 0x21]);
        }
        assert_eq!(eg.tseq, 4);
        let s = track.leg(LegId(1)).unwrap().stats();
        assert_eq!((s.packets, s.rtx_packets, s.retransmissions), (2, 2, 0));
    }

    #[test]
    fn nacks_map_output_numbers_back_across_the_legs_skips_and_gaps() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 100, t0), t0);
        // Source:  1:key 2 [3 congested] 4 5:key 6 [7 lost upstream] 8 9:padding-only 10
        // Output:  100   101               (skipped, waiting) 102 103 [104] 105 (none) 106
        track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 2, VP8_MORE), t0, &mut eg).unwrap();
        eg.full.insert(LegId(1));
        track.on_rtp(&pkt(SRC, 3, VP8_MORE), t0, &mut eg).unwrap();
        eg.full.clear();
        track.on_rtp(&pkt(SRC, 4, VP8_MORE), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 5, VP8_KEY), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 6, VP8_MORE), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 8, VP8_MORE), t0, &mut eg).unwrap();
        let padding = Rtp {
            seq: 9,
            ssrc: SRC,
            payload: &[],
            padding: 200,
            ..Rtp::default()
        }
        .bytes();
        track.on_rtp(&padding, t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 10, VP8_MORE), t0, &mut eg).unwrap();
        let sent: Vec<(u16, u16)> = eg
            .take()
            .iter()
            .map(|(_, s, b)| (s.seq.0, payload_seq(b)))
            .collect();
        assert_eq!(
            sent,
            [(100, 1), (101, 2), (102, 5), (103, 6), (105, 8), (106, 10)]
        );

        let t1 = t0 + Duration::from_millis(20);
        track.on_nack(LegId(1), &nack(&[101, 102, 104, 106, 107]), t1, &mut eg);
        let again: Vec<(u16, u16)> = eg
            .take()
            .iter()
            .map(|(_, s, b)| (s.seq.0, payload_seq(b)))
            .collect();
        assert_eq!(again, [(101, 2), (102, 5), (106, 10)]);
        let s = *track.leg(LegId(1)).unwrap().stats();
        assert_eq!(
            s.nack_missed(NackMiss::NotYetReceived),
            1,
            "104 waits for 7"
        );
        assert_eq!(s.nack_missed(NackMiss::NotSent), 1, "107 was never sent");

        // 7 arrives late (the publisher's retransmission): it fills 104, then a NACK finds it.
        track.on_rtp(&pkt(SRC, 7, VP8_MORE), t1, &mut eg).unwrap();
        assert_eq!(eg.seqs(LegId(1)), [104]);
        track.on_nack(LegId(1), &nack(&[104]), t1, &mut eg);
        let r = eg.take();
        assert_eq!((r[0].1.seq.0, payload_seq(&r[0].2)), (104, 7));
    }

    #[test]
    fn nacks_beyond_the_ring_or_the_limits_are_not_answered() {
        let t0 = Instant::now();
        let mut cfg = TrackConfig::new(90_000, vec![(Pt(96), Codec::Vp8)]);
        cfg.ring_capacity = 16;
        cfg.max_age = Duration::from_millis(300);
        let mut track = Track::new(&cfg);
        let mut eg = Rec::new();
        let mut c = LegConfig::new(Ssrc(7), 90_000);
        c.payload_types = vec![PtMap {
            publisher: Pt(96),
            subscriber: Pt(96),
            rtx: None,
        }];
        c.history = 64;
        c.max_retransmits = 2;
        track.add_leg(Leg::new(LegId(1), &c, t0), t0);
        for seq in 0..40u16 {
            track
                .on_rtp(&pkt(SRC, seq, VP8_DELTA), t0, &mut eg)
                .unwrap();
        }
        assert_eq!(eg.take().len(), 40);
        let t = |ms| t0 + Duration::from_millis(ms);
        let miss = |track: &Track, m| track.leg(LegId(1)).unwrap().stats().nack_missed(m);

        // Evicted: 40 packets through a ring of 16.
        assert_eq!(track.on_nack(LegId(1), &nack(&[0, 23]), t(10), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::Evicted), 2);
        // In the ring: answered; again within the RTT (100 ms assumed): refused.
        assert_eq!(track.on_nack(LegId(1), &nack(&[30]), t(10), &mut eg), 1);
        assert_eq!(track.on_nack(LegId(1), &nack(&[30]), t(60), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::RateLimited), 1);
        // After one RTT: answered; then the limit of 2 is reached.
        assert_eq!(track.on_nack(LegId(1), &nack(&[30]), t(110), &mut eg), 1);
        assert_eq!(track.on_nack(LegId(1), &nack(&[30]), t(250), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::Exhausted), 1);
        // No buffer: not answered, and not counted as a retransmission.
        eg.full.insert(LegId(1));
        assert_eq!(track.on_nack(LegId(1), &nack(&[31]), t(250), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::NoBuffer), 1);
        eg.full.clear();
        // Too old for the ring's age limit.
        assert_eq!(track.on_nack(LegId(1), &nack(&[31]), t(301), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::Expired), 1);
        // A NACK for another leg's id or a number never sent.
        assert_eq!(track.on_nack(LegId(9), &nack(&[31]), t(10), &mut eg), 0);
        assert_eq!(track.on_nack(LegId(1), &nack(&[1000]), t(10), &mut eg), 0);
        assert_eq!(miss(&track, NackMiss::NotSent), 1);
        let s = track.leg(LegId(1)).unwrap().stats();
        assert_eq!((s.nacked, s.retransmissions), (9, 2));
    }

    #[test]
    fn the_rtt_from_receiver_reports_paces_retransmissions() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        let mut c = LegConfig::new(Ssrc(7), 90_000);
        c.payload_types = vec![PtMap {
            publisher: Pt(96),
            subscriber: Pt(96),
            rtx: None,
        }];
        track.add_leg(Leg::new(LegId(1), &c, t0), t0);
        track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg).unwrap();
        track.on_sender_report(Ssrc(SRC), 5 << 32, 0, t0);
        let mut srs = Vec::new();
        track.poll_sender_reports(t0, |id, sr| srs.push((id, *sr)));
        let lsr = ntp_middle(srs[0].1.ntp);
        // Reported back 30 ms later with 10 ms of DLSR: RTT 20 ms.
        let rtt = track
            .on_receiver_report(LegId(1), lsr, 655, t0 + Duration::from_millis(30))
            .unwrap();
        assert!(rtt.as_micros().abs_diff(20_000) < 100);
        let t = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(track.on_nack(LegId(1), &nack(&[0]), t(40), &mut eg), 1);
        assert_eq!(track.on_nack(LegId(1), &nack(&[0]), t(50), &mut eg), 0);
        assert_eq!(track.on_nack(LegId(1), &nack(&[0]), t(61), &mut eg), 1);
    }

    #[test]
    fn keyframe_requests_are_coalesced_and_retried_while_a_leg_waits() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        // Legs never start at a stored keyframe here (see the replay test below).
        let mut cfg = TrackConfig::new(90_000, vec![(Pt(96), Codec::Vp8)]);
        cfg.keyframe_replay = Duration::ZERO;
        let mut track = Track::new(&cfg);
        let mut eg = Rec::new();
        assert_eq!(track.poll_timeout(), None);
        track.add_leg(video_leg(1, 0, t0), t0);
        track.add_leg(video_leg(2, 0, t0), t0);
        assert_eq!(track.poll_timeout(), Some(t0));
        assert!(track.poll_keyframe_request(t0));
        // A subscriber's PLI 100 ms later waits for the 500 ms interval.
        track.on_keyframe_request(LegId(1), t(100));
        assert!(!track.poll_keyframe_request(t(100)));
        assert_eq!(track.poll_timeout(), Some(t(500)));
        // The keyframe answering the first request arrives: the pending one is dropped.
        track
            .on_rtp(&pkt(SRC, 1, VP8_KEY), t(200), &mut eg)
            .unwrap();
        assert!(!track.poll_keyframe_request(t(600)));
        assert_eq!(track.keyframe_stats().satisfied_before_sending, 1);
        assert_eq!(track.poll_timeout(), None);
        // A third leg joins; its request goes out at the end of the interval only.
        track.add_leg(video_leg(3, 0, t(300)), t(300));
        assert!(!track.poll_keyframe_request(t(300)));
        assert!(track.poll_keyframe_request(t(500)));
        // No keyframe comes: leg 3 still waits, so we ask again after the retry time (1 s).
        assert_eq!(track.poll_timeout(), Some(t(1500)));
        assert!(!track.poll_keyframe_request(t(1499)));
        assert!(track.poll_keyframe_request(t(1500)));
        // (Captured then: after 1.4 s of silence, an older frame would be a stale backlog.)
        track
            .on_rtp(&pkt_ts(SRC, 2, 1_600 * 90, VP8_KEY), t(1600), &mut eg)
            .unwrap();
        assert!(!track.leg(LegId(3)).unwrap().is_waiting_for_keyframe());
        assert_eq!(track.poll_timeout(), None);
        assert!(!track.poll_keyframe_request(t(9000)));
        assert_eq!(track.keyframe_stats().sent, 3);
        assert_eq!(track.stats().keyframe_requests, 1);
    }

    #[test]
    fn a_joining_leg_starts_at_a_recent_stored_keyframe_without_asking() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut track = vp8_track();
        let mut eg = Rec::new();
        // A subscription is created: the keyframe is asked for before its leg exists.
        track.prime(t0);
        assert!(track.poll_keyframe_request(t0));
        for (seq, payload) in [(1, VP8_DELTA), (2, VP8_KEY), (3, VP8_MORE), (4, VP8_DELTA)] {
            assert_eq!(track.on_rtp(&pkt(SRC, seq, payload), t(50), &mut eg), Ok(0));
        }
        // Its transport is up 100 ms later: nothing to ask, and a moment later the keyframe and
        // what followed go out at once.
        track.add_leg(video_leg(1, 700, t(150)), t(150));
        assert!(!track.poll_keyframe_request(t(150)), "nothing to ask");
        assert!(eg.take().is_empty());
        track.start_leg(LegId(1), t(160), &mut eg);
        let out = eg.take();
        assert_eq!(
            out.iter()
                .map(|o| (o.1.seq.0, payload_seq(&o.2)))
                .collect::<Vec<_>>(),
            [(700, 2), (701, 3), (702, 4)],
            "from the keyframe on, renumbered without a gap"
        );
        assert!(!track.leg(LegId(1)).unwrap().is_waiting_for_keyframe());
        assert!(!track.poll_keyframe_request(t(160)), "nothing to ask");
        assert_eq!(track.poll_timeout(), None);
        assert_eq!((track.stats().replays, track.stats().replayed), (1, 3));
        // Live packets follow on.
        assert_eq!(
            track.on_rtp(&pkt(SRC, 5, VP8_DELTA), t(160), &mut eg),
            Ok(1)
        );
        assert_eq!(eg.seqs(LegId(1)), [703]);

        // A keyframe older than the replay age (500 ms): the next leg waits and asks.
        track.add_leg(video_leg(2, 0, t(700)), t(700));
        track.start_leg(LegId(2), t(700), &mut eg);
        assert!(eg.take().is_empty());
        assert!(track.leg(LegId(2)).unwrap().is_waiting_for_keyframe());
        assert!(track.poll_keyframe_request(t(700)));

        // A fresh keyframe with a packet missing after it: all or nothing, the leg waits.
        track
            .on_rtp(&pkt(SRC, 10, VP8_KEY), t(800), &mut eg)
            .unwrap();
        track
            .on_rtp(&pkt(SRC, 12, VP8_DELTA), t(800), &mut eg)
            .unwrap();
        eg.take();
        track.add_leg(video_leg(3, 0, t(810)), t(810));
        track.start_leg(LegId(3), t(810), &mut eg);
        assert!(eg.take().is_empty());
        assert!(track.leg(LegId(3)).unwrap().is_waiting_for_keyframe());
        assert_eq!(track.stats().replays, 1);
    }

    #[test]
    fn live_packets_of_the_attach_delay_do_not_spoil_the_replay() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.prime(t0);
        for (seq, payload) in [(2, VP8_KEY), (3, VP8_MORE)] {
            assert_eq!(track.on_rtp(&pkt(SRC, seq, payload), t(50), &mut eg), Ok(0));
        }
        track.add_leg(video_leg(1, 700, t(150)), t(150));
        // Between the leg's arrival and its start (the forwarder's attach delay) the
        // publisher goes on: the waiting leg drops those packets.
        for seq in [4, 5] {
            assert_eq!(
                track.on_rtp(&pkt(SRC, seq, VP8_DELTA), t(155), &mut eg),
                Ok(0)
            );
        }
        track.start_leg(LegId(1), t(160), &mut eg);
        assert_eq!(
            eg.take()
                .iter()
                .map(|o| (o.1.seq.0, payload_seq(&o.2)))
                .collect::<Vec<_>>(),
            [(700, 2), (701, 3), (702, 4), (703, 5)],
            "the replay starts at the keyframe although the leg saw 4 and 5 go by"
        );
        assert!(!track.leg(LegId(1)).unwrap().is_waiting_for_keyframe());
        assert_eq!(track.stats().replays, 1);
        assert_eq!(
            track.on_rtp(&pkt(SRC, 6, VP8_DELTA), t(170), &mut eg),
            Ok(1)
        );
        assert_eq!(eg.seqs(LegId(1)), [704]);
    }

    #[test]
    fn priming_asks_nothing_while_a_fresh_keyframe_is_stored() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut track = vp8_track();
        let mut eg = Rec::new();
        // A participant joins: the track is primed and the request goes out.
        track.prime(t0);
        assert!(track.poll_keyframe_request(t0));
        for (seq, payload) in [(1, VP8_KEY), (2, VP8_MORE), (3, VP8_DELTA)] {
            track
                .on_rtp(&pkt(SRC, seq, payload), t(60), &mut eg)
                .unwrap();
        }
        // Its subscription is created 200 ms later: the keyframe (140 ms old) will do.
        track.prime(t(200));
        assert_eq!(track.poll_timeout(), None, "nothing to ask");
        assert!(!track.poll_keyframe_request(t(2000)));
        // Older than half the replay age (250 ms): it may be too old by the time the leg
        // connects, so a subscription created now asks.
        track.prime(t(311));
        assert!(
            track.poll_keyframe_request(t(560)),
            "asked at the end of the interval"
        );
        assert_eq!(track.keyframe_stats().sent, 2);
    }

    #[test]
    fn priming_asks_for_keyframes_only_where_they_can_be_detected() {
        let t0 = Instant::now();
        let mut audio = Track::new(&TrackConfig::new(48_000, vec![(Pt(111), Codec::Opaque)]));
        audio.prime(t0);
        assert!(!audio.poll_keyframe_request(t0));
        let mut video = vp8_track();
        video.prime(t0);
        video.prime(t0);
        assert!(video.poll_keyframe_request(t0));
        assert!(!video.poll_keyframe_request(t0), "coalesced");
    }

    #[test]
    fn sender_reports_translate_the_publishers_mapping_per_leg() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut track = vp8_track();
        let mut eg = Rec::new();
        let mut c = LegConfig::new(Ssrc(7), 90_000);
        c.payload_types = vec![PtMap {
            publisher: Pt(96),
            subscriber: Pt(96),
            rtx: None,
        }];
        c.first_timestamp = 5_000;
        track.add_leg(Leg::new(LegId(1), &c, t0), t0);
        c.ssrc = Ssrc(8);
        track.add_leg(Leg::new(LegId(2), &c, t0), t0);
        // Source packet 10 has timestamp 30000; leg 1 maps it to 5000: offset −25000.
        // Leg 2 is congested and sends nothing.
        eg.full.insert(LegId(2));
        for seq in 10..13u16 {
            track
                .on_rtp(&pkt(SRC, seq, VP8_DELTA), t0, &mut eg)
                .unwrap();
        }
        let mut srs = Vec::new();
        // Before the publisher's first SR: none.
        assert_eq!(
            track.poll_sender_reports(t(100), |id, sr| srs.push((id, *sr))),
            0
        );
        // Publisher SR: NTP 100.5 s ↔ RTP 30000 at t(100). Ours at once, then every second.
        track.on_sender_report(Ssrc(SRC), (100 << 32) | 0x8000_0000, 30_000, t(100));
        assert_eq!(track.poll_timeout(), Some(t(100)));
        assert_eq!(
            track.poll_sender_reports(t(100), |id, sr| srs.push((id, *sr))),
            1
        );
        assert_eq!(
            track.poll_sender_reports(t(600), |id, sr| srs.push((id, *sr))),
            0
        );
        assert_eq!(track.poll_timeout(), Some(t(1100)));
        assert_eq!(
            track.poll_sender_reports(t(1350), |id, sr| srs.push((id, *sr))),
            1
        );
        let payload = (VP8_DELTA.len() + 2) as u32;
        let want = [
            SenderReport {
                ssrc: Ssrc(7),
                ntp: (100 << 32) | 0x8000_0000,
                rtp: 5_000,
                packets: 3,
                octets: 3 * payload,
            },
            // 1.25 s later: NTP 101.75 s, RTP 30000 + 112500 − 25000.
            SenderReport {
                ssrc: Ssrc(7),
                ntp: (101 << 32) | 0xC000_0000,
                rtp: 117_500,
                packets: 3,
                octets: 3 * payload,
            },
        ];
        assert_eq!(srs, [(LegId(1), want[0]), (LegId(1), want[1])]);
        // An SR of another source than the one forwarded is ignored.
        track.on_sender_report(Ssrc(99), 0, 0, t(1400));
        assert_eq!(track.stats().sender_reports_in, 1);
    }

    #[test]
    fn publisher_rtx_is_unwrapped_and_fills_the_gap() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 100, t0), t0);
        track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg).unwrap();
        track.on_rtp(&pkt(SRC, 3, VP8_MORE), t0, &mut eg).unwrap();
        assert_eq!(eg.seqs(LegId(1)), [100, 102]);
        // The publisher's RTX for 2: RTX SSRC, PT 97, its own seq 500, OSN 2.
        let orig = pkt(SRC, 2, VP8_MORE);
        let o = SourcePacket::parse(&orig).unwrap();
        let mut payload = 2u16.to_be_bytes().to_vec();
        payload.extend_from_slice(o.payload());
        let mut rtx = Rtp {
            pt: 97,
            seq: 500,
            ts: o.timestamp,
            ssrc: 0x3333_3333,
            payload: &payload,
            ..Rtp::default()
        }
        .bytes();
        assert_eq!(track.on_rtx(&mut rtx, t0, &mut eg), Ok(1));
        let out = eg.take();
        assert_eq!(out[0].1.seq, SeqNo(101));
        assert_eq!(&rtx[..orig.len()], &orig[..], "unwrapped in place");
        // An RTX probe (no OSN) and an unknown RTX payload type are dropped.
        let mut probe = Rtp {
            pt: 97,
            payload: &[],
            padding: 100,
            ..Rtp::default()
        }
        .bytes();
        assert_eq!(
            track.on_rtx(&mut probe, t0, &mut eg),
            Err(DropReason::PaddingOnly)
        );
        let mut other = Rtp {
            pt: 111,
            ..Rtp::default()
        }
        .bytes();
        assert!(track.on_rtx(&mut other, t0, &mut eg).is_err());
        assert_eq!((track.stats().rtx, track.stats().rtx_dropped), (1, 2));
    }

    #[test]
    fn duplicates_and_malformed_packets_reach_no_leg() {
        let t0 = Instant::now();
        let mut track = vp8_track();
        let mut eg = Rec::new();
        track.add_leg(video_leg(1, 0, t0), t0);
        track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg).unwrap();
        assert_eq!(
            track.on_rtp(&pkt(SRC, 1, VP8_KEY), t0, &mut eg),
            Err(DropReason::Duplicate)
        );
        assert_eq!(
            track.on_rtp(&[0x80, 96, 0], t0, &mut eg),
            Err(DropReason::Malformed)
        );
        assert_eq!(eg.take().len(), 1);
        assert_eq!((track.stats().duplicates, track.stats().malformed), (1, 1));
        assert!(track.remove_leg(LegId(1), t0).is_some());
        assert!(track.remove_leg(LegId(1), t0).is_none());
        assert_eq!(track.on_rtp(&pkt(SRC, 2, VP8_KEY), t0, &mut eg), Ok(0));
    }
}
