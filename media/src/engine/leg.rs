//! One subscriber's view of one publisher track: the in-place rewrite of a forwarded packet
//! (SSRC, sequence number, timestamp, payload type, header extensions), the leg's own sequence
//! space, keyframe gating, retransmissions and the leg's counters.
//!
//! Owns the leg's rewrite tables (payload types, extension ids), its sequence mapping in both
//! directions (source → output for late packets, output → source for NACKs), the record of
//! every packet it sent that a NACK may ask for again, its gate and its [`SenderReporter`].
//! Does not own packets (the track's [`NackRing`] does), sockets, SRTP or timers: the caller
//! hands it a buffer ([`Outbound`]) and seals what it wrote. No allocation after [`Leg::new`].
//!
//! # Sequence continuity
//! Output sequence numbers are the leg's own, starting at [`LegConfig::first_seq`] and
//! continuous across source switches, sequence restarts and the leg's own drops:
//! - A packet **the leg skips** (waiting for a keyframe, no buffer = congestion, unmapped payload
//!   type, padding-only probe) **takes no output number**: the next forwarded packet gets the
//!   number it would have had. The receiver sees no gap, so it never NACKs what we chose not to
//!   send (and could not answer byte-identically). A video leg that skipped media because of
//!   congestion waits for the next keyframe (see gating) instead of showing a corrupt picture.
//! - A packet **lost upstream** (the source sequence jumps forward) **keeps its number**: the
//!   gap is reserved, the receiver NACKs it, and if the packet arrives late (reordering, or the
//!   publisher's retransmission) it is forwarded with exactly that number. Exception: while the
//!   leg waits for a keyframe it reserves nothing (it would not forward those packets). NACKs for a number
//!   still reserved are counted ([`NackMiss::NotYetReceived`]) and unanswered.
//! - A packet sent into a buffer that the caller then failed to transmit is an ordinary loss:
//!   it has its number and its record, so a NACK recovers it.
//! - A source switch (new SSRC) or a sequence restart (a forward jump larger than the history
//!   window, or two consecutive packets further behind than it) rebases: the next packet takes
//!   the next output number, no gap; timestamps continue with the wall-clock time elapsed since
//!   the leg's last packet (at least one tick), and video waits for a keyframe.
//!
//! # Gating
//! A leg with [`LegConfig::gate_on_keyframes`] (video) waits for a keyframe start when it is
//! created, after a source switch or a sequence restart, and after it skipped media for
//! congestion: until then it forwards nothing (late packets included), and it raises one
//! keyframe request per wait ([`Leg::take_keyframe_request`]; a congestion loss of the very
//! keyframe it waited for raises another). Payload formats without keyframe detection are
//! never gated.
//!
//! # Retransmissions
//! A NACK names output numbers; the leg's history maps each to the source packet's
//! [`RingId`](super::nack_ring::RingId)
//! and to the exact rewrite values used the first time (timestamp offset, transport-wide
//! sequence number, abs-send-time). With RTX negotiated the answer is an RTX packet (RFC 4588:
//! RTX SSRC and payload type, the leg's RTX sequence space, the original output number as OSN
//! in front of the payload, fresh transport-wide sequence number). Without RTX it is the first
//! transmission again, **byte for byte** — the same SRTP index must never carry two plaintexts.
//! Limits per packet per leg: at most [`LegConfig::max_retransmits`] times, not again within
//! one RTT (the leg's measured RTT, [`LegConfig::default_rtt`] before the first measurement,
//! never below 5 ms), and only while the ring has it (count and age bounds of the ring).

use std::time::{Duration, Instant};

use super::nack_ring::{Miss, NackRing};
use super::sender_report::{rtp_ticks, PublisherClock, SenderReport, SenderReporter};
use super::track::SourcePacket;
use super::wire::{Mid, Pt, SeqNo, Ssrc};

/// Identifies a leg within its track (chosen by the shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// RFC 8285 extension URIs the leg treats specially.
pub mod uri {
    /// Transport-wide congestion control sequence number (rewritten per subscriber transport).
    pub const TRANSPORT_CC: &str =
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
    /// Absolute send time (rewritten with our send time).
    pub const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
    /// SDP media id (rewritten with the subscriber's mid).
    pub const MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
    /// RTP stream id (simulcast; never forwarded).
    pub const RID: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
    /// Repaired RTP stream id (simulcast RTX; never forwarded).
    pub const REPAIRED_RID: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
}

/// What the leg does with one publisher header extension (by publisher id). The `u8` is the
/// subscriber's id for it. An element whose subscriber id does not fit the packet's form (above
/// 14 in the one-byte form) or whose value cannot be rewritten in place is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExtRule {
    /// Not negotiated by the subscriber: the element is overwritten with padding bytes.
    #[default]
    Drop,
    /// Same meaning on both sides: the id is rewritten, the value kept.
    Keep(u8),
    /// transport-cc: id rewritten, value = the subscriber transport's next sequence number.
    TransportSeq(u8),
    /// abs-send-time: id rewritten, value = our send time ([`Outbound::abs_send_time`]).
    AbsSendTime(u8),
    /// mid: id rewritten, value = the leg's mid if it fits the element, else dropped.
    Mid(u8),
}

/// The rules for a leg from both sides' negotiated extensions (`a=extmap` id and URI): a
/// publisher extension the subscriber did not negotiate is dropped, RID and repaired-RID always
/// are, transport-cc, abs-send-time and mid are rewritten, any other is kept under the
/// subscriber's id.
pub fn extension_rules(publisher: &[(u8, &str)], subscriber: &[(u8, &str)]) -> Vec<(u8, ExtRule)> {
    publisher
        .iter()
        .filter_map(|&(id, u)| {
            let (theirs, _) = subscriber.iter().find(|(_, s)| *s == u)?;
            let rule = match u {
                uri::TRANSPORT_CC => ExtRule::TransportSeq(*theirs),
                uri::ABS_SEND_TIME => ExtRule::AbsSendTime(*theirs),
                uri::MID => ExtRule::Mid(*theirs),
                uri::RID | uri::REPAIRED_RID => ExtRule::Drop,
                _ => ExtRule::Keep(*theirs),
            };
            Some((id, rule))
        })
        .collect()
}

/// One payload type mapping of a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtMap {
    /// The publisher's payload type.
    pub publisher: Pt,
    /// The same codec's payload type on the subscriber's connection.
    pub subscriber: Pt,
    /// The subscriber's RTX payload type for it (`apt` = `subscriber`), if negotiated.
    pub rtx: Option<Pt>,
}

/// How to build a [`Leg`].
#[derive(Clone, Debug)]
pub struct LegConfig {
    /// The leg's SSRC (announced in the subscriber's SDP).
    pub ssrc: Ssrc,
    /// The leg's RTX SSRC, if RTX is negotiated (retransmissions then go as RTX).
    pub rtx_ssrc: Option<Ssrc>,
    /// Payload types; a publisher payload type not listed is not forwarded.
    pub payload_types: Vec<PtMap>,
    /// Header extension rules by publisher id; ids not listed are dropped.
    pub extensions: Vec<(u8, ExtRule)>,
    /// The subscriber's mid for this track (written by [`ExtRule::Mid`]; at most 16 bytes).
    pub mid: Option<Mid>,
    /// RTP clock rate of the track's codec.
    pub clock_rate: u32,
    /// Wait for keyframes (video with a detectable payload format).
    pub gate_on_keyframes: bool,
    /// First output sequence number (random, RFC 3550 §5.1).
    pub first_seq: SeqNo,
    /// First output timestamp (random).
    pub first_timestamp: u32,
    /// First RTX sequence number (random).
    pub first_rtx_seq: SeqNo,
    /// Packets remembered for NACKs and reordering (power of two, 16 ..= 32768): as many as
    /// the track's ring holds.
    pub history: u16,
    /// Retransmissions of one packet to this leg, at most.
    pub max_retransmits: u8,
    /// RTT assumed until the first receiver report gives one.
    pub default_rtt: Duration,
}

impl LegConfig {
    /// A leg with SSRC `ssrc` for a `clock_rate` Hz stream: no payload type, no extension, no
    /// RTX, no gating; history 512, 3 retransmissions at most, 100 ms assumed RTT.
    pub fn new(ssrc: Ssrc, clock_rate: u32) -> Self {
        Self {
            ssrc,
            rtx_ssrc: None,
            payload_types: Vec::new(),
            extensions: Vec::new(),
            mid: None,
            clock_rate,
            gate_on_keyframes: false,
            first_seq: SeqNo(0),
            first_timestamp: 0,
            first_rtx_seq: SeqNo(0),
            history: 512,
            max_retransmits: 3,
            default_rtt: Duration::from_millis(100),
        }
    }
}

/// Why a leg did not forward a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not RTP (caught by the track before any leg).
    Malformed,
    /// The publisher's payload type has no mapping on this leg.
    UnmappedPayloadType,
    /// A padding-only packet (bandwidth probe): never forwarded as new media.
    PaddingOnly,
    /// The leg waits for a keyframe.
    WaitingForKeyframe,
    /// The caller had no buffer for the leg (its send queue is full).
    Congestion,
    /// The caller's buffer is shorter than the packet.
    BufferTooSmall,
    /// Already forwarded by this leg.
    Duplicate,
    /// Older than the leg's history, or late for a number the leg did not reserve (it skipped
    /// that packet, or it was lost while the leg waited for a keyframe).
    TooLate,
}

impl DropReason {
    /// Number of variants.
    pub const COUNT: usize = 8;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnmappedPayloadType,
        DropReason::PaddingOnly,
        DropReason::WaitingForKeyframe,
        DropReason::Congestion,
        DropReason::BufferTooSmall,
        DropReason::Duplicate,
        DropReason::TooLate,
    ];

    /// Position in counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name, for metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnmappedPayloadType => "unmapped_payload_type",
            DropReason::PaddingOnly => "padding_only",
            DropReason::WaitingForKeyframe => "waiting_for_keyframe",
            DropReason::Congestion => "congestion",
            DropReason::BufferTooSmall => "buffer_too_small",
            DropReason::Duplicate => "duplicate",
            DropReason::TooLate => "too_late",
        }
    }
}

/// Why a NACKed sequence number was not retransmitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NackMiss {
    /// The leg never sent that number (or its record is older than the history).
    NotSent,
    /// The number is reserved for a packet lost upstream that has not arrived.
    NotYetReceived,
    /// Retransmitted less than one RTT ago.
    RateLimited,
    /// Retransmitted `max_retransmits` times already.
    Exhausted,
    /// The ring no longer holds (or never stored) the packet.
    Evicted,
    /// The ring holds it, but it is older than the ring's age limit.
    Expired,
    /// The caller had no buffer (or one too small).
    NoBuffer,
}

impl NackMiss {
    /// Number of variants.
    pub const COUNT: usize = 7;

    /// Every miss, in counter order.
    pub const ALL: [NackMiss; NackMiss::COUNT] = [
        NackMiss::NotSent,
        NackMiss::NotYetReceived,
        NackMiss::RateLimited,
        NackMiss::Exhausted,
        NackMiss::Evicted,
        NackMiss::Expired,
        NackMiss::NoBuffer,
    ];

    /// Position in counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Packets sent on the leg's SSRC, plain retransmissions included (the SR's count).
    pub packets: u64,
    /// Their payload octets (headers and padding excluded; the SR's count).
    pub octets: u64,
    /// Of `packets`, plain retransmissions.
    pub retransmissions: u64,
    /// RTX packets sent.
    pub rtx_packets: u64,
    /// Their payload octets (OSN included).
    pub rtx_octets: u64,
    /// Drops by [`DropReason::index`].
    pub dropped: [u64; DropReason::COUNT],
    /// Sequence numbers NACKed by the subscriber.
    pub nacked: u64,
    /// NACKed numbers not answered, by [`NackMiss::index`].
    pub nack_missed: [u64; NackMiss::COUNT],
    /// Times the leg started waiting for a keyframe (each raised one keyframe request).
    pub keyframe_waits: u64,
    /// PLI/FIR received from the subscriber.
    pub keyframe_requests_received: u64,
    /// Source switches (new publisher SSRC) after the first.
    pub source_switches: u64,
    /// Sequence restarts (jumps beyond the history).
    pub sequence_restarts: u64,
}

impl LegStats {
    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// NACKed numbers not answered for `miss`.
    pub fn nack_missed(&self, miss: NackMiss) -> u64 {
        self.nack_missed[miss.index()]
    }
}

/// Where the caller wants the leg's next packet: a buffer it owns (room for the packet, RTX's
/// two more bytes and the SRTP tag are the caller's concern) and the per-transport values.
#[derive(Debug)]
pub struct Outbound<'a> {
    /// The packet is written from offset 0.
    pub buf: &'a mut [u8],
    /// The subscriber transport's next transport-wide sequence number: read and incremented
    /// when the leg stamps it (shared by every leg of that transport).
    pub transport_seq: &'a mut u16,
    /// abs-send-time value for this send ([`abs_send_time`]), same epoch for a whole transport.
    pub abs_send_time: u32,
}

/// What a leg wrote into an [`Outbound`] buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Length of the clear RTP packet.
    pub len: usize,
    /// The SSRC it carries (the leg's, or its RTX SSRC): the SRTP context to seal with.
    pub ssrc: Ssrc,
    /// The sequence number it carries.
    pub seq: SeqNo,
    /// What it is.
    pub kind: SendKind,
    /// How far back the leg may still send on this SSRC (its history): the sealer's window for
    /// it, so the record of sealed indices is no longer than what can be retransmitted.
    pub window: u16,
}

/// Kind of a [`Sent`] packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// First transmission.
    Media,
    /// Plain retransmission: byte-identical to the first transmission (same SRTP index; the
    /// sealer must derive the same rollover counter for this older sequence number).
    Retransmission,
    /// RFC 4588 retransmission on the RTX SSRC.
    Rtx,
}

/// The abs-send-time value (6.18 fixed-point seconds, 24 bits) of a send `since_epoch` after
/// the transport's epoch.
pub fn abs_send_time(since_epoch: Duration) -> u32 {
    // Masked to 24 bits.
    (((since_epoch.as_nanos() << 18) / 1_000_000_000) & 0x00FF_FFFF) as u32
}

/// Zeroes a header-extension element (RFC 8285 padding bytes); elements are short, and most
/// often there is nothing to zero, so no `memset` call.
#[inline]
fn zero(b: &mut [u8]) {
    for x in b {
        *x = 0;
    }
}

const NO_PT: u8 = 0xFF;
const MIN_RESEND_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SrcState {
    Empty,
    /// Passed over (lost upstream): `out` waits for it.
    Reserved,
    Sent,
    Skipped,
}

/// Source-indexed: what the leg did with a source sequence number.
#[derive(Clone, Copy, Debug)]
struct SrcEntry {
    seq: SeqNo,
    out: SeqNo,
    state: SrcState,
}

const SRC_EMPTY: SrcEntry = SrcEntry {
    seq: SeqNo(0),
    out: SeqNo(0),
    state: SrcState::Empty,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutState {
    Empty,
    Reserved,
    Sent,
}

/// Output-indexed: how an output number was (or will be) made, enough to make it again.
#[derive(Clone, Copy, Debug)]
struct OutRecord {
    out: SeqNo,
    src: SeqNo,
    state: OutState,
    resends: u8,
    transport_seq: u16,
    /// Low 32 bits of the source packet's `RingId` (0: not stored): 24-byte records instead
    /// of 32, 4 kB less per video leg; [`NackRing::id_ending_in`] gives the id back.
    ring: u32,
    ts_offset: u32,
    abs_send_time: u32,
    /// Milliseconds since the leg's epoch of the last retransmission (valid if `resends > 0`).
    last_resent_ms: u32,
}

const OUT_EMPTY: OutRecord = OutRecord {
    out: SeqNo(0),
    src: SeqNo(0),
    state: OutState::Empty,
    resends: 0,
    transport_seq: 0,
    ring: 0,
    ts_offset: 0,
    abs_send_time: 0,
    last_resent_ms: 0,
};

/// The values one rewrite writes.
#[derive(Clone, Copy, Debug)]
struct Values {
    pt: u8,
    seq: SeqNo,
    ts_offset: u32,
    ssrc: Ssrc,
    transport_seq: u16,
    abs_send_time: u32,
}

/// One subscriber's view of one publisher track. See the module documentation for the
/// policies.
#[derive(Debug)]
pub struct Leg {
    id: LegId,
    ssrc: Ssrc,
    rtx_ssrc: Option<Ssrc>,
    /// Publisher PT → subscriber PT (`NO_PT`: unmapped).
    pt_map: [u8; 128],
    /// Publisher PT → subscriber RTX PT (`NO_PT`: none).
    rtx_pt: [u8; 128],
    ext: [ExtRule; 256],
    mid: [u8; 16],
    mid_len: usize,
    clock_rate: u32,
    gate_on_keyframes: bool,
    max_retransmits: u8,
    default_rtt: Duration,
    epoch: Instant,

    source: Option<Ssrc>,
    /// Highest source sequence number handled (forwarded, skipped or reserved).
    max_src: SeqNo,
    /// Next unused output number.
    next_out: SeqNo,
    ts_offset: u32,
    last_out_ts: u32,
    last_sent_at: Option<Instant>,
    rtx_seq: SeqNo,
    /// A packet far behind `max_src`; the next one right after it restarts the sequence.
    restart_candidate: Option<SeqNo>,
    waiting: bool,
    keyframe_wanted: bool,
    mask: u16,
    by_src: Box<[SrcEntry]>,
    history: Box<[OutRecord]>,
    reporter: SenderReporter,
    stats: LegStats,
}

impl Leg {
    /// A leg built from `config`, created at `now`. A gated leg starts waiting for a keyframe
    /// and with a keyframe request raised. The leg's only allocations.
    pub fn new(id: LegId, config: &LegConfig, now: Instant) -> Self {
        let mut pt_map = [NO_PT; 128];
        let mut rtx_pt = [NO_PT; 128];
        for m in &config.payload_types {
            let i = usize::from(m.publisher.0 & 0x7F);
            pt_map[i] = m.subscriber.0 & 0x7F;
            rtx_pt[i] = m.rtx.map_or(NO_PT, |p| p.0 & 0x7F);
        }
        let mut ext = [ExtRule::Drop; 256];
        for &(id, rule) in &config.extensions {
            let valid = match rule {
                ExtRule::Drop => true,
                ExtRule::Keep(o)
                | ExtRule::TransportSeq(o)
                | ExtRule::AbsSendTime(o)
                | ExtRule::Mid(o) => o != 0,
            };
            if id != 0 && valid {
                ext[usize::from(id)] = rule;
            }
        }
        let mut mid = [0u8; 16];
        let mid_len = match &config.mid {
            Some(m) if !m.0.is_empty() && m.0.len() <= mid.len() => {
                mid[..m.0.len()].copy_from_slice(m.0.as_bytes());
                m.0.len()
            }
            _ => 0,
        };
        let size = config.history.clamp(16, 32_768).next_power_of_two();
        let waiting = config.gate_on_keyframes;
        Self {
            id,
            ssrc: config.ssrc,
            rtx_ssrc: config.rtx_ssrc,
            pt_map,
            rtx_pt,
            ext,
            mid,
            mid_len,
            clock_rate: config.clock_rate,
            gate_on_keyframes: config.gate_on_keyframes,
            max_retransmits: config.max_retransmits,
            default_rtt: config.default_rtt,
            epoch: now,
            source: None,
            max_src: SeqNo(0),
            next_out: config.first_seq,
            ts_offset: 0,
            last_out_ts: config.first_timestamp,
            last_sent_at: None,
            rtx_seq: config.first_rtx_seq,
            restart_candidate: None,
            waiting,
            keyframe_wanted: waiting,
            mask: size - 1,
            by_src: vec![SRC_EMPTY; usize::from(size)].into_boxed_slice(),
            history: vec![OUT_EMPTY; usize::from(size)].into_boxed_slice(),
            reporter: SenderReporter::new(),
            stats: LegStats {
                keyframe_waits: u64::from(waiting),
                ..LegStats::default()
            },
        }
    }

    /// The leg's id.
    pub fn id(&self) -> LegId {
        self.id
    }

    /// The leg's SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The leg's RTX SSRC, if any.
    pub fn rtx_ssrc(&self) -> Option<Ssrc> {
        self.rtx_ssrc
    }

    /// The publisher source the leg follows (after its first packet).
    pub fn source(&self) -> Option<Ssrc> {
        self.source
    }

    /// `out_ts = src_ts + offset` for the current source.
    pub fn ts_offset(&self) -> u32 {
        self.ts_offset
    }

    /// The next output sequence number the leg will use.
    pub fn next_seq(&self) -> SeqNo {
        self.next_out
    }

    /// Whether the leg waits for a keyframe.
    pub fn is_waiting_for_keyframe(&self) -> bool {
        self.waiting
    }

    /// Whether the leg wants a keyframe requested from the publisher; reading clears it.
    pub fn take_keyframe_request(&mut self) -> bool {
        std::mem::take(&mut self.keyframe_wanted)
    }

    /// Counts a PLI/FIR from the subscriber (the track requests the keyframe).
    pub fn on_keyframe_request(&mut self) {
        self.stats.keyframe_requests_received += 1;
    }

    /// The RTT measured from the subscriber's receiver reports, if any yet.
    pub fn rtt(&self) -> Option<Duration> {
        self.reporter.rtt()
    }

    /// Counters.
    pub fn stats(&self) -> &LegStats {
        &self.stats
    }

    /// Reads the state [`forward`](Self::forward) of source packet `seq` will read and write
    /// first (the leg's position, the source entry, the next history record), and does nothing
    /// with it. See [`Track::on_rtp`](super::track::Track::on_rtp): a fan-out touches every
    /// leg first so that the cache misses of all its legs overlap, instead of each leg waiting
    /// for its own in turn.
    #[inline]
    pub fn touch(&self, seq: SeqNo) {
        let src = self.by_src.get(self.slot(seq)).map(|e| e.seq);
        let out = self.history.get(self.slot(self.next_out)).map(|r| r.out);
        std::hint::black_box((self.source, self.stats.packets, src, out));
    }

    fn slot(&self, seq: SeqNo) -> usize {
        usize::from(seq.0 & self.mask)
    }

    fn window(&self) -> i32 {
        // At most 32768.
        self.by_src.len() as i32
    }

    /// HOT PATH. Forwards source packet `p` into `out` (`None`: the caller has no buffer for
    /// this leg now, i.e. congestion): copies it, rewrites it for this leg and records it for
    /// NACKs. `Err` says why the leg did not forward it (counted). No allocation.
    pub fn forward(
        &mut self,
        p: &SourcePacket<'_>,
        out: Option<Outbound<'_>>,
        now: Instant,
    ) -> Result<Sent, DropReason> {
        if self.source != Some(p.ssrc) {
            self.switch_source(p, now);
        }
        let window = self.window();
        let mut d = i32::from(p.seq.since(self.max_src));
        if d > window {
            self.restart_sequence(p.seq);
            d = 1;
        } else if d <= -window {
            if self.restart_candidate == Some(p.seq.wrapping_add(u16::MAX)) {
                self.restart_sequence(p.seq);
                d = 1;
            } else {
                self.restart_candidate = Some(p.seq);
                return Err(self.count_drop(DropReason::TooLate));
            }
        }
        self.restart_candidate = None;
        if d <= 0 {
            return self.forward_late(p, out);
        }
        // Newest so far: reserve the numbers of the packets lost upstream in between (a
        // waiting leg would not forward them: no numbers).
        for k in 1..d {
            // 1 <= k < window <= 32768.
            let lost = self.max_src.wrapping_add(k as u16);
            if self.waiting {
                self.skip_src(lost);
            } else {
                self.reserve(lost);
            }
        }
        self.max_src = p.seq;
        let pt = self.pt_map[usize::from(p.pt.0 & 0x7F)];
        let verdict = if pt == NO_PT {
            Err(DropReason::UnmappedPayloadType)
        } else if p.payload_len == 0 {
            Err(DropReason::PaddingOnly)
        } else if self.waiting && p.gateable && !p.keyframe_start {
            Err(DropReason::WaitingForKeyframe)
        } else {
            match out {
                None => Err(DropReason::Congestion),
                Some(o) if o.buf.len() < p.bytes.len() => Err(DropReason::BufferTooSmall),
                Some(o) => self.write_media(p, pt, self.next_out, o),
            }
        };
        let i = self.slot(p.seq);
        match verdict {
            Ok(sent) => {
                self.by_src[i] = SrcEntry {
                    seq: p.seq,
                    out: sent.seq,
                    state: SrcState::Sent,
                };
                self.next_out = self.next_out.wrapping_add(1);
                self.waiting = false;
                self.last_out_ts = p.timestamp.wrapping_add(self.ts_offset);
                self.last_sent_at = Some(now);
                Ok(sent)
            }
            Err(reason) => {
                // Skipped: no output number taken.
                self.skip_src(p.seq);
                self.after_skip(reason, p);
                Err(self.count_drop(reason))
            }
        }
    }

    /// A packet at or behind the newest: a late arrival into its reserved number, or a
    /// duplicate.
    fn forward_late(
        &mut self,
        p: &SourcePacket<'_>,
        out: Option<Outbound<'_>>,
    ) -> Result<Sent, DropReason> {
        let i = self.slot(p.seq);
        let e = self.by_src[i];
        let verdict = if e.seq != p.seq || matches!(e.state, SrcState::Empty | SrcState::Skipped) {
            Err(DropReason::TooLate)
        } else if e.state == SrcState::Sent {
            Err(DropReason::Duplicate)
        } else {
            let pt = self.pt_map[usize::from(p.pt.0 & 0x7F)];
            if pt == NO_PT {
                Err(DropReason::UnmappedPayloadType)
            } else if self.waiting && p.gateable {
                // A late packet never opens the gate: what followed it was skipped.
                Err(DropReason::WaitingForKeyframe)
            } else {
                match out {
                    None => Err(DropReason::Congestion),
                    Some(o) if o.buf.len() < p.bytes.len() => Err(DropReason::BufferTooSmall),
                    // A padding-only packet is forwarded too: it fills the receiver's gap.
                    Some(o) => self.write_media(p, pt, e.out, o),
                }
            }
        };
        match verdict {
            Ok(sent) => {
                self.by_src[i].state = SrcState::Sent;
                Ok(sent)
            }
            Err(reason) => {
                // The reservation (if any) stays: the packet may still come again.
                self.after_skip(reason, p);
                Err(self.count_drop(reason))
            }
        }
    }

    fn count_drop(&mut self, reason: DropReason) -> DropReason {
        self.stats.dropped[reason.index()] += 1;
        reason
    }

    /// After the leg did not forward `p`: media lost for congestion → wait for a keyframe.
    fn after_skip(&mut self, reason: DropReason, p: &SourcePacket<'_>) {
        if matches!(reason, DropReason::Congestion | DropReason::BufferTooSmall) && p.gateable {
            if self.waiting {
                // The keyframe it waited for is lost too: ask for another.
                self.keyframe_wanted |= p.keyframe_start;
            } else {
                self.start_waiting();
            }
        }
    }

    fn start_waiting(&mut self) {
        if self.gate_on_keyframes && !self.waiting {
            self.waiting = true;
            self.keyframe_wanted = true;
            self.stats.keyframe_waits += 1;
        }
    }

    fn skip_src(&mut self, src: SeqNo) {
        let i = self.slot(src);
        self.by_src[i] = SrcEntry {
            seq: src,
            out: SeqNo(0),
            state: SrcState::Skipped,
        };
    }

    fn reserve(&mut self, src: SeqNo) {
        let out = self.next_out;
        self.next_out = out.wrapping_add(1);
        let i = self.slot(src);
        self.by_src[i] = SrcEntry {
            seq: src,
            out,
            state: SrcState::Reserved,
        };
        let j = self.slot(out);
        self.history[j] = OutRecord {
            out,
            src,
            state: OutState::Reserved,
            ..OUT_EMPTY
        };
    }

    fn switch_source(&mut self, p: &SourcePacket<'_>, now: Instant) {
        if self.source.is_some() {
            self.stats.source_switches += 1;
        }
        self.source = Some(p.ssrc);
        let ticks = match self.last_sent_at {
            Some(t) => rtp_ticks(now.saturating_duration_since(t), self.clock_rate).max(1),
            None => 0,
        };
        self.ts_offset = self
            .last_out_ts
            .wrapping_add(ticks)
            .wrapping_sub(p.timestamp);
        self.max_src = p.seq.wrapping_add(u16::MAX);
        self.by_src.fill(SRC_EMPTY);
        self.restart_candidate = None;
        self.start_waiting();
    }

    /// The publisher's stream resumed at `seq` after an outage, the packets before it lost for
    /// good: a gated (video) leg rebases as for a sequence restart — `seq` takes the next
    /// output number, so the receiver has no gap to NACK and wait for — and waits for the
    /// keyframe it then asks for. Ungated legs keep their numbering (their receivers do not
    /// wait for missing packets).
    pub fn resume_after_outage(&mut self, seq: SeqNo) {
        if self.gate_on_keyframes && self.source.is_some() {
            self.restart_sequence(seq);
        }
    }

    /// Before a replay from the stored keyframe `from`: a leg that has sent nothing yet forgets
    /// the source packets it dropped while it waited (live packets of the attach delay moved
    /// its source position past the keyframe, and the replay would be refused as too late).
    /// A leg that has sent something keeps its place (a replay would go back in time).
    pub fn rewind_for_replay(&mut self, from: SeqNo) {
        if self.last_sent_at.is_none() {
            self.max_src = from.wrapping_add(u16::MAX);
            self.by_src.fill(SRC_EMPTY);
            self.restart_candidate = None;
        }
    }

    fn restart_sequence(&mut self, seq: SeqNo) {
        self.stats.sequence_restarts += 1;
        self.max_src = seq.wrapping_add(u16::MAX);
        self.by_src.fill(SRC_EMPTY);
        self.start_waiting();
    }

    /// Copies `p` into `out`, rewrites it with output number `seq` and records it.
    #[inline]
    fn write_media(
        &mut self,
        p: &SourcePacket<'_>,
        pt: u8,
        seq: SeqNo,
        out: Outbound<'_>,
    ) -> Result<Sent, DropReason> {
        let n = p.bytes.len();
        let buf = &mut out.buf[..n];
        buf.copy_from_slice(p.bytes);
        let transport_seq = *out.transport_seq;
        let v = Values {
            pt,
            seq,
            ts_offset: self.ts_offset,
            ssrc: self.ssrc,
            transport_seq,
            abs_send_time: out.abs_send_time,
        };
        let stamped = self.rewrite(buf, &v).ok_or(DropReason::Malformed)?;
        if stamped {
            *out.transport_seq = transport_seq.wrapping_add(1);
        }
        let j = self.slot(seq);
        self.history[j] = OutRecord {
            out: seq,
            src: p.seq,
            state: OutState::Sent,
            resends: 0,
            transport_seq,
            // Truncated on purpose: see `OutRecord::ring`.
            ring: p.ring_id.map_or(0, |r| r.0 as u32),
            ts_offset: self.ts_offset,
            abs_send_time: out.abs_send_time,
            last_resent_ms: 0,
        };
        self.stats.packets += 1;
        self.stats.octets += p.payload_len as u64;
        Ok(Sent {
            len: n,
            ssrc: self.ssrc,
            seq,
            kind: SendKind::Media,
            window: self.seal_window(),
        })
    }

    /// The sealer window of this leg's SSRCs: its history's length (a power of two, at most
    /// 32,768; the sealer caps it).
    fn seal_window(&self) -> u16 {
        u16::try_from(self.history.len()).unwrap_or(u16::MAX)
    }

    /// Answers a NACK for output number `seq`: writes the retransmission (RTX if negotiated
    /// for the packet's payload type, else the first transmission's exact bytes) into `out`
    /// from the source packet in `ring`. `Err` says why not (counted). No allocation.
    pub fn retransmit(
        &mut self,
        seq: SeqNo,
        ring: &NackRing,
        out: Option<Outbound<'_>>,
        now: Instant,
    ) -> Result<Sent, NackMiss> {
        self.stats.nacked += 1;
        let r = self.try_retransmit(seq, ring, out, now);
        if let Err(miss) = r {
            self.stats.nack_missed[miss.index()] += 1;
        }
        r
    }

    fn try_retransmit(
        &mut self,
        seq: SeqNo,
        ring: &NackRing,
        out: Option<Outbound<'_>>,
        now: Instant,
    ) -> Result<Sent, NackMiss> {
        let j = self.slot(seq);
        let rec = self.history[j];
        if rec.out != seq || rec.state == OutState::Empty {
            return Err(NackMiss::NotSent);
        }
        if rec.state == OutState::Reserved {
            return Err(NackMiss::NotYetReceived);
        }
        if rec.resends >= self.max_retransmits {
            return Err(NackMiss::Exhausted);
        }
        // Wraps after 49 days; compared with wrapping arithmetic.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let min_gap = self
            .reporter
            .rtt()
            .unwrap_or(self.default_rtt)
            .max(MIN_RESEND_INTERVAL);
        if rec.resends > 0
            && u128::from(now_ms.wrapping_sub(rec.last_resent_ms)) < min_gap.as_millis()
        {
            return Err(NackMiss::RateLimited);
        }
        if rec.ring == 0 {
            return Err(NackMiss::Evicted);
        }
        let src = ring
            .get(ring.id_ending_in(rec.ring), rec.src, now)
            .map_err(|m| match m {
                Miss::Evicted => NackMiss::Evicted,
                Miss::Expired => NackMiss::Expired,
            })?;
        let parsed = SourcePacket::parse(src).ok_or(NackMiss::Evicted)?;
        let src_pt = usize::from(parsed.pt.0 & 0x7F);
        let out = out.ok_or(NackMiss::NoBuffer)?;
        let sent = match (self.rtx_ssrc, self.rtx_pt[src_pt]) {
            (Some(rtx_ssrc), rtx_pt) if rtx_pt != NO_PT => {
                let hl = parsed.header_len;
                let n = src.len() + 2;
                if out.buf.len() < n {
                    return Err(NackMiss::NoBuffer);
                }
                let buf = &mut out.buf[..n];
                buf[..hl].copy_from_slice(&src[..hl]);
                buf[hl..hl + 2].copy_from_slice(&rec.out.0.to_be_bytes());
                buf[hl + 2..].copy_from_slice(&src[hl..]);
                let transport_seq = *out.transport_seq;
                let v = Values {
                    pt: rtx_pt,
                    seq: self.rtx_seq,
                    ts_offset: rec.ts_offset,
                    ssrc: rtx_ssrc,
                    transport_seq,
                    abs_send_time: out.abs_send_time,
                };
                let stamped = self.rewrite(buf, &v).ok_or(NackMiss::Evicted)?;
                if stamped {
                    *out.transport_seq = transport_seq.wrapping_add(1);
                }
                let sent = Sent {
                    len: n,
                    ssrc: rtx_ssrc,
                    seq: self.rtx_seq,
                    kind: SendKind::Rtx,
                    window: self.seal_window(),
                };
                self.rtx_seq = self.rtx_seq.wrapping_add(1);
                self.stats.rtx_packets += 1;
                self.stats.rtx_octets += parsed.payload_len as u64 + 2;
                sent
            }
            _ => {
                let n = src.len();
                if out.buf.len() < n {
                    return Err(NackMiss::NoBuffer);
                }
                let buf = &mut out.buf[..n];
                buf.copy_from_slice(src);
                // Everything as the first time: the recorded stamps, not fresh ones.
                let v = Values {
                    pt: self.pt_map[src_pt],
                    seq: rec.out,
                    ts_offset: rec.ts_offset,
                    ssrc: self.ssrc,
                    transport_seq: rec.transport_seq,
                    abs_send_time: rec.abs_send_time,
                };
                self.rewrite(buf, &v).ok_or(NackMiss::Evicted)?;
                self.stats.packets += 1;
                self.stats.octets += parsed.payload_len as u64;
                self.stats.retransmissions += 1;
                Sent {
                    len: n,
                    ssrc: self.ssrc,
                    seq: rec.out,
                    kind: SendKind::Retransmission,
                    window: self.seal_window(),
                }
            }
        };
        let r = &mut self.history[j];
        r.resends += 1;
        r.last_resent_ms = now_ms;
        Ok(sent)
    }

    /// The leg's sender report at `now` from the publisher mapping `clock`; `None` before the
    /// leg sent anything or when `clock` is not the leg's current source (see
    /// `sender_report.rs` for the policy).
    pub fn sender_report(&mut self, clock: &PublisherClock, now: Instant) -> Option<SenderReport> {
        if self.stats.packets == 0 || self.source != Some(clock.ssrc()) {
            return None;
        }
        Some(self.reporter.build(
            self.ssrc,
            clock,
            self.ts_offset,
            self.stats.packets,
            self.stats.octets,
            now,
        ))
    }

    /// A receiver report block about this leg (LSR, DLSR) at `now`: updates the RTT.
    pub fn on_receiver_report(&mut self, lsr: u32, dlsr: u32, now: Instant) -> Option<Duration> {
        self.reporter.on_receiver_report(lsr, dlsr, now)
    }

    /// Rewrites the RTP packet `b` in place for this leg; returns whether a transport-wide
    /// sequence number was stamped, `None` if the header is inconsistent.
    #[inline]
    fn rewrite(&self, b: &mut [u8], v: &Values) -> Option<bool> {
        if b.len() < 12 {
            return None;
        }
        b[1] = (b[1] & 0x80) | (v.pt & 0x7F);
        b[2..4].copy_from_slice(&v.seq.0.to_be_bytes());
        let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]).wrapping_add(v.ts_offset);
        b[4..8].copy_from_slice(&ts.to_be_bytes());
        b[8..12].copy_from_slice(&v.ssrc.0.to_be_bytes());
        if b[0] & 0x10 == 0 {
            return Some(false);
        }
        let start = 12 + 4 * usize::from(b[0] & 0x0F);
        let head = b.get(start..start + 4)?;
        let profile = u16::from_be_bytes([head[0], head[1]]);
        let end = start + 4 + 4 * usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = b.get_mut(start + 4..end)?;
        Some(if profile == 0xBEDE {
            self.rewrite_one_byte(body, v)
        } else if profile & 0xFFF0 == 0x1000 {
            self.rewrite_two_byte(body, v)
        } else {
            false // not RFC 8285: left as it is
        })
    }

    /// RFC 8285 §4.2 elements: `id(4) len-1(4) data`; 0 bytes are padding; id 15 ends parsing.
    #[inline]
    fn rewrite_one_byte(&self, e: &mut [u8], v: &Values) -> bool {
        let mut stamped = false;
        let mut i = 0;
        while i < e.len() {
            let h = e[i];
            if h == 0 {
                i += 1;
                continue;
            }
            let len = usize::from(h & 0x0F) + 1;
            let end = i + 1 + len;
            if h >> 4 == 15 || end > e.len() {
                e[i..].fill(0);
                break;
            }
            match self.ext[usize::from(h >> 4)] {
                ExtRule::Keep(o) if o <= 14 => e[i] = (o << 4) | (h & 0x0F),
                ExtRule::TransportSeq(o) if o <= 14 && len == 2 => {
                    e[i] = (o << 4) | 1;
                    e[i + 1..end].copy_from_slice(&v.transport_seq.to_be_bytes());
                    stamped = true;
                }
                ExtRule::AbsSendTime(o) if o <= 14 && len == 3 => {
                    e[i] = (o << 4) | 2;
                    e[i + 1..end].copy_from_slice(&v.abs_send_time.to_be_bytes()[1..]);
                }
                ExtRule::Mid(o) if o <= 14 && self.mid_len > 0 && self.mid_len <= len => {
                    // mid_len is 1..=16.
                    e[i] = (o << 4) | (self.mid_len as u8 - 1);
                    e[i + 1..i + 1 + self.mid_len].copy_from_slice(&self.mid[..self.mid_len]);
                    zero(&mut e[i + 1 + self.mid_len..end]);
                }
                _ => zero(&mut e[i..end]),
            }
            i = end;
        }
        stamped
    }

    /// RFC 8285 §4.3 elements: `id(8) len(8) data`; 0 bytes are padding.
    fn rewrite_two_byte(&self, e: &mut [u8], v: &Values) -> bool {
        let mut stamped = false;
        let mut i = 0;
        while i < e.len() {
            let id = e[i];
            if id == 0 {
                i += 1;
                continue;
            }
            let Some(&len) = e.get(i + 1) else {
                e[i..].fill(0);
                break;
            };
            let len = usize::from(len);
            let end = i + 2 + len;
            if end > e.len() {
                e[i..].fill(0);
                break;
            }
            match self.ext[usize::from(id)] {
                ExtRule::Keep(o) => e[i] = o,
                ExtRule::TransportSeq(o) if len == 2 => {
                    e[i] = o;
                    e[i + 2..end].copy_from_slice(&v.transport_seq.to_be_bytes());
                    stamped = true;
                }
                ExtRule::AbsSendTime(o) if len == 3 => {
                    e[i] = o;
                    e[i + 2..end].copy_from_slice(&v.abs_send_time.to_be_bytes()[1..]);
                }
                ExtRule::Mid(o) if self.mid_len > 0 && self.mid_len <= len => {
                    e[i] = o;
                    // mid_len is 1..=16.
                    e[i + 1] = self.mid_len as u8;
                    e[i + 2..i + 2 + self.mid_len].copy_from_slice(&self.mid[..self.mid_len]);
                    zero(&mut e[i + 2 + self.mid_len..end]);
                }
                _ => zero(&mut e[i..end]),
            }
            i = end;
        }
        stamped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::track::build::{pkt, Ext, Rtp, VP8_DELTA, VP8_KEY, VP8_MORE};
    use rtc::shared::marshal::Unmarshal;

    const SRC: u32 = 0x1111_1111;

    #[test]
    fn a_history_record_is_24_bytes() {
        // 512 per video leg: what a subscriber stream costs is counted in these.
        assert_eq!(std::mem::size_of::<OutRecord>(), 24);
    }

    fn src(bytes: &[u8], gateable: bool, keyframe_start: bool) -> SourcePacket<'_> {
        let mut p = SourcePacket::parse(bytes).expect("test packet parses");
        p.gateable = gateable;
        p.keyframe_start = keyframe_start;
        p
    }

    fn config(first_seq: u16) -> LegConfig {
        let mut c = LegConfig::new(Ssrc(0xCAFE), 90_000);
        c.payload_types = vec![
            PtMap {
                publisher: Pt(96),
                subscriber: Pt(100),
                rtx: None,
            },
            PtMap {
                publisher: Pt(111),
                subscriber: Pt(109),
                rtx: None,
            },
        ];
        c.first_seq = SeqNo(first_seq);
        c
    }

    /// A caller with one buffer and a transport-wide counter.
    struct Out {
        buf: Vec<u8>,
        tseq: u16,
    }

    impl Out {
        fn new() -> Self {
            Self {
                buf: vec![0; 1500],
                tseq: 0,
            }
        }

        fn get(&mut self) -> Option<Outbound<'_>> {
            Some(Outbound {
                buf: &mut self.buf,
                transport_seq: &mut self.tseq,
                abs_send_time: 0x0A_BCDE,
            })
        }

        fn send(&mut self, leg: &mut Leg, p: &SourcePacket<'_>, now: Instant) -> Option<Vec<u8>> {
            let s = leg.forward(p, self.get(), now).ok()?;
            Some(self.buf[..s.len].to_vec())
        }
    }

    fn parse(b: &[u8]) -> rtc::rtp::packet::Packet {
        rtc::rtp::packet::Packet::unmarshal(&mut &b[..]).expect("output parses")
    }

    #[test]
    fn rewrites_the_fixed_header_and_keeps_the_rest() {
        struct Case {
            input: Rtp<'static>,
            first_seq: u16,
            first_ts: u32,
            want_pt: u8,
        }
        let cases = [
            Case {
                input: Rtp {
                    seq: 1000,
                    ts: 90_000,
                    marker: true,
                    ..Rtp::default()
                },
                first_seq: 7,
                first_ts: 1,
                want_pt: 100,
            },
            Case {
                input: Rtp {
                    pt: 111,
                    seq: 65_535,
                    ts: u32::MAX,
                    csrcs: &[0xC1, 0xC2],
                    padding: 9,
                    ..Rtp::default()
                },
                first_seq: 65_535,
                first_ts: 2,
                want_pt: 109,
            },
            Case {
                input: Rtp {
                    seq: 3,
                    ts: 3,
                    ext: Some(Ext::Two(&[(7, &[])])),
                    payload: &[1, 2, 3],
                    ..Rtp::default()
                },
                first_seq: 0,
                first_ts: 0,
                want_pt: 100,
            },
        ];
        let t0 = Instant::now();
        for (i, c) in cases.iter().enumerate() {
            let mut cfg = config(c.first_seq);
            cfg.first_timestamp = c.first_ts;
            let mut leg = Leg::new(LegId(1), &cfg, t0);
            let bytes = c.input.bytes();
            let p = src(&bytes, false, false);
            let mut out = Out::new();
            let b = out.send(&mut leg, &p, t0).expect("forwarded");
            assert_eq!(b.len(), bytes.len(), "case {i}: same length");
            let (o, r) = (parse(&bytes), parse(&b));
            assert_eq!(r.header.ssrc, 0xCAFE, "case {i}");
            assert_eq!(r.header.sequence_number, c.first_seq, "case {i}");
            assert_eq!(r.header.timestamp, c.first_ts, "case {i}");
            assert_eq!(r.header.payload_type, c.want_pt, "case {i}");
            assert_eq!(r.header.marker, o.header.marker, "case {i}");
            assert_eq!(r.header.csrc, o.header.csrc, "case {i}");
            assert_eq!(r.payload, o.payload, "case {i}");
            assert_eq!(
                b[p.header_len..],
                bytes[p.header_len..],
                "case {i}: payload, padding"
            );
            let s = leg.stats();
            assert_eq!(
                (s.packets, s.octets),
                (1, c.input.payload.len() as u64),
                "case {i}"
            );
        }
    }

    #[test]
    fn output_sequence_numbers_and_timestamps_wrap_continuously() {
        // (first output seq, first source seq, first output ts)
        let cases = [
            (65_534u16, 100u16, 0u32),
            (10, 65_533, u32::MAX - 3_000),
            (65_535, 65_535, u32::MAX),
        ];
        let t0 = Instant::now();
        for (first_out, first_src, first_ts) in cases {
            let mut cfg = config(first_out);
            cfg.first_timestamp = first_ts;
            let mut leg = Leg::new(LegId(1), &cfg, t0);
            let mut out = Out::new();
            for k in 0..6u16 {
                // The source's timestamps wrap too.
                let b = Rtp {
                    seq: first_src.wrapping_add(k),
                    ts: (u32::MAX - 5_000).wrapping_add(3_000 * u32::from(k)),
                    ..Rtp::default()
                }
                .bytes();
                let r = parse(&out.send(&mut leg, &src(&b, false, false), t0).unwrap());
                assert_eq!(r.header.sequence_number, first_out.wrapping_add(k));
                assert_eq!(
                    r.header.timestamp,
                    first_ts.wrapping_add(3_000 * u32::from(k))
                );
            }
        }
    }

    #[test]
    fn extension_rules_from_the_negotiated_uris() {
        let rules = extension_rules(
            &[
                (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                (3, uri::ABS_SEND_TIME),
                (5, uri::TRANSPORT_CC),
                (9, uri::MID),
                (10, uri::RID),
                (12, "urn:example:not-negotiated"),
            ],
            &[
                (10, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                (2, uri::ABS_SEND_TIME),
                (4, uri::TRANSPORT_CC),
                (1, uri::MID),
                (11, uri::RID),
            ],
        );
        assert_eq!(
            rules,
            [
                (1, ExtRule::Keep(10)),
                (3, ExtRule::AbsSendTime(2)),
                (5, ExtRule::TransportSeq(4)),
                (9, ExtRule::Mid(1)),
                (10, ExtRule::Drop),
            ]
        );
    }

    /// Table: extension block in → the elements (subscriber id → value) the subscriber sees.
    #[test]
    fn header_extensions_are_remapped_stamped_or_dropped() {
        let mut rules = extension_rules(
            &[
                (1, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                (3, uri::ABS_SEND_TIME),
                (5, uri::TRANSPORT_CC),
                (9, uri::MID),
                (10, uri::RID),
            ],
            &[
                (10, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                (2, uri::ABS_SEND_TIME),
                (4, uri::TRANSPORT_CC),
                (1, uri::MID),
            ],
        );
        rules.push((13, ExtRule::Keep(20)));
        type Want = &'static [(u8, &'static [u8])];
        struct Case {
            name: &'static str,
            ext: Ext<'static>,
            mid: &'static str,
            want: Want,
            stamped: bool,
        }
        const ABS: &[u8] = &[0x0A, 0xBC, 0xDE];
        const TSEQ: &[u8] = &[0x12, 0x34];
        let all_one: &[(u8, &[u8])] = &[
            (1, &[0x7F]),
            (3, &[1, 2, 3]),
            (5, &[0, 9]),
            (9, b"0"),
            (10, b"h"),
            (12, &[5, 5]),
            (13, &[6]),
        ];
        let cases = [
            Case {
                name: "one-byte: remap, stamp, mid, drop unnegotiated and id > 14",
                ext: Ext::One(all_one),
                mid: "a",
                want: &[(10, &[0x7F]), (2, ABS), (4, TSEQ), (1, b"a")],
                stamped: true,
            },
            Case {
                name: "two-byte: the same, and id 20 fits",
                ext: Ext::Two(all_one),
                mid: "a",
                want: &[(10, &[0x7F]), (2, ABS), (4, TSEQ), (1, b"a"), (20, &[6])],
                stamped: true,
            },
            Case {
                name: "one-byte: a mid longer than the element is dropped",
                ext: Ext::One(&[(9, b"0"), (1, &[0x11])]),
                mid: "video",
                want: &[(10, &[0x11])],
                stamped: false,
            },
            Case {
                name: "one-byte: a shorter mid shrinks the element",
                ext: Ext::One(&[(9, b"abcdef"), (3, &[1, 2, 3])]),
                mid: "v1",
                want: &[(1, b"v1"), (2, ABS)],
                stamped: false,
            },
            Case {
                name: "two-byte: a shorter mid shrinks the element",
                ext: Ext::Two(&[(9, b"abcdef"), (5, &[1, 1])]),
                mid: "v1",
                want: &[(1, b"v1"), (4, TSEQ)],
                stamped: true,
            },
            Case {
                name: "one-byte: id 15 ends the block; what follows is not forwarded",
                ext: Ext::One(&[(1, &[0x01]), (15, &[0, 0]), (3, &[1, 2, 3])]),
                mid: "a",
                want: &[(10, &[0x01])],
                stamped: false,
            },
            Case {
                name: "one-byte: transport-cc of the wrong size is dropped",
                ext: Ext::One(&[(5, &[1, 2, 3])]),
                mid: "a",
                want: &[],
                stamped: false,
            },
        ];
        let t0 = Instant::now();
        for c in &cases {
            let mut cfg = config(0);
            cfg.extensions = rules.clone();
            cfg.mid = Some(Mid(c.mid.into()));
            let mut leg = Leg::new(LegId(1), &cfg, t0);
            let bytes = Rtp {
                ext: Some(c.ext),
                ..Rtp::default()
            }
            .bytes();
            let mut out = Out::new();
            out.tseq = 0x1234;
            let b = out.send(&mut leg, &src(&bytes, false, false), t0).unwrap();
            assert_eq!(b.len(), bytes.len(), "{}", c.name);
            let h = parse(&b).header;
            let mut got: Vec<(u8, Vec<u8>)> = h
                .get_extension_ids()
                .into_iter()
                .map(|id| (id, h.get_extension(id).unwrap().to_vec()))
                .collect();
            got.sort();
            let mut want: Vec<(u8, Vec<u8>)> =
                c.want.iter().map(|(i, v)| (*i, v.to_vec())).collect();
            want.sort();
            assert_eq!(got, want, "{}", c.name);
            assert_eq!(out.tseq, 0x1234 + u16::from(c.stamped), "{}", c.name);
        }
    }

    #[test]
    fn upstream_losses_keep_their_numbers_and_late_packets_fill_them() {
        let t0 = Instant::now();
        let mut leg = Leg::new(LegId(1), &config(100), t0);
        let mut out = Out::new();
        let mut seq_of = |leg: &mut Leg, s: u16| {
            let b = pkt(SRC, s, VP8_DELTA);
            leg.forward(&src(&b, false, false), out.get(), t0)
                .map(|s| s.seq.0)
        };
        assert_eq!(seq_of(&mut leg, 10), Ok(100));
        assert_eq!(seq_of(&mut leg, 13), Ok(103), "11 and 12 keep 101 and 102");
        assert_eq!(seq_of(&mut leg, 12), Ok(102));
        assert_eq!(seq_of(&mut leg, 12), Err(DropReason::Duplicate));
        assert_eq!(seq_of(&mut leg, 13), Err(DropReason::Duplicate));
        assert_eq!(
            seq_of(&mut leg, 9),
            Err(DropReason::TooLate),
            "before the leg"
        );
        assert_eq!(seq_of(&mut leg, 11), Ok(101));
        assert_eq!(seq_of(&mut leg, 14), Ok(104));
        assert_eq!(leg.stats().dropped(DropReason::Duplicate), 2);
    }

    #[test]
    fn packets_the_leg_skips_take_no_number() {
        let t0 = Instant::now();
        let padding_only = Rtp {
            payload: &[],
            padding: 50,
            ..Rtp::default()
        };
        let unmapped = Rtp {
            pt: 45,
            ..Rtp::default()
        };
        let normal = Rtp::default();
        // (packet, caller buffer length: 0 = none, reason)
        let cases: [(Rtp<'_>, usize, DropReason); 4] = [
            (padding_only, 1500, DropReason::PaddingOnly),
            (unmapped, 1500, DropReason::UnmappedPayloadType),
            (normal, 0, DropReason::Congestion),
            (normal, 20, DropReason::BufferTooSmall),
        ];
        let mut leg = Leg::new(LegId(1), &config(500), t0);
        let mut buf = vec![0u8; 1500];
        let mut tseq = 0;
        let mut seq = 0u16;
        let mut next = |rtp: Rtp<'_>, len: usize, leg: &mut Leg| {
            seq += 1;
            let b = Rtp { seq, ..rtp }.bytes();
            let out = (len > 0).then(|| Outbound {
                buf: &mut buf[..len],
                transport_seq: &mut tseq,
                abs_send_time: 0,
            });
            leg.forward(&src(&b, false, false), out, t0)
                .map(|s| s.seq.0)
        };
        for (want, (rtp, len, reason)) in (500u16..).zip(cases) {
            assert_eq!(next(rtp, len, &mut leg), Err(reason));
            assert_eq!(next(normal, 1500, &mut leg), Ok(want), "after {reason:?}");
        }
        for r in [
            DropReason::PaddingOnly,
            DropReason::UnmappedPayloadType,
            DropReason::Congestion,
            DropReason::BufferTooSmall,
        ] {
            assert_eq!(leg.stats().dropped(r), 1, "{r:?}");
        }
        assert!(
            !leg.take_keyframe_request(),
            "an ungated leg asks for nothing"
        );
    }

    #[test]
    fn a_gated_leg_waits_for_a_keyframe_start_and_asks_once_per_wait() {
        let t0 = Instant::now();
        let mut cfg = config(0);
        cfg.gate_on_keyframes = true;
        let mut leg = Leg::new(LegId(1), &cfg, t0);
        let mut out = Out::new();
        assert!(leg.is_waiting_for_keyframe());
        assert!(leg.take_keyframe_request(), "a new leg asks");
        assert!(!leg.take_keyframe_request());
        let mut fwd = |leg: &mut Leg, s: u16, payload: &[u8], full: bool| {
            let b = pkt(SRC, s, payload);
            let key = payload == VP8_KEY;
            let o = if full { None } else { out.get() };
            leg.forward(&src(&b, true, key), o, t0).map(|s| s.seq.0)
        };
        assert_eq!(
            fwd(&mut leg, 1, VP8_DELTA, false),
            Err(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            fwd(&mut leg, 2, VP8_MORE, false),
            Err(DropReason::WaitingForKeyframe)
        );
        // 3 is lost while waiting: no number for it.
        assert_eq!(fwd(&mut leg, 4, VP8_KEY, false), Ok(0), "opens");
        assert!(!leg.is_waiting_for_keyframe());
        assert_eq!(fwd(&mut leg, 3, VP8_MORE, false), Err(DropReason::TooLate));
        assert_eq!(fwd(&mut leg, 5, VP8_MORE, false), Ok(1));
        assert_eq!(fwd(&mut leg, 7, VP8_MORE, false), Ok(3), "6 keeps number 2");
        // Congestion: waits again, asks once.
        assert_eq!(
            fwd(&mut leg, 8, VP8_MORE, true),
            Err(DropReason::Congestion)
        );
        assert!(leg.is_waiting_for_keyframe());
        assert!(leg.take_keyframe_request());
        // 6 arrives late: its number is reserved, but a waiting leg forwards nothing.
        assert_eq!(
            fwd(&mut leg, 6, VP8_MORE, false),
            Err(DropReason::WaitingForKeyframe)
        );
        assert_eq!(
            fwd(&mut leg, 9, VP8_DELTA, false),
            Err(DropReason::WaitingForKeyframe)
        );
        assert!(!leg.take_keyframe_request(), "one request per wait");
        // The keyframe itself lost to congestion: ask again.
        assert_eq!(
            fwd(&mut leg, 10, VP8_KEY, true),
            Err(DropReason::Congestion)
        );
        assert!(leg.take_keyframe_request());
        assert_eq!(fwd(&mut leg, 11, VP8_KEY, false), Ok(4));
        // A payload format without keyframe detection is never held back.
        let mut leg2 = Leg::new(LegId(2), &cfg, t0);
        let b = pkt(SRC, 1, VP8_DELTA);
        assert!(leg2.forward(&src(&b, false, false), out.get(), t0).is_ok());
        let s = leg.stats();
        assert_eq!(
            (s.keyframe_waits, s.dropped(DropReason::WaitingForKeyframe)),
            (2, 4)
        );
    }

    #[test]
    fn a_source_switch_continues_sequence_and_timestamps() {
        let t0 = Instant::now();
        let mut cfg = config(1000);
        cfg.clock_rate = 48_000;
        cfg.first_timestamp = 7_000;
        let mut leg = Leg::new(LegId(1), &cfg, t0);
        let mut out = Out::new();
        let send = |leg: &mut Leg, out: &mut Out, ssrc: u32, seq: u16, ts: u32, at: Instant| {
            let b = Rtp {
                ssrc,
                seq,
                ts,
                ..Rtp::default()
            }
            .bytes();
            let h = parse(&out.send(leg, &src(&b, false, false), at).unwrap()).header;
            (h.sequence_number, h.timestamp)
        };
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(
            send(&mut leg, &mut out, 1, 500, 160_000, ms(0)),
            (1000, 7_000)
        );
        assert_eq!(
            send(&mut leg, &mut out, 1, 501, 160_960, ms(20)),
            (1001, 7_960)
        );
        // New source 100 ms later: next number, timestamp + 100 ms × 48 kHz.
        assert_eq!(
            send(&mut leg, &mut out, 2, 9, 123, ms(120)),
            (1002, 7_960 + 4_800)
        );
        assert_eq!(
            send(&mut leg, &mut out, 2, 10, 1_083, ms(140)),
            (1003, 13_720)
        );
        // Back to the first source (its old numbers are behind, but it is a new run).
        assert_eq!(
            send(&mut leg, &mut out, 1, 502, 161_920, ms(140)),
            (1004, 13_721)
        );
        assert_eq!(leg.stats().source_switches, 2);
        assert_eq!(leg.source(), Some(Ssrc(1)));
        // A gated leg waits for a keyframe after a switch.
        let mut vcfg = config(0);
        vcfg.gate_on_keyframes = true;
        let mut v = Leg::new(LegId(2), &vcfg, t0);
        let key = pkt(1, 1, VP8_KEY);
        assert!(v.forward(&src(&key, true, true), out.get(), t0).is_ok());
        let delta = pkt(2, 1, VP8_DELTA);
        assert_eq!(
            v.forward(&src(&delta, true, false), out.get(), t0),
            Err(DropReason::WaitingForKeyframe)
        );
    }

    #[test]
    fn sequence_restarts_leave_no_gap() {
        let t0 = Instant::now();
        let mut cfg = config(0);
        cfg.history = 16;
        let mut leg = Leg::new(LegId(1), &cfg, t0);
        let mut out = Out::new();
        let mut fwd = |leg: &mut Leg, s: u16| {
            let b = pkt(SRC, s, VP8_DELTA);
            leg.forward(&src(&b, false, false), out.get(), t0)
                .map(|s| s.seq.0)
        };
        assert_eq!(fwd(&mut leg, 1), Ok(0));
        assert_eq!(
            fwd(&mut leg, 17),
            Ok(16),
            "a gap of 15 fits the window of 16"
        );
        assert_eq!(
            fwd(&mut leg, 34),
            Ok(17),
            "a gap of 16 does not: restart, no gap"
        );
        assert_eq!(leg.stats().sequence_restarts, 1);
        // Far behind: one packet is too late; two in a row are a restart.
        assert_eq!(fwd(&mut leg, 5), Err(DropReason::TooLate));
        assert_eq!(fwd(&mut leg, 6), Ok(18));
        assert_eq!(fwd(&mut leg, 7), Ok(19));
        assert_eq!(leg.stats().sequence_restarts, 2);
        assert_eq!(fwd(&mut leg, 60_000), Err(DropReason::TooLate));
        assert_eq!(
            fwd(&mut leg, 8),
            Ok(20),
            "a single stray packet changes nothing"
        );
    }

    #[test]
    fn abs_send_time_is_6_18_fixed_point_modulo_64_s() {
        assert_eq!(abs_send_time(Duration::from_millis(1500)), 0x06_0000);
        assert_eq!(abs_send_time(Duration::from_millis(64_250)), 0x01_0000);
        assert_eq!(abs_send_time(Duration::from_micros(3_815)), 1_000);
    }
}
