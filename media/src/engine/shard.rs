//! The sans-IO shard: many sans-IO `rtc` peer connections behind one local address (one UDP
//! port; several announced addresses, e.g. IPv4 and IPv6, allowed), driven by one thread.
//!
//! The shard owns no socket and reads no clock. Its driver (an I/O loop, or a test's simulated
//! network) feeds it datagrams and the time, and drains what it produces:
//!
//! ```text
//!  signaling ──add_publisher / add_subscriber / add_remote_candidate / renegotiate / remove──┐
//!                                                                                          ▼
//!  socket ──handle_datagram(now, local, from, bytes)──▶ [demux] ─▶ peer connections ──▶ poll_transmit() ──▶ socket
//!  clock  ──handle_timeout(now) at poll_timeout()──────────────────────┘             └──▶ poll_event() ──▶ owner
//! ```
//!
//! - [`Shard::handle_datagram`] routes through [`Demux`] (only an address authenticated by a
//!   STUN request with valid MESSAGE-INTEGRITY reaches a peer), feeds that one peer and drains
//!   it into the transmit and event queues. A publisher's RTP skips rtc once the shard can open
//!   it ([`Shard::install_opener`]): decrypted in place and returned as [`Input::Rtp`].
//! - Timers: each peer's next deadline (rtc's `poll_timeout`, and the shard's connect deadline)
//!   sits in a min-heap; [`Shard::poll_timeout`] is its top and [`Shard::handle_timeout`] polls
//!   only the peers that are due. Idle peers cost nothing per wake-up.
//! - All peers answer with ICE-lite, `a=setup:passive` (DTLS server) and one host candidate
//!   per announced address (also reported as [`ShardEvent::LocalCandidate`] for trickle); they
//!   share one DTLS certificate, generated in [`Shard::new`].
//! - Forwarding plug-in points: [`ShardEvent::TrackOpen`] / [`ShardEvent::RtpIn`] /
//!   [`ShardEvent::RtcpIn`] carry what publishers send and subscribers report;
//!   [`Shard::send_raw`] (or [`Shard::path`] for a caller's own batch) sends already-sealed SRTP
//!   to a peer's selected path; [`Shard::set_crypto_hook`] gives each peer connection its crypto
//!   provider (SRTP key capture). [`Shard::write_rtp`] / [`Shard::write_rtcp`] are rtc's own
//!   (slow, sealing) paths: never `write_rtp` on an SSRC the forwarding layer seals itself.
//! - Data-channel plug-in points: [`ShardEvent::ChannelOpen`] / [`ShardEvent::ChannelClose`] /
//!   [`ShardEvent::DataIn`] carry the channels clients open and the messages they send on
//!   them; [`Shard::send_data`] sends a message on a peer's channel (rtc's SCTP queues it) and
//!   [`Shard::data_backlog`] tells how much of a channel's sending is not acknowledged yet.
//!   Who gets what is decided above the shard (`data.rs`).
//! - Loopback: a publisher added with `loopback` is answered sendrecv on its send-receive
//!   sections, each with a sent track of ours ([`PublisherAnswer::loopback`]); the shard only
//!   negotiates it, the forwarding layer sends the media back (as to a subscriber).
//!
//! - ICE-TCP ([`ShardConfig::ice_tcp`]): peers also offer a passive TCP candidate on each
//!   address. The driver owns the TCP connections and their RFC 4571 framing; it feeds each
//!   frame with [`Shard::handle_packet`] and [`TransportProtocol::TCP`], and sends the
//!   transmits stamped TCP on the connection of their (local, dest) pair. The address table
//!   treats a TCP connection as one more 5-tuple: the same authentication rule applies.
//!
//! Not (yet) here: track changes on renegotiation (only ICE restart), simulcast by rid
//! (`TrackOpen.rid` is reported, nothing else), and the I/O loop itself.
//!
//! Owns [`Shard`], [`ShardConfig`], [`ShardAddr`], [`ShardEvent`], [`Transmit`],
//! [`FailReason`], [`ShardError`], [`ShardStats`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::crypto::{RTCCryptoProvider, SignatureScheme};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::stun::message::is_stun_message;

use super::peer::is_dtls;

use super::demux::{Demux, DropCounts, FiveTuple, DEFAULT_MAX_ADDRS_PER_PEER};
use super::peer::{
    default_registry, supported_codecs, ChannelId, IceTimeouts, MediaKind, NegotiationError,
    OutTrack, Path, Peer, PeerFactory, PeerId, PeerMap, PeerState, PublisherAnswer, RegistryFn,
    Role, SubscriberAnswer,
};
use super::srtp::{negotiated_profile, KeyCaptureError, SrtpOpener, SrtpProfile};
use super::wire::{Mid, Ssrc};

/// One local address of the shard: the socket address the driver receives on and sends from,
/// and the address announced in candidates (differs behind a 1:1 NAT; same port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardAddr {
    pub local: SocketAddr,
    pub announced: SocketAddr,
}

/// Configuration of one shard.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// The shard's addresses (at least one); the first is preferred.
    pub addrs: Vec<ShardAddr>,
    pub ice: IceTimeouts,
    /// A peer not connected (ICE + DTLS) this long after it was added fails with
    /// [`FailReason::ConnectTimeout`].
    pub connect_timeout: Duration,
    /// Remote addresses one peer may own at once (oldest evicted).
    pub max_paths_per_peer: usize,
    /// Interceptor chain per role.
    pub registry: RegistryFn,
    /// Announce a passive TCP candidate per address too (the driver accepts the connections).
    pub ice_tcp: bool,
}

impl ShardConfig {
    /// One address, announced as is; default timers.
    pub fn new(local: SocketAddr) -> Self {
        Self {
            addrs: vec![ShardAddr {
                local,
                announced: local,
            }],
            ice: IceTimeouts::default(),
            connect_timeout: Duration::from_secs(20),
            max_paths_per_peer: DEFAULT_MAX_ADDRS_PER_PEER,
            registry: default_registry,
            ice_tcp: false,
        }
    }
}

/// A datagram to send: from the socket bound to `local`, to `dest`; over TCP, one frame on the
/// connection between the two.
#[derive(Debug)]
pub struct Transmit {
    pub local: SocketAddr,
    pub dest: SocketAddr,
    pub protocol: TransportProtocol,
    pub bytes: BytesMut,
}

/// Why a peer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// rtc reported the connection failed (ICE consent lost for good, DTLS failure).
    Transport,
    /// Not connected within [`ShardConfig::connect_timeout`].
    ConnectTimeout,
}

/// What the shard reports to its owner.
#[derive(Debug)]
pub enum ShardEvent {
    /// A local candidate to trickle to the client (also in the answer).
    LocalCandidate {
        peer: PeerId,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: u16,
    },
    /// ICE and DTLS are up (again, after an ICE restart or a disconnection).
    Connected { peer: PeerId },
    /// No STUN from the client for the disconnected timeout; it may come back.
    Disconnected { peer: PeerId },
    /// The peer gave up; reported once. The owner removes it.
    Failed { peer: PeerId, reason: FailReason },
    /// A publisher's first RTP packet of an SSRC (before its [`ShardEvent::RtpIn`]).
    TrackOpen {
        peer: PeerId,
        mid: Option<Mid>,
        kind: Option<MediaKind>,
        ssrc: Ssrc,
        rid: Option<String>,
    },
    /// An RTP packet received (decrypted) from a publisher.
    RtpIn {
        peer: PeerId,
        packet: rtc::rtp::packet::Packet,
    },
    /// A compound RTCP packet received (decrypted) from a peer: subscribers' NACK/PLI/FIR/RR,
    /// publishers' SR.
    RtcpIn {
        peer: PeerId,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
    },
    /// The client opened a data channel (in-band, DCEP) and it is open for sending.
    ChannelOpen {
        peer: PeerId,
        channel: ChannelId,
        /// The client's name for it (not unique; informational).
        label: String,
    },
    /// A data channel of the peer closed.
    ChannelClose { peer: PeerId, channel: ChannelId },
    /// A message the client sent on an open data channel; `text`: a string message (UTF-8 by
    /// the client's word only), otherwise binary.
    DataIn {
        peer: PeerId,
        channel: ChannelId,
        text: bool,
        data: BytesMut,
    },
}

/// Why a shard operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("peer {0:?} already exists")]
    DuplicatePeer(PeerId),
    #[error("no peer {0:?}")]
    UnknownPeer(PeerId),
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    #[error("ICE ufrag collision")]
    UfragTaken,
    #[error("peer {0:?} has no selected path yet")]
    NoPath(PeerId),
    #[error("peer {0:?} sends no SSRC {1:?}")]
    NoSuchSsrc(PeerId, Ssrc),
    #[error("peer {0:?} has no data channel {1:?}")]
    NoSuchChannel(PeerId, ChannelId),
    #[error("{0}")]
    Rtc(String),
    #[error("shard setup: {0}")]
    Setup(String),
}

/// Counters of one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub peers: usize,
    pub datagrams_in: u64,
    /// Datagrams handed to a peer connection.
    pub datagrams_routed: u64,
    /// Datagrams dropped by the address table, by reason.
    pub drops: DropCounts,
    /// Datagrams for a local address the shard does not have.
    pub unknown_local: u64,
    /// Datagrams rtc refused after routing (bad DTLS/SRTP, stale STUN, ...).
    pub read_errors: u64,
    /// DTLS datagrams that arrived before ICE selected a pair, kept for rtc until it did
    /// (see [`Peer::hold_early_dtls`]).
    pub early_dtls_held: u64,
    /// Peers that timed out before connecting.
    pub connect_timeouts: u64,
    /// Timer wake-ups of individual peers (rtc `handle_timeout` calls): what idle peers cost.
    pub peer_timeouts: u64,
    /// Publisher RTP opened by the shard itself ([`Shard::install_opener`]).
    pub rtp_opened: u64,
    /// Publisher RTP the shard's opener refused (forged, corrupted, replayed, too old): dropped.
    pub rtp_open_errors: u64,
}

/// Chooses the crypto provider of each new peer connection (`None`: rtc's default), given its
/// id.
pub type CryptoHook = Box<dyn FnMut(PeerId) -> Option<Arc<dyn RTCCryptoProvider>> + Send>;

/// What [`Shard::handle_datagram`] made of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Handled (or dropped) by the shard and rtc; anything it produced is queued.
    Done,
    /// A publisher's RTP, opened in place: the clear packet is the datagram's first `len`
    /// bytes, for the forwarder (`Forwarder::on_clear_rtp`); nothing else was queued.
    Rtp { peer: PeerId, len: usize },
}

/// The sans-IO shard. See the module documentation.
pub struct Shard {
    config: ShardConfig,
    factory: PeerFactory,
    /// Boxed: a peer connection is ~9 kB, and a table of them would move and double that much
    /// per slot as it grows.
    peers: PeerMap<Box<Peer>>,
    demux: Demux,
    /// (deadline, peer); an entry is live only if it equals the peer's `heap_at`.
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    due: Vec<PeerId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ShardEvent>,
    stats: ShardStats,
    crypto_hook: Option<CryptoHook>,
}

impl Shard {
    /// A shard with no peers. Generates the shard's DTLS certificate (ECDSA P-256).
    pub fn new(config: ShardConfig, _now: Instant) -> Result<Self, ShardError> {
        if config.addrs.is_empty() {
            return Err(ShardError::Setup("no address".into()));
        }
        let provider = rtc::crypto::default_provider()
            .map_err(|e| ShardError::Setup(format!("crypto provider: {e}")))?;
        let params = CertificateParams::new(vec!["roomd".to_owned()])
            .map_err(|e| ShardError::Setup(format!("certificate: {e}")))?;
        let certificate =
            RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
                .map_err(|e| ShardError::Setup(format!("certificate: {e}")))?;
        let factory = PeerFactory {
            certificate,
            announced: config.addrs.iter().map(|a| a.announced).collect(),
            ice_tcp: config.ice_tcp,
            ice: config.ice,
            registry: config.registry,
            supported: supported_codecs(),
        };
        Ok(Self {
            demux: Demux::new(provider, config.max_paths_per_peer),
            config,
            factory,
            peers: PeerMap::default(),
            timers: BinaryHeap::new(),
            due: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ShardStats::default(),
            crypto_hook: None,
        })
    }

    /// Installs the hook choosing each new peer connection's crypto provider (the SRTP key
    /// capture wraps rtc's provider this way).
    pub fn set_crypto_hook(&mut self, hook: CryptoHook) {
        self.crypto_hook = Some(hook);
    }

    /// The shard's addresses.
    pub fn addrs(&self) -> &[ShardAddr] {
        &self.config.addrs
    }

    /// Creates a publisher peer connection from the client's offer; returns our answer (with
    /// the shard's candidates), the sections that receive media and, with `loopback`, the
    /// tracks that send it back. The candidates are also queued as
    /// [`ShardEvent::LocalCandidate`].
    pub fn add_publisher(
        &mut self,
        id: PeerId,
        offer: &str,
        loopback: bool,
        now: Instant,
    ) -> Result<PublisherAnswer, ShardError> {
        self.check_new(id)?;
        let crypto = self.crypto_for(id);
        let (peer, answer) = self.factory.publisher(offer, loopback, crypto, now)?;
        self.insert(id, peer, now)?;
        Ok(answer)
    }

    /// Creates a subscriber peer connection from the client's offer, sending `tracks` (SSRCs
    /// chosen by the shard unless given); returns our answer and, per track that found a
    /// section and a common codec, its mid, SSRC and payload type on this leg.
    pub fn add_subscriber(
        &mut self,
        id: PeerId,
        offer: &str,
        tracks: &[OutTrack],
        now: Instant,
    ) -> Result<SubscriberAnswer, ShardError> {
        self.check_new(id)?;
        let crypto = self.crypto_for(id);
        let (peer, answer) = self.factory.subscriber(offer, tracks, crypto, now)?;
        self.insert(id, peer, now)?;
        Ok(answer)
    }

    fn check_new(&self, id: PeerId) -> Result<(), ShardError> {
        if self.peers.contains_key(&id) {
            return Err(ShardError::DuplicatePeer(id));
        }
        Ok(())
    }

    fn crypto_for(&mut self, id: PeerId) -> Option<Arc<dyn RTCCryptoProvider>> {
        self.crypto_hook.as_mut().and_then(|h| h(id))
    }

    fn insert(&mut self, id: PeerId, mut peer: Peer, now: Instant) -> Result<(), ShardError> {
        self.demux
            .set_credentials(id, &peer.ufrag, &peer.pwd)
            .map_err(|_| ShardError::UfragTaken)?;
        for candidate in self.factory.candidates()? {
            self.events.push_back(ShardEvent::LocalCandidate {
                peer: id,
                candidate,
                sdp_mid: peer.first_mid.clone(),
                sdp_mline_index: 0,
            });
        }
        peer.connect_deadline = Some(now + self.config.connect_timeout);
        self.peers.insert(id, Box::new(peer));
        self.after_input(id, now, false);
        Ok(())
    }

    /// Applies a remote candidate (`candidate:...`; empty and mDNS `.local` ones are ignored).
    /// ICE-lite does not check candidates: they only pre-declare addresses to rtc; the address
    /// table still learns an address only from an authenticated STUN request.
    pub fn add_remote_candidate(
        &mut self,
        id: PeerId,
        candidate: &str,
        now: Instant,
    ) -> Result<(), ShardError> {
        let peer = self.peers.get_mut(&id).ok_or(ShardError::UnknownPeer(id))?;
        let c = candidate.trim();
        let body = c.strip_prefix("candidate:").unwrap_or(c);
        let mdns = body
            .split_whitespace()
            .nth(4)
            .is_some_and(|a| a.to_ascii_lowercase().ends_with(".local"));
        if body.is_empty() || mdns {
            return Ok(());
        }
        peer.pc
            .add_remote_candidate(RTCIceCandidateInit {
                candidate: c.to_owned(),
                ..Default::default()
            })
            .map_err(|e| ShardError::Rtc(format!("remote candidate: {e}")))?;
        self.after_input(id, now, false);
        Ok(())
    }

    /// A new offer from the client on an existing peer: ICE restart (new credentials on both
    /// sides; the paths stay until the client moves). Returns our answer.
    pub fn renegotiate(
        &mut self,
        id: PeerId,
        offer: &str,
        now: Instant,
    ) -> Result<String, ShardError> {
        let peer = self.peers.get_mut(&id).ok_or(ShardError::UnknownPeer(id))?;
        let sdp = self.factory.renegotiate(peer, offer, now)?;
        self.demux
            .set_credentials(id, &peer.ufrag, &peer.pwd)
            .map_err(|_| ShardError::UfragTaken)?;
        self.after_input(id, now, false);
        Ok(sdp)
    }

    /// Closes and forgets a peer (its DTLS close alert is queued for sending). Unknown ids are
    /// ignored.
    pub fn remove(&mut self, id: PeerId) {
        self.demux.remove(id);
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        let _ = peer.pc.close();
        let addrs = &self.config.addrs;
        while let Some(msg) = peer.pc.poll_write() {
            self.transmits.push_back(Transmit {
                local: local_of(addrs, msg.transport.local_addr),
                dest: msg.transport.peer_addr,
                protocol: msg.transport.transport_protocol,
                bytes: msg.message,
            });
        }
    }

    /// Feeds one datagram received on the socket bound to `local` from `from`. A publisher's
    /// RTP on an SSRC rtc has opened is opened here, in place, without crossing rtc's pipeline
    /// (see [`Shard::install_opener`]): [`Input::Rtp`] then names the publisher and the clear
    /// packet's length at the start of `data`, for the forwarder.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        from: SocketAddr,
        data: &mut [u8],
    ) -> Input {
        let tuple = FiveTuple::udp(local, from);
        match self.open_rtp(now, &tuple, data) {
            Some(input) => input,
            None => {
                self.handle_packet(now, tuple, data);
                Input::Done
            }
        }
    }

    /// Lets the shard open `peer`'s RTP itself (a publisher: its remote SRTP context, built
    /// from the keys its handshake negotiated). From now on, every RTP packet on an SSRC whose
    /// track rtc opened is opened with it, fed to the connection's feedback chain (NACKs,
    /// TWCC, receiver reports: `feedback.rs`) and returned by [`Shard::handle_datagram`]; rtc
    /// never sees those again (its SRTP context for them would be stale), so a packet that
    /// does not open is dropped, counted in [`ShardStats::rtp_open_errors`]. Ignored for a
    /// peer that is not a publisher or has an opener already.
    pub fn install_opener(&mut self, peer: PeerId, opener: SrtpOpener) {
        if let Some(b) = self.peers.get_mut(&peer).and_then(|p| p.bypass.as_mut()) {
            b.opener.get_or_insert(opener);
        }
    }

    /// The bypass of [`Shard::handle_datagram`]: `None` when the datagram is rtc's.
    fn open_rtp(&mut self, now: Instant, tuple: &FiveTuple, data: &mut [u8]) -> Option<Input> {
        if !is_rtp(data) {
            return None;
        }
        let id = self.demux.owner(tuple)?;
        let peer = self.peers.get_mut(&id)?;
        if peer.state == PeerState::Failed || peer.path.is_none() {
            return None;
        }
        let bypass = peer.bypass.as_mut()?;
        let ssrc = Ssrc(u32::from_be_bytes([data[8], data[9], data[10], data[11]]));
        let rtc_last = bypass.bypassed(ssrc)?;
        let opener = bypass.opener.as_mut()?;
        self.stats.datagrams_in += 1;
        self.stats.datagrams_routed += 1;
        let len = match opener.open_after(data, rtc_last) {
            Ok(len) => len,
            Err(e) => {
                self.stats.rtp_open_errors += 1;
                tracing::trace!(peer = id.0, "publisher RTP not opened: {e}");
                return Some(Input::Done);
            }
        };
        self.stats.rtp_opened += 1;
        // The interceptors read the header only (sequence number, timestamp, transport-wide
        // sequence number); rtc hands its own packets to the chain without a transport too.
        if let Ok(header) = <rtc::rtp::header::Header as Unmarshal>::unmarshal(&mut &data[..len]) {
            let next = bypass
                .feedback
                .observe(now, TransportContext::default(), header);
            if let Some(t) = next.filter(|t| peer.deadline.is_none_or(|d| *t < d)) {
                peer.deadline = Some(t);
                self.arm(id);
            }
        }
        Some(Input::Rtp { peer: id, len })
    }

    /// Feeds one packet: a UDP datagram, or one RFC 4571 frame of an ICE-TCP connection
    /// (`tuple.local` is the connection's local address, `tuple.remote` the client's). Returns
    /// whether it reached a peer connection; a TCP connection whose first frame does not (not
    /// an authenticated Binding request) should be closed by the driver.
    pub fn handle_packet(&mut self, now: Instant, tuple: FiveTuple, data: &[u8]) -> bool {
        let FiveTuple {
            local,
            remote: from,
            protocol,
        } = tuple;
        self.stats.datagrams_in += 1;
        // The announced address of the packet's family on that socket (a dual-stack socket
        // serves an IPv4 and an IPv6 one), else its first.
        let on_socket = || self.config.addrs.iter().filter(|a| a.local == local);
        let Some(announced) = on_socket()
            .find(|a| a.announced.is_ipv4() == from.is_ipv4())
            .or_else(|| on_socket().next())
            .map(|a| a.announced)
        else {
            self.stats.unknown_local += 1;
            return false;
        };
        let Ok(routed) = self.demux.route(tuple, data) else {
            return false;
        };
        let Some(peer) = self.peers.get_mut(&routed.peer) else {
            return false;
        };
        if peer.state == PeerState::Failed {
            // Terminal: the owner is removing it; a late client must not revive it.
            return false;
        }
        self.stats.datagrams_routed += 1;
        let transport = TransportContext {
            local_addr: announced,
            peer_addr: from,
            transport_protocol: protocol,
            ecn: None,
        };
        let stun = is_stun_message(data);
        if !stun && peer.path.is_none() && is_dtls(data) {
            // A browser sends its ClientHello as soon as its own check succeeds, before the
            // binding request that nominates the pair; rtc drops non-STUN input until a pair
            // is selected, and the browser would resend only after its DTLS timer (50-100 ms
            // on every join). The address is authenticated (the demux routed it), so the
            // datagram is kept until the nomination and handed to rtc then.
            peer.hold_early_dtls(transport, data);
            self.stats.early_dtls_held += 1;
            self.after_input(routed.peer, now, false);
            return true;
        }
        let msg = TaggedBytesMut {
            now,
            transport,
            message: BytesMut::from(data),
        };
        match peer.pc.handle_read(msg) {
            Err(_) => self.stats.read_errors += 1,
            Ok(()) => {
                if let Some(b) = peer.bypass.as_mut().filter(|_| is_rtp(data)) {
                    b.rtc_opened(data);
                }
            }
        }
        if stun && peer.state != PeerState::Failed {
            // STUN is where ICE (re)selects a pair; rtc has no event for it.
            if let Some(p) = peer.selected_path() {
                peer.path = Some(p);
                for (transport, message) in peer.take_early_dtls() {
                    let msg = TaggedBytesMut {
                        now,
                        transport,
                        message,
                    };
                    if peer.pc.handle_read(msg).is_err() {
                        self.stats.read_errors += 1;
                    }
                }
            }
        }
        self.after_input(routed.peer, now, false);
        true
    }

    /// The 5-tuples the address table gives to a peer (its UDP paths and TCP connections).
    pub fn tuples(&self, id: PeerId) -> &[FiveTuple] {
        self.demux.tuples(id)
    }

    /// Forgets a 5-tuple (an ICE-TCP connection that closed): nothing more is routed from it.
    pub fn forget_tuple(&mut self, tuple: &FiveTuple) {
        self.demux.forget(tuple);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// When [`Shard::handle_timeout`] is next due (`None`: no peer has a timer).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if self.peers.get(&id).is_some_and(|p| p.heap_at == Some(at)) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Runs the timers of every peer due at `now` (only those).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(p) = self.peers.get_mut(&id) {
                if p.heap_at == Some(at) {
                    p.heap_at = None;
                    due.push(id);
                }
            }
        }
        for id in due.drain(..) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            match peer.deadline {
                Some(d) if d <= now => {}
                // Moved later since it was queued: queue it again, do not wake rtc.
                Some(_) => {
                    self.arm(id);
                    continue;
                }
                None => continue,
            }
            if peer.state == PeerState::Connecting
                && peer.connect_deadline.is_some_and(|cd| cd <= now)
            {
                peer.state = PeerState::Failed;
                peer.connect_deadline = None;
                peer.deadline = None;
                self.stats.connect_timeouts += 1;
                self.events.push_back(ShardEvent::Failed {
                    peer: id,
                    reason: FailReason::ConnectTimeout,
                });
                continue;
            }
            peer.last_tick = Some(now);
            let _ = peer.pc.handle_timeout(now);
            self.stats.peer_timeouts += 1;
            self.after_input(id, now, true);
        }
        self.due = due;
        if self.timers.len() > 4 * self.peers.len() + 64 {
            self.compact_timers();
        }
    }

    /// Sends already-sealed bytes (SRTP from the forwarding layer) to the peer's selected path.
    pub fn send_raw(&mut self, id: PeerId, bytes: BytesMut) -> Result<(), ShardError> {
        let path = self.path(id)?;
        self.transmits.push_back(Transmit {
            local: local_of(&self.config.addrs, path.announced),
            dest: path.remote,
            protocol: path.protocol,
            bytes,
        });
        Ok(())
    }

    /// The peer's selected path, for a caller batching its own sends: send from the socket
    /// bound to [`Shard::local_of`]`(path.announced)` to `path.remote`.
    pub fn path(&self, id: PeerId) -> Result<Path, ShardError> {
        let peer = self.peers.get(&id).ok_or(ShardError::UnknownPeer(id))?;
        peer.path.ok_or(ShardError::NoPath(id))
    }

    /// The socket address to send from for an announced address.
    pub fn local_of(&self, announced: SocketAddr) -> SocketAddr {
        local_of(&self.config.addrs, announced)
    }

    /// rtc's own send path for one RTP packet of a sent track (rtc seals it; slow,
    /// ~2.5 µs and 5 allocations per packet). Never mix with [`Shard::send_raw`] on one SSRC.
    pub fn write_rtp(
        &mut self,
        id: PeerId,
        packet: rtc::rtp::packet::Packet,
        now: Instant,
    ) -> Result<(), ShardError> {
        let peer = self.peers.get_mut(&id).ok_or(ShardError::UnknownPeer(id))?;
        let ssrc = Ssrc(packet.header.ssrc);
        let sender = *peer
            .senders
            .get(&ssrc)
            .ok_or(ShardError::NoSuchSsrc(id, ssrc))?;
        peer.pc
            .rtp_sender(sender)
            .ok_or(ShardError::NoSuchSsrc(id, ssrc))?
            .write_rtp(now, packet)
            .map_err(|e| ShardError::Rtc(format!("write_rtp: {e}")))?;
        self.after_input(id, now, false);
        Ok(())
    }

    /// Sends RTCP to a peer through rtc (SRTCP stays with rtc): PLI/FIR/NACK to a publisher,
    /// sender reports to a subscriber.
    pub fn write_rtcp(
        &mut self,
        id: PeerId,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
        now: Instant,
    ) -> Result<(), ShardError> {
        let peer = self.peers.get_mut(&id).ok_or(ShardError::UnknownPeer(id))?;
        let tids: Vec<_> = peer.pc.get_transceivers().collect();
        let mut endpoint = None;
        for tid in tids {
            if let Some(tr) = peer.pc.rtp_transceiver(tid) {
                if tr.mid().is_none() {
                    continue;
                }
                if let Some(r) = tr.receiver() {
                    endpoint = Some(Ok(r));
                    break;
                }
                if let Some(s) = tr.sender() {
                    endpoint = Some(Err(s));
                    break;
                }
            }
        }
        let r = match endpoint {
            Some(Ok(r)) => peer
                .pc
                .rtp_receiver(r)
                .map(|mut r| r.write_rtcp(now, packets)),
            Some(Err(s)) => peer
                .pc
                .rtp_sender(s)
                .map(|mut s| s.write_rtcp(now, packets)),
            None => None,
        };
        match r {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(ShardError::Rtc(format!("write_rtcp: {e}"))),
            None => return Err(ShardError::Rtc("no negotiated media section".into())),
        }
        self.after_input(id, now, false);
        Ok(())
    }

    /// Sends one message on a data channel of the peer: a string message if `text` (then
    /// `data` must be UTF-8), binary otherwise. rtc's SCTP association queues it and sends it
    /// as congestion control allows; nothing here waits. The caller bounds what it queues with
    /// [`Shard::data_backlog`].
    pub fn send_data(
        &mut self,
        id: PeerId,
        channel: ChannelId,
        text: bool,
        data: &[u8],
        now: Instant,
    ) -> Result<(), ShardError> {
        let peer = self.peers.get_mut(&id).ok_or(ShardError::UnknownPeer(id))?;
        let mut dc = peer
            .pc
            .data_channel(channel.0)
            .ok_or(ShardError::NoSuchChannel(id, channel))?;
        let sent = if text {
            let s = std::str::from_utf8(data)
                .map_err(|_| ShardError::Rtc("text message is not UTF-8".into()))?;
            dc.send_text(now, s)
        } else {
            dc.send(now, BytesMut::from(data))
        };
        sent.map_err(|e| ShardError::Rtc(format!("data channel send: {e}")))?;
        self.after_input(id, now, false);
        Ok(())
    }

    /// Bytes given to [`Shard::send_data`] on the channel that its SCTP association has not
    /// released yet (acknowledged or abandoned); `None`: no such peer or channel.
    pub fn data_backlog(&mut self, id: PeerId, channel: ChannelId) -> Option<usize> {
        let peer = self.peers.get_mut(&id)?;
        let dc = peer.pc.data_channel(channel.0)?;
        Some(dc.outstanding_bytes())
    }

    /// The SRTP protection profile the peer's DTLS handshake negotiated (`None`: no such peer;
    /// [`KeyCaptureError::NotYet`] before the handshake completed). The forwarding layer needs it
    /// to read the keys its crypto hook captured.
    pub fn srtp_profile(
        &mut self,
        id: PeerId,
        now: Instant,
    ) -> Option<Result<SrtpProfile, KeyCaptureError>> {
        let peer = self.peers.get_mut(&id)?;
        Some(negotiated_profile(&mut peer.pc, now))
    }

    /// The peer's connection state.
    pub fn state(&self, id: PeerId) -> Option<PeerState> {
        self.peers.get(&id).map(|p| p.state)
    }

    /// The peer's role.
    pub fn role(&self, id: PeerId) -> Option<Role> {
        self.peers.get(&id).map(|p| p.role)
    }

    /// When the peer was added.
    pub fn created(&self, id: PeerId) -> Option<Instant> {
        self.peers.get(&id).map(|p| p.created)
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the shard has no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            peers: self.peers.len(),
            drops: self.demux.drops(),
            ..self.stats
        }
    }

    /// Drains a peer after it was given input and re-arms its timer. After a timeout, a
    /// deadline that is already due is pushed 1 ms out so that a peer cannot spin the loop.
    fn after_input(&mut self, id: PeerId, now: Instant, after_timeout: bool) {
        let addrs = &self.config.addrs;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.drain(id, &mut self.transmits, &mut self.events, &|a| {
            local_of(addrs, a)
        });
        let mut deadline = if peer.state == PeerState::Failed {
            None
        } else {
            peer.pc.poll_timeout()
        };
        if let Some(cd) = peer.connect_deadline {
            deadline = Some(deadline.map_or(cd, |d| d.min(cd)));
        }
        if after_timeout {
            deadline = deadline.map(|d| d.max(now + Duration::from_millis(1)));
        }
        // rtc-ice asks every connection for a timeout every 200 ms, whatever the ICE timeouts
        // (its interval starts at 200 ms and is only ever lowered): at 600 connections that is
        // 3,000 passes a second through ICE, DTLS, SCTP and the interceptors (≈ 3 % of the
        // shard at GCM 1x25, BENCHMARKS §4.11). A quiet peer (see `Peer::quiet`) gets them at
        // `quiet_tick` instead; its liveness verdicts come that much later at most.
        if peer.quiet && peer.state == PeerState::Connected {
            if let Some(last) = peer.last_tick {
                deadline = deadline.map(|d| d.max(last + quiet_tick(&self.config.ice)));
            }
        }
        peer.deadline = deadline;
        self.arm(id);
    }

    /// Queues the peer's deadline in the heap unless an earlier entry is already there.
    fn arm(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(d) = peer.deadline else {
            return;
        };
        if peer.heap_at.is_none_or(|h| d < h) {
            peer.heap_at = Some(d);
            self.timers.push(Reverse((d, id)));
        }
    }

    fn compact_timers(&mut self) {
        self.timers = self
            .peers
            .iter()
            .filter_map(|(id, p)| p.heap_at.map(|at| Reverse((at, *id))))
            .collect();
    }
}

/// How often a quiet peer's rtc is given a timeout: an eighth of the disconnected timeout
/// (a liveness verdict at most that much late), between rtc-ice's own 200 ms and 1 s.
fn quiet_tick(ice: &IceTimeouts) -> Duration {
    (ice.disconnected / 8).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// Whether `data` is an RTP packet by RFC 7983 (first byte 128..=191) and RFC 5761 (payload
/// types 64..=95 are RTCP), with a whole fixed header.
fn is_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && (128..=191).contains(&data[0]) && !(64..96).contains(&(data[1] & 0x7f))
}

fn local_of(addrs: &[ShardAddr], announced: SocketAddr) -> SocketAddr {
    addrs
        .iter()
        .find(|a| a.announced == announced)
        .or_else(|| addrs.first())
        .map_or(announced, |a| a.local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Shard>();
        send::<ShardEvent>();
    }

    #[test]
    fn local_address_follows_the_announced_one() {
        let addrs = [
            ShardAddr {
                local: "10.0.0.5:3478".parse().expect("a"),
                announced: "203.0.113.7:3478".parse().expect("a"),
            },
            ShardAddr {
                local: "[::]:3478".parse().expect("a"),
                announced: "[2001:db8::7]:3478".parse().expect("a"),
            },
        ];
        assert_eq!(
            local_of(&addrs, "[2001:db8::7]:3478".parse().expect("a")),
            addrs[1].local
        );
        assert_eq!(
            local_of(&addrs, "203.0.113.7:3478".parse().expect("a")),
            addrs[0].local
        );
    }
}
