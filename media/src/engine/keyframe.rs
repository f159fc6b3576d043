//! Keyframes of one publisher track: where a keyframe starts in a payload ([`is_keyframe_start`],
//! for keyframe gating of the legs), and the coalescing of keyframe requests towards the
//! publisher ([`KeyframeRequester`]).
//!
//! Owns the payload-format vocabulary [`Codec`] (what we can inspect) and the upstream request
//! timing. Does not own the legs' gating state (`leg.rs`) nor the RTCP that carries a request
//! (the shard builds the PLI when [`KeyframeRequester::poll`] says so). Pure: time comes in as
//! [`Instant`], nothing is allocated.
//!
//! A *keyframe start* is the first packet of a frame a decoder can start from: a leg that waits
//! for a keyframe (it joined, or lost packets) opens its gate on such a packet and only on it.
//! - VP8 (RFC 7741): the packet that starts partition 0 (`S=1`, `PID=0`) of a frame whose VP8
//!   payload header has the inverse key-frame flag `P=0`.
//! - VP9 (RFC 9628): not inter-picture predicted (`P=0`), start of a frame (`B=1`), and spatial
//!   layer 0 when the layer-index byte is present.
//! - H.264 (RFC 6184): a single NAL unit, an STAP-A aggregate containing one, or the first
//!   fragment (`S=1`) of an FU-A, of type SPS (7) or IDR slice (5). Browsers send SPS+PPS in a
//!   STAP-A before every IDR, so the gate opens on the packet that carries the SPS.
//! - Anything else ([`Codec::Opaque`], e.g. audio or AV1) is never inspected: a leg of such a
//!   stream is not gated.

use std::time::{Duration, Instant};

/// Payload format of a publisher payload type, as far as keyframe detection is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184), packetization mode 0 or 1.
    H264,
    /// Not inspected (audio, AV1, unknown): no keyframe detection, so no gating.
    #[default]
    Opaque,
}

impl Codec {
    /// Whether keyframe starts of this format are detected (a leg may be gated on it).
    pub const fn is_gateable(self) -> bool {
        !matches!(self, Codec::Opaque)
    }

    /// The format for an SDP `a=rtpmap` encoding name (case-insensitive).
    pub fn from_encoding_name(name: &str) -> Codec {
        if name.eq_ignore_ascii_case("VP8") {
            Codec::Vp8
        } else if name.eq_ignore_ascii_case("VP9") {
            Codec::Vp9
        } else if name.eq_ignore_ascii_case("H264") {
            Codec::H264
        } else {
            Codec::Opaque
        }
    }
}

/// Whether `payload` (the RTP payload, without header and padding) starts a keyframe.
/// Always `false` for [`Codec::Opaque`] and for truncated payloads.
pub fn is_keyframe_start(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::Opaque => false,
    }
}

/// RFC 7741 §4.2 payload descriptor, then the first byte of the VP8 payload header.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // X: the extension byte I L T K.
        let Some(&x) = p.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // I: PictureID, 15 bits when its M bit is set.
            let Some(&pid) = p.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX
        }
    }
    // VP8 payload header: bit 0 of the first byte is the inverse key-frame flag.
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// RFC 9628 §4.2 payload descriptor (I P L F B E V Z).
fn vp9(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    let inter_predicted = b0 & 0x40 != 0;
    let start_of_frame = b0 & 0x08 != 0;
    if inter_predicted || !start_of_frame {
        return false;
    }
    if b0 & 0x20 == 0 {
        return true; // no layer indices: a single spatial layer
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&pid) = p.get(i) else {
            return false;
        };
        i += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices: TID(3) U(1) SID(3) D(1).
    p.get(i).is_some_and(|l| (l >> 1) & 0x07 == 0)
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

fn starts_decoding(nal_type: u8) -> bool {
    nal_type == NAL_IDR || nal_type == NAL_SPS
}

/// RFC 6184 §5.6–5.8.
fn h264(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else {
        return false;
    };
    match b0 & 0x1F {
        NAL_STAP_A => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                let nal = i + 2;
                if size == 0 || nal + size > p.len() {
                    return false;
                }
                if starts_decoding(p[nal] & 0x1F) {
                    return true;
                }
                i = nal + size;
            }
            false
        }
        NAL_FU_A => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && starts_decoding(fu & 0x1F)),
        t => starts_decoding(t),
    }
}

/// Counters of one [`KeyframeRequester`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyframeStats {
    /// Requests registered (leg joined, leg lost packets, subscriber PLI/FIR, retry).
    pub requested: u64,
    /// Requests sent upstream ([`KeyframeRequester::poll`] returned `true`).
    pub sent: u64,
    /// Keyframe starts seen from the publisher.
    pub keyframes: u64,
    /// Pending requests a keyframe made unnecessary before they were sent.
    pub satisfied_before_sending: u64,
}

/// Coalesces the keyframe requests of one publisher track: any number of requests inside
/// `min_interval` of the last one sent become one request, sent when the interval ends (never
/// lost); a keyframe arriving while a request waits makes it unnecessary.
///
/// Use: [`request`](Self::request) whenever a leg needs a keyframe,
/// [`on_keyframe`](Self::on_keyframe) for every keyframe start from the publisher (before
/// forwarding that packet to the legs), [`poll`](Self::poll) after either and at
/// [`poll_timeout`](Self::poll_timeout): `true` means "send a PLI upstream now".
#[derive(Debug, Clone)]
pub struct KeyframeRequester {
    min_interval: Duration,
    last_sent: Option<Instant>,
    /// Since when a request waits, if one does.
    wanted: Option<Instant>,
    stats: KeyframeStats,
}

impl KeyframeRequester {
    /// A requester sending at most one request per `min_interval` (roomd's
    /// `--keyframe-interval-ms`, 500 ms by default).
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            wanted: None,
            stats: KeyframeStats::default(),
        }
    }

    /// Registers a need for a keyframe at `now`.
    pub fn request(&mut self, now: Instant) {
        self.stats.requested += 1;
        self.wanted.get_or_insert(now);
    }

    /// A keyframe start arrived from the publisher: a pending request is answered by it.
    pub fn on_keyframe(&mut self) {
        self.stats.keyframes += 1;
        if self.wanted.take().is_some() {
            self.stats.satisfied_before_sending += 1;
        }
    }

    /// Whether a request is waiting to be sent.
    pub fn is_pending(&self) -> bool {
        self.wanted.is_some()
    }

    /// When the last request was sent upstream.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// `true`: send a keyframe request (PLI) to the publisher now; it is recorded as sent.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.poll_timeout() {
            Some(due) if due <= now => {}
            _ => return false,
        }
        self.wanted = None;
        self.last_sent = Some(now);
        self.stats.sent += 1;
        true
    }

    /// When [`poll`](Self::poll) would next return `true`, if a request is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let since = self.wanted?;
        Some(match self.last_sent {
            Some(last) => since.max(last + self.min_interval),
            None => since,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &KeyframeStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_starts_by_payload_format() {
        let cases: &[(Codec, &[u8], bool, &str)] = &[
            // VP8: descriptor, then the payload header's inverse key-frame bit.
            (Codec::Vp8, &[0x10, 0x00, 0x9D], true, "S=1 PID=0, P=0"),
            (Codec::Vp8, &[0x10, 0x01, 0x9D], false, "interframe"),
            (Codec::Vp8, &[0x00, 0x00], false, "not a partition start"),
            (Codec::Vp8, &[0x11, 0x00], false, "partition 1"),
            (
                Codec::Vp8,
                &[0x90, 0x80, 0x05, 0x00],
                true,
                "X, I, 7-bit PictureID",
            ),
            (
                Codec::Vp8,
                &[0x90, 0x80, 0x85, 0x05, 0x00],
                true,
                "15-bit PictureID",
            ),
            (
                Codec::Vp8,
                &[0x90, 0xF0, 0x85, 0x05, 0x01, 0x02, 0x00],
                true,
                "I L T K",
            ),
            (
                Codec::Vp8,
                &[0x90, 0xF0, 0x85, 0x05, 0x01, 0x02, 0x01],
                false,
                "same, P=1",
            ),
            (Codec::Vp8, &[0x90, 0xF0, 0x85], false, "truncated"),
            (Codec::Vp8, &[], false, "empty"),
            // VP9: P=0 and B=1, spatial layer 0.
            (Codec::Vp9, &[0x08, 0xAA], true, "P=0 B=1"),
            (Codec::Vp9, &[0x48, 0xAA], false, "inter-predicted"),
            (Codec::Vp9, &[0x04, 0xAA], false, "not a frame start"),
            (
                Codec::Vp9,
                &[0xA8, 0x85, 0x01, 0x00],
                true,
                "I (15 bits), L, SID 0",
            ),
            (Codec::Vp9, &[0xA8, 0x05, 0x02], false, "SID 1"),
            // H.264: SPS or IDR, alone, in a STAP-A, or starting an FU-A.
            (Codec::H264, &[0x67, 0x42], true, "SPS"),
            (Codec::H264, &[0x65, 0x88], true, "IDR slice"),
            (Codec::H264, &[0x41, 0x9A], false, "non-IDR slice"),
            (Codec::H264, &[0x68, 0xCE], false, "PPS alone"),
            (
                Codec::H264,
                &[0x78, 0, 2, 0x09, 0x10, 0, 2, 0x67, 0x42],
                true,
                "STAP-A: AUD, SPS",
            ),
            (
                Codec::H264,
                &[0x78, 0, 2, 0x09, 0x10, 0, 2, 0x41, 0x9A],
                false,
                "STAP-A: AUD, P",
            ),
            (
                Codec::H264,
                &[0x78, 0, 9, 0x67],
                false,
                "STAP-A: size beyond the payload",
            ),
            (
                Codec::H264,
                &[0x7C, 0x85, 0x88],
                true,
                "FU-A start of an IDR",
            ),
            (
                Codec::H264,
                &[0x7C, 0x05, 0x88],
                false,
                "FU-A middle of an IDR",
            ),
            (
                Codec::H264,
                &[0x7C, 0x81, 0x88],
                false,
                "FU-A start of a non-IDR",
            ),
            (Codec::H264, &[0x7C], false, "FU-A truncated"),
            (Codec::Opaque, &[0x10, 0x00], false, "never inspected"),
        ];
        for (codec, payload, want, name) in cases {
            assert_eq!(
                is_keyframe_start(*codec, payload),
                *want,
                "{codec:?}: {name}"
            );
        }
    }

    #[test]
    fn codec_names() {
        assert_eq!(Codec::from_encoding_name("vp8"), Codec::Vp8);
        assert_eq!(Codec::from_encoding_name("VP9"), Codec::Vp9);
        assert_eq!(Codec::from_encoding_name("H264"), Codec::H264);
        assert_eq!(Codec::from_encoding_name("AV1"), Codec::Opaque);
        assert!(Codec::Vp8.is_gateable() && !Codec::Opaque.is_gateable());
    }

    #[test]
    fn requests_are_coalesced_to_one_per_interval() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut k = KeyframeRequester::new(Duration::from_millis(500));
        assert!(!k.poll(t0), "nothing asked");
        assert_eq!(k.poll_timeout(), None);
        k.request(t0);
        k.request(t0);
        assert_eq!(k.poll_timeout(), Some(t0));
        assert!(k.poll(t0));
        assert!(!k.poll(t0), "sent once");
        k.request(ms(10));
        k.request(ms(20));
        assert_eq!(k.poll_timeout(), Some(ms(500)), "deferred, not lost");
        assert!(!k.poll(ms(499)));
        assert!(k.poll(ms(500)));
        // A keyframe arriving while a request waits answers it.
        k.request(ms(600));
        k.on_keyframe();
        assert!(!k.is_pending());
        assert!(!k.poll(ms(2000)));
        // A request long after the last one goes at once.
        k.request(ms(3000));
        assert!(k.poll(ms(3000)));
        let s = k.stats();
        assert_eq!(
            (s.requested, s.sent, s.keyframes, s.satisfied_before_sending),
            (6, 3, 1, 1)
        );
    }
}
