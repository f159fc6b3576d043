//! Test support (feature `testing`): a browser-like webrtc-rs *client* peer, synthetic RTP
//! senders and receivers, and bounded waits. Shared by this crate's tests, roomd's end-to-end
//! tests and the load tools, so there is one implementation of "a browser" in Rust.
//!
//! Not part of the server: nothing here is compiled without the feature. Helpers panic with
//! a message on failure, as test code should.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::engine::peer::RtcpToApp;
use crate::{IceCandidate, MediaRouter};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder,
};

pub mod fuzz;

pub use rtc::rtp_transceiver::rtp_sender::RtpCodecKind as Kind;
pub use webrtc::data_channel::DataChannel as Channel;

/// Generous bound for anything network-related on a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(15);

/// Codec numbering of a client ("browser").
#[derive(Clone, Copy, Debug)]
pub struct Numbering {
    pub vp8: u8,
    pub opus: u8,
}

/// Chrome-like payload types.
pub const CHROME: Numbering = Numbering { vp8: 96, opus: 111 };
/// Firefox-like payload types.
pub const FIREFOX: Numbering = Numbering {
    vp8: 120,
    opus: 109,
};

pub const VIDEO_SSRC: u32 = 0x1111_2222;
pub const AUDIO_SSRC: u32 = 0x3333_4444;

// ---------------------------------------------------------------------------------------------
// Client-side interceptor (the shard's `RtcpToApp`, filtered): PLI/FIR about our sent tracks
// reach the application.
// ---------------------------------------------------------------------------------------------

fn is_kf(p: &dyn rtc::rtcp::Packet) -> bool {
    p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
}

// ---------------------------------------------------------------------------------------------
// Client peer
// ---------------------------------------------------------------------------------------------

struct ClientHandler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: mpsc::Sender<Arc<dyn TrackRemote>>,
    channels: mpsc::Sender<Arc<dyn DataChannel>>,
    candidates: mpsc::Sender<RTCIceCandidateInit>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.candidates.try_send(init);
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.try_send(track);
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.channels.try_send(dc);
    }
}

/// A browser-like peer.
pub struct Client {
    pub pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub tracks: mpsc::Receiver<Arc<dyn TrackRemote>>,
    pub remote_channels: mpsc::Receiver<Arc<dyn DataChannel>>,
    pub candidates: mpsc::Receiver<RTCIceCandidateInit>,
    pub numbering: Numbering,
}

fn codec(kind: RtpCodecKind, n: Numbering) -> RTCRtpCodecParameters {
    match kind {
        RtpCodecKind::Audio => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "audio/opus".into(),
                clock_rate: 48000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            payload_type: n.opus,
        },
        _ => RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: "video/VP8".into(),
                clock_rate: 90000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            payload_type: n.vp8,
        },
    }
}

impl Client {
    /// A client on UDP (127.0.0.1).
    pub async fn new(numbering: Numbering) -> Client {
        Self::build(numbering, vec!["127.0.0.1:0"], vec![]).await
    }

    /// A client on UDP over IPv6 only (::1).
    pub async fn ipv6(numbering: Numbering) -> Client {
        Self::build(numbering, vec!["[::1]:0"], vec![]).await
    }

    /// A client without any UDP socket: its only way to the router is ICE-TCP (an active
    /// connection to the router's passive TCP candidate).
    pub async fn tcp_only(numbering: Numbering) -> Client {
        Self::build(numbering, vec![], vec!["127.0.0.1:0"]).await
    }

    /// [`Client::tcp_only`] over IPv6 (::1).
    pub async fn tcp_only_ipv6(numbering: Numbering) -> Client {
        Self::build(numbering, vec![], vec!["[::1]:0"]).await
    }

    async fn build(numbering: Numbering, udp: Vec<&'static str>, tcp: Vec<&'static str>) -> Client {
        let mut me = MediaEngine::default();
        me.register_codec(codec(RtpCodecKind::Video, numbering), RtpCodecKind::Video)
            .expect("register VP8 (static codec description)");
        me.register_codec(codec(RtpCodecKind::Audio, numbering), RtpCodecKind::Audio)
            .expect("register opus (static codec description)");
        let registry = register_default_interceptors(Registry::new(), &mut me)
            .expect("default interceptors build for a registered media engine")
            .with(14_000usize.into(), RtcpToApp::only(is_kf));
        let se = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .build();
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (tracks_tx, tracks) = mpsc::channel(16);
        let (ch_tx, remote_channels) = mpsc::channel(16);
        let (cand_tx, candidates) = mpsc::channel(64);
        let handler = Arc::new(ClientHandler {
            gathered: gathered_tx,
            state: state_tx,
            tracks: tracks_tx,
            channels: ch_tx,
            candidates: cand_tx,
        });
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(se)
            .with_handler(handler)
            .with_udp_addrs(udp)
            .with_tcp_addrs(tcp)
            .build()
            .await
            .expect("client peer connection builds on loopback");
        Client {
            pc: Arc::new(pc),
            gathered,
            state,
            tracks,
            remote_channels,
            candidates,
            numbering,
        }
    }

    /// Adds a local track we send (direction sendonly unless `sendrecv`).
    pub async fn add_send_track(
        &self,
        kind: RtpCodecKind,
        ssrc: u32,
        sendrecv: bool,
    ) -> Arc<TrackLocalStaticRTP> {
        let c = codec(kind, self.numbering).rtp_codec;
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "client-stream".into(),
            format!("client-{kind}"),
            format!("client-{kind}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: c,
                ..Default::default()
            }],
        )));
        let direction = if sendrecv {
            RTCRtpTransceiverDirection::Sendrecv
        } else {
            RTCRtpTransceiverDirection::Sendonly
        };
        self.pc
            .add_transceiver_from_track(
                Arc::clone(&track) as Arc<dyn TrackLocal>,
                Some(RTCRtpTransceiverInit {
                    direction,
                    streams: vec!["client-stream".into()],
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("client adds its send track");
        track
    }

    /// Adds a receive-only section of `kind`.
    pub async fn add_recv(&self, kind: RtpCodecKind) {
        self.pc
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("client adds a recvonly transceiver");
    }

    /// Creates the offer; with `wait_gathering` it contains all candidates (non-trickle).
    pub async fn offer(&self, wait_gathering: bool) -> String {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .expect("client creates offer");
        self.pc
            .set_local_description(offer)
            .await
            .expect("client applies its offer");
        if wait_gathering {
            let mut g = self.gathered.clone();
            tokio::time::timeout(WAIT, g.wait_for(|d| *d))
                .await
                .expect("client gathering completes in time")
                .expect("gathering watch open");
        }
        self.pc
            .local_description()
            .await
            .expect("client has a local description")
            .sdp
    }

    pub async fn apply_answer(&self, sdp: String) {
        let desc = RTCSessionDescription::answer(sdp).expect("router answer is valid SDP");
        self.pc
            .set_remote_description(desc)
            .await
            .expect("client applies the router's answer");
    }

    /// Waits until connected; returns how long it took.
    pub async fn connected(&self) -> Duration {
        let t0 = Instant::now();
        let mut s = self.state.clone();
        tokio::time::timeout(
            WAIT,
            s.wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .expect("client connects in time")
        .expect("state watch open");
        t0.elapsed()
    }

    /// Next remote track (bounded wait).
    pub async fn next_track(&mut self) -> Arc<dyn TrackRemote> {
        tokio::time::timeout(WAIT, self.tracks.recv())
            .await
            .expect("a remote track arrives in time")
            .expect("track channel open")
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// Builds a synthetic VP8-shaped RTP packet (for benches and tests): version 2, the given
/// sequence number, timestamp `seq * 3000`, SSRC and payload type, and `payload_len` bytes of
/// payload: a VP8 key-frame start (`10 00`), then `seq` big-endian (a marker the receiver can
/// check), then 0xA5.
pub fn synthetic_packet(
    seq: u16,
    ssrc: u32,
    payload_type: u8,
    payload_len: usize,
) -> rtc::rtp::Packet {
    let mut payload = vec![0xA5u8; payload_len.max(4)];
    // A VP8 payload descriptor starting partition 0 (0x10) and a key-frame payload header
    // (bit 0 clear): the engine, which holds video back until a keyframe, forwards every one.
    payload[..2].copy_from_slice(&[0x10, 0x00]);
    payload[2..4].copy_from_slice(&seq.to_be_bytes());
    rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type,
            sequence_number: seq,
            timestamp: u32::from(seq).wrapping_mul(3000),
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

/// [`synthetic_packet`] as a VP8 delta frame (the payload header's inverse key-frame bit set):
/// nothing in a stream of these answers a keyframe request.
pub fn synthetic_delta_packet(
    seq: u16,
    ssrc: u32,
    payload_type: u8,
    payload_len: usize,
) -> rtc::rtp::Packet {
    let mut p = synthetic_packet(seq, ssrc, payload_type, payload_len);
    let mut payload = p.payload.to_vec();
    payload[1] = 0x01;
    p.payload = Bytes::from(payload);
    p
}

/// Sends `n` synthetic packets on `track` (seq `start..start+n`), paced `every` apart.
pub async fn send_packets(
    track: &TrackLocalStaticRTP,
    ssrc: u32,
    pt: u8,
    start: u16,
    n: u16,
    every: Duration,
) {
    send_each(track, start, n, every, |seq| {
        synthetic_packet(seq, ssrc, pt, 400)
    })
    .await;
}

/// [`send_packets`] with delta frames ([`synthetic_delta_packet`]).
pub async fn send_delta_packets(
    track: &TrackLocalStaticRTP,
    ssrc: u32,
    pt: u8,
    start: u16,
    n: u16,
    every: Duration,
) {
    send_each(track, start, n, every, |seq| {
        synthetic_delta_packet(seq, ssrc, pt, 400)
    })
    .await;
}

async fn send_each(
    track: &TrackLocalStaticRTP,
    start: u16,
    n: u16,
    every: Duration,
    packet: impl Fn(u16) -> rtc::rtp::Packet,
) {
    let mut ticker = tokio::time::interval(every);
    for i in 0..n {
        ticker.tick().await;
        let p = packet(start.wrapping_add(i));
        track.write_rtp(p).await.expect("client track is bound");
    }
}

/// What a reader saw on one remote track.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub packets: u64,
    /// Packets whose payload did not match the synthetic pattern for their sequence number.
    pub corrupt: u64,
    pub payload_types: Vec<u8>,
    pub ssrcs: Vec<u32>,
}

/// Spawns a reader counting packets on `track`; the watch updates per packet.
pub fn read_track(track: Arc<dyn TrackRemote>) -> watch::Receiver<Seen> {
    let (tx, rx) = watch::channel(Seen::default());
    tokio::spawn(async move {
        // An SFU may renumber a subscriber's packets (its own sequence space): the payload's
        // sequence number must then differ from the header's by the same offset throughout.
        let mut offset: Option<u16> = None;
        while let Some(ev) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                let sent = payload_seq(&p.payload);
                let shift = sent.map(|s| s.wrapping_sub(p.header.sequence_number));
                let expected = offset.get_or_insert(shift.unwrap_or(0));
                let ok = shift == Some(*expected)
                    && check_payload(&p.payload, p.header.sequence_number.wrapping_add(*expected));
                tx.send_modify(|s| {
                    s.packets += 1;
                    if !ok {
                        s.corrupt += 1;
                    }
                    if !s.payload_types.contains(&p.header.payload_type) {
                        s.payload_types.push(p.header.payload_type);
                    }
                    if !s.ssrcs.contains(&p.header.ssrc) {
                        s.ssrcs.push(p.header.ssrc);
                    }
                });
            }
        }
    });
    rx
}

/// The sequence number a synthetic payload carries.
fn payload_seq(payload: &Bytes) -> Option<u16> {
    Some(u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]))
}

/// The synthetic payload ([`synthetic_packet`]): 400 bytes, a VP8 key-frame
/// start (`10 00`), seq big-endian, then 0xA5.
pub fn check_payload(payload: &Bytes, seq: u16) -> bool {
    payload.len() == 400
        && payload[..2] == [0x10, 0x00]
        && payload[2..4] == seq.to_be_bytes()
        && payload[4..].iter().all(|b| *b == 0xA5)
}

/// Waits (bounded) until the reader saw at least `n` packets; returns the last snapshot.
pub async fn wait_packets(rx: &mut watch::Receiver<Seen>, n: u64, within: Duration) -> Seen {
    let _ = tokio::time::timeout(within, rx.wait_for(|s| s.packets >= n)).await;
    rx.borrow().clone()
}

/// Counts keyframe requests arriving at a publisher's sent track.
pub fn count_keyframe_requests(track: Arc<TrackLocalStaticRTP>) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        while let Some(ev) = track.poll().await {
            if let TrackLocalEvent::OnRtcpPacket(pkts) = ev {
                let n = pkts.iter().filter(|p| is_kf(p.as_ref())).count() as u64;
                if n > 0 {
                    tx.send_modify(|c| *c += n);
                }
            }
        }
    });
    rx
}

/// Collects text messages from a data channel.
pub fn read_channel(dc: Arc<dyn DataChannel>) -> (watch::Receiver<bool>, mpsc::Receiver<String>) {
    let (open_tx, open_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(ev) = dc.poll().await {
            match ev {
                DataChannelEvent::OnOpen => {
                    open_tx.send_replace(true);
                }
                DataChannelEvent::OnMessage(m) => {
                    let _ = tx.try_send(String::from_utf8_lossy(&m.data).into_owned());
                }
                DataChannelEvent::OnClose => break,
                _ => {}
            }
        }
    });
    (open_rx, rx)
}

/// Converts a router candidate event into a client candidate.
pub fn to_init(c: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: None,
        url: None,
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Asserts that the router holds no live object (endpoints, the shards' peer connections).
/// Call it after `release` returned: the shards' counters are fresh then.
pub fn assert_idle(router: &MediaRouter) {
    let s = router.stats();
    assert_eq!(
        (
            s.peer_connections,
            s.publishers,
            s.subscribers,
            s.shard_peers
        ),
        (0, 0, 0, 0),
        "router not idle: {s:?}"
    );
}
