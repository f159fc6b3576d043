//! Harness for the v2 engine tests (`tests/shard.rs`, `tests/engine_e2e.rs`): sans-IO rtc client
//! peer connections (full-ICE offerers on their own address, as a browser), the offer/answer
//! plumbing, and an in-memory network with a fixed one-way latency and simulated time.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use media::engine::peer::{CodecSpec, MediaKind, OutTrack};
use media::engine::wire::{Pt, Ssrc};
use rtc::crypto::SignatureScheme;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

/// The shard's (announced) address in the simulations.
pub const SHARD: &str = "192.0.2.1:3478";
/// One-way latency of the in-memory network.
pub const LATENCY: Duration = Duration::from_millis(10);
/// The SSRC the subscribers' video leg is pinned to ([`out_tracks`]).
pub const LEG_VIDEO: u32 = 0x5eed_0001;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// A non-blocking UDP socket on 127.0.0.1 (any port) and its address.
pub fn local_udp() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let a = sock.local_addr().expect("addr");
    (sock, a)
}

pub fn certificate() -> RTCCertificate {
    let provider = rtc::crypto::default_provider().expect("crypto");
    RTCCertificate::generate(
        provider.crypto(),
        SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["client".to_owned()]).expect("params"),
    )
    .expect("certificate")
}

pub fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

pub fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// What a client peer does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Sends audio + video (sendonly).
    Publisher,
    /// Receives audio + video (recvonly).
    Subscriber,
}

/// A client peer connection: default codecs, a short ICE check interval (as a browser), no
/// mDNS, and `interceptors` if given (rtc's default chain otherwise).
pub fn client_pc(
    cert: &RTCCertificate,
    interceptors: Option<Registry>,
    now: Instant,
) -> RTCPeerConnection {
    let mut me = MediaEngine::default();
    me.register_default_codecs().expect("codecs");
    let se = SettingEngineBuilder::new()
        .with_ice_connection_attempts(Some(Duration::from_millis(20)), None)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut builder = RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![cert.clone()])
                .build(),
        )
        .with_setting_engine(se)
        .with_media_engine(me);
    if let Some(registry) = interceptors {
        builder = builder.with_interceptor_registry(registry);
    }
    builder.build(now).expect("client pc")
}

/// A sendonly transceiver per `(kind, codec, ssrc)`, all in stream `stream_id`; returns each
/// one's kind, sender and SSRC, in order.
pub fn add_send_tracks(
    pc: &mut RTCPeerConnection,
    stream_id: &str,
    tracks: [(RtpCodecKind, RTCRtpCodec, u32); 2],
) -> Vec<(RtpCodecKind, RTCRtpSenderId, u32)> {
    add_tracks(pc, stream_id, tracks, RTCRtpTransceiverDirection::Sendonly)
}

/// As [`add_send_tracks`], sendrecv (a loopback publisher: it also receives on each).
pub fn add_sendrecv_tracks(
    pc: &mut RTCPeerConnection,
    stream_id: &str,
    tracks: [(RtpCodecKind, RTCRtpCodec, u32); 2],
) -> Vec<(RtpCodecKind, RTCRtpSenderId, u32)> {
    add_tracks(pc, stream_id, tracks, RTCRtpTransceiverDirection::Sendrecv)
}

fn add_tracks(
    pc: &mut RTCPeerConnection,
    stream_id: &str,
    tracks: [(RtpCodecKind, RTCRtpCodec, u32); 2],
    direction: RTCRtpTransceiverDirection,
) -> Vec<(RtpCodecKind, RTCRtpSenderId, u32)> {
    let mut senders = Vec::new();
    for (k, codec, s) in tracks {
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            format!("{k}-{s}"),
            format!("{k}"),
            k,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(s),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        let tid = pc
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .expect("transceiver");
        let sender = pc
            .rtp_transceiver(tid)
            .and_then(|t| t.sender())
            .expect("sender");
        senders.push((k, sender, s));
    }
    senders
}

/// Recvonly audio and video transceivers; returns their receivers (audio, video).
pub fn add_recv_transceivers(pc: &mut RTCPeerConnection) -> Vec<RTCRtpReceiverId> {
    let mut receivers = Vec::new();
    for k in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        let tid = pc
            .add_transceiver_from_kind(
                k,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .expect("transceiver");
        receivers.push(
            pc.rtp_transceiver(tid)
                .and_then(|t| t.receiver())
                .expect("receiver"),
        );
    }
    receivers
}

/// A host candidate on `addr`, then the offer, set as the local description; returns its SDP.
pub fn offer_from(pc: &mut RTCPeerConnection, addr: SocketAddr, now: Instant) -> String {
    let cand = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .expect("candidate");
    pc.add_local_candidate(RTCIceCandidate::from(&cand).to_json().expect("json"))
        .expect("local candidate");
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(now, offer.clone())
        .expect("set local");
    offer.sdp
}

/// An ICE restart (new credentials): the offer, set as the local description; returns its SDP.
pub fn ice_restart_offer(pc: &mut RTCPeerConnection, now: Instant) -> String {
    pc.restart_ice();
    let offer = pc.create_offer(None).expect("restart offer");
    pc.set_local_description(now, offer.clone())
        .expect("set local");
    offer.sdp
}

pub fn apply_answer(pc: &mut RTCPeerConnection, sdp: String, now: Instant) {
    pc.set_remote_description(now, RTCSessionDescription::answer(sdp).expect("answer"))
        .expect("apply answer");
}

/// The payload type negotiated for `mime` on `sender`.
pub fn negotiated_pt(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId, mime: &str) -> u8 {
    pc.rtp_sender(sender)
        .expect("sender")
        .get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .expect("negotiated")
}

/// An RTP version 2 header.
pub fn rtp_header(
    payload_type: u8,
    sequence_number: u16,
    timestamp: u32,
    ssrc: u32,
    marker: bool,
) -> rtc::rtp::header::Header {
    rtc::rtp::header::Header {
        version: 2,
        payload_type,
        sequence_number,
        timestamp,
        ssrc,
        marker,
        ..Default::default()
    }
}

/// Writes one RTP packet on `sender`.
pub fn write_rtp(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    now: Instant,
    header: rtc::rtp::header::Header,
    payload: Bytes,
) {
    pc.rtp_sender(sender)
        .expect("sender")
        .write_rtp(now, rtc::rtp::packet::Packet { header, payload })
        .expect("write_rtp");
}

/// Hands the client a datagram that arrived on `local` from `from`.
pub fn deliver(
    pc: &mut RTCPeerConnection,
    now: Instant,
    local: SocketAddr,
    from: SocketAddr,
    bytes: &[u8],
) {
    let _ = pc.handle_read(TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: local,
            peer_addr: from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message: BytesMut::from(bytes),
    });
}

/// Everything the client queued to send: (destination, bytes).
pub fn take_writes(pc: &mut RTCPeerConnection) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(m) = pc.poll_write() {
        out.push((m.transport.peer_addr, m.message.to_vec()));
    }
    out
}

/// A datagram in flight.
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// The in-memory network: datagrams delivered [`LATENCY`] after they were sent, in order.
#[derive(Default)]
pub struct Wire {
    /// (deliver at, sequence) → datagram
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, Datagram>,
    seq: u64,
}

impl Wire {
    pub fn send(&mut self, now: Instant, d: Datagram) {
        self.seq += 1;
        self.in_flight.insert(self.seq, d);
        self.queue.push(Reverse((now + LATENCY, self.seq)));
    }

    /// The time to jump to from `now`: the next delivery or the earliest of `deadlines`
    /// (100 ms on if there is none), and never less than 100 µs on, so that a stale deadline
    /// cannot spin the simulation.
    pub fn next_time(
        &self,
        now: Instant,
        deadlines: impl IntoIterator<Item = Option<Instant>>,
    ) -> Instant {
        let next = deadlines
            .into_iter()
            .flatten()
            .chain(self.queue.peek().map(|Reverse((t, _))| *t))
            .min();
        let next = next.unwrap_or(now + Duration::from_millis(100));
        next.max(now + Duration::from_micros(100))
    }

    /// The next datagram due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        while let Some(&Reverse((t, seq))) = self.queue.peek() {
            if t > now {
                return None;
            }
            self.queue.pop();
            if let Some(d) = self.in_flight.remove(&seq) {
                return Some(d);
            }
        }
        None
    }
}

/// A simulation advanced step by step in simulated time.
pub trait Simulated {
    fn now(&self) -> Instant;
    /// One step: jump to the next delivery or timer, deliver / fire everything due.
    fn step(&mut self);

    fn run_for(&mut self, d: Duration) {
        let end = self.now() + d;
        while self.now() < end {
            self.step();
        }
    }

    /// Steps until `done` or `limit` of simulated time passed; returns whether `done` held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool
    where
        Self: Sized,
    {
        let end = self.now() + limit;
        while self.now() < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}

/// What a subscriber is sent: Opus at 111 and VP8 at 96, the video SSRC pinned to
/// [`LEG_VIDEO`].
pub fn out_tracks() -> Vec<OutTrack> {
    vec![
        OutTrack {
            kind: MediaKind::Audio,
            codec: CodecSpec {
                pt: Pt(111),
                mime: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                fmtp: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: vec![],
            },
            ssrc: None,
            stream_id: "pub".to_owned(),
            track_id: "pub-audio".to_owned(),
        },
        OutTrack {
            kind: MediaKind::Video,
            codec: CodecSpec {
                pt: Pt(96),
                mime: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                fmtp: String::new(),
                rtcp_feedback: vec![],
            },
            ssrc: Some(Ssrc(LEG_VIDEO)),
            stream_id: "pub".to_owned(),
            track_id: "pub-video".to_owned(),
        },
    ]
}

/// CPU time of the calling thread so far (Linux, 10 ms resolution: aggregate many calls).
pub fn thread_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces): utime is the 14th field
            // of the line, stime the 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
