//! Keyframe requests: the interceptor that lets PLI/FIR from a subscriber reach the application,
//! and the per-publisher-track rate limiter that turns many requests into at most one upstream
//! request per `keyframe_request_interval`.
//!
//! Owns [`KeyframeRequestInterceptor`] (installed on every peer connection by `session.rs`,
//! application-most slot, following webrtc-rs's `rtcp-processing` example: inbound RTCP stops at
//! the end of the chain unless an interceptor marks it `Attribute::DeliverToApplication`) and
//! [`KeyframeLimiter`] (pure timing logic used by the publisher task).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio;
use rtc::shared::error::Error;

/// Registry slot of the interceptor: after the default interceptors (NACK, reports, TWCC), so
/// they have all seen the full inbound RTCP before this one narrows it to keyframe requests.
pub(crate) const KEYFRAME_INTERCEPTOR_SLOT: usize = 14_000;

/// Whether an RTCP packet is a keyframe request (PLI or FIR).
pub(crate) fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Passes inbound PLI/FIR to the application (as `TrackLocalEvent::OnRtcpPacket` on the sent
/// track they are about) and drops every other inbound RTCP packet at the end of the chain.
/// Outbound traffic passes untouched.
#[derive(Default)]
pub(crate) struct KeyframeRequestInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            if !packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                // Reports, NACKs, TWCC: already consumed by the interceptors before this one.
                return Ok(());
            }
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestInterceptor {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// What the publisher task should do after a keyframe request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyframeDecision {
    /// Send a request upstream now.
    SendNow,
    /// A request went out recently; one is now pending and must be sent at this instant.
    SendAt(Instant),
    /// Already pending; nothing new to schedule.
    AlreadyPending,
}

/// Coalesces keyframe requests for one publisher track: at most one upstream request per
/// `interval`; a request arriving inside the interval is deferred (not lost) to its end.
#[derive(Debug)]
pub(crate) struct KeyframeLimiter {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeLimiter {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    /// Registers a request at `now`.
    pub(crate) fn request(&mut self, now: Instant) -> KeyframeDecision {
        if self.pending {
            return KeyframeDecision::AlreadyPending;
        }
        match self.last_sent {
            Some(last) if now.duration_since(last) < self.interval => {
                self.pending = true;
                KeyframeDecision::SendAt(last + self.interval)
            }
            _ => {
                self.last_sent = Some(now);
                KeyframeDecision::SendNow
            }
        }
    }

    /// The deferred request was sent at `now`.
    pub(crate) fn sent_pending(&mut self, now: Instant) {
        self.pending = false;
        self.last_sent = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_coalesces_within_interval() {
        let t0 = Instant::now();
        let iv = Duration::from_millis(500);
        let mut l = KeyframeLimiter::new(iv);
        assert_eq!(l.request(t0), KeyframeDecision::SendNow);
        assert_eq!(
            l.request(t0 + Duration::from_millis(10)),
            KeyframeDecision::SendAt(t0 + iv)
        );
        assert_eq!(
            l.request(t0 + Duration::from_millis(20)),
            KeyframeDecision::AlreadyPending
        );
        assert!(l.pending);
        l.sent_pending(t0 + iv);
        assert_eq!(
            l.request(t0 + iv + Duration::from_millis(1)),
            KeyframeDecision::SendAt(t0 + iv + iv)
        );
        l.sent_pending(t0 + iv + iv);
        assert_eq!(
            l.request(t0 + Duration::from_secs(5)),
            KeyframeDecision::SendNow
        );
    }

    #[test]
    fn recognises_pli_and_fir() {
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        };
        assert!(is_keyframe_request(&pli));
        let fir = FullIntraRequest::default();
        assert!(is_keyframe_request(&fir));
        let rr = rtc::rtcp::receiver_report::ReceiverReport::default();
        assert!(!is_keyframe_request(&rr));
    }
}
