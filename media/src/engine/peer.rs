//! One peer connection of a shard: how it is built and negotiated, and how its outputs are
//! drained into the shard's queues.
//!
//! Owns [`PeerId`], [`ChannelId`], [`Role`], the negotiation vocabulary of the shard's API
//! ([`MediaKind`], [`CodecSpec`], [`OutTrack`], [`PublishedTrack`], [`SentTrack`],
//! [`PublisherAnswer`], [`SubscriberAnswer`]), the per-PC configuration ([`PeerFactory`]:
//! ICE-lite, DTLS server, the shard's certificate, raised ICE timeouts, no mDNS, the codec set
//! of `codecs.rs`, an interceptor chain per role, a publisher's shared with the shard as its
//! [`Feedback`]) and [`Peer`] (the sans-IO
//! `RTCPeerConnection` plus what the shard tracks about it: state, local ICE credentials, the
//! selected path, its timers).
//!
//! Draining reports, besides media, the data channels the client opens or closes and every
//! message it sends on them ([`ShardEvent::ChannelOpen`] / [`ShardEvent::ChannelClose`] /
//! [`ShardEvent::DataIn`]); what is relayed where is `data.rs`'s business.
//!
//! Every peer connection answers; roomd never offers. The answer always carries one UDP host
//! candidate per announced address of the shard and, with ICE-TCP, one passive TCP host
//! candidate (RFC 6544, same port number) per announced address (the same candidates are also
//! reported for trickle), and `a=end-of-candidates`. rtc pairs a TCP request with the passive
//! candidate and stamps everything it then sends on that pair with the TCP transport
//! protocol; the driver frames it (RFC 4571).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder, Registry, Slot,
    StreamInfo, TaggedPacket, TwccReceiverBuilder,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
    RTCIceProtocol,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportProtocol};

use super::codecs::{
    media_sections, registered_codecs, same_codec, CodecInfo, Direction, Kind, MediaSection,
};

use super::feedback::{Feedback, FEEDBACK_SLOT};
use super::outage::{NackFilter, NACK_FILTER_SLOT};
use super::shard::{FailReason, ShardEvent, Transmit};
use super::srtp::SrtpOpener;
use super::wire::{Mid, Pt, Ssrc};

/// A peer connection's id, chosen by the shard's owner (unique within a shard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A map keyed by [`PeerId`], hashed by [`PeerIdHasher`].
pub type PeerMap<V> = HashMap<PeerId, V, BuildHasherDefault<PeerIdHasher>>;

/// Hashes a [`PeerId`] with two multiplications instead of SipHash. Peer ids are chosen by
/// roomd, never by a client, so there is no collision flooding to defend against, and the
/// forwarder looks a subscriber up twice per forwarded packet.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIdHasher(u64);

impl Hasher for PeerIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        // MurmurHash3's 64-bit finalizer: every bit of the id reaches every bit of the hash,
        // the low ones (hashbrown's bucket) and the high ones (its tag) alike, so ids that
        // differ only in their high bits still spread.
        let mut x = self.0.rotate_left(5) ^ v;
        x ^= x >> 33;
        x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        x ^= x >> 33;
        x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        self.0 = x ^ (x >> 33);
    }
}

/// A data channel of a peer connection: rtc's connection-local handle (stable for the
/// channel's lifetime, never reused), not the SCTP stream id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub usize);

/// What a peer connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client sends media (its offer: sendonly/sendrecv); we answer recvonly, or, with
    /// loopback, sendrecv on its send-receive sections (each sends back what it receives).
    Publisher,
    /// The client receives media (its offer: recvonly/sendrecv); we answer sendonly.
    Subscriber,
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    fn from_kind(k: Kind) -> Option<Self> {
        match k {
            Kind::Audio => Some(MediaKind::Audio),
            Kind::Video => Some(MediaKind::Video),
            _ => None,
        }
    }

    fn kind(self) -> Kind {
        match self {
            MediaKind::Audio => Kind::Audio,
            MediaKind::Video => Kind::Video,
        }
    }

    fn rtp_kind(self) -> RtpCodecKind {
        self.kind().rtp_kind()
    }
}

/// One codec as negotiated on one leg: payload type, MIME type (`video/VP8`), clock rate,
/// channels, fmtp line, RTCP feedback (`nack pli`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecSpec {
    pub pt: Pt,
    pub mime: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    pub rtcp_feedback: Vec<String>,
}

impl CodecSpec {
    fn from_info(kind: Kind, c: &CodecInfo) -> Self {
        Self {
            pt: Pt(c.payload_type),
            mime: format!("{}/{}", kind.as_str(), c.name),
            clock_rate: c.clock_rate,
            channels: c.channels,
            fmtp: c.fmtp.clone(),
            rtcp_feedback: c.rtcp_feedback.clone(),
        }
    }

    fn from_rtc(p: &RTCRtpCodecParameters) -> Self {
        let info = CodecInfo::from_rtc(p);
        Self {
            pt: Pt(p.payload_type),
            mime: p.rtp_codec.mime_type.clone(),
            clock_rate: info.clock_rate,
            channels: info.channels,
            fmtp: info.fmtp,
            rtcp_feedback: info.rtcp_feedback,
        }
    }

    fn info(&self) -> CodecInfo {
        let name = self
            .mime
            .split_once('/')
            .map_or(self.mime.as_str(), |(_, n)| n);
        CodecInfo {
            payload_type: self.pt.0,
            name: name.to_owned(),
            clock_rate: self.clock_rate,
            channels: self.channels,
            fmtp: self.fmtp.clone(),
            rtcp_feedback: self.rtcp_feedback.clone(),
        }
    }

    fn rtc_codec(&self) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: self.mime.clone(),
            clock_rate: self.clock_rate,
            channels: self.channels,
            sdp_fmtp_line: self.fmtp.clone(),
            rtcp_feedback: vec![],
        }
    }

    /// Same bitstream format (MIME, clock rate, the fmtp parameters that matter), whatever the
    /// payload type: what decides whether packets of one can be forwarded as the other.
    pub fn same_format(&self, other: &CodecSpec) -> bool {
        same_codec(&self.info(), &other.info())
    }
}

/// A track a subscriber peer connection is to send (or a loopback publisher sends back).
#[derive(Clone, Debug)]
pub struct OutTrack {
    pub kind: MediaKind,
    /// The publisher's codec the packets will carry (its payload type is irrelevant here: the
    /// leg's own is negotiated and reported in [`SentTrack::pt`]).
    pub codec: CodecSpec,
    /// The SSRC to send with; `None`: the shard picks a random one.
    pub ssrc: Option<Ssrc>,
    /// `a=msid` stream id (the client groups tracks by it).
    pub stream_id: String,
    pub track_id: String,
}

/// A section of a publisher's answer that receives media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTrack {
    pub mid: Mid,
    pub kind: MediaKind,
    /// Codecs the answer accepts, in the offer's preference order, with the offer's numbers.
    pub codecs: Vec<CodecSpec>,
}

/// A track an answer sends: a subscriber's, or a loopback publisher's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentTrack {
    /// Subscriber: index of the [`OutTrack`] in the request. Loopback publisher: index of the
    /// [`PublishedTrack`] (same section, same mid) whose media it sends back.
    pub index: usize,
    pub mid: Mid,
    pub kind: MediaKind,
    pub ssrc: Ssrc,
    /// Payload type of the track's codec on this leg.
    pub pt: Pt,
    /// Every codec negotiated on the section, this leg's numbers.
    pub codecs: Vec<CodecSpec>,
}

/// Result of [`super::shard::Shard::add_publisher`].
#[derive(Clone, Debug)]
pub struct PublisherAnswer {
    pub sdp: String,
    pub tracks: Vec<PublishedTrack>,
    /// Loopback: the tracks sent back to the publisher on its own connection, one per
    /// send-receive section that found a codec (empty without loopback).
    pub loopback: Vec<SentTrack>,
}

/// Result of [`super::shard::Shard::add_subscriber`]. Tracks that found no section or no
/// common codec in the offer are absent.
#[derive(Clone, Debug)]
pub struct SubscriberAnswer {
    pub sdp: String,
    pub tracks: Vec<SentTrack>,
    /// The answer accepted the offer's data-channel section (`m=application`): the channels
    /// the client opens can carry relayed messages.
    pub data: bool,
}

/// ICE timers of the shard's peer connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IceTimeouts {
    /// Without STUN from the client for this long, the connection is `Disconnected`. Media
    /// does not count (rtc-ice only refreshes liveness on STUN); browsers send consent checks
    /// every few seconds, so keep this well above that.
    pub disconnected: Duration,
    /// Further time after `disconnected` until `Failed`.
    pub failed: Duration,
    /// Keepalive interval (full-ICE agents; an ICE-lite agent answers checks only).
    pub keepalive: Duration,
}

impl Default for IceTimeouts {
    fn default() -> Self {
        Self {
            disconnected: Duration::from_secs(15),
            failed: Duration::from_secs(30),
            keepalive: Duration::from_secs(2),
        }
    }
}

/// Builds the interceptor chain of a peer connection by role.
pub type RegistryFn = fn(Role) -> Registry;

/// Default chains. A publisher: NACK generator, TWCC feedback, receiver reports (rtc talks
/// RTCP to the client about what it receives). A subscriber: nothing that sends RTP — the
/// forwarding layer owns those SSRCs (no NACK responder, no sender-report interceptor). Nor
/// does the publisher chain send RTP: a loopback publisher's sent SSRCs are the forwarding
/// layer's too. Both deliver every inbound RTCP packet to the application
/// ([`ShardEvent::RtcpIn`]).
pub fn default_registry(role: Role) -> Registry {
    let mut r = Registry::new();
    if role == Role::Publisher {
        r = r
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            // NACKs neither for what an outage swallowed nor forever (a PLI instead), see
            // `outage.rs`.
            .with(NACK_FILTER_SLOT.into(), NackFilter::default())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
    }
    r.with(RTCP_TO_APP_SLOT.into(), RtcpToApp::default())
}

/// Application-most slot: the default interceptors have seen inbound RTCP before it.
const RTCP_TO_APP_SLOT: usize = 14_000;

/// Marks inbound RTCP `DeliverToApplication` (without it rtc's chain terminus drops inbound
/// RTCP): every packet ([`RtcpToApp::default`], the shard's chains and the tests' client peers)
/// or only those a filter keeps ([`RtcpToApp::only`]: a compound packet loses the others, and
/// one left empty is dropped). Outbound traffic passes untouched.
#[derive(Default)]
pub struct RtcpToApp {
    keep: Option<fn(&dyn rtc::rtcp::Packet) -> bool>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl RtcpToApp {
    /// Delivers only the RTCP packets `keep` accepts.
    pub fn only(keep: fn(&dyn rtc::rtcp::Packet) -> bool) -> Self {
        Self {
            keep: Some(keep),
            ..Self::default()
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            if let Some(keep) = self.keep {
                packets.retain(|p| keep(p.as_ref()));
                if packets.is_empty() {
                    return Ok(());
                }
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for RtcpToApp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Why building or negotiating a peer connection failed (client-safe text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("invalid offer: {0}")]
    InvalidOffer(String),
    #[error("{0}")]
    Rtc(String),
}

fn rtc_err(what: &str, e: impl std::fmt::Display) -> NegotiationError {
    let full = e.to_string();
    let line: String = full
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(100)
        .collect();
    NegotiationError::Rtc(format!("{what}: {line}"))
}

/// What every peer connection of a shard shares: the DTLS certificate, the announced
/// addresses, the ICE timers, the interceptor chains.
pub(crate) struct PeerFactory {
    pub(crate) certificate: RTCCertificate,
    /// Announced addresses, one host candidate each, in priority order.
    pub(crate) announced: Vec<SocketAddr>,
    /// Also a passive TCP host candidate per announced address (ICE-TCP).
    pub(crate) ice_tcp: bool,
    pub(crate) ice: IceTimeouts,
    pub(crate) registry: RegistryFn,
    /// The registered codecs, as [`CodecInfo`] (computed once: offers are checked against it).
    pub(crate) supported: Vec<CodecInfo>,
}

/// The codecs every peer connection registers, for [`PeerFactory::supported`].
pub(crate) fn supported_codecs() -> Vec<CodecInfo> {
    registered_codecs()
        .iter()
        .map(|(c, _)| CodecInfo::from_rtc(c))
        .collect()
}

impl PeerFactory {
    /// A peer connection of `role` with the shard's ICE-lite, DTLS and crypto settings.
    /// `only`: register just the registered codecs of these formats (a subscriber sends only
    /// its publishers' codecs); empty: all of them. Each codec registered costs in every
    /// structure rtc derives from the engine (transceiver codec lists, matched answer, stats),
    /// so a subscriber with one video and one audio codec holds a fraction of a publisher's.
    fn build(
        &self,
        role: Role,
        only: &[CodecInfo],
        crypto: Option<Arc<dyn RTCCryptoProvider>>,
        feedback: Option<&Feedback>,
        now: Instant,
    ) -> Result<RTCPeerConnection, NegotiationError> {
        let mut media_engine = MediaEngine::default();
        super::codecs::register(&mut media_engine, |c| {
            only.is_empty() || only.iter().any(|o| same_codec(o, c))
        })
        .map_err(|e| rtc_err("codecs", e))?;
        // The default set registers its RTCP feedback and header extensions in the engine (the
        // SDP stays what roomd always answered); its chain is replaced by the role's own.
        let _sdp_only = register_default_interceptors(Registry::new(), &mut media_engine)
            .map_err(|e| rtc_err("interceptors", e))?;
        let mut se = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_ice_timeouts(
                Some(self.ice.disconnected),
                Some(self.ice.failed),
                Some(self.ice.keepalive),
            );
        if let Some(c) = crypto {
            se = se.with_crypto_provider(c);
        }
        let config = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        // A publisher's chain is shared with the shard's SRTP bypass (`feedback.rs`).
        let registry = match feedback {
            Some(f) => Registry::new().with(FEEDBACK_SLOT.into(), f.clone()),
            None => (self.registry)(role),
        };
        RTCPeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(se.build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| rtc_err("peer connection", e))
    }

    /// The host candidates of the shard, `candidate:`-prefixed: UDP for every announced
    /// address first, then (ICE-TCP) passive TCP ones, which rtc already ranks lower.
    pub(crate) fn candidates(&self) -> Result<Vec<String>, NegotiationError> {
        let udp = self.announced.iter().map(|a| host_candidate(*a));
        let tcp = self
            .announced
            .iter()
            .filter(|_| self.ice_tcp)
            .map(|a| tcp_passive_candidate(*a));
        udp.chain(tcp).map(|c| c.map(|c| c.candidate)).collect()
    }

    /// Builds a publisher peer connection and answers `offer`. With `loopback`, every
    /// send-receive audio/video section of the offer is answered sendrecv and sends back, under
    /// an SSRC of ours, the media it receives ([`PublisherAnswer::loopback`]).
    pub(crate) fn publisher(
        &self,
        offer: &str,
        loopback: bool,
        crypto: Option<Arc<dyn RTCCryptoProvider>>,
        now: Instant,
    ) -> Result<(Peer, PublisherAnswer), NegotiationError> {
        let (desc, sections) = parse_offer(offer, &self.supported)?;
        let feedback = Feedback::new((self.registry)(Role::Publisher).build());
        let mut pc = self.build(Role::Publisher, &[], crypto, Some(&feedback), now)?;
        let back = if loopback {
            loopback_tracks(&sections, &self.supported, offer)
        } else {
            Vec::new()
        };
        // The senders must exist before the offer is applied: rtc pairs a send-receive offer
        // section with a send-receive transceiver of its kind (in order), and answers it
        // sendrecv. One track per send-receive section, planned in section order.
        let mut planned = Vec::with_capacity(back.len());
        for (i, t) in back.iter().enumerate() {
            let ssrc = t.ssrc.unwrap_or_else(|| Ssrc(rand::random()));
            let sender = add_sender(&mut pc, t, ssrc, RTCRtpTransceiverDirection::Sendrecv)?;
            planned.push((i, ssrc, sender));
        }
        pc.set_remote_description(now, desc)
            .map_err(|e| rtc_err("offer rejected", e))?;
        let sdp = self.answer(&mut pc, now)?;
        let tracks = published_tracks(&sdp);
        let (mut sent, mut senders) = sent_tracks(&mut pc, planned, &back);
        // A sent track sends back what its own section receives: re-index it by that section's
        // published track (rtc chose the section; a track without one sends nothing).
        sent.retain_mut(|t| match tracks.iter().position(|p| p.mid == t.mid) {
            Some(i) => {
                t.index = i;
                true
            }
            None => {
                senders.remove(&t.ssrc);
                false
            }
        });
        let mut peer = Peer::new(Role::Publisher, pc, &sdp, now)?;
        peer.senders = senders;
        peer.bypass = Some(Bypass {
            feedback,
            opener: None,
            streams: Vec::new(),
        });
        Ok((
            peer,
            PublisherAnswer {
                sdp,
                tracks,
                loopback: sent,
            },
        ))
    }

    /// Builds a subscriber peer connection sending `tracks` and answers `offer`. Each track
    /// takes the first unused section of its kind that can receive, in offer order.
    pub(crate) fn subscriber(
        &self,
        offer: &str,
        tracks: &[OutTrack],
        crypto: Option<Arc<dyn RTCCryptoProvider>>,
        now: Instant,
    ) -> Result<(Peer, SubscriberAnswer), NegotiationError> {
        let (desc, sections) = parse_offer(offer, &self.supported)?;
        let formats: Vec<CodecInfo> = tracks.iter().map(|t| t.codec.info()).collect();
        let mut pc = self.build(Role::Subscriber, &formats, crypto, None, now)?;
        let mut used = vec![false; sections.len()];
        let mut planned = Vec::new();
        for (ti, t) in tracks.iter().enumerate() {
            let Some(si) = (0..sections.len()).find(|&i| {
                let s = &sections[i];
                !used[i] && s.kind == t.kind.kind() && !s.rejected && s.direction.receives()
            }) else {
                continue;
            };
            used[si] = true;
            let ssrc = t.ssrc.unwrap_or_else(|| Ssrc(rand::random()));
            // rtc pairs a send-receive offer section only with a send-receive transceiver;
            // it is narrowed to send-only once the offer is applied.
            let direction = if sections[si].direction == Direction::SendRecv {
                RTCRtpTransceiverDirection::Sendrecv
            } else {
                RTCRtpTransceiverDirection::Sendonly
            };
            let sender = add_sender(&mut pc, t, ssrc, direction)?;
            planned.push((ti, ssrc, sender));
        }
        pc.set_remote_description(now, desc)
            .map_err(|e| rtc_err("offer rejected", e))?;
        let transceivers: Vec<_> = pc.get_transceivers().collect();
        for tid in transceivers {
            if let Some(mut tr) = pc.rtp_transceiver(tid) {
                if tr.sender().is_some() && tr.direction() == RTCRtpTransceiverDirection::Sendrecv {
                    tr.set_direction(RTCRtpTransceiverDirection::Sendonly);
                }
            }
        }
        let sdp = self.answer(&mut pc, now)?;
        let (sent, senders) = sent_tracks(&mut pc, planned, tracks);
        let data = accepts_data(&sdp);
        let mut peer = Peer::new(Role::Subscriber, pc, &sdp, now)?;
        peer.senders = senders;
        Ok((
            peer,
            SubscriberAnswer {
                sdp,
                tracks: sent,
                data,
            },
        ))
    }

    /// Creates and applies the answer, adds the shard's host candidates and ends gathering;
    /// returns the answer SDP with the candidates.
    fn answer(&self, pc: &mut RTCPeerConnection, now: Instant) -> Result<String, NegotiationError> {
        let answer = pc
            .create_answer(None)
            .map_err(|e| rtc_err("cannot create answer", e))?;
        pc.set_local_description(now, answer)
            .map_err(|e| rtc_err("cannot apply answer", e))?;
        for candidate in self.candidates()? {
            pc.add_local_candidate(RTCIceCandidateInit {
                candidate,
                ..Default::default()
            })
            .map_err(|e| rtc_err("local candidate", e))?;
        }
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(|e| rtc_err("end of candidates", e))?;
        pc.local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| NegotiationError::Rtc("no local description".into()))
    }

    /// Applies a new offer from the client on an existing peer connection (ICE restart:
    /// new remote credentials make rtc restart ICE with new local ones) and returns the answer.
    /// Track changes are not supported here.
    pub(crate) fn renegotiate(
        &self,
        peer: &mut Peer,
        offer: &str,
        now: Instant,
    ) -> Result<String, NegotiationError> {
        let (desc, _) = parse_offer(offer, &self.supported)?;
        peer.pc
            .set_remote_description(now, desc)
            .map_err(|e| rtc_err("offer rejected", e))?;
        let answer = peer
            .pc
            .create_answer(None)
            .map_err(|e| rtc_err("cannot create answer", e))?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(|e| rtc_err("cannot apply answer", e))?;
        let sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| NegotiationError::Rtc("no local description".into()))?;
        let (ufrag, pwd) = ice_credentials(&sdp)
            .ok_or_else(|| NegotiationError::Rtc("answer without ICE credentials".into()))?;
        peer.ufrag = ufrag;
        peer.pwd = pwd;
        Ok(sdp)
    }
}

/// Adds a transceiver sending `t` with `ssrc`, in `direction`; returns its sender.
fn add_sender(
    pc: &mut RTCPeerConnection,
    t: &OutTrack,
    ssrc: Ssrc,
    direction: RTCRtpTransceiverDirection,
) -> Result<RTCRtpSenderId, NegotiationError> {
    let track = MediaStreamTrack::new(
        t.stream_id.clone(),
        t.track_id.clone(),
        t.track_id.clone(),
        t.kind.rtp_kind(),
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc.0),
                ..Default::default()
            },
            codec: t.codec.rtc_codec(),
            ..Default::default()
        }],
    );
    let tid = pc
        .add_transceiver_from_track(
            track,
            Some(RTCRtpTransceiverInit {
                direction,
                streams: vec![t.stream_id.clone()],
                send_encodings: vec![],
            }),
        )
        .map_err(|e| rtc_err("cannot add track", e))?;
    pc.rtp_transceiver(tid)
        .and_then(|tr| tr.sender())
        .ok_or_else(|| NegotiationError::Rtc("transceiver without sender".into()))
}

/// After the answer: each planned `(index into tracks, SSRC, sender)` that got a section and
/// a codec of its track's format, as a [`SentTrack`]; and the sender of each such SSRC.
fn sent_tracks(
    pc: &mut RTCPeerConnection,
    planned: Vec<(usize, Ssrc, RTCRtpSenderId)>,
    tracks: &[OutTrack],
) -> (Vec<SentTrack>, HashMap<Ssrc, RTCRtpSenderId>) {
    let mut sent = Vec::new();
    let mut senders = HashMap::new();
    for (ti, ssrc, sender) in planned {
        let Some(track) = tracks.get(ti) else {
            continue;
        };
        let Some(mid) = mid_of_sender(pc, sender) else {
            continue;
        };
        let Some(mut s) = pc.rtp_sender(sender) else {
            continue;
        };
        let codecs: Vec<CodecSpec> = s
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .map(CodecSpec::from_rtc)
            .collect();
        let Some(pt) = codecs
            .iter()
            .find(|c| c.same_format(&track.codec))
            .map(|c| c.pt)
        else {
            continue;
        };
        senders.insert(ssrc, sender);
        sent.push(SentTrack {
            index: ti,
            mid: Mid(mid),
            kind: track.kind,
            ssrc,
            pt,
            codecs,
        });
    }
    (sent, senders)
}

/// What a loopback publisher sends back: one track per send-receive, non-rejected audio/video
/// section of the offer, in section order, in the section's preferred supported codec, under a
/// random SSRC that none of the offer's `a=ssrc` lines uses. A section with no supported codec
/// gets none (and, rtc pairing by kind, may take the track of a later section of its kind,
/// which then only receives: [`sent_tracks`] drops a track whose codec its section lacks).
fn loopback_tracks(
    sections: &[MediaSection],
    supported: &[CodecInfo],
    offer: &str,
) -> Vec<OutTrack> {
    let theirs: Vec<u32> = offer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=ssrc:"))
        .filter_map(|r| r.split([' ', ':']).next()?.parse().ok())
        .collect();
    let mut ours: Vec<u32> = Vec::new();
    let mut tracks = Vec::new();
    for s in sections {
        if s.rejected || s.direction != Direction::SendRecv {
            continue;
        }
        let Some(kind) = MediaKind::from_kind(s.kind) else {
            continue;
        };
        let Some(codec) = s
            .codecs
            .iter()
            .find(|c| c.is_media() && supported.iter().any(|r| same_codec(r, c)))
        else {
            continue;
        };
        let ssrc = loop {
            let n: u32 = rand::random();
            if n != 0 && !theirs.contains(&n) && !ours.contains(&n) {
                break n;
            }
        };
        ours.push(ssrc);
        let mid = s.mid.as_deref().unwrap_or("");
        tracks.push(OutTrack {
            kind,
            codec: CodecSpec::from_info(s.kind, codec),
            ssrc: Some(Ssrc(ssrc)),
            stream_id: LOOPBACK_STREAM.to_owned(),
            track_id: format!("{LOOPBACK_STREAM}-{mid}"),
        });
    }
    tracks
}

/// `a=msid` stream id of a loopback publisher's sent tracks.
const LOOPBACK_STREAM: &str = "roomd-loopback";

fn mid_of_sender(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<String> {
    let tids: Vec<_> = pc.get_transceivers().collect();
    for tid in tids {
        let tr = pc.rtp_transceiver(tid)?;
        if tr.sender() == Some(sender) {
            return tr.mid().clone();
        }
    }
    None
}

fn mid_of_receiver(pc: &mut RTCPeerConnection, receiver: RTCRtpReceiverId) -> Option<String> {
    let tids: Vec<_> = pc.get_transceivers().collect();
    for tid in tids {
        let tr = pc.rtp_transceiver(tid)?;
        if tr.receiver() == Some(receiver) {
            return tr.mid().clone();
        }
    }
    None
}

/// A host candidate for `addr` (UDP, component 1).
pub(crate) fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, NegotiationError> {
    candidate(addr, "udp", TcpType::Unspecified)
}

/// A passive ICE-TCP host candidate for `addr` (RFC 6544: the client connects to it; rtc gives
/// it the TCP local preference, below UDP's).
pub(crate) fn tcp_passive_candidate(
    addr: SocketAddr,
) -> Result<RTCIceCandidateInit, NegotiationError> {
    candidate(addr, "tcp", TcpType::Passive)
}

fn candidate(
    addr: SocketAddr,
    network: &str,
    tcp_type: TcpType,
) -> Result<RTCIceCandidateInit, NegotiationError> {
    let cand = CandidateHostConfig {
        base_config: CandidateConfig {
            network: network.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type,
    }
    .new_candidate_host()
    .map_err(|e| rtc_err("host candidate", e))?;
    RTCIceCandidate::from(&cand)
        .to_json()
        .map_err(|e| rtc_err("host candidate", e))
}

/// Parses and sanity-checks a client offer; returns it with the payload types no registered
/// codec takes removed (see [`prune_offer`]).
fn parse_offer(
    sdp: &str,
    supported: &[CodecInfo],
) -> Result<(RTCSessionDescription, Vec<MediaSection>), NegotiationError> {
    let bad = |m: &str| NegotiationError::InvalidOffer(m.to_owned());
    let parsed = RTCSessionDescription::offer(sdp.to_owned())
        .and_then(|d| d.unmarshal())
        .map_err(|_| bad("unparseable SDP"))?;
    let sections = media_sections(&parsed);
    let desc = RTCSessionDescription::offer(prune_offer(sdp, &sections, supported))
        .map_err(|_| bad("unparseable SDP"))?;
    if sections.is_empty() {
        return Err(bad("no media section"));
    }
    if sections
        .iter()
        .any(|s| s.mid.as_deref().unwrap_or("").is_empty())
    {
        return Err(bad("media section without mid"));
    }
    if ice_credentials(sdp).is_none() {
        return Err(bad("no ICE credentials"));
    }
    Ok((desc, sections))
}

/// Removes from each audio/video section of an offer the payload types we would not answer
/// anyway (RTX, RED, FEC, CN, DTMF, codecs or profiles not in `codecs.rs`): their `m=`
/// format, `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines. The answer is unchanged, but rtc's offer
/// processing, which rebuilds a section's codec map for every payload type (quadratic), has a
/// third of a browser offer's payload types left to look at. Payload types without an
/// `a=rtpmap` are kept; so is a section in which nothing would remain.
fn prune_offer(sdp: &str, sections: &[MediaSection], supported: &[CodecInfo]) -> String {
    let drop: Vec<Vec<u8>> = sections
        .iter()
        .map(|s| {
            let gone: Vec<u8> = s
                .codecs
                .iter()
                .filter(|c| !c.is_media() || !supported.iter().any(|r| same_codec(r, c)))
                .map(|c| c.payload_type)
                .collect();
            if gone.len() == s.codecs.len() {
                Vec::new()
            } else {
                gone
            }
        })
        .collect();
    if drop.iter().all(Vec::is_empty) {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len());
    let mut section: Option<usize> = None;
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("m=") {
            section = Some(section.map_or(0, |i| i + 1));
        }
        let gone = section
            .and_then(|i| drop.get(i))
            .map_or(&[][..], Vec::as_slice);
        if gone.is_empty() {
            out.push_str(line);
            continue;
        }
        if let Some(m) = body.strip_prefix("m=") {
            // m=<media> <port> <proto> <fmt> ...
            let mut parts = m.split(' ');
            let head: Vec<&str> = parts.by_ref().take(3).collect();
            let fmts: Vec<&str> = parts
                .filter(|f| f.parse::<u8>().map_or(true, |pt| !gone.contains(&pt)))
                .collect();
            out.push_str("m=");
            out.push_str(&head.join(" "));
            for f in fmts {
                out.push(' ');
                out.push_str(f);
            }
            out.push_str(&line[body.len()..]);
            continue;
        }
        let pt_of = |rest: &str| -> Option<u8> {
            rest.split([' ', '/']).next().and_then(|p| p.parse().ok())
        };
        let pt = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"]
            .iter()
            .find_map(|p| body.strip_prefix(p).and_then(pt_of));
        if pt.is_some_and(|pt| gone.contains(&pt)) {
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The first `a=ice-ufrag` / `a=ice-pwd` of an SDP (bundled: every section carries the same).
pub(crate) fn ice_credentials(sdp: &str) -> Option<(String, String)> {
    let mut ufrag = None;
    let mut pwd = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if ufrag.is_none() {
            ufrag = line.strip_prefix("a=ice-ufrag:").map(str::to_owned);
        }
        if pwd.is_none() {
            pwd = line.strip_prefix("a=ice-pwd:").map(str::to_owned);
        }
        if ufrag.is_some() && pwd.is_some() {
            break;
        }
    }
    Some((ufrag?, pwd?))
}

fn published_tracks(answer: &str) -> Vec<PublishedTrack> {
    let Ok(desc) = RTCSessionDescription::answer(answer.to_owned()) else {
        return Vec::new();
    };
    let Ok(parsed) = desc.unmarshal() else {
        return Vec::new();
    };
    media_sections(&parsed)
        .into_iter()
        .filter(|s| !s.rejected && s.direction.receives())
        .filter_map(|s| {
            let kind = MediaKind::from_kind(s.kind)?;
            Some(PublishedTrack {
                mid: Mid(s.mid.clone()?),
                kind,
                codecs: s
                    .codecs
                    .iter()
                    .map(|c| CodecSpec::from_info(s.kind, c))
                    .collect(),
            })
        })
        .collect()
}

/// Whether an answer has a data-channel section it did not reject.
fn accepts_data(answer: &str) -> bool {
    RTCSessionDescription::answer(answer.to_owned())
        .and_then(|d| d.unmarshal())
        .is_ok_and(|parsed| {
            media_sections(&parsed)
                .iter()
                .any(|s| s.kind == Kind::Application && !s.rejected)
        })
}

/// Connection state as the shard reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Negotiated, ICE/DTLS not up yet.
    Connecting,
    Connected,
    /// No STUN from the client for the disconnected timeout; may come back.
    Disconnected,
    /// Gave up (ICE/DTLS failure or connect timeout); the owner should remove the peer.
    Failed,
}

/// Where datagrams to a peer go: the shard socket to send from, the client's address and the
/// transport (UDP, or the client's ICE-TCP connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    /// The shard's *announced* local address of the selected pair.
    pub announced: SocketAddr,
    pub remote: SocketAddr,
    pub protocol: TransportProtocol,
}

/// One peer connection and the shard's bookkeeping about it.
pub(crate) struct Peer {
    pub(crate) role: Role,
    pub(crate) pc: RTCPeerConnection,
    pub(crate) state: PeerState,
    pub(crate) ufrag: String,
    pub(crate) pwd: String,
    /// First section's mid (trickled candidates name it).
    pub(crate) first_mid: Option<String>,
    /// Subscriber, loopback publisher: the rtc sender of each SSRC we send (for the
    /// `write_rtp` slow path).
    pub(crate) senders: HashMap<Ssrc, RTCRtpSenderId>,
    /// The selected path, once ICE selected one.
    pub(crate) path: Option<Path>,
    pub(crate) created: Instant,
    /// The peer's own deadline (rtc's next timeout, or the connect deadline).
    pub(crate) deadline: Option<Instant>,
    /// The earliest heap entry for this peer (entries at other instants are stale).
    pub(crate) heap_at: Option<Instant>,
    /// Fails the peer with [`FailReason::ConnectTimeout`] if not connected by then.
    pub(crate) connect_deadline: Option<Instant>,
    /// DTLS datagrams that came before ICE selected a pair, in order (at most
    /// [`EARLY_DTLS_MAX`]; full: the newest is dropped, the browser resends its flight).
    early_dtls: Vec<(TransportContext, BytesMut)>,
    /// Publisher: what its RTP takes instead of rtc's pipeline once it can.
    pub(crate) bypass: Option<Bypass>,
    /// Set at each `Connected`: a subscriber whose answer has no SCTP section. Its interceptor
    /// chain has no timer and DTLS is done, so rtc's only timer is the ICE agent's fixed
    /// 200 ms tick, which watches liveness over seconds: the shard ticks it less often
    /// (`Shard::after_input`).
    pub(crate) quiet: bool,
    /// When the shard last gave rtc a timeout.
    pub(crate) last_tick: Option<Instant>,
}

/// A publisher connection's SRTP bypass. The RTP of each SSRC rtc has opened a track for
/// (bound in the connection's [`Feedback`] chain) is opened by the shard with [`SrtpOpener`],
/// once the forwarder installed one, fed to the chain header only and handed to the forwarder
/// without crossing rtc's read pipeline. rtc keeps everything else: ICE, DTLS, SRTCP, data
/// channels, and the first packet of an SSRC (which opens its track).
pub(crate) struct Bypass {
    pub(crate) feedback: Feedback,
    pub(crate) opener: Option<SrtpOpener>,
    /// Every SSRC rtc opened RTP on.
    streams: Vec<RtcStream>,
}

/// An SSRC rtc opened RTP on.
struct RtcStream {
    ssrc: Ssrc,
    /// The newest sequence number rtc opened (it opens at least the first packet): where the
    /// opener's rollover estimate starts.
    last_seq: u16,
    /// rtc opened a track for it (and bound it in the feedback chain): only then is it bypassed.
    track: bool,
}

impl Bypass {
    /// Notes that rtc opened the RTP packet `data` (clear header).
    pub(crate) fn rtc_opened(&mut self, data: &[u8]) {
        let ssrc = Ssrc(u32::from_be_bytes([data[8], data[9], data[10], data[11]]));
        let seq = u16::from_be_bytes([data[2], data[3]]);
        match self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            Some(s) => s.last_seq = seq,
            None => self.streams.push(RtcStream {
                ssrc,
                last_seq: seq,
                track: false,
            }),
        }
    }

    /// rtc opened a track for `ssrc` (on the packet [`rtc_opened`](Self::rtc_opened) noted).
    fn track_opened(&mut self, ssrc: Ssrc) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == ssrc) {
            s.track = true;
        }
    }

    /// For an SSRC that is bypassed, the newest sequence number rtc opened on it.
    pub(crate) fn bypassed(&self, ssrc: Ssrc) -> Option<u16> {
        self.streams
            .iter()
            .find(|s| s.ssrc == ssrc && s.track)
            .map(|s| s.last_seq)
    }
}

/// Capacity of [`Peer::hold_early_dtls`]: a browser's first flight is one ClientHello,
/// sometimes sent on two candidate pairs; a few more cover a retransmission.
pub(crate) const EARLY_DTLS_MAX: usize = 4;

/// Whether `data` is a DTLS record (RFC 7983 demultiplexing: first byte 20..=63).
pub(crate) fn is_dtls(data: &[u8]) -> bool {
    matches!(data.first(), Some(20..=63))
}

impl Peer {
    fn new(
        role: Role,
        pc: RTCPeerConnection,
        answer: &str,
        now: Instant,
    ) -> Result<Self, NegotiationError> {
        let (ufrag, pwd) = ice_credentials(answer)
            .ok_or_else(|| NegotiationError::Rtc("answer without ICE credentials".into()))?;
        let first_mid = answer
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("a=mid:").map(str::to_owned));
        Ok(Self {
            role,
            pc,
            state: PeerState::Connecting,
            ufrag,
            pwd,
            first_mid,
            senders: HashMap::new(),
            path: None,
            created: now,
            deadline: None,
            heap_at: None,
            connect_deadline: None,
            early_dtls: Vec::new(),
            bypass: None,
            quiet: false,
            last_tick: None,
        })
    }

    /// Keeps a DTLS datagram that came before ICE selected a pair, for
    /// [`take_early_dtls`](Self::take_early_dtls) once it has; dropped when
    /// [`EARLY_DTLS_MAX`] are held already.
    pub(crate) fn hold_early_dtls(&mut self, transport: TransportContext, data: &[u8]) {
        if self.early_dtls.len() < EARLY_DTLS_MAX {
            self.early_dtls.push((transport, BytesMut::from(data)));
        }
    }

    /// The held DTLS datagrams, oldest first (the peer keeps none after).
    pub(crate) fn take_early_dtls(&mut self) -> Vec<(TransportContext, BytesMut)> {
        std::mem::take(&mut self.early_dtls)
    }

    /// The selected candidate pair, from rtc (walks to the ICE transport through any
    /// negotiated sender/receiver).
    pub(crate) fn selected_path(&mut self) -> Option<Path> {
        let tids: Vec<_> = self.pc.get_transceivers().collect();
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for tid in tids {
            if let Some(tr) = self.pc.rtp_transceiver(tid) {
                if tr.mid().is_none() {
                    continue;
                }
                if let Some(r) = tr.receiver() {
                    receivers.push(r);
                } else if let Some(s) = tr.sender() {
                    senders.push(s);
                }
            }
        }
        let pair = if let Some(r) = receivers.first() {
            self.pc
                .rtp_receiver(*r)?
                .transport()?
                .ice_transport()
                .get_selected_candidate_pair()
        } else if let Some(s) = senders.first() {
            self.pc
                .rtp_sender(*s)?
                .transport()?
                .ice_transport()
                .get_selected_candidate_pair()
        } else {
            self.pc
                .sctp()?
                .transport()
                .ice_transport()
                .get_selected_candidate_pair()
        }?;
        let sock = |c: &RTCIceCandidate| -> Option<SocketAddr> {
            Some(SocketAddr::new(c.address.parse().ok()?, c.port))
        };
        let protocol = if pair.local().protocol == RTCIceProtocol::Tcp {
            TransportProtocol::TCP
        } else {
            TransportProtocol::UDP
        };
        Some(Path {
            announced: sock(pair.local())?,
            remote: sock(pair.remote())?,
            protocol,
        })
    }

    /// Moves everything rtc has queued (datagrams, state changes, received media and data
    /// messages) into the shard's queues. `local_of` maps an announced address to the socket
    /// address to send from.
    pub(crate) fn drain(
        &mut self,
        id: PeerId,
        transmits: &mut VecDeque<Transmit>,
        events: &mut VecDeque<ShardEvent>,
        local_of: &dyn Fn(SocketAddr) -> SocketAddr,
    ) {
        while let Some(msg) = self.pc.poll_write() {
            transmits.push_back(Transmit {
                local: local_of(msg.transport.local_addr),
                dest: msg.transport.peer_addr,
                protocol: msg.transport.transport_protocol,
                bytes: msg.message,
            });
        }
        while let Some(ev) = self.pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                    RTCPeerConnectionState::Connected => {
                        self.state = PeerState::Connected;
                        self.connect_deadline = None;
                        self.quiet = self.role == Role::Subscriber
                            && self
                                .pc
                                .local_description()
                                .is_some_and(|d| !d.sdp.contains("m=application"));
                        self.path = self.selected_path().or(self.path);
                        events.push_back(ShardEvent::Connected { peer: id });
                    }
                    RTCPeerConnectionState::Disconnected if self.state != PeerState::Failed => {
                        self.state = PeerState::Disconnected;
                        events.push_back(ShardEvent::Disconnected { peer: id });
                    }
                    RTCPeerConnectionState::Failed if self.state != PeerState::Failed => {
                        self.state = PeerState::Failed;
                        self.connect_deadline = None;
                        events.push_back(ShardEvent::Failed {
                            peer: id,
                            reason: FailReason::Transport,
                        });
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(c)) => {
                    let label = self
                        .pc
                        .data_channel(c)
                        .map(|dc| dc.label().to_owned())
                        .unwrap_or_default();
                    events.push_back(ShardEvent::ChannelOpen {
                        peer: id,
                        channel: ChannelId(c),
                        label,
                    });
                }
                RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(c)) => {
                    events.push_back(ShardEvent::ChannelClose {
                        peer: id,
                        channel: ChannelId(c),
                    });
                }
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    let mid = mid_of_receiver(&mut self.pc, init.receiver_id);
                    let kind = self.kind_of_mid(mid.as_deref());
                    if let Some(b) = self.bypass.as_mut() {
                        b.track_opened(Ssrc(init.ssrc));
                    }
                    events.push_back(ShardEvent::TrackOpen {
                        peer: id,
                        mid: mid.map(Mid),
                        kind,
                        ssrc: Ssrc(init.ssrc),
                        rid: init.rid,
                    });
                }
                _ => {}
            }
        }
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(_, packet) => {
                    events.push_back(ShardEvent::RtpIn { peer: id, packet });
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    events.push_back(ShardEvent::RtcpIn { peer: id, packets });
                }
                RTCMessage::DataChannelMessage(c, m) => {
                    events.push_back(ShardEvent::DataIn {
                        peer: id,
                        channel: ChannelId(c),
                        text: m.is_string,
                        data: m.data,
                    });
                }
                _ => {}
            }
        }
    }

    fn kind_of_mid(&self, mid: Option<&str>) -> Option<MediaKind> {
        let mid = mid?;
        let sdp = self.pc.local_description()?.sdp;
        let mut kind = None;
        for line in sdp.lines() {
            if let Some(m) = line.strip_prefix("m=") {
                kind = if m.starts_with("audio") {
                    Some(MediaKind::Audio)
                } else if m.starts_with("video") {
                    Some(MediaKind::Video)
                } else {
                    None
                };
            } else if line.trim_end().strip_prefix("a=mid:") == Some(mid) {
                return kind;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_spread_over_buckets_whichever_bits_differ() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<PeerIdHasher>::default();
        // A table of 64 buckets takes the hash's low 6 bits: ids counting in the low bits and
        // ids counting in the high bits must both fill most of them.
        for shift in [0u32, 20, 48] {
            let buckets: std::collections::HashSet<u64> = (0..64u64)
                .map(|i| build.hash_one(PeerId(i << shift)) & 63)
                .collect();
            assert!(
                buckets.len() >= 32,
                "ids << {shift}: {} buckets",
                buckets.len()
            );
        }
        let mut map = PeerMap::default();
        for i in 0..1000u64 {
            map.insert(PeerId(i << 32), i);
        }
        assert!((0..1000u64).all(|i| map.get(&PeerId(i << 32)) == Some(&i)));
    }

    #[test]
    fn ice_credentials_are_read_from_the_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123\r\n";
        assert_eq!(
            ice_credentials(sdp),
            Some(("abcd".into(), "0123456789abcdef0123".into()))
        );
        assert_eq!(ice_credentials("v=0\r\na=ice-ufrag:x\r\n"), None);
    }

    #[test]
    fn offers_lose_only_what_we_would_not_answer() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 0 13\r\na=mid:0\r\n\
a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10\r\n\
a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:13 CN/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 35\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:35 H265/90000\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
a=mid:2\r\n";
        let parsed = RTCSessionDescription::offer(offer.to_owned())
            .and_then(|d| d.unmarshal())
            .expect("parse");
        let pruned = prune_offer(offer, &media_sections(&parsed), &supported_codecs());
        assert_eq!(
            pruned,
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:0\r\n\
a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack pli\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
a=mid:2\r\n"
        );
    }

    #[test]
    fn host_candidates_name_the_announced_address() {
        let c = host_candidate("192.0.2.1:3478".parse().expect("addr")).expect("candidate");
        assert!(c.candidate.starts_with("candidate:"), "{}", c.candidate);
        assert!(
            c.candidate.contains(" 192.0.2.1 3478 typ host"),
            "{}",
            c.candidate
        );
        let c6 = host_candidate("[2001:db8::1]:3478".parse().expect("addr")).expect("candidate");
        assert!(
            c6.candidate.contains(" 2001:db8::1 3478 typ host"),
            "{}",
            c6.candidate
        );
        let t = tcp_passive_candidate("192.0.2.1:3478".parse().expect("addr")).expect("candidate");
        assert!(
            t.candidate.contains(" tcp ")
                && t.candidate
                    .ends_with(" 192.0.2.1 3478 typ host tcptype passive"),
            "{}",
            t.candidate
        );
    }
}
