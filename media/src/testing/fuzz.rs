//! Fuzzing hooks (feature `testing`): the pure steps the router applies to a client's SDP offer,
//! its own answer and a client's ICE candidate, callable without a peer connection per input,
//! and the media engine every server peer connection registers (for sans-I/O negotiation).
//!
//! Nothing here is a second implementation: every function calls the code `MediaRouter` runs
//! (`parse_offer`, `parse_answer`, `codecs`, `session`), so a fuzz test of these covers it.

use std::net::IpAddr;

use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

use crate::codecs::{is_supported, same_codec, Direction, Kind, MediaSection, PtMap};
use crate::IceCandidate;

/// One section of an accepted offer, as `publish`/`subscribe` see it.
#[derive(Clone, Debug)]
pub struct Section {
    /// `a=mid` (never empty in an accepted offer).
    pub mid: String,
    /// Media kind (`Unspecified` for anything but audio/video/application).
    pub kind: RtpCodecKind,
    /// Port 0.
    pub rejected: bool,
    /// The offerer sends and receives (loopback and subscriber tracks pair with these).
    pub send_recv: bool,
    /// The offerer receives.
    pub receives: bool,
    /// The codec a loopback track of this section would use (first supported media codec).
    pub loopback_codec: Option<RTCRtpCodec>,
}

/// Runs the offer validation `MediaRouter::publish` and `subscribe` start with, then the codec
/// helpers that later work on the sections (support check, codec identity, payload-type maps
/// between every pair of sections). `Err` is the client-safe rejection text.
pub fn check_offer(sdp: &str) -> Result<Vec<Section>, String> {
    let (_desc, sections) = crate::parse_offer(sdp.to_owned())?;
    exercise_codecs(&sections);
    Ok(sections
        .iter()
        .map(|s| Section {
            mid: s.mid.clone().unwrap_or_default(),
            kind: s.kind.rtp_kind(),
            rejected: s.rejected,
            send_recv: s.direction == Direction::SendRecv,
            receives: s.direction.receives(),
            loopback_codec: s
                .codecs
                .iter()
                .find(|c| c.is_media() && is_supported(c))
                .map(|c| c.to_rtc_codec(s.kind)),
        })
        .collect())
}

/// Parses an answer the way the router reads its own (`parse_answer`) and runs the codec
/// helpers on it; returns the number of audio/video sections that would get a track hub.
pub fn check_answer(sdp: &str) -> usize {
    let sections = crate::parse_answer(sdp);
    exercise_codecs(&sections);
    sections
        .iter()
        .filter(|s| {
            matches!(s.kind, Kind::Audio | Kind::Video) && !s.rejected && s.direction.receives()
        })
        .count()
}

fn exercise_codecs(sections: &[MediaSection]) {
    for a in sections {
        for c in &a.codecs {
            let _ = (c.is_media(), is_supported(c), c.has_feedback("nack pli"));
            let _ = c.to_rtc_codec(a.kind);
        }
        for b in sections {
            let map = PtMap::build(&a.codecs, &b.codecs);
            for c in &a.codecs {
                let mapped = map.get(c.payload_type);
                assert!(
                    mapped.is_none()
                        || b.codecs
                            .iter()
                            .any(|t| Some(t.payload_type) == mapped && same_codec(c, t)),
                    "a payload type maps only to the same codec"
                );
            }
        }
    }
}

/// Whether `MediaRouter::add_candidate` drops this candidate before webrtc-rs sees it.
pub fn ignorable_candidate(c: &IceCandidate) -> bool {
    crate::session::ignorable_candidate(c)
}

/// The 1:1 NAT rewrite of announced candidates and answers (server output, but it parses
/// candidate text).
pub fn announce(sdp_or_candidate: &str, public_ip: Option<IpAddr>) -> (String, String) {
    (
        crate::session::announce_candidate(sdp_or_candidate, public_ip),
        crate::session::announce_sdp(sdp_or_candidate, public_ip),
    )
}

/// The media engine of every server peer connection: the codec set of `codecs` plus the
/// header extensions and RTCP feedback of webrtc-rs's default interceptors (as in
/// `session::SessionFactory`).
pub fn server_media_engine() -> MediaEngine {
    let mut me = MediaEngine::default();
    crate::codecs::register(&mut me).expect("the static codec set registers");
    let _ = register_default_interceptors(rtc::interceptor::Registry::new(), &mut me)
        .expect("default interceptors register");
    me
}
