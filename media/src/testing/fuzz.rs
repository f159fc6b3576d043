//! Fuzzing hooks (feature `testing`): the pure steps the engine applies to a client's SDP offer
//! and ICE candidates, callable without a peer connection per input, the section model applied
//! to answers, and the media engine every server peer connection registers (for sans-I/O
//! negotiation).
//!
//! Nothing here is a second implementation: every function calls the code `MediaRouter` runs
//! (`engine::codecs`, `engine::sharded`), so a fuzz test of these covers it.

use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

use crate::engine::codecs::{
    check_offer as engine_check_offer, media_sections, registered_codecs, same_codec, CodecInfo,
    Direction, Kind, MediaSection,
};
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
    let sections = engine_check_offer(sdp)?;
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
                .map(|c| to_rtc_codec(c, s.kind)),
        })
        .collect())
}

/// Whether the engine forwards this codec (one of [`registered_codecs`]).
fn is_supported(c: &CodecInfo) -> bool {
    registered_codecs()
        .iter()
        .any(|(r, _)| same_codec(&CodecInfo::from_rtc(r), c))
}

/// The rtc codec description of `c` (MIME type `kind/name`).
fn to_rtc_codec(c: &CodecInfo, kind: Kind) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: format!("{}/{}", kind.as_str(), c.name),
        clock_rate: c.clock_rate,
        channels: c.channels,
        sdp_fmtp_line: c.fmtp.clone(),
        rtcp_feedback: vec![],
    }
}

/// Parses an answer into the engine's section model and runs the codec helpers on it; returns
/// the number of audio/video sections that receive (`0` for an unparseable answer).
pub fn check_answer(sdp: &str) -> usize {
    let sections =
        rtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp.as_bytes()))
            .map(|sd| media_sections(&sd))
            .unwrap_or_default();
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
            let _ = (c.is_media(), is_supported(c), to_rtc_codec(c, a.kind));
        }
        for b in sections {
            for c in &a.codecs {
                for t in &b.codecs {
                    assert_eq!(
                        same_codec(c, t),
                        same_codec(t, c),
                        "codec identity is symmetric: {c:?} {t:?}"
                    );
                }
            }
        }
    }
}

/// Whether `MediaRouter::add_candidate` drops this candidate before a shard sees it.
pub fn ignorable_candidate(c: &IceCandidate) -> bool {
    crate::engine::sharded::ignorable_candidate(c)
}

/// The media engine of every server peer connection: the codec set of `codecs` plus the
/// header extensions and RTCP feedback of rtc's default interceptors (as `engine::peer`
/// registers them).
pub fn server_media_engine() -> MediaEngine {
    let mut me = MediaEngine::default();
    crate::engine::codecs::register(&mut me).expect("the static codec set registers");
    let _ = register_default_interceptors(rtc::interceptor::Registry::new(), &mut me)
        .expect("default interceptors register");
    me
}
