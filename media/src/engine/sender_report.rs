//! Sender reports of the legs: the publisher's NTP ↔ RTP mapping carried into each leg's
//! timestamp space, with the leg's own packet and octet counts, and the round-trip time the
//! subscriber's receiver reports give back.
//!
//! Owns [`PublisherClock`] (the last SR of a publisher source, kept by the track),
//! [`SenderReport`] (what a leg sends, marshalled without allocation or as rtc's struct) and
//! [`SenderReporter`] (per leg: the SRs sent, for RTT). Does not own the interval timer (the
//! track's) nor SRTCP (rtc's `write_rtcp`).
//!
//! The mapping: at `now`, a leg's SR carries
//! - NTP = publisher SR's NTP + (now − SR arrival), i.e. the publisher's wall clock advanced by
//!   ours. All legs of one publisher (its audio and its video) so share one NTP timeline, which
//!   is what a receiver's lip-sync needs; RTT does not depend on it (see
//!   [`SenderReporter::on_receiver_report`]).
//! - RTP = publisher SR's RTP + (now − SR arrival) × clock rate + the leg's timestamp offset
//!   (`out_ts = src_ts + offset`, the offset the leg applies to every packet of that source).
//!
//! Policy before the publisher's first SR (or after a source switch, until the new source's
//! first SR): the leg sends **no SR**. An SR built from our own clock would anchor the
//! receiver's audio/video sync on an NTP↔RTP pair unrelated to the publisher's capture clock,
//! and the receiver keeps using it until the next SR; browsers send their first SR within about
//! a second, and until then the receiver simply plays the streams unsynchronised, as it does
//! anyway before any SR. A leg that has sent no packet sends no SR either (RFC 3550 §6.4: only
//! senders report).

use std::time::{Duration, Instant};

use rtc::rtcp::sender_report::SenderReport as RtcSenderReport;

use super::wire::Ssrc;

/// `d` in NTP units (32.32 fixed point seconds).
pub fn ntp_duration(d: Duration) -> u64 {
    (d.as_secs() << 32) + ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// `d` in ticks of a `clock_rate` Hz RTP clock, wrapping at 2^32 (truncated).
pub fn rtp_ticks(d: Duration, clock_rate: u32) -> u32 {
    // Truncation to u32 is the RTP timestamp wrap.
    (d.as_nanos() * u128::from(clock_rate) / 1_000_000_000) as u32
}

/// `d` from a count of 1/65536 s (RTCP's DLSR unit).
pub fn from_rtcp_units(units: u32) -> Duration {
    Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65_536)
}

/// The middle 32 bits of an NTP timestamp: what a receiver report echoes as LSR.
pub fn ntp_middle(ntp: u64) -> u32 {
    // Bits 16..48 of the 64-bit NTP time.
    (ntp >> 16) as u32
}

/// The NTP ↔ RTP mapping of one publisher source, from its last sender report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherClock {
    ssrc: Ssrc,
    ntp: u64,
    rtp: u32,
    arrived: Instant,
    clock_rate: u32,
}

impl PublisherClock {
    /// The SR of `ssrc` (NTP `ntp`, RTP `rtp`) that arrived at `arrived`, for a stream with
    /// a `clock_rate` Hz RTP clock.
    pub fn new(ssrc: Ssrc, ntp: u64, rtp: u32, arrived: Instant, clock_rate: u32) -> Self {
        Self {
            ssrc,
            ntp,
            rtp,
            arrived,
            clock_rate,
        }
    }

    /// The publisher source this mapping belongs to.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }

    /// The publisher's (NTP, RTP) at `now`, extrapolated from the SR with our clock.
    pub fn at(&self, now: Instant) -> (u64, u32) {
        let elapsed = now.saturating_duration_since(self.arrived);
        (
            self.ntp.wrapping_add(ntp_duration(elapsed)),
            self.rtp.wrapping_add(rtp_ticks(elapsed, self.clock_rate)),
        )
    }
}

/// One leg's sender report (no report blocks: a leg only sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport {
    /// The leg's SSRC.
    pub ssrc: Ssrc,
    /// Wall clock (NTP 32.32) at the RTP timestamp below.
    pub ntp: u64,
    /// RTP timestamp in the leg's timestamp space.
    pub rtp: u32,
    /// Packets the leg sent (wrapping).
    pub packets: u32,
    /// Payload octets the leg sent (wrapping; headers and padding excluded, RFC 3550 §6.4.1).
    pub octets: u32,
}

impl SenderReport {
    /// Marshalled length in bytes.
    pub const LEN: usize = 28;

    /// Writes the RTCP packet into `buf`; returns its length, or `None` if `buf` is shorter
    /// than [`LEN`](Self::LEN). No allocation.
    pub fn write_to(&self, buf: &mut [u8]) -> Option<usize> {
        let b = buf.get_mut(..Self::LEN)?;
        b[0] = 0x80; // V=2, P=0, RC=0
        b[1] = 200; // SR
        b[2..4].copy_from_slice(&((Self::LEN / 4 - 1) as u16).to_be_bytes());
        b[4..8].copy_from_slice(&self.ssrc.0.to_be_bytes());
        b[8..16].copy_from_slice(&self.ntp.to_be_bytes());
        b[16..20].copy_from_slice(&self.rtp.to_be_bytes());
        b[20..24].copy_from_slice(&self.packets.to_be_bytes());
        b[24..28].copy_from_slice(&self.octets.to_be_bytes());
        Some(Self::LEN)
    }

    /// The same report as rtc's struct, for `write_rtcp`.
    pub fn to_rtc(&self) -> RtcSenderReport {
        RtcSenderReport {
            ssrc: self.ssrc.0,
            ntp_time: self.ntp,
            rtp_time: self.rtp,
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        }
    }
}

/// How many sent SRs a leg remembers to match receiver reports against.
const REMEMBERED: usize = 4;

/// One leg's sender-report state: the last SRs it sent (for RTT) and the RTT estimate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderReporter {
    sent: [Option<(u32, Instant)>; REMEMBERED],
    next: usize,
    rtt: Option<Duration>,
    reports: u64,
}

impl SenderReporter {
    /// A reporter that has sent nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The SR of a leg with SSRC `ssrc`, timestamp offset `ts_offset` from the publisher
    /// source of `clock`, having sent `packets` packets of `octets` payload octets, at `now`.
    /// Remembered for RTT.
    pub fn build(
        &mut self,
        ssrc: Ssrc,
        clock: &PublisherClock,
        ts_offset: u32,
        packets: u64,
        octets: u64,
        now: Instant,
    ) -> SenderReport {
        let (ntp, rtp) = clock.at(now);
        self.sent[self.next] = Some((ntp_middle(ntp), now));
        self.next = (self.next + 1) % REMEMBERED;
        self.reports += 1;
        SenderReport {
            ssrc,
            ntp,
            rtp: rtp.wrapping_add(ts_offset),
            // RTCP's counters wrap at 2^32.
            packets: packets as u32,
            octets: octets as u32,
        }
    }

    /// A receiver report block about this leg: `lsr` (middle 32 bits of the NTP time of the
    /// last SR it got, 0 if none) and `dlsr` (delay since, in 1/65536 s), arriving at `now`.
    /// The RTT is `now − (when we sent that SR) − dlsr`, measured on our clock only; returns
    /// it and keeps it as the estimate. `None` when the SR is not one of ours we remember.
    pub fn on_receiver_report(&mut self, lsr: u32, dlsr: u32, now: Instant) -> Option<Duration> {
        if lsr == 0 {
            return None;
        }
        let (_, sent_at) = self.sent.iter().flatten().find(|(mid, _)| *mid == lsr)?;
        let rtt = now
            .saturating_duration_since(*sent_at)
            .checked_sub(from_rtcp_units(dlsr))?;
        self.rtt = Some(rtt);
        Some(rtt)
    }

    /// The last RTT measured, if any.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Sender reports built.
    pub fn reports(&self) -> u64 {
        self.reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Marshal;

    #[test]
    fn conversions_by_hand() {
        // 1.25 s = 1 s + 0.25 * 2^32.
        assert_eq!(
            ntp_duration(Duration::from_millis(1250)),
            (1 << 32) + 0x4000_0000
        );
        assert_eq!(rtp_ticks(Duration::from_millis(1250), 90_000), 112_500);
        assert_eq!(rtp_ticks(Duration::from_millis(20), 48_000), 960);
        assert_eq!(from_rtcp_units(65_536), Duration::from_secs(1));
        assert_eq!(from_rtcp_units(6_554).as_millis(), 100);
        assert_eq!(ntp_middle(0x1122_3344_5566_7788), 0x3344_5566);
    }

    /// Table: publisher SR (NTP, RTP) received at t0, leg offset, elapsed → expected SR,
    /// computed by hand.
    #[test]
    fn translation_by_hand() {
        struct Case {
            ntp: u64,
            rtp: u32,
            rate: u32,
            offset: u32,
            elapsed_ms: u64,
            want_ntp: u64,
            want_rtp: u32,
        }
        let cases = [
            // Video: 0.5 s + 1.25 s = 1.75 s past second 0xE000_0000; RTP 90000 + 112500 +
            // offset 1000.
            Case {
                ntp: 0xE000_0000_8000_0000,
                rtp: 90_000,
                rate: 90_000,
                offset: 1_000,
                elapsed_ms: 1_250,
                want_ntp: 0xE000_0001_C000_0000,
                want_rtp: 203_500,
            },
            // Audio across the RTP wrap: 4294967000 + 48000 × 0.5 = +24000 − 296 → 23704, then
            // offset −704 (as u32) → 23000.
            Case {
                ntp: 0x0000_0010_0000_0000,
                rtp: 4_294_967_000,
                rate: 48_000,
                offset: 704u32.wrapping_neg(),
                elapsed_ms: 500,
                want_ntp: 0x0000_0010_8000_0000,
                want_rtp: 23_000,
            },
            // SR used at the instant it arrived: the pair itself, offset applied.
            Case {
                ntp: 42,
                rtp: 7,
                rate: 90_000,
                offset: 3,
                elapsed_ms: 0,
                want_ntp: 42,
                want_rtp: 10,
            },
        ];
        let t0 = Instant::now();
        for (i, c) in cases.iter().enumerate() {
            let clock = PublisherClock::new(Ssrc(9), c.ntp, c.rtp, t0, c.rate);
            let mut r = SenderReporter::new();
            let now = t0 + Duration::from_millis(c.elapsed_ms);
            let sr = r.build(Ssrc(5), &clock, c.offset, 10, 1_000, now);
            assert_eq!(
                (sr.ssrc, sr.ntp, sr.rtp, sr.packets, sr.octets),
                (Ssrc(5), c.want_ntp, c.want_rtp, 10, 1_000),
                "case {i}"
            );
        }
    }

    #[test]
    fn marshals_like_rtc() {
        let sr = SenderReport {
            ssrc: Ssrc(0xDEAD_BEEF),
            ntp: 0x0102_0304_0506_0708,
            rtp: 0x0A0B_0C0D,
            packets: 77,
            octets: 0x0100_0000,
        };
        let mut buf = [0u8; 40];
        assert_eq!(sr.write_to(&mut buf), Some(SenderReport::LEN));
        let theirs = sr.to_rtc().marshal().unwrap();
        assert_eq!(&buf[..SenderReport::LEN], &theirs[..]);
        assert_eq!(sr.write_to(&mut [0u8; 27]), None);
    }

    #[test]
    fn rtt_from_receiver_reports() {
        let t0 = Instant::now();
        let clock = PublisherClock::new(Ssrc(9), 0x0000_0100_0000_0000, 0, t0, 90_000);
        let mut r = SenderReporter::new();
        let sr = r.build(Ssrc(5), &clock, 0, 1, 1, t0);
        let lsr = ntp_middle(sr.ntp);
        // Answered 150 ms later, the receiver held it 100 ms (6553.6 units → 6554).
        let rtt = r
            .on_receiver_report(lsr, 6_554, t0 + Duration::from_millis(150))
            .unwrap();
        assert!(rtt.as_micros().abs_diff(50_000) < 100, "{rtt:?}");
        assert_eq!(r.rtt(), Some(rtt));
        // Unknown LSR, no LSR, and a DLSR longer than the elapsed time change nothing.
        assert_eq!(r.on_receiver_report(lsr ^ 1, 0, t0), None);
        assert_eq!(r.on_receiver_report(0, 0, t0), None);
        assert_eq!(r.on_receiver_report(lsr, 65_536, t0), None);
        assert_eq!(r.rtt(), Some(rtt));
        // Only the last few SRs are remembered.
        for i in 1..=REMEMBERED as u64 {
            r.build(Ssrc(5), &clock, 0, 1, 1, t0 + Duration::from_secs(i));
        }
        assert_eq!(
            r.on_receiver_report(lsr, 0, t0 + Duration::from_secs(9)),
            None
        );
        assert_eq!(r.reports(), 1 + REMEMBERED as u64);
    }
}
