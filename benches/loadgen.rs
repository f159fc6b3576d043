//! End-to-end load generator: sans-IO webrtc-rs (`rtc` 0.21.1) peers on one pinned thread,
//! speaking the Kurento room protocol to a release `roomd` child process over WebSocket
//! (joinRoom / publishVideo / receiveVideoFrom / onIceCandidate / iceCandidate), or the Janus
//! VideoRoom API to a Janus child process, with synthetic VP8 + Opus-sized media on 127.0.0.1.
//! Janus (libnice) never gathers a loopback candidate, so with `--server janus|both` (root and
//! iproute2 needed) the run creates a network namespace `roomd-janus-<pid>` joined by a veth pair
//! (10.213.0.1 host end, 10.213.0.2 inside), starts Janus in it with `ip netns exec`, and binds
//! the Janus peers to 10.213.0.1; roomd stays on 127.0.0.1. The namespace (and with it the veth)
//! is deleted at the end, on error and on Ctrl-C; namespaces of dead earlier runs are reaped.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo bench --bench loadgen -- [options]
//!   --scenario LIST   comma list of 1x2, 10x4, 4x10, 1x25, ramp, or `all` (default all)
//!   --suite S         gcm | cm | both (default gcm): the only SRTP profile the peers offer
//!   --server S        roomd | janus | both (default roomd)
//!   --seconds N       measured window per scenario (default 5; plus ~2 s warm-up)
//!   --ramp LIST       viewer counts for `ramp` (default 10,25,50,100,200,300,400,500,600)
//!   --no-reference    skip the reference-forwarder runs
//!   --full-every N    1 subscriber peer connection in N (default 8) takes received SRTP through
//!                     rtc (decrypt, payload check, latency); the others count packets by their
//!                     clear RTP headers once connected (see `light_receive`); 1 = all through rtc
//!   --rounds N        run each conference scenario N times (default 1), each round right after
//!                     a reference run of its own fan-out, and print the median ÷ ref of the
//!                     valid rounds with its range (the machine's own speed drifts between
//!                     minutes; a ratio of two measurements seconds apart cancels most of it)
//!   --receive R       poll | wake | unread (default poll): how the generator's peers wait for
//!                     datagrams (see `Receive`); `wake` is how every run before 2026-12-02
//!                     received; `unread` (roomd only) is an analysis of what receiving costs
//!   --smoke           1 room x 2 against roomd for ~5 s; exit 1 unless media flows both ways
//! ```
//!
//! Environment: `LOADGEN_ROOMD_BIN` (another roomd build), `LOADGEN_ROOMD_LOG` (roomd's log
//! filter; its log on stderr), `LOADGEN_LOG` (the generator's own log), `LOADGEN_DEBUG`
//! (every signalling message).
//!
//! Plain `cargo bench` (no options) runs `--smoke`. Generator on CPU 0, server on CPU 1
//! (`taskset`). A scenario is marked INVALID when the generator used more than 85 % of its
//! core during the window (then the generator, not the server, was measured).
//!
//! Media per publisher: VP8-shaped video at 30 fps, ≈1.5 Mbit/s (5 × 1200-byte packets per
//! frame, 12 for a key frame; key frame every 2 s and on PLI/FIR) and Opus-sized audio at
//! 50 pps (160 bytes). Every payload carries (publisher id, kind, payload sequence number,
//! send time) after the 2-byte VP8 descriptor/header, so the receiver computes loss and
//! one-way latency per stream.

#[path = "common/refwd.rs"]
mod refwd;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use refwd::Suite;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Media profile

const FPS: u32 = 30;
const VIDEO_PKT: usize = 1200;
const DELTA_PKTS: usize = 5;
const KEY_PKTS: usize = 12;
const KEY_EVERY: Duration = Duration::from_secs(2);
const AUDIO_PKT: usize = 160;
const AUDIO_PTIME: Duration = Duration::from_millis(20);
const MAGIC: u8 = 0x4C; // 'L'
const GEN_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const INVALID_GENERATOR_LOAD: f64 = 0.85;

/// `--full-every N` (set once in `main`; the smoke run uses 2 so that both receive paths run).
static FULL_EVERY: OnceLock<u64> = OnceLock::new();

fn full_every() -> u64 {
    FULL_EVERY.get().copied().unwrap_or(8)
}

/// `LOADGEN_DEBUG=1`: print every signalling message received.
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("LOADGEN_DEBUG").is_some())
}

fn epoch() -> Instant {
    epochs().0
}

/// The generator's epoch as an `Instant` and as nanoseconds of the realtime clock (the clock of
/// the kernel's receive timestamps), read together once.
fn epochs() -> (Instant, u64) {
    static T0: OnceLock<(Instant, u64)> = OnceLock::new();
    *T0.get_or_init(|| {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), real)
    })
}

/// Nanoseconds since the epoch of `t`.
fn ns_of(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Payload: [VP8 descriptor][VP8 header][MAGIC][kind][pub u32][seq u32][send ns u64] + fill.
fn payload(len: usize, vp8: [u8; 2], kind: u8, publisher: u32, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.extend_from_slice(&vp8);
    b.extend_from_slice(&[MAGIC, kind]);
    b.extend_from_slice(&publisher.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&now_ns().to_be_bytes());
    b.resize(len, 0xA5);
    b.freeze()
}

// ---------------------------------------------------------------------------------------------
// Shared statistics (one thread: Rc/RefCell)

#[derive(Default)]
struct StreamStat {
    count: u64,
    max_seq: u32,
    seen: bool,
    win_count0: u64,
    win_seq0: u32,
    /// Counted by a light receiver (RTP sequence numbers, which a server that skips a packet
    /// for a congested subscriber keeps contiguous): not in the loss figure, only in delivery.
    light: bool,
}

#[derive(Default)]
struct Stats {
    measuring: bool,
    streams: HashMap<(u64, u32, u8), StreamStat>, // (subscriber pc, publisher, kind)
    latencies_us: Vec<u32>,
    received_total: u64,
    received_window: u64,
    sent_total: u64,
    sent_window: u64,
    plis: u64,
    firs: u64,
    join_to_first_frame: Vec<f64>,
    connected: u64,
    failed: u64,
    signaling_errors: u64,
    first_error: Option<String>,
}

type SharedStats = Rc<RefCell<Stats>>;

impl Stats {
    fn start_window(&mut self) {
        self.measuring = true;
        self.latencies_us.clear();
        self.received_window = 0;
        self.sent_window = 0;
        for s in self.streams.values_mut() {
            s.win_count0 = s.count;
            s.win_seq0 = s.max_seq;
        }
    }
    /// (expected, received) over the window, by payload sequence numbers (full receivers only).
    fn window_loss(&self) -> (u64, u64) {
        let (mut exp, mut got) = (0u64, 0u64);
        for s in self.streams.values() {
            if s.win_count0 == 0 || s.light {
                continue; // stream started inside the window (not steady), or no payload check
            }
            exp += u64::from(s.max_seq.wrapping_sub(s.win_seq0));
            got += s.count - s.win_count0;
        }
        (exp, got.min(exp.max(got)))
    }
    /// One packet received by subscriber PC `ctx` on stream (`stream`, `kind`), by either
    /// receive path: the totals, the PC's first video packet (jff), the stream's count; returns
    /// the stream for its sequence number.
    fn packet(
        &mut self,
        ctx: &PeerCtx,
        stream: u32,
        kind: u8,
        first_video: &mut bool,
        rx_ns: u64,
    ) -> &mut StreamStat {
        self.received_total += 1;
        if self.measuring {
            self.received_window += 1;
        }
        if kind == 1 && !*first_video {
            *first_video = true;
            if let Some(t) = ctx.subscribe_sent {
                let jff = rx_ns.saturating_sub(ns_of(t));
                self.join_to_first_frame.push(jff as f64 * 1e-9);
            }
        }
        let s = self.streams.entry((ctx.key, stream, kind)).or_default();
        s.count += 1;
        s
    }
    fn error(&mut self, e: String) {
        self.signaling_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One peer connection, driven on the local task set

enum PcCmd {
    Answer(String),
    Offer(String, oneshot::Sender<String>),
    Candidate(RTCIceCandidateInit),
}

struct Publishing {
    id: u32,
    video: RTCRtpSenderId,
    audio: RTCRtpSenderId,
    video_ssrc: u32,
    audio_ssrc: u32,
}

fn setting_engine(suite: Suite) -> SettingEngine {
    let profile = match suite {
        Suite::Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        Suite::Cm => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    };
    // A browser sends its first connectivity checks within a few ms of getting the answer;
    // rtc's default 200 ms check interval would make the generator's own pace the join time.
    // And it keeps checking for tens of seconds (Chrome: 39.5 s); rtc's default gives up after
    // 7 requests, which a server busy answering a burst of hundreds of joins can outlast.
    SettingEngineBuilder::new()
        .with_srtp_protection_profiles(vec![profile])
        .with_ice_connection_attempts(Some(Duration::from_millis(20)), Some(500))
        .build()
}

/// Lets inbound PLI/FIR reach the application (`poll_read`); every other inbound RTCP packet
/// stops at the end of the chain (webrtc-rs `rtcp-processing` pattern, as `media::keyframe`).
#[derive(Default)]
struct KeyframeRequests {
    read: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
    write: std::collections::VecDeque<rtc::interceptor::TaggedPacket>,
}

fn is_keyframe_request(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<rtc::interceptor::TaggedPacket, rtc::interceptor::TaggedPacket, ()>
    for KeyframeRequests
{
    type Rout = rtc::interceptor::TaggedPacket;
    type Wout = rtc::interceptor::TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        if let rtc::interceptor::Packet::Rtcp(packets) = &msg.message.packet {
            if !packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                return Ok(());
            }
            msg.message
                .add(rtc::interceptor::Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: rtc::interceptor::TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl rtc::interceptor::Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &rtc::interceptor::StreamInfo) {}
}

fn new_pc(suite: Suite) -> RTCPeerConnection {
    let mut me = MediaEngine::default();
    me.register_default_codecs().expect("codecs");
    // Only the keyframe-request interceptor: the generator stays cheap (no NACK/TWCC/RR work on
    // the generator core); loopback does not lose packets below the server's capacity.
    let registry = Registry::new().with(14_000usize.into(), KeyframeRequests::default());
    RTCPeerConnectionBuilder::new()
        .with_setting_engine(setting_engine(suite))
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("peer connection")
}

fn codec(kind: RtpCodecKind) -> RTCRtpCodec {
    match kind {
        RtpCodecKind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        _ => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![],
        },
    }
}

fn add_send_track(pc: &mut RTCPeerConnection, kind: RtpCodecKind, ssrc: u32) -> RTCRtpSenderId {
    let track = MediaStreamTrack::new(
        "loadgen".to_owned(),
        format!("{kind}-{ssrc}"),
        format!("{kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec(kind),
            ..Default::default()
        }],
    );
    let _ = pc
        .add_transceiver_from_track(
            track,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .expect("transceiver");
    pc.get_senders().last().expect("sender")
}

// ---------------------------------------------------------------------------------------------
// How a peer waits for datagrams (`--receive`)

/// `--receive`: how the generator's peers wait for datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Receive {
    /// Each peer's socket is in the generator runtime's epoll set. While the generator thread
    /// sleeps there, every datagram the server sends wakes it — from inside the server's
    /// `sendmmsg` on loopback, so the server's CPU time pays for waking the generator (≈ 14 %
    /// of roomd's at 1x25, BENCHMARKS §4.11). The reference forwarder's unread sinks wake
    /// nobody.
    Wake,
    /// Each peer's socket is in a second epoll set ([`Poller`]) that no thread sleeps on:
    /// a datagram is queued and wakes nobody, as at the reference's sinks. Every
    /// [`POLL_EVERY`] the poller asks that set which sockets have data and wakes their peers'
    /// tasks on the generator thread. Receive times are the kernel's (`SO_TIMESTAMPNS`,
    /// stamped when the server's send delivered the datagram), so polling adds nothing to the
    /// latency and jff figures.
    Poll,
    /// As `Poll`, but a light receiver stops reading once connected: its socket fills and
    /// the kernel drops what comes after, as at the reference's sinks, so the server pays no
    /// receive-side cost for it (no enqueue, no freeing of its datagrams on the other core).
    /// What the generator counts is then meaningless: the forwarded rate is roomd's own
    /// (`roomd_rtp_forwarded_total`); loss and latency come from the full receivers. An
    /// analysis of the ratio's make-up, not a measurement of delivery.
    Unread,
}

/// `--receive` (set once in `main`).
static RECEIVE: OnceLock<Receive> = OnceLock::new();

fn receive_mode() -> Receive {
    RECEIVE.get().copied().unwrap_or(Receive::Poll)
}

/// How often [`Poller`] looks for sockets with data: the tokio timer's resolution.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// The epoll set of `Receive::Poll` peers: registered sockets by peer key, each with the
/// `Notify` its peer's task waits on. One per scenario; its task ends with the scenario's
/// `stop`.
struct Poller {
    epoll: Epoll,
    peers: RefCell<HashMap<u64, Rc<Notify>>>,
}

impl Poller {
    /// A poller whose task runs on the local task set until `stop`.
    fn start(stop: Rc<Cell<bool>>) -> Rc<Poller> {
        let poller = Rc::new(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create1"),
            peers: RefCell::default(),
        });
        let p = poller.clone();
        tokio::task::spawn_local(async move {
            let mut events = vec![EpollEvent::empty(); 1024];
            let mut tick = tokio::time::interval(POLL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.get() {
                tick.tick().await;
                // Level-triggered: a socket its task has not drained yet is reported again.
                loop {
                    let n = p.epoll.wait(&mut events, 0u8).unwrap_or(0);
                    let peers = p.peers.borrow();
                    for e in &events[..n] {
                        if let Some(ready) = peers.get(&e.data()) {
                            ready.notify_one();
                        }
                    }
                    if n < events.len() {
                        break;
                    }
                }
            }
        });
        poller
    }
}

/// A peer's UDP socket, waited on as `--receive` says.
enum PeerSock {
    /// `Receive::Wake`.
    Wake(UdpSocket),
    /// `Receive::Poll`: a plain non-blocking socket in `poller`'s set under `key`.
    Poll {
        sock: std::net::UdpSocket,
        ready: Rc<Notify>,
        poller: Rc<Poller>,
        key: u64,
        cmsg: RefCell<Vec<u8>>,
    },
}

impl PeerSock {
    /// `sock` (bound, non-blocking) for peer `key`: in `poller`'s set if there is one.
    fn new(sock: std::net::UdpSocket, key: u64, poller: Option<Rc<Poller>>) -> PeerSock {
        match poller {
            None => PeerSock::Wake(UdpSocket::from_std(sock).expect("tokio udp socket")),
            Some(poller) => {
                setsockopt(&sock, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
                poller
                    .epoll
                    .add(&sock, EpollEvent::new(EpollFlags::EPOLLIN, key))
                    .expect("epoll add");
                let ready = Rc::new(Notify::new());
                poller.peers.borrow_mut().insert(key, ready.clone());
                PeerSock::Poll {
                    sock,
                    ready,
                    poller,
                    key,
                    cmsg: RefCell::new(nix::cmsg_space!(nix::sys::time::TimeSpec)),
                }
            }
        }
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            PeerSock::Wake(s) => s.local_addr(),
            PeerSock::Poll { sock, .. } => sock.local_addr(),
        }
        .expect("bound socket has an address")
    }

    /// Sends without waiting (a full socket buffer drops the datagram, as a network would).
    fn send_to(&self, b: &[u8], to: SocketAddr) {
        let _ = match self {
            PeerSock::Wake(s) => s.try_send_to(b, to),
            PeerSock::Poll { sock, .. } => sock.send_to(b, to),
        };
    }

    /// `Receive::Unread`: never reads again (leaves the poller's set).
    fn stop_reading(&self) {
        if let PeerSock::Poll { sock, poller, .. } = self {
            let _ = poller.epoll.delete(sock);
        }
    }

    /// Until a datagram may be waiting (then drain with [`try_recv`](Self::try_recv)).
    async fn readable(&self) {
        match self {
            PeerSock::Wake(s) => {
                let _ = s.readable().await;
            }
            PeerSock::Poll { ready, .. } => ready.notified().await,
        }
    }

    /// The next queued datagram without waiting: its length, sender and receive time (ns since
    /// the epoch: the kernel's timestamp when polled, now when woken).
    fn try_recv(&self, buf: &mut [u8]) -> Option<(usize, SocketAddr, u64)> {
        match self {
            PeerSock::Wake(s) => s
                .try_recv_from(buf)
                .ok()
                .map(|(n, peer)| (n, peer, now_ns())),
            PeerSock::Poll { sock, cmsg, .. } => {
                let mut cmsg = cmsg.borrow_mut();
                let mut iov = [IoSliceMut::new(buf)];
                let m = recvmsg::<SockaddrStorage>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT,
                )
                .ok()?;
                let peer = m.address.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::V4((*v4).into()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
                })?;
                let mut rx_ns = now_ns();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            let real = ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64;
                            rx_ns = real.saturating_sub(epochs().1);
                        }
                    }
                }
                Some((m.bytes, peer, rx_ns))
            }
        }
    }
}

impl Drop for PeerSock {
    fn drop(&mut self) {
        if let PeerSock::Poll {
            sock, poller, key, ..
        } = self
        {
            let _ = poller.epoll.delete(&*sock);
            poller.peers.borrow_mut().remove(key);
        }
    }
}

/// Binds the peer's UDP socket on `ip` and registers it as the only (host) candidate.
fn bind_candidate(pc: &mut RTCPeerConnection, ip: IpAddr) -> (std::net::UdpSocket, String) {
    let sock = std::net::UdpSocket::bind((ip, 0)).expect("udp bind");
    sock.set_nonblocking(true).expect("non-blocking socket");
    let addr = sock.local_addr().expect("addr");
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
    let init = RTCIceCandidate::from(&cand).to_json().expect("json");
    let line = init.candidate.clone();
    pc.add_local_candidate(init).expect("local candidate");
    (sock, line)
}

fn create_offer(pc: &mut RTCPeerConnection) -> String {
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(Instant::now(), offer.clone())
        .expect("set local");
    offer.sdp
}

struct PeerCtx {
    key: u64,
    stats: SharedStats,
    publishing: Option<Publishing>,
    /// For subscriber PCs: when the subscribe request was sent.
    subscribe_sent: Option<Instant>,
    /// A subscriber PC that counts received RTP by its clear headers once connected
    /// ([`light_receive`]) instead of handing it to rtc.
    light: bool,
    stop: Rc<Cell<bool>>,
}

/// Whether a datagram is SRTP carrying RTP (RFC 7983: first byte 128–191; RFC 5761: RTCP's
/// packet types 192–223 in the second byte).
fn is_srtp_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && (128..=191).contains(&b[0]) && !(192..=223).contains(&b[1])
}

/// The first payload type of the SDP's video section.
fn video_pt(sdp: &str) -> Option<u8> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=video "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|pt| pt.parse().ok())
}

/// A light receiver's bookkeeping of one SRTP packet from its clear RTP header: the same
/// counters as the full path (packets, first video packet, per-stream count and extended
/// sequence number), without decryption: the payload's latency stamp and check stay with the
/// full receivers. rtc's receive path costs the generator core as much per packet as it costs
/// the server; at 1x25 the full path made every run generator-bound.
fn light_receive(
    b: &[u8],
    video_pt: Option<u8>,
    first_video: &mut bool,
    ctx: &PeerCtx,
    rx_ns: u64,
) {
    let pt = b[1] & 0x7F;
    let seq = u16::from_be_bytes([b[2], b[3]]);
    let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let kind = u8::from(Some(pt) == video_pt);
    let mut st = ctx.stats.borrow_mut();
    let s = st.packet(ctx, ssrc, kind, first_video, rx_ns);
    s.light = true;
    // `max_seq` extends the 16-bit sequence number: its low half is the newest one seen.
    let ahead = seq.wrapping_sub(s.max_seq as u16);
    if !s.seen {
        s.max_seq = u32::from(seq);
    } else if ahead != 0 && ahead < 0x8000 {
        s.max_seq = s.max_seq.wrapping_add(u32::from(ahead));
    }
    s.seen = true;
}

/// What rtc has read for `pc`: received RTP into the statistics (latency and jff at `rx_ns`,
/// the receive time of the datagram that carried it), keyframe requests into `want_key`.
fn take_reads(
    pc: &mut RTCPeerConnection,
    ctx: &PeerCtx,
    rx_ns: u64,
    first_video: &mut bool,
    want_key: &mut bool,
) {
    while let Some(TaggedRTCMessage { message, .. }) = pc.poll_read() {
        match message {
            RTCMessage::RtpPacket(_, p) => {
                let b = &p.payload;
                if b.len() < 20 || b[2] != MAGIC {
                    continue;
                }
                let kind = b[3];
                let publisher = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                let seq = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                let sent = u64::from_be_bytes(b[12..20].try_into().expect("8 bytes"));
                let mut st = ctx.stats.borrow_mut();
                if st.measuring {
                    let lat = rx_ns.saturating_sub(sent) / 1000;
                    st.latencies_us.push(lat.min(u64::from(u32::MAX)) as u32);
                }
                let s = st.packet(ctx, publisher, kind, first_video, rx_ns);
                if !s.seen || seq.wrapping_sub(s.max_seq) < (1 << 31) {
                    s.max_seq = seq;
                }
                s.seen = true;
            }
            RTCMessage::RtcpPacket(_, pkts) => {
                let mut st = ctx.stats.borrow_mut();
                for p in &pkts {
                    let any = p.as_any();
                    if any.downcast_ref::<PictureLossIndication>().is_some() {
                        st.plis += 1;
                        *want_key = true;
                    } else if any.downcast_ref::<FullIntraRequest>().is_some() {
                        st.firs += 1;
                        *want_key = true;
                    }
                }
            }
            _ => {}
        }
    }
}

/// Runs one peer connection until `stop`: socket I/O, timers, media generation (publishers),
/// statistics (subscribers).
async fn run_pc(
    mut pc: RTCPeerConnection,
    sock: PeerSock,
    mut cmds: mpsc::UnboundedReceiver<PcCmd>,
    mut ctx: PeerCtx,
) {
    let local = sock.local_addr();
    let unread = ctx.light && receive_mode() == Receive::Unread;
    let mut stopped_reading = false;
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    let mut first_video = false;
    let mut remote_video_pt = None;
    let (mut vpt, mut apt) = (None::<u8>, None::<u8>);
    let mut vseq = 0u16;
    let mut aseq = 0u16;
    let (mut vpay, mut apay) = (0u32, 0u32);
    let mut frame = 0u32;
    let mut want_key = true;
    let mut last_key = Instant::now();
    let start = Instant::now();
    let mut next_video = Instant::now();
    let mut next_audio = Instant::now();
    let frame_dt = Duration::from_secs(1) / FPS;
    loop {
        if ctx.stop.get() {
            break;
        }
        // Drain outputs.
        while let Some(msg) = pc.poll_write() {
            sock.send_to(&msg.message, msg.transport.peer_addr);
        }
        while let Some(ev) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                match s {
                    RTCPeerConnectionState::Connected if !connected => {
                        connected = true;
                        remote_video_pt = pc.remote_description().and_then(|d| video_pt(&d.sdp));
                        ctx.stats.borrow_mut().connected += 1;
                    }
                    RTCPeerConnectionState::Failed => {
                        ctx.stats.borrow_mut().failed += 1;
                    }
                    _ => {}
                }
            }
        }
        take_reads(&mut pc, &ctx, now_ns(), &mut first_video, &mut want_key);
        // Media generation.
        let now = Instant::now();
        if connected {
            if let Some(p) = &ctx.publishing {
                if vpt.is_none() {
                    vpt = pt_of(&mut pc, p.video, MIME_TYPE_VP8);
                    apt = pt_of(&mut pc, p.audio, MIME_TYPE_OPUS);
                }
                if let (Some(vp), Some(ap)) = (vpt, apt) {
                    let mut sent = 0u64;
                    while now >= next_video {
                        next_video += frame_dt;
                        frame += 1;
                        let key = want_key || last_key.elapsed() >= KEY_EVERY;
                        if key {
                            want_key = false;
                            last_key = now;
                        }
                        let n = if key { KEY_PKTS } else { DELTA_PKTS };
                        let ts = frame.wrapping_mul(90_000 / FPS);
                        for i in 0..n {
                            let desc = if i == 0 { 0x10 } else { 0x00 };
                            let hdr = if key { 0x00 } else { 0x01 };
                            vseq = vseq.wrapping_add(1);
                            vpay += 1;
                            let pkt = rtc::rtp::packet::Packet {
                                header: rtc::rtp::header::Header {
                                    version: 2,
                                    payload_type: vp,
                                    sequence_number: vseq,
                                    timestamp: ts,
                                    ssrc: p.video_ssrc,
                                    marker: i + 1 == n,
                                    ..Default::default()
                                },
                                payload: payload(VIDEO_PKT, [desc, hdr], 1, p.id, vpay),
                            };
                            if let Some(mut s) = pc.rtp_sender(p.video) {
                                if s.write_rtp(now, pkt).is_ok() {
                                    sent += 1;
                                }
                            }
                        }
                        if now.duration_since(next_video) > Duration::from_millis(500) {
                            next_video = now; // fell far behind: skip, do not burst
                        }
                    }
                    while now >= next_audio {
                        next_audio += AUDIO_PTIME;
                        aseq = aseq.wrapping_add(1);
                        apay += 1;
                        let pkt = rtc::rtp::packet::Packet {
                            header: rtc::rtp::header::Header {
                                version: 2,
                                payload_type: ap,
                                sequence_number: aseq,
                                timestamp: apay.wrapping_mul(960),
                                ssrc: p.audio_ssrc,
                                ..Default::default()
                            },
                            payload: payload(AUDIO_PKT, [0, 0], 0, p.id, apay),
                        };
                        if let Some(mut s) = pc.rtp_sender(p.audio) {
                            if s.write_rtp(now, pkt).is_ok() {
                                sent += 1;
                            }
                        }
                        if now.duration_since(next_audio) > Duration::from_millis(500) {
                            next_audio = now;
                        }
                    }
                    if sent > 0 {
                        let mut st = ctx.stats.borrow_mut();
                        st.sent_total += sent;
                        if st.measuring {
                            st.sent_window += sent;
                        }
                        continue; // flush what was just written
                    }
                }
            }
        } else {
            next_video = now;
            next_audio = now;
            if start.elapsed() > Duration::from_secs(60) {
                break;
            }
        }
        // Wait for the next thing to do.
        let mut deadline = pc
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        if connected && ctx.publishing.is_some() {
            deadline = deadline.min(next_video).min(next_audio);
        }
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        tokio::select! {
            biased;
            _ = async {
                if unread && connected {
                    // Once: the socket then stays out of the poller's set.
                    if !stopped_reading {
                        sock.stop_reading();
                        stopped_reading = true;
                    }
                    std::future::pending::<()>().await;
                }
                sock.readable().await;
            } => {
                while let Some((n, peer, rx_ns)) = sock.try_recv(&mut buf) {
                    let data = &buf[..n];
                    if ctx.light && connected && is_srtp_rtp(data) {
                        light_receive(data, remote_video_pt, &mut first_video, &ctx, rx_ns);
                    } else {
                        let _ = pc.handle_read(TaggedBytesMut {
                            now: Instant::now(),
                            transport: TransportContext {
                                local_addr: local,
                                peer_addr: peer,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(data),
                        });
                        // Its RTP now, with this datagram's receive time.
                        take_reads(&mut pc, &ctx, rx_ns, &mut first_video, &mut want_key);
                    }
                }
            }
            c = cmds.recv() => match c {
                Some(PcCmd::Answer(sdp)) => {
                    match RTCSessionDescription::answer(sdp) {
                        Ok(a) => {
                            if let Err(e) = pc.set_remote_description(Instant::now(), a) {
                                ctx.stats.borrow_mut().error(format!("set answer: {e}"));
                            }
                        }
                        Err(e) => ctx.stats.borrow_mut().error(format!("parse answer: {e}")),
                    }
                }
                Some(PcCmd::Offer(sdp, reply)) => {
                    // Janus subscriber: the server offers, we answer.
                    let r = RTCSessionDescription::offer(sdp)
                        .and_then(|o| pc.set_remote_description(Instant::now(), o))
                        .and_then(|_| pc.create_answer(None))
                        .and_then(|a| {
                            pc.set_local_description(Instant::now(), a.clone())?;
                            Ok(a.sdp)
                        });
                    match r {
                        Ok(sdp) => { let _ = reply.send(sdp); }
                        Err(e) => ctx.stats.borrow_mut().error(format!("janus offer: {e}")),
                    }
                }
                Some(PcCmd::Candidate(c)) => {
                    let _ = pc.add_remote_candidate(c);
                }
                None => {}
            },
            _ = &mut sleep => {
                let _ = pc.handle_timeout(Instant::now());
            }
        }
    }
    let _ = pc.close();
    while let Some(msg) = pc.poll_write() {
        sock.send_to(&msg.message, msg.transport.peer_addr);
    }
    ctx.publishing.take();
}

fn pt_of(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId, mime: &str) -> Option<u8> {
    let mut s = pc.rtp_sender(sender)?;
    s.get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}

// ---------------------------------------------------------------------------------------------
// Kurento room protocol (roomd)

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A JSON-RPC client on one WebSocket: requests with replies, notifications to a channel.
struct Rpc {
    out: mpsc::UnboundedSender<Message>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<Value>>>>,
    next_id: Cell<u64>,
}

impl Rpc {
    async fn connect(
        url: &str,
        stop: Rc<Cell<bool>>,
    ) -> Result<(Rc<Rpc>, mpsc::UnboundedReceiver<Value>), String> {
        Self::connect_with(url, stop, None).await
    }

    async fn connect_with(
        url: &str,
        stop: Rc<Cell<bool>>,
        protocol: Option<&str>,
    ) -> Result<(Rc<Rpc>, mpsc::UnboundedReceiver<Value>), String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        let (ws, _): (Ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| format!("ws connect {url}: {e}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (note_tx, note_rx) = mpsc::unbounded_channel::<Value>();
        let pending: Rc<RefCell<HashMap<u64, oneshot::Sender<Value>>>> = Rc::default();
        tokio::task::spawn_local(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let p2 = pending.clone();
        tokio::task::spawn_local(async move {
            while let Some(Ok(m)) = stream.next().await {
                if stop.get() {
                    break;
                }
                let Message::Text(t) = m else { continue };
                if debug() {
                    eprintln!("<- {t}");
                }
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                // Kurento: replies carry "id"; Janus: replies carry "transaction".
                let id = v.get("id").and_then(Value::as_u64).or_else(|| {
                    v.get("transaction")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        .filter(|_| v["janus"] != "ack")
                });
                match id.and_then(|id| p2.borrow_mut().remove(&id)) {
                    Some(tx) => {
                        let _ = tx.send(v);
                    }
                    None => {
                        if v["janus"] != "ack" {
                            let _ = note_tx.send(v);
                        }
                    }
                }
            }
        });
        Ok((
            Rc::new(Rpc {
                out,
                pending,
                next_id: Cell::new(1),
            }),
            note_rx,
        ))
    }

    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Kurento JSON-RPC request; returns `result` or an error string.
    async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let msg = json!({"jsonrpc":"2.0","method":method,"params":params,"id":id});
        self.out
            .send(Message::Text(msg.to_string().into()))
            .map_err(|_| "ws closed".to_owned())?;
        let v = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .map_err(|_| format!("{method}: timeout"))?
            .map_err(|_| format!("{method}: closed"))?;
        if let Some(e) = v.get("error") {
            return Err(format!("{method}: {e}"));
        }
        Ok(v["result"].clone())
    }

    /// Janus request: `transaction` is set; waits for the first non-ack reply.
    async fn janus(&self, mut msg: Value) -> Result<Value, String> {
        let id = self.id();
        msg["transaction"] = json!(id.to_string());
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.out
            .send(Message::Text(msg.to_string().into()))
            .map_err(|_| "ws closed".to_owned())?;
        let v = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .map_err(|_| format!("janus {}: timeout", msg["janus"]))?
            .map_err(|_| "janus: closed".to_owned())?;
        if v["janus"] == "error" {
            return Err(format!("janus error: {}", v["error"]));
        }
        Ok(v)
    }

    fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}

/// Janus: trickles our one candidate, then end-of-candidates (Janus waits for them).
fn janus_trickle(rpc: &Rpc, session: u64, handle: u64, cand: &str) {
    for c in [
        json!({"candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"completed": true}),
    ] {
        let _ = rpc.out.send(Message::Text(
            json!({"janus":"trickle","session_id":session,"handle_id":handle,"candidate":c,"transaction":"t"})
                .to_string()
                .into(),
        ));
    }
}

/// Janus gathers on every non-loopback interface; keep its IPv4 host candidates only.
fn janus_sdp(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| {
            !(l.starts_with("a=candidate") && l.split(' ').nth(4).is_some_and(|a| a.contains(':')))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn candidate_of(params: &Value) -> Option<RTCIceCandidateInit> {
    Some(RTCIceCandidateInit {
        candidate: params["candidate"].as_str()?.to_owned(),
        sdp_mid: params["sdpMid"].as_str().map(str::to_owned),
        sdp_mline_index: params["sdpMLineIndex"].as_u64().map(|i| i as u16),
        ..Default::default()
    })
}

/// The scenario-wide context handed to every participant.
#[derive(Clone)]
struct Env {
    url: String,
    /// The address the generator's peers bind: 127.0.0.1 for roomd, the host end of the veth
    /// for Janus in its network namespace.
    media_ip: IpAddr,
    suite: Suite,
    stats: SharedStats,
    stop: Rc<Cell<bool>>,
    next_key: Rc<Cell<u64>>,
    /// One subscriber PC in this many receives through rtc (`--full-every`).
    full_every: u64,
    /// `Receive::Poll`: the scenario's poller.
    poller: Option<Rc<Poller>>,
}

impl Env {
    fn key(&self) -> u64 {
        let k = self.next_key.get();
        self.next_key.set(k + 1);
        k
    }

    /// Drives `pc` on the local task set; returns its command channel.
    fn spawn_pc(
        &self,
        pc: RTCPeerConnection,
        sock: std::net::UdpSocket,
        publishing: Option<Publishing>,
        subscribe_sent: Option<Instant>,
    ) -> mpsc::UnboundedSender<PcCmd> {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = self.key();
        let sock = PeerSock::new(sock, key, self.poller.clone());
        let ctx = PeerCtx {
            key,
            stats: self.stats.clone(),
            light: publishing.is_none() && key % self.full_every.max(1) != 0,
            publishing,
            subscribe_sent,
            stop: self.stop.clone(),
        };
        tokio::task::spawn_local(run_pc(pc, sock, rx, ctx));
        tx
    }

    /// A publishing peer connection (audio and video send tracks, SSRCs derived from `pub_id`),
    /// already driven; returns its command channel, its offer and its local candidate.
    async fn start_publisher_pc(
        &self,
        pub_id: u32,
    ) -> (mpsc::UnboundedSender<PcCmd>, String, String) {
        let mut pc = new_pc(self.suite);
        let video_ssrc = 0x1000_0000 + pub_id * 2;
        let audio_ssrc = video_ssrc + 1;
        let audio = add_send_track(&mut pc, RtpCodecKind::Audio, audio_ssrc);
        let video = add_send_track(&mut pc, RtpCodecKind::Video, video_ssrc);
        let (sock, cand) = bind_candidate(&mut pc, self.media_ip);
        let offer = create_offer(&mut pc);
        let publishing = Publishing {
            id: pub_id,
            video,
            audio,
            video_ssrc,
            audio_ssrc,
        };
        let tx = self.spawn_pc(pc, sock, Some(publishing), None);
        (tx, offer, cand)
    }
}

/// One roomd participant: joins, optionally publishes, subscribes to every publisher.
async fn kurento_participant(env: Env, room: String, user: String, publish: bool, pub_id: u32) {
    let (rpc, mut notes) = match Rpc::connect(&env.url, env.stop.clone()).await {
        Ok(x) => x,
        Err(e) => return env.stats.borrow_mut().error(e),
    };
    let endpoints: Rc<RefCell<HashMap<String, mpsc::UnboundedSender<PcCmd>>>> = Rc::default();
    let joined = match rpc
        .call("joinRoom", json!({"user": user, "room": room}))
        .await
    {
        Ok(v) => v,
        Err(e) => return env.stats.borrow_mut().error(e),
    };
    // Server-initiated traffic: candidates and newly published participants.
    let (pub_tx, mut pub_rx) = mpsc::unbounded_channel::<String>();
    {
        let endpoints = endpoints.clone();
        let pub_tx = pub_tx.clone();
        tokio::task::spawn_local(async move {
            while let Some(n) = notes.recv().await {
                match n["method"].as_str() {
                    Some("iceCandidate") => {
                        let p = &n["params"];
                        let name = p["endpointName"].as_str().unwrap_or_default();
                        if let (Some(tx), Some(c)) = (endpoints.borrow().get(name), candidate_of(p))
                        {
                            let _ = tx.send(PcCmd::Candidate(c));
                        }
                    }
                    Some("participantPublished") => {
                        if let Some(id) = n["params"]["id"].as_str() {
                            let _ = pub_tx.send(id.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    for p in joined["value"].as_array().into_iter().flatten() {
        if p["streams"].is_array() {
            if let Some(id) = p["id"].as_str() {
                let _ = pub_tx.send(id.to_owned());
            }
        }
    }
    drop(pub_tx);
    if publish {
        let (tx, offer, _cand) = env.start_publisher_pc(pub_id).await;
        endpoints.borrow_mut().insert(user.clone(), tx.clone());
        match rpc
            .call(
                "publishVideo",
                json!({"sdpOffer": offer, "doLoopback": false}),
            )
            .await
        {
            Ok(r) => {
                let _ = tx.send(PcCmd::Answer(
                    r["sdpAnswer"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            Err(e) => env.stats.borrow_mut().error(e),
        }
    }
    while let Some(sender) = pub_rx.recv().await {
        if env.stop.get() {
            break;
        }
        if sender == user {
            continue;
        }
        let mut pc = new_pc(env.suite);
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            let _ = pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            );
        }
        let (sock, _cand) = bind_candidate(&mut pc, env.media_ip);
        let offer = create_offer(&mut pc);
        let tx = env.spawn_pc(pc, sock, None, Some(Instant::now()));
        endpoints.borrow_mut().insert(sender.clone(), tx.clone());
        match rpc
            .call(
                "receiveVideoFrom",
                json!({"sender": format!("{sender}_webcam"), "sdpOffer": offer}),
            )
            .await
        {
            Ok(r) => {
                let _ = tx.send(PcCmd::Answer(
                    r["sdpAnswer"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            Err(e) => env.stats.borrow_mut().error(e),
        }
    }
    while !env.stop.get() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rpc.close();
}

// ---------------------------------------------------------------------------------------------
// Janus VideoRoom adapter

const JANUS_ROOM_BASE: u64 = 7000;

/// One Janus participant: session + publisher handle (join, configure with our offer) and one
/// subscriber handle per remote publisher (Janus offers, we answer, `start`).
async fn janus_participant(env: Env, room: u64, user: String, publish: bool, pub_id: u32) {
    let (rpc, mut notes) =
        match Rpc::connect_with(&env.url, env.stop.clone(), Some("janus-protocol")).await {
            Ok(x) => x,
            Err(e) => return env.stats.borrow_mut().error(e),
        };
    let r = async {
        let s = rpc.janus(json!({"janus":"create"})).await?;
        let session = s["data"]["id"].as_u64().ok_or("no session id")?;
        let attach = |rpc: Rc<Rpc>| async move {
            let h = rpc
                .janus(json!({"janus":"attach","session_id":session,"plugin":"janus.plugin.videoroom"}))
                .await?;
            h["data"]["id"].as_u64().ok_or_else(|| "no handle id".to_owned())
        };
        // Keepalive + event routing.
        let handles: Rc<RefCell<HashMap<u64, mpsc::UnboundedSender<PcCmd>>>> = Rc::default();
        let (feeds_tx, mut feeds_rx) = mpsc::unbounded_channel::<u64>();
        {
            let rpc2 = rpc.clone();
            let stop = env.stop.clone();
            tokio::task::spawn_local(async move {
                while !stop.get() {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = rpc2.out.send(Message::Text(
                        json!({"janus":"keepalive","session_id":session,"transaction":"ka"}).to_string().into(),
                    ));
                }
            });
            let handles = handles.clone();
            let feeds_tx = feeds_tx.clone();
            tokio::task::spawn_local(async move {
                while let Some(n) = notes.recv().await {
                    if n["janus"] == "trickle" {
                        let c = &n["candidate"];
                        if let (Some(h), Some(ci)) = (n["sender"].as_u64(), candidate_of(c)) {
                            if let Some(tx) = handles.borrow().get(&h) {
                                let _ = tx.send(PcCmd::Candidate(ci));
                            }
                        }
                    }
                    for p in n["plugindata"]["data"]["publishers"].as_array().into_iter().flatten() {
                        if let Some(id) = p["id"].as_u64() {
                            let _ = feeds_tx.send(id);
                        }
                    }
                }
            });
        }
        let my_feed = 1_000_000 + u64::from(pub_id);
        let ph = attach(rpc.clone()).await?;
        let joined = rpc
            .janus(json!({"janus":"message","session_id":session,"handle_id":ph,
                "body":{"request":"join","ptype":"publisher","room":room,"id":my_feed,"display":user}}))
            .await?;
        let joined = if joined["janus"] == "success" { wait_event(&rpc, &joined).await? } else { joined };
        for p in joined["plugindata"]["data"]["publishers"].as_array().into_iter().flatten() {
            if let Some(id) = p["id"].as_u64() {
                let _ = feeds_tx.send(id);
            }
        }
        drop(feeds_tx);
        if publish {
            let (tx, offer, cand) = env.start_publisher_pc(pub_id).await;
            handles.borrow_mut().insert(ph, tx.clone());
            let ev = rpc
                .janus(json!({"janus":"message","session_id":session,"handle_id":ph,
                    "body":{"request":"configure","audio":true,"video":true},
                    "jsep":{"type":"offer","sdp":offer}}))
                .await?;
            let ev = if ev["janus"] == "ack" || ev["jsep"].is_null() { wait_jsep(&rpc, ev).await? } else { ev };
            let sdp = janus_sdp(ev["jsep"]["sdp"].as_str().ok_or("no answer jsep")?);
            janus_trickle(&rpc, session, ph, &cand);
            let _ = tx.send(PcCmd::Answer(sdp));
        }
        while let Some(feed) = feeds_rx.recv().await {
            if env.stop.get() {
                break;
            }
            if feed == my_feed {
                continue;
            }
            let sh = attach(rpc.clone()).await?;
            let sent = Instant::now();
            let ev = rpc
                .janus(json!({"janus":"message","session_id":session,"handle_id":sh,
                    "body":{"request":"join","ptype":"subscriber","room":room,"streams":[{"feed":feed}]}}))
                .await?;
            let ev = if ev["jsep"].is_null() { wait_jsep(&rpc, ev).await? } else { ev };
            let offer = janus_sdp(ev["jsep"]["sdp"].as_str().ok_or("no offer jsep")?);
            let mut pc = new_pc(env.suite);
            let (sock, cand) = bind_candidate(&mut pc, env.media_ip);
            let tx = env.spawn_pc(pc, sock, None, Some(sent));
            handles.borrow_mut().insert(sh, tx.clone());
            let (atx, arx) = oneshot::channel();
            let _ = tx.send(PcCmd::Offer(offer, atx));
            let answer = arx.await.map_err(|_| "no answer from pc".to_owned())?;
            rpc.janus(json!({"janus":"message","session_id":session,"handle_id":sh,
                "body":{"request":"start"},"jsep":{"type":"answer","sdp":answer}}))
                .await?;
            janus_trickle(&rpc, session, sh, &cand);
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = r {
        env.stats.borrow_mut().error(e);
    }
    while !env.stop.get() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rpc.close();
}

/// Janus answers plugin messages with an `ack` and later an `event`: the event arrives as a
/// notification. This helper is a placeholder for the synchronous `success` case.
async fn wait_event(_rpc: &Rpc, v: &Value) -> Result<Value, String> {
    Ok(v.clone())
}

async fn wait_jsep(_rpc: &Rpc, v: Value) -> Result<Value, String> {
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ServerKind {
    Roomd,
    Janus,
}

struct Server {
    _kind: ServerKind,
    /// roomd's HTTP port (for `/metrics`).
    http_port: Option<u16>,
    child: Child,
    url: String,
    media_ip: IpAddr,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self._dir.as_ref().filter(|_| !debug()) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn pinned(cmd: impl AsRef<std::ffi::OsStr>) -> Command {
    if Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(SERVER_CPU.to_string()).arg(cmd.as_ref());
        c
    } else {
        Command::new(cmd)
    }
}

async fn wait_tcp(ip: IpAddr, port: u16) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect((ip, port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn start_roomd() -> Result<Server, String> {
    let port = free_port();
    // LOADGEN_ROOMD_BIN runs another build of roomd (an A/B of two commits on the same machine).
    let bin = std::env::var_os("LOADGEN_ROOMD_BIN")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_roomd")));
    let mut child = pinned(bin);
    child
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--media-ip",
            "127.0.0.1",
            // One shard, as roomd has one core here; its port chosen by the system.
            "--media-shards",
            "1",
            "--rtc-udp-port",
            "0",
        ]);
    // LOADGEN_ROOMD_LOG=<filter> shows roomd's log on stderr (silent otherwise).
    let log = std::env::var("LOADGEN_ROOMD_LOG").ok();
    let child = child
        .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
        .stdout(Stdio::null())
        .stderr(if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(|e| format!("spawn roomd: {e}"))?;
    let s = Server {
        _kind: ServerKind::Roomd,
        http_port: Some(port),
        child,
        url: format!("ws://127.0.0.1:{port}/room"),
        media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        _dir: None,
    };
    if !wait_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST), port).await {
        return Err("roomd did not listen".into());
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Janus's network namespace

/// A network namespace this run creates for Janus, joined to the host by a veth pair on a
/// private /30 (10.213.0.1 host end, 10.213.0.2 inside). Janus (libnice) never gathers on
/// loopback, so inside the namespace it gathers on the veth only, and the generator's Janus peers
/// bind the host end: all media stays between this run's own endpoints. Dropping it deletes the
/// namespace, which deletes the veth pair.
struct JanusNet {
    ns: String,
    /// The veth end inside the namespace (Janus's `ice_enforce_list`).
    inner_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

const NETNS_PREFIX: &str = "roomd-janus-";

/// Runs `ip ARGS` (bounded to 10 s), returning its stderr on failure.
fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let mut child = Command::new("timeout")
        .arg("10")
        .arg("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    match child.wait() {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(format!("ip {}: {st}: {}", args.join(" "), err.trim())),
        Err(e) => Err(format!("ip {}: {e}", args.join(" "))),
    }
}

impl JanusNet {
    fn create() -> Result<Self, String> {
        // Effective uid: the second field of `Uid:` in /proc/self/status.
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
            });
        if euid.as_deref() != Some("0") {
            return Err("Janus's network namespace needs root (ip netns add)".into());
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err("`ip` not found (apt-get install -y iproute2)".into());
        }
        Self::reap_stale();
        let pid = std::process::id();
        let net = JanusNet {
            ns: format!("{NETNS_PREFIX}{pid}"),
            // Interface names are at most 15 bytes.
            inner_if: format!("rjn{}", pid % 10_000_000),
            host_ip: Ipv4Addr::new(10, 213, 0, 1),
            ns_ip: Ipv4Addr::new(10, 213, 0, 2),
        };
        let host_if = format!("rjh{}", pid % 10_000_000);
        ip_cmd(&["netns", "add", &net.ns])?;
        // From here on, `net` drops (deleting the namespace) on any error.
        let host_cidr = format!("{}/30", net.host_ip);
        let ns_cidr = format!("{}/30", net.ns_ip);
        let ns = net.ns.as_str();
        let inner = net.inner_if.as_str();
        ip_cmd(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", inner, "netns", ns,
        ])?;
        ip_cmd(&["addr", "add", &host_cidr, "dev", &host_if])?;
        ip_cmd(&["link", "set", &host_if, "up"])?;
        ip_cmd(&["-n", ns, "link", "set", "lo", "up"])?;
        ip_cmd(&["-n", ns, "addr", "add", &ns_cidr, "dev", inner])?;
        ip_cmd(&["-n", ns, "link", "set", inner, "up"])?;
        Ok(net)
    }

    /// Deletes `roomd-janus-<pid>` namespaces left by earlier runs whose process is gone
    /// (e.g. killed by SIGKILL); only namespaces this generator names are touched.
    fn reap_stale() {
        let Ok(rd) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
                let _ = ip_cmd(&["netns", "del", &name]);
            }
        }
    }
}

impl Drop for JanusNet {
    fn drop(&mut self) {
        if let Err(e) = ip_cmd(&["netns", "del", &self.ns]) {
            eprintln!("loadgen: {e}");
        }
    }
}

async fn start_janus(rooms: u64, publishers: usize, net: &JanusNet) -> Result<Server, String> {
    let exe = ["/usr/bin/janus", "/usr/local/bin/janus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("janus is not installed (apt-get install -y janus)")?;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("loadgen-janus-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let plugins = "/usr/lib/x86_64-linux-gnu/janus/plugins";
    let transports = "/usr/lib/x86_64-linux-gnu/janus/transports";
    let w =
        |name: &str, body: String| std::fs::write(dir.join(name), body).map_err(|e| e.to_string());
    w(
        "janus.jcfg",
        format!(
            r#"general: {{ configs_folder = "{d}" plugins_folder = "{plugins}" transports_folder = "{transports}" events_folder = "/nonexistent" loggers_folder = "/nonexistent" debug_level = 3 admin_secret = "x" protected_folders = [] }}
certificates: {{ }}
media: {{ rtp_port_range = "30000-39999" }}
nat: {{ nice_debug = false ice_enforce_list = "{enforce}" ice_ignore_list = "" }}
plugins: {{ disable = "libjanus_sip.so,libjanus_streaming.so,libjanus_audiobridge.so,libjanus_echotest.so,libjanus_recordplay.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so,libjanus_nosip.so,libjanus_lua.so,libjanus_duktape.so" }}
transports: {{ disable = "libjanus_http.so,libjanus_rabbitmq.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so" }}
events: {{ broadcast = false }}
"#,
            d = dir.display(),
            enforce = net.inner_if,
        ),
    )?;
    w(
        "janus.transport.websockets.jcfg",
        format!("general: {{ json = \"compact\" ws = true ws_port = {port} ws_ip = \"{}\" wss = false }}\nadmin: {{ admin_ws = false }}\n", net.ns_ip),
    )?;
    let mut rooms_cfg = String::from("general: { }\n");
    for r in 0..rooms {
        rooms_cfg.push_str(&format!(
            "room-{id}: {{ description = \"bench\" publishers = {p} bitrate = 0 fir_freq = 0 audiocodec = \"opus\" videocodec = \"vp8\" }}\n",
            id = JANUS_ROOM_BASE + r,
            p = publishers.max(2),
        ));
    }
    w("janus.plugin.videoroom.jcfg", rooms_cfg)?;
    let log = std::fs::File::create(dir.join("janus.log")).map_err(|e| e.to_string())?;
    // `ip netns exec` execs taskset, which execs Janus: the child's pid is Janus's.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns]);
    let pinned = pinned(exe);
    cmd.arg(pinned.get_program()).args(pinned.get_args());
    let child = cmd
        .arg("-F")
        .arg(&dir)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn janus: {e}"))?;
    let s = Server {
        _kind: ServerKind::Janus,
        http_port: None,
        child,
        url: format!("ws://{}:{port}/", net.ns_ip),
        media_ip: IpAddr::V4(net.host_ip),
        _dir: Some(dir.clone()),
    };
    if !wait_tcp(IpAddr::V4(net.ns_ip), port).await {
        let tail = std::fs::read_to_string(dir.join("janus.log")).unwrap_or_default();
        let tail: String = tail.lines().rev().take(8).collect::<Vec<_>>().join(" | ");
        return Err(format!("janus did not listen: {tail}"));
    }
    Ok(s)
}

/// Sum of the samples of a Prometheus counter on roomd's `/metrics` (plain HTTP/1.0 GET).
async fn scrape_counter(port: u16, name: &str) -> Option<u64> {
    let body = scrape(port).await?;
    Some(sum_samples(&body, name, "") as u64)
}

/// The sum of the samples in `body` whose series starts with `name` and contains `label`.
fn sum_samples(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
}

/// What roomd's shards say of themselves (their `/metrics`), to diff around a window.
#[derive(Clone, Copy, Debug)]
struct ShardSample {
    /// Wall time the shards spent working, summed.
    busy: f64,
    /// Turns, and turns no longer than 2.5 ms.
    turns: f64,
    short_turns: f64,
    /// Datagrams the kernel dropped at the shards' sockets.
    drops: f64,
}

impl ShardSample {
    async fn scrape(port: u16) -> Option<ShardSample> {
        let body = scrape(port).await?;
        let turn = "roomd_media_shard_turn_seconds_bucket";
        Some(ShardSample {
            busy: sum_samples(&body, "roomd_media_shard_busy_seconds_total", ""),
            turns: sum_samples(&body, turn, "le=\"+Inf\""),
            short_turns: sum_samples(&body, turn, "le=\"0.0025\""),
            drops: sum_samples(&body, "roomd_udp_receive_drops_total", ""),
        })
    }
}

/// roomd's own view of a window: its shards' busy wall time (against its CPU time, the
/// difference is time a shard was mid-turn but not running), its turns over 2.5 ms (each
/// delays every datagram arriving during it by that much) and the kernel's drops.
#[derive(Clone, Copy, Debug)]
struct ShardWindow {
    busy: f64,
    long_turns: u64,
    drops: u64,
}

/// roomd's `/metrics` text (plain HTTP/1.0 GET), `None` on any failure.
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

/// Seconds all threads of `pid` spent runnable but waiting for a CPU (procfs schedstat).
/// A busy neighbour on the server's core shows up here, not in the server's CPU time.
fn sched_wait(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// (utime + stime) seconds and VmRSS/VmHWM kB of a process, from procfs.
fn proc_sample(pid: u32) -> (f64, u64, u64) {
    let tick = 100.0; // CLK_TCK on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    rooms: usize,
    participants: usize,
    publishers: usize,
}

impl Scenario {
    fn conference(rooms: usize, size: usize) -> Self {
        Scenario {
            name: format!("{rooms}x{size}"),
            rooms,
            participants: size,
            publishers: size,
        }
    }
    fn broadcast(viewers: usize) -> Self {
        Scenario {
            name: format!("1->{viewers}"),
            rooms: 1,
            participants: viewers + 1,
            publishers: 1,
        }
    }
    /// Subscriber streams (audio + video) the server must feed.
    fn sub_streams(&self) -> usize {
        2 * self.rooms * self.publishers * (self.participants - 1)
    }
    /// Fan-out per published packet.
    fn fanout(&self) -> usize {
        self.participants - 1
    }
}

struct Outcome {
    server: ServerKind,
    suite: Suite,
    scenario: Scenario,
    pps: f64,
    in_pps: f64,
    us_per_pkt: f64,
    server_cpu: f64,
    rss_mb: f64,
    hwm_mb: f64,
    rss_per_stream_kb: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    loss: f64,
    plis: u64,
    firs: u64,
    server_kf: Option<u64>,
    jff_p50: f64,
    jff_p99: f64,
    gen_load: f64,
    server_wait: f64,
    gen_wait: f64,
    connected: u64,
    expected_pcs: u64,
    errors: u64,
    first_error: Option<String>,
    reference_us: Option<f64>,
    /// roomd's own view of the window (around it: scraped just outside).
    shard: Option<ShardWindow>,
}

impl Outcome {
    fn valid(&self) -> bool {
        self.gen_load <= INVALID_GENERATOR_LOAD
            && self.errors == 0
            && self.connected == self.expected_pcs
    }
}

fn pct(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    let (_, x, _) = v.select_nth_unstable(i);
    f64::from(*x) / 1000.0
}

fn pctf(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize] * 1000.0
}

async fn run_scenario(
    net: Option<&JanusNet>,
    kind: ServerKind,
    suite: Suite,
    sc: &Scenario,
    window: Duration,
    warmup: Duration,
) -> Result<Outcome, String> {
    let server = match kind {
        ServerKind::Roomd => start_roomd().await?,
        ServerKind::Janus => {
            let net = net.ok_or("no network namespace for Janus")?;
            start_janus(sc.rooms as u64, sc.publishers, net).await?
        }
    };
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, rss0, _) = proc_sample(pid);
    let stats: SharedStats = Rc::default();
    let stop = Rc::new(Cell::new(false));
    let env = Env {
        url: server.url.clone(),
        media_ip: server.media_ip,
        suite,
        stats: stats.clone(),
        stop: stop.clone(),
        next_key: Rc::new(Cell::new(1)),
        full_every: full_every(),
        poller: (receive_mode() != Receive::Wake).then(|| Poller::start(stop)),
    };
    let expected_pcs = (sc.rooms * (sc.publishers + sc.publishers * (sc.participants - 1))) as u64;
    let mut pub_id = 0u32;
    for r in 0..sc.rooms {
        for p in 0..sc.participants {
            let publish = p < sc.publishers;
            pub_id += 1;
            let env = env.clone();
            let user = format!("u{r}p{p}");
            match kind {
                ServerKind::Roomd => {
                    tokio::task::spawn_local(kurento_participant(
                        env,
                        format!("room{r}"),
                        user,
                        publish,
                        pub_id,
                    ));
                }
                ServerKind::Janus => {
                    tokio::task::spawn_local(janus_participant(
                        env,
                        JANUS_ROOM_BASE + r as u64,
                        user,
                        publish,
                        pub_id,
                    ));
                }
            }
            // Publishers first so subscribers find them; a short stagger keeps joins realistic.
            tokio::time::sleep(Duration::from_millis(if publish { 20 } else { 5 })).await;
        }
    }
    // Wait for every PC to connect and the first frames (bounded).
    let t = Instant::now();
    let join_budget = Duration::from_secs(10) + Duration::from_millis(20 * expected_pcs);
    while t.elapsed() < join_budget {
        let subs = expected_pcs - (sc.rooms * sc.publishers) as u64;
        let ready = {
            let s = stats.borrow();
            s.connected + s.failed >= expected_pcs && s.join_to_first_frame.len() as u64 >= subs
        };
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(warmup).await;
    // Window.
    let forwarded = || async {
        match (receive_mode(), server.http_port) {
            (Receive::Unread, Some(p)) => scrape_counter(p, "roomd_rtp_forwarded_total")
                .await
                .map(|n| (n, Instant::now())),
            _ => None,
        }
    };
    // Scraped outside the CPU window (the scrape costs the server a little).
    let shard_sample = || async {
        match server.http_port {
            Some(p) => ShardSample::scrape(p).await.map(|s| (s, Instant::now())),
            None => None,
        }
    };
    let f0 = forwarded().await;
    let shard0 = shard_sample().await;
    stats.borrow_mut().start_window();
    let (c0, _, _) = proc_sample(pid);
    let (w0, gw0) = (sched_wait(pid), sched_wait(std::process::id()));
    let g0 = refwd::process_cpu();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let wall = t0.elapsed().as_secs_f64();
    let gen_load = (refwd::process_cpu() - g0) / wall;
    let (c1, rss, hwm) = proc_sample(pid);
    let server_wait = (sched_wait(pid) - w0) / wall;
    let gen_wait = (sched_wait(std::process::id()) - gw0) / wall;
    let f1 = forwarded().await;
    let shard1 = shard_sample().await;
    let shard = match (shard0, shard1) {
        (Some((a, ta)), Some((b, tb))) => Some(ShardWindow {
            busy: (b.busy - a.busy) / (tb - ta).as_secs_f64().max(1e-9),
            long_turns: ((b.turns - a.turns) - (b.short_turns - a.short_turns)).max(0.0) as u64,
            drops: (b.drops - a.drops).max(0.0) as u64,
        }),
        _ => None,
    };
    let server_kf = match server.http_port {
        Some(p) => scrape_counter(p, "roomd_keyframe_requests_sent_total").await,
        None => None,
    };
    let out = {
        let mut st = stats.borrow_mut();
        st.measuring = false;
        let (expected, got) = st.window_loss();
        let received = match (f0, f1) {
            // The server's rate between the scrapes, over the window.
            (Some((a, ta)), Some((b, tb))) => {
                let rate = b.saturating_sub(a) as f64 / (tb - ta).as_secs_f64().max(1e-9);
                (rate * wall) as u64
            }
            _ => st.received_window,
        };
        let server_cpu = c1 - c0;
        let streams = sc.sub_streams().max(1);
        let mut lat = std::mem::take(&mut st.latencies_us);
        let mut jff = std::mem::take(&mut st.join_to_first_frame);
        Outcome {
            server: kind,
            suite,
            scenario: sc.clone(),
            pps: received as f64 / wall,
            in_pps: st.sent_window as f64 / wall,
            us_per_pkt: server_cpu * 1e6 / received.max(1) as f64,
            server_cpu: server_cpu / wall,
            rss_mb: rss as f64 / 1024.0,
            hwm_mb: hwm as f64 / 1024.0,
            rss_per_stream_kb: rss.saturating_sub(rss0) as f64 / streams as f64,
            p50: pct(&mut lat, 0.5),
            p99: pct(&mut lat, 0.99),
            p999: pct(&mut lat, 0.999),
            loss: if expected == 0 {
                f64::NAN
            } else {
                1.0 - got as f64 / expected as f64
            },
            plis: st.plis,
            firs: st.firs,
            server_kf,
            jff_p50: pctf(&mut jff, 0.5),
            jff_p99: pctf(&mut jff, 0.99),
            gen_load,
            server_wait,
            gen_wait,
            connected: st.connected,
            expected_pcs,
            errors: st.signaling_errors,
            first_error: st.first_error.clone(),
            reference_us: None,
            shard,
        }
    };
    env.stop.set(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(server);
    Ok(out)
}

/// The status's note on roomd's shards ("" for Janus).
fn shard_note(w: Option<ShardWindow>) -> String {
    w.map(|w| {
        format!(
            "; shards busy {:.0} % of wall time, turns > 2.5 ms: {}, kernel drops: {}",
            w.busy * 100.0,
            w.long_turns,
            w.drops
        )
    })
    .unwrap_or_default()
}

fn print_header() {
    println!(
        "{:<6} {:<5} {:<8} {:>8} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>5} {:>6}  status",
        "server", "suite", "scenario", "fwd pps", "µs/pkt", "cpu%", "RSS MB", "kB/str", "p50 ms", "p99", "p99.9", "loss%", "KF req", "in pps", "deliv%", "jff50", "jff99", "gen%", "÷ref"
    );
}

fn print_outcome(o: &Outcome) {
    let ratio = o.reference_us.map(|r| r / o.us_per_pkt);
    println!(
        "{:<6} {:<5} {:<8} {:>8.0} {:>7.2} {:>6.1} {:>7.1} {:>7.1} {:>7.3} {:>6.3} {:>6.3} {:>7.3} {:>7} {:>6.0} {:>6.1} {:>7.1} {:>7.1} {:>5.0} {:>6}  {}",
        match o.server { ServerKind::Roomd => "roomd", ServerKind::Janus => "janus" },
        o.suite.name(),
        o.scenario.name,
        o.pps,
        o.us_per_pkt,
        o.server_cpu * 100.0,
        o.rss_mb,
        o.rss_per_stream_kb,
        o.p50,
        o.p99,
        o.p999,
        o.loss * 100.0,
        o.server_kf.unwrap_or(o.plis + o.firs),
        o.in_pps,
        100.0 * o.pps / (o.in_pps * o.scenario.fanout() as f64).max(1.0),
        o.jff_p50,
        o.jff_p99,
        o.gen_load * 100.0,
        ratio.map(|r| format!("{:.0}%", r * 100.0)).unwrap_or_else(|| "-".into()),
        if o.valid() && (o.loss > 0.005 || o.pps < 0.95 * o.in_pps * o.scenario.fanout() as f64) {
            format!(
                "SATURATED (loss or delivery short; peak RSS {:.0} MB; run-queue wait: server {:.0} %, generator {:.0} %{})",
                o.hwm_mb,
                o.server_wait * 100.0,
                o.gen_wait * 100.0,
                shard_note(o.shard)
            )
        } else if o.valid() {
            format!("ok (peak RSS {:.0} MB; run-queue wait: server {:.0} %, generator {:.0} %{})", o.hwm_mb, o.server_wait * 100.0, o.gen_wait * 100.0, shard_note(o.shard))
        } else {
            format!(
                "INVALID ({}{}{})",
                if o.gen_load > INVALID_GENERATOR_LOAD { "generator core > 85 %; " } else { "" },
                if o.connected != o.expected_pcs { format!("{}/{} PCs connected; ", o.connected, o.expected_pcs) } else { String::new() },
                o.first_error.clone().unwrap_or_default()
            )
        }
    );
}

/// What one round of `--rounds` measured of roomd.
struct Round {
    us_per_pkt: f64,
    ratio: Option<f64>,
    reference_pps: Option<f64>,
    valid: bool,
}

/// Median and range of the valid rounds: roomd ÷ reference, roomd's µs per packet and the
/// reference's out-pps per core.
fn rounds_summary(suite: Suite, sc: &Scenario, rounds: &[Round]) -> String {
    let valid: Vec<&Round> = rounds.iter().filter(|r| r.valid).collect();
    let spread = |mut v: Vec<f64>, fmt: &dyn Fn(f64) -> String| -> String {
        if v.is_empty() {
            return "-".into();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let (lo, hi) = (v[0], v[n - 1]);
        format!("{} ({}–{})", fmt(median), fmt(lo), fmt(hi))
    };
    format!(
        "rounds {} {}: {}/{} valid; roomd ÷ ref median {}; roomd µs/pkt {}; reference out-pps per core {}",
        suite.name(),
        sc.name,
        valid.len(),
        rounds.len(),
        spread(
            valid.iter().filter_map(|r| r.ratio).collect(),
            &|x| format!("{:.0} %", x * 100.0)
        ),
        spread(
            valid.iter().map(|r| r.us_per_pkt).collect(),
            &|x| format!("{x:.2}")
        ),
        spread(
            valid.iter().filter_map(|r| r.reference_pps).collect(),
            &|x| format!("{:.0} k", x / 1000.0)
        ),
    )
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

// ---------------------------------------------------------------------------------------------

struct Opts {
    scenarios: Vec<String>,
    suites: Vec<Suite>,
    servers: Vec<ServerKind>,
    window: Duration,
    ramp: Vec<usize>,
    reference: bool,
    rounds: usize,
    full_every: u64,
    receive: Receive,
    smoke: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let has = |name: &str| args.iter().any(|a| a == name);
    let explicit = [
        "--scenario",
        "--suite",
        "--server",
        "--seconds",
        "--ramp",
        "--rounds",
        "--full-every",
        "--receive",
    ]
    .iter()
    .any(|a| has(a));
    Opts {
        scenarios: arg("--scenario")
            .unwrap_or_else(|| "all".into())
            .split(',')
            .flat_map(|s| {
                if s == "all" {
                    vec!["1x2", "10x4", "4x10", "1x25", "ramp"]
                        .into_iter()
                        .map(String::from)
                        .collect()
                } else {
                    vec![s.to_owned()]
                }
            })
            .collect(),
        suites: arg("--suite")
            .and_then(|s| Suite::parse(&s))
            .unwrap_or_else(|| vec![Suite::Gcm]),
        servers: match arg("--server").as_deref() {
            Some("janus") => vec![ServerKind::Janus],
            Some("both") => vec![ServerKind::Roomd, ServerKind::Janus],
            _ => vec![ServerKind::Roomd],
        },
        window: Duration::from_secs_f64(
            arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5.0),
        ),
        ramp: arg("--ramp")
            .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 25, 50, 100, 200, 300, 400, 500, 600]),
        reference: !has("--no-reference"),
        rounds: arg("--rounds")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1usize)
            .max(1),
        full_every: arg("--full-every")
            .and_then(|s| s.parse().ok())
            .unwrap_or(8u64)
            .max(1),
        receive: match arg("--receive").as_deref() {
            Some("wake") => Receive::Wake,
            Some("unread") => Receive::Unread,
            _ => Receive::Poll,
        },
        smoke: has("--smoke") || !explicit,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let o = opts();
    // LOADGEN_LOG=<filter>: the generator's own log (its rtc peers') on stderr.
    if let Ok(filter) = std::env::var("LOADGEN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let _ = FULL_EVERY.set(if o.smoke { 2 } else { o.full_every });
    let _ = RECEIVE.set(o.receive);
    raise_fd_limit();
    let _ = epoch();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        if o.smoke {
            return smoke().await;
        }
        main_async(o).await;
        0
    });
    std::process::exit(code);
}

/// 1 room × 2 against roomd, ~5 s, exit code 1 unless media flows both ways.
async fn smoke() -> i32 {
    refwd::pin_current_thread(GEN_CPU);
    let sc = Scenario::conference(1, 2);
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        run_scenario(
            None,
            ServerKind::Roomd,
            Suite::Gcm,
            &sc,
            Duration::from_secs(2),
            Duration::from_millis(500),
        ),
    )
    .await;
    match r {
        Ok(Ok(o)) => {
            print_header();
            print_outcome(&o);
            let ok = o.pps > 0.0 && o.connected == o.expected_pcs && o.jff_p50.is_finite();
            println!(
                "smoke: {} in {:.1} s ({} of {} peer connections connected, {:.0} forwarded pps)",
                if ok { "PASS" } else { "FAIL: no media flowed" },
                t.elapsed().as_secs_f64(),
                o.connected,
                o.expected_pcs,
                o.pps
            );
            i32::from(!ok)
        }
        Ok(Err(e)) => {
            println!("smoke: FAIL: {e}");
            1
        }
        Err(_) => {
            println!("smoke: FAIL: timed out");
            1
        }
    }
}

/// `run_scenario` with a 2 s warm-up, bounded in time (join budget + window + 60 s).
async fn run_bounded(
    net: Option<&JanusNet>,
    kind: ServerKind,
    suite: Suite,
    sc: &Scenario,
    window: Duration,
) -> Result<Outcome, String> {
    let pcs = (sc.rooms * sc.publishers * sc.participants) as u64;
    let limit = Duration::from_secs(70) + Duration::from_millis(25 * pcs) + window;
    tokio::time::timeout(
        limit,
        run_scenario(net, kind, suite, sc, window, Duration::from_secs(2)),
    )
    .await
    .unwrap_or_else(|_| Err(format!("timed out after {:.0} s", limit.as_secs_f64())))
}

async fn main_async(mut o: Opts) {
    // Janus runs in a network namespace of its own (see `JanusNet`); without it, no Janus runs.
    let net = if o.servers.contains(&ServerKind::Janus) {
        match JanusNet::create() {
            Ok(n) => {
                println!(
                    "janus: network namespace {} ({} inside, peers bind {} on the host end)",
                    n.ns, n.ns_ip, n.host_ip
                );
                // Ctrl-C: delete the namespace before exiting (Drop does not run on a signal).
                let ns = n.ns.clone();
                tokio::task::spawn_local(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        let _ = ip_cmd(&["netns", "del", &ns]);
                        std::process::exit(130);
                    }
                });
                Some(n)
            }
            Err(e) => {
                println!("janus: skipped: {e}");
                o.servers.retain(|k| *k != ServerKind::Janus);
                None
            }
        }
    } else {
        None
    };
    // Reference first (it pins its own threads), then pin this thread for the generator.
    let mut reference: HashMap<(Suite, usize), f64> = HashMap::new();
    let mut scenarios = Vec::new();
    for name in &o.scenarios {
        match name.as_str() {
            "ramp" => {}
            n => {
                let Some((r, p)) = n
                    .split_once('x')
                    .and_then(|(r, p)| Some((r.parse().ok()?, p.parse().ok()?)))
                else {
                    println!("unknown scenario {n}");
                    continue;
                };
                scenarios.push(Scenario::conference(r, p));
            }
        }
    }
    let ramp = o.scenarios.iter().any(|s| s == "ramp");
    if o.reference {
        // With rounds, each conference round measures its own reference (below).
        let mut ns: Vec<usize> = if o.rounds > 1 {
            Vec::new()
        } else {
            scenarios.iter().map(Scenario::fanout).collect()
        };
        if ramp {
            ns.push(24);
        }
        ns.sort_unstable();
        ns.dedup();
        for &suite in &o.suites {
            for &n in &ns {
                if let Ok(r) = refwd::run(refwd::Params::paced(suite, n, Duration::from_secs(2))) {
                    println!("{}", r.line());
                    reference.insert((suite, n), r.us_per_out());
                }
            }
        }
    }
    refwd::pin_current_thread(GEN_CPU);
    println!(
        "\nwindow {:.0} s per scenario; generator pinned to CPU {GEN_CPU}, server to CPU {SERVER_CPU}; receive {}; latency = one-way send→receive through the server ({}); latency and loss from 1 subscriber PC in {}, packet counts and jff from all",
        o.window.as_secs_f64(),
        match o.receive {
            Receive::Poll => "poll (receivers wake nobody)",
            Receive::Wake => "wake (the server's sends wake the generator)",
            Receive::Unread =>
                "unread (light receivers stop reading once connected; fwd pps is the server's own count)",
        },
        match o.receive {
            Receive::Poll | Receive::Unread => "kernel receive timestamp",
            Receive::Wake => "generator-side rtc processing included",
        },
        full_every()
    );
    print_header();
    let mut results = Vec::new();
    for &suite in &o.suites {
        for sc in &scenarios {
            let mut rounds = Vec::new();
            for round in 1..=o.rounds {
                let mut reference_pps = None;
                if o.rounds > 1 && o.reference {
                    match refwd::run(refwd::Params::paced(
                        suite,
                        sc.fanout(),
                        Duration::from_secs(2),
                    )) {
                        Ok(r) => {
                            println!("round {round}/{}: {}", o.rounds, r.line());
                            reference.insert((suite, sc.fanout()), r.us_per_out());
                            reference_pps = Some(r.out_pps_per_core());
                        }
                        Err(e) => {
                            println!("round {round}/{}: reference failed: {e}", o.rounds);
                            reference.remove(&(suite, sc.fanout()));
                        }
                    }
                }
                for &kind in &o.servers {
                    match run_bounded(net.as_ref(), kind, suite, sc, o.window).await {
                        Ok(mut out) => {
                            out.reference_us = reference.get(&(suite, sc.fanout())).copied();
                            print_outcome(&out);
                            if kind == ServerKind::Roomd {
                                rounds.push(Round {
                                    us_per_pkt: out.us_per_pkt,
                                    ratio: out.reference_us.map(|r| r / out.us_per_pkt),
                                    reference_pps,
                                    valid: out.valid(),
                                });
                            }
                            results.push(out);
                        }
                        Err(e) => println!("{kind:?} {} {}: failed: {e}", suite.name(), sc.name),
                    }
                }
            }
            if o.rounds > 1 {
                println!("{}", rounds_summary(suite, sc, &rounds));
                print_header();
            }
        }
        if ramp {
            for &kind in &o.servers {
                for &n in &o.ramp {
                    let sc = Scenario::broadcast(n);
                    match run_bounded(net.as_ref(), kind, suite, &sc, o.window).await {
                        Ok(mut out) => {
                            out.reference_us = reference.get(&(suite, n.min(24))).copied();
                            print_outcome(&out);
                            let stop = out.loss.is_nan() || out.loss > 0.005 || !out.valid();
                            results.push(out);
                            if stop {
                                println!("ramp stops at {n} viewers (loss > 0.5 % or invalid run)");
                                break;
                            }
                        }
                        Err(e) => {
                            println!("{kind:?} {} {}: failed: {e}", suite.name(), sc.name);
                            break;
                        }
                    }
                }
            }
        }
    }
    // roomd ÷ Janus, same scenario and suite.
    for r in results.iter().filter(|r| r.server == ServerKind::Roomd) {
        if let Some(j) = results.iter().find(|j| {
            j.server == ServerKind::Janus
                && j.suite == r.suite
                && j.scenario.name == r.scenario.name
                && j.valid()
                && j.pps > 0.0
        }) {
            println!(
                "roomd ÷ janus {} {}: CPU per packet {:.2}× less ({:.2} vs {:.2} µs), RSS {:.1} vs {:.1} MB",
                r.suite.name(),
                r.scenario.name,
                j.us_per_pkt / r.us_per_pkt,
                r.us_per_pkt,
                j.us_per_pkt,
                r.rss_mb,
                j.rss_mb
            );
        }
    }
}
