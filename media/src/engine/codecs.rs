//! Codec vocabulary: the codec set every peer connection registers, a small model of SDP media
//! sections, and the checks every client offer passes before rtc sees it.
//!
//! Owns: [`registered_codecs`] (what the SFU passes through unchanged), [`MediaSection`] /
//! [`CodecInfo`] (parsed from offers), [`same_codec`] (codec identity across legs, by MIME,
//! clock rate and the fmtp parameters that change the bitstream) and [`check_offer`] (the
//! validation `MediaRouter::publish` and `subscribe` start with). Pure: no I/O, no peer
//! connections.

use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sdp::SessionDescription;

/// Media kind of one SDP section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Audio,
    Video,
    Application,
    Other,
}

impl Kind {
    pub(crate) fn rtp_kind(self) -> RtpCodecKind {
        match self {
            Kind::Audio => RtpCodecKind::Audio,
            Kind::Video => RtpCodecKind::Video,
            Kind::Application => RtpCodecKind::Application,
            Kind::Other => RtpCodecKind::Unspecified,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
            Kind::Application => "application",
            Kind::Other => "other",
        }
    }
}

/// Direction attribute of one SDP section, from the point of view of its author.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The author of the section receives media.
    pub(crate) fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One codec of one SDP section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CodecInfo {
    pub(crate) payload_type: u8,
    /// Encoding name as written in `a=rtpmap` (e.g. `VP8`, `opus`).
    pub(crate) name: String,
    pub(crate) clock_rate: u32,
    pub(crate) channels: u16,
    pub(crate) fmtp: String,
    /// `a=rtcp-fb` values, e.g. `nack pli`, `ccm fir`.
    pub(crate) rtcp_feedback: Vec<String>,
}

impl CodecInfo {
    /// Whether this is a media codec (not RTX/RED/FEC/comfort noise/DTMF).
    pub(crate) fn is_media(&self) -> bool {
        !matches!(
            self.name.to_ascii_lowercase().as_str(),
            "rtx" | "red" | "ulpfec" | "flexfec-03" | "cn" | "telephone-event"
        )
    }

    /// From a webrtc-rs codec description (as returned by `RtpSender::get_parameters`).
    pub(crate) fn from_rtc(p: &RTCRtpCodecParameters) -> Self {
        let mime = &p.rtp_codec.mime_type;
        let name = mime.split_once('/').map(|(_, n)| n).unwrap_or(mime);
        Self {
            payload_type: p.payload_type,
            name: name.to_owned(),
            clock_rate: p.rtp_codec.clock_rate,
            channels: p.rtp_codec.channels,
            fmtp: p.rtp_codec.sdp_fmtp_line.clone(),
            rtcp_feedback: p
                .rtp_codec
                .rtcp_feedback
                .iter()
                .map(|f| {
                    if f.parameter.is_empty() {
                        f.typ.clone()
                    } else {
                        format!("{} {}", f.typ, f.parameter)
                    }
                })
                .collect(),
        }
    }
}

/// One `m=` section.
#[derive(Clone, Debug)]
pub(crate) struct MediaSection {
    pub(crate) mid: Option<String>,
    pub(crate) kind: Kind,
    pub(crate) direction: Direction,
    /// Port 0 = rejected section.
    pub(crate) rejected: bool,
    /// Codecs in `m=` format order (preference order).
    pub(crate) codecs: Vec<CodecInfo>,
}

/// Largest sum over an offer's media sections of `formats × attributes` handed to webrtc-rs.
/// webrtc-rs 0.21.1 looks each listed payload type up by re-reading every attribute of its
/// section, so applying an offer costs about 1.5 µs per (format, attribute) pair: a 59 KB
/// offer with 8 000 formats and 1 500 attributes in one section held a CPU for 6.7 s
/// (media/tests/fuzz_sdp.rs). Browser offers are near 4 000 (Chrome video: ~25 formats, ~150
/// attributes); at this limit an offer costs under 0.1 s.
pub(crate) const MAX_OFFER_COMPLEXITY: usize = 65_536;

/// Refuses offers that would cost webrtc-rs more than [`MAX_OFFER_COMPLEXITY`].
pub(crate) fn check_complexity(sd: &SessionDescription) -> Result<(), String> {
    let complexity = sd.media_descriptions.iter().fold(0usize, |sum, md| {
        let pairs = md
            .media_name
            .formats
            .len()
            .saturating_mul(md.attributes.len());
        sum.saturating_add(pairs)
    });
    if complexity > MAX_OFFER_COMPLEXITY {
        return Err("too many formats and attributes".to_owned());
    }
    Ok(())
}

/// The validation every client offer passes before rtc sees it: parseable SDP, not too costly
/// ([`check_complexity`]), at least one media section, every section with a mid, ICE
/// credentials for every section in use. Returns the parsed sections; `Err` is a short,
/// client-safe reason.
pub(crate) fn check_offer(offer: &str) -> Result<Vec<MediaSection>, String> {
    let parsed = SessionDescription::unmarshal(&mut std::io::Cursor::new(offer.as_bytes()))
        .map_err(|_| "unparseable SDP".to_owned())?;
    check_complexity(&parsed)?;
    let sections = media_sections(&parsed);
    if sections.is_empty() {
        return Err("no media section".to_owned());
    }
    if sections
        .iter()
        .any(|s| s.mid.as_deref().unwrap_or("").is_empty())
    {
        return Err("media section without mid".to_owned());
    }
    if parsed.attribute("ice-ufrag").is_none()
        && sections.iter().any(|s| {
            !s.rejected
                && parsed
                    .media_descriptions
                    .iter()
                    .all(|m| m.attribute("ice-ufrag").is_none())
        })
    {
        return Err("no ICE credentials".to_owned());
    }
    Ok(sections)
}

/// Parses the media sections of a session description.
pub(crate) fn media_sections(sd: &SessionDescription) -> Vec<MediaSection> {
    sd.media_descriptions
        .iter()
        .map(|md| {
            let kind = match md.media_name.media.to_ascii_lowercase().as_str() {
                "audio" => Kind::Audio,
                "video" => Kind::Video,
                "application" => Kind::Application,
                _ => Kind::Other,
            };
            let direction = if md.has_attribute("sendonly") {
                Direction::SendOnly
            } else if md.has_attribute("recvonly") {
                Direction::RecvOnly
            } else if md.has_attribute("inactive") {
                Direction::Inactive
            } else {
                Direction::SendRecv
            };
            let mid = md.attribute("mid").flatten().map(str::to_owned);
            let mut codecs = Vec::new();
            if matches!(kind, Kind::Audio | Kind::Video) {
                let map = md.codecs();
                for f in &md.media_name.formats {
                    let Ok(pt) = f.parse::<u8>() else { continue };
                    let Some(c) = map.get(&pt) else { continue };
                    if c.name.is_empty() {
                        continue;
                    }
                    codecs.push(CodecInfo {
                        payload_type: pt,
                        name: c.name.clone(),
                        clock_rate: c.clock_rate,
                        channels: c.encoding_parameters.parse().unwrap_or(0),
                        fmtp: c.fmtp.clone(),
                        rtcp_feedback: c.rtcp_feedback.clone(),
                    });
                }
            }
            MediaSection {
                mid,
                kind,
                direction,
                rejected: md.media_name.port.value == 0,
                codecs,
            }
        })
        .collect()
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// Whether two codec descriptions denote the same bitstream format, so packets of one can be
/// forwarded under the other's payload type: same MIME name and clock rate; for H.264 the same
/// packetization mode and profile (`profile_idc` + constraint byte, level ignored); for VP9 the
/// same profile.
pub(crate) fn same_codec(a: &CodecInfo, b: &CodecInfo) -> bool {
    if !a.name.eq_ignore_ascii_case(&b.name) || a.clock_rate != b.clock_rate {
        return false;
    }
    match a.name.to_ascii_lowercase().as_str() {
        "h264" => {
            let pm = |c: &CodecInfo| {
                fmtp_param(&c.fmtp, "packetization-mode")
                    .unwrap_or("0")
                    .to_owned()
            };
            let profile = |c: &CodecInfo| {
                fmtp_param(&c.fmtp, "profile-level-id")
                    .map(|p| p.get(..4).unwrap_or(p).to_ascii_lowercase())
                    .unwrap_or_else(|| "4200".to_owned())
            };
            let norm = |p: String| {
                // Constrained baseline is signalled as 42e0 by some browsers and 4200 by others.
                if p == "42e0" {
                    "4200".to_owned()
                } else {
                    p
                }
            };
            pm(a) == pm(b) && norm(profile(a)) == norm(profile(b))
        }
        "vp9" => {
            fmtp_param(&a.fmtp, "profile-id").unwrap_or("0")
                == fmtp_param(&b.fmtp, "profile-id").unwrap_or("0")
        }
        _ => true,
    }
}

fn feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .iter()
        .map(|(t, p)| RTCPFeedback {
            typ: (*t).to_owned(),
            parameter: (*p).to_owned(),
        })
        .collect()
}

/// The codecs every peer connection registers (passed through unchanged). No RTX: without it a
/// publisher retransmits on the media SSRC and the stream forwards as one. Payload types here
/// only matter when we offer, which we never do: as answerer each leg uses the offerer's numbers.
pub(crate) fn registered_codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let audio = |mime: &str, pt: u8, rate: u32, ch: u16, fmtp: &str| {
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: rate,
                    channels: ch,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type: pt,
            },
            RtpCodecKind::Audio,
        )
    };
    let video = |mime: &str, pt: u8, fmtp: &str| {
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 90000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: feedback(),
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
    };
    vec![
        audio("audio/opus", 111, 48000, 2, "minptime=10;useinbandfec=1"),
        audio("audio/G722", 9, 8000, 0, ""),
        audio("audio/PCMU", 0, 8000, 0, ""),
        audio("audio/PCMA", 8, 8000, 0, ""),
        video("video/VP8", 96, ""),
        video("video/VP9", 98, "profile-id=0"),
        video("video/VP9", 100, "profile-id=2"),
        video(
            "video/H264",
            102,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        video(
            "video/H264",
            127,
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
        ),
        video(
            "video/H264",
            125,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        video(
            "video/H264",
            108,
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        ),
        video(
            "video/H264",
            123,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
        ),
        video(
            "video/H264",
            112,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640032",
        ),
        video("video/AV1", 45, ""),
    ]
}

/// Registers those of [`registered_codecs`] that `keep` accepts into `me`.
pub(crate) fn register(
    me: &mut MediaEngine,
    keep: impl Fn(&CodecInfo) -> bool,
) -> rtc::shared::error::Result<()> {
    for (c, k) in registered_codecs() {
        if keep(&CodecInfo::from_rtc(&c)) {
            me.register_codec(c, k)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pt: u8, name: &str, fmtp: &str) -> CodecInfo {
        CodecInfo {
            payload_type: pt,
            name: name.into(),
            clock_rate: if name == "opus" { 48000 } else { 90000 },
            channels: 0,
            fmtp: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    #[test]
    fn codecs_are_the_same_by_name_and_bitstream_parameters() {
        let h264 = c(102, "H264", "packetization-mode=1;profile-level-id=42e01f");
        assert!(same_codec(&c(96, "VP8", ""), &c(120, "VP8", "")));
        assert!(same_codec(&c(111, "opus", ""), &c(109, "opus", "stereo=1")));
        assert!(same_codec(
            &h264,
            &c(126, "H264", "profile-level-id=42001f;packetization-mode=1")
        ));
        assert!(!same_codec(
            &h264,
            &c(97, "H264", "profile-level-id=42001f")
        ));
        assert!(!same_codec(&c(96, "VP8", ""), &c(98, "VP9", "")));
    }

    #[test]
    fn vp9_profiles_differ() {
        assert!(!same_codec(
            &c(98, "VP9", "profile-id=0"),
            &c(100, "VP9", "profile-id=2")
        ));
        assert!(same_codec(
            &c(98, "VP9", ""),
            &c(100, "vp9", "profile-id=0")
        ));
    }
}
