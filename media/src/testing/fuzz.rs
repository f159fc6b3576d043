//! Fuzzing hooks (feature `testing`): the pure steps the engine applies to a client's SDP offer
//! and ICE candidates, callable without a peer connection per input, and the section model
//! applied to answers. (The answers themselves come from the engine's sans-I/O shard,
//! `engine::shard`, which a fuzz test drives directly.)
//!
//! Nothing here is a second implementation: every function calls the code `MediaRouter` runs
//! (`engine::codecs`, `engine::sharded`), so a fuzz test of these covers it.

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::engine::codecs::{
    check_offer as engine_check_offer, media_sections, same_codec, Kind, MediaSection,
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
}

/// Runs the offer validation `MediaRouter::publish` and `subscribe` start with, then the codec
/// helpers that later work on the sections (media codec or not, codec identity between every
/// pair of sections). `Err` is the client-safe rejection text.
pub fn check_offer(sdp: &str) -> Result<Vec<Section>, String> {
    let sections = engine_check_offer(sdp)?;
    exercise_codecs(&sections);
    Ok(sections
        .iter()
        .map(|s| Section {
            mid: s.mid.clone().unwrap_or_default(),
            kind: s.kind.rtp_kind(),
            rejected: s.rejected,
        })
        .collect())
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
            let _ = c.is_media();
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
