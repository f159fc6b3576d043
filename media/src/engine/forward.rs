//! The forwarding state of one shard: publisher tracks, subscriber legs, SRTP sealing and the
//! queue of sealed datagrams. Sans-IO, like the shard it sits on: it consumes the shard's
//! [`ShardEvent`]s and the time, talks RTCP back through [`Shard::write_rtcp`], and queues
//! forwarded SRTP for its driver ([`Forwarder::peek_transmit`] / [`Forwarder::pop_transmit`]).
//!
//! ```text
//!  shard.poll_event() ──▶ Forwarder::handle_event ──▶ (other events back to the owner)
//!        TrackOpen (publisher)  → a Track
//!        subscriber expected    → the publisher's tracks primed (keyframe asked ahead)
//!        subscriber answered    → its sources' tracks primed (unless a fresh keyframe is stored)
//!        Connected (subscriber) → SRTP keys captured → sealer → its legs attached; a video leg
//!                                 still waiting `attach_delay` later starts at a recent stored
//!                                 keyframe (or one is asked)
//!          (loopback publisher: the same, for its own legs)
//!        Connected (publisher)  → SRTP keys captured → opener installed in the shard
//!        RtpIn, or on_clear_rtp(_run) → Track::on_rtp_burst → per leg, per packet of the run:
//!                                 copy + rewrite → seal → transmit queue
//!          (on_clear_rtp_run: consecutive RTP of a publisher the shard opened itself, bypassing
//!          rtc; a leg takes all of a run before the next leg)
//!        RtcpIn (subscriber)    → NACK → on_nack (retransmission, same queue); PLI/FIR →
//!                                 on_keyframe_request; RR → on_receiver_report
//!        RtcpIn (publisher)     → SR → on_sender_report
//!  poll_timeout / handle_timeout → PLIs to publishers, SRs to subscribers (Shard::write_rtcp),
//!                                  selected paths refreshed
//! ```
//!
//! Owns [`Forwarder`], [`ForwardConfig`], [`ForwardStats`], [`Datagram`], [`Source`].
//!
//! The hard rule (see `srtp.rs`): once the forwarder seals an SSRC, rtc never sends RTP on it.
//! The forwarder never calls [`Shard::write_rtp`], and the shard's default chains (subscriber,
//! and publisher, which a loopback publisher has) have no RTP-sending interceptor (no NACK
//! responder, no SR interceptor, no pacer). Sealers are built once per subscriber (or loopback
//! publisher) connection and never rebuilt (a rebuilt sealer would start its
//! rollover counters again and reuse nonces): a second `Connected` (after an ICE restart or a
//! disconnection) keeps the first.
//!
//! The transmit queue is bounded ([`ForwardConfig::transmit_queue`]); when it is full, legs see
//! congestion (the track's [`Egress::outbound`] returns `None`: the leg skips the packet
//! without taking a sequence number, and video waits for the next keyframe). Its buffers are
//! pooled: in steady state forwarding allocates nothing per packet (beyond what rtc already
//! allocated to parse the packet it hands the shard).
//!
//! Subscriptions name their sources by publisher peer and mid ([`Source`]); a leg is attached
//! when both ends are ready (the subscriber connected with its keys captured, the publisher's
//! track open), in whichever order that happens, and detached when either side is removed.
//!
//! Loopback: a publisher whose answer has [`PublisherAnswer::loopback`] tracks is also a
//! subscriber of its own tracks, under the same [`PeerId`]: each sent track is a leg on the
//! track of its own section, sealed with the publisher connection's outbound keys and sent to
//! its path, exactly as a subscriber's. Its RTCP is read both ways (SRs about what it sends;
//! NACK/PLI/FIR/RR about its legs, by leg SSRC).
//!
//! Not here yet: RTX towards subscribers (the shard's answers leave RTX out), simulcast. Data
//! channels are not the forwarder's: their events pass through it to `data.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::crypto::RTCCryptoProvider;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport as RtcSenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::Marshal;
use rtc::shared::TransportProtocol;

use super::keyframe::Codec;
use super::leg::{
    abs_send_time, extension_rules, Leg, LegConfig, LegId, Outbound, PtMap, SendKind, Sent,
};
use super::nack_ring;
use super::peer::{
    CodecSpec, MediaKind, OutTrack, PeerId, PeerMap, PeerState, PublisherAnswer, SentTrack,
    SubscriberAnswer,
};
use super::sender_report::SenderReport;
use super::shard::{CryptoHook, Shard, ShardEvent};
use super::srtp::{KeyCaptureError, SrtpKeyCapture, SrtpKeys, SrtpOpener, SrtpSealer};
use super::track::{Egress, Track, TrackConfig};
use super::wire::{Mid, SeqNo, Ssrc};

/// The most sealed datagrams one call of [`Forwarder::on_clear_rtp_run`] queues (unless one
/// packet's fan-out alone is more): the runs it gives the legs are cut to this budget ÷ the
/// track's legs, so a burst never overflows the default transmit queue (4,096; its owner
/// sends what is queued between calls) and the buffer pool stays near 3 MB a shard. Large
/// enough for a 5-packet frame to 400 viewers in one run (BENCHMARKS §4.12: 512 left runs of
/// one packet from 1→300 on, where runs save the most).
pub const BURST_DATAGRAMS: usize = 2048;

/// How to build a [`Forwarder`].
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Sealed datagrams queued at most (all subscribers of the shard, loopback publishers
    /// included); beyond, legs see
    /// congestion.
    pub transmit_queue: usize,
    /// Size of each pooled transmit buffer (a clear packet of the ring's slot size, RTX's two
    /// bytes and the SRTP tag must fit).
    pub buffer_size: usize,
    /// How often the subscribers' selected paths are re-read from the shard (a client moving
    /// to another address is followed within this).
    pub path_refresh: Duration,
    /// Sender SSRC of the PLIs sent to publishers.
    pub rtcp_ssrc: Ssrc,
    /// How long after a subscriber's DTLS completes a video leg still waiting for a keyframe
    /// is sent the newest stored one ([`Track::start_leg`]; live media flows at once). SRTP
    /// sent right behind our last DTLS flight can reach a client that reads both in one batch
    /// and installs its keys only after the batch: what came before is dropped, and a dropped
    /// keyframe costs a new request.
    pub attach_delay: Duration,
    /// Minimum time between two keyframe requests sent for one publisher track (roomd's
    /// `--keyframe-interval-ms`).
    pub keyframe_interval: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            transmit_queue: 4096,
            buffer_size: 1600,
            path_refresh: Duration::from_millis(250),
            rtcp_ssrc: Ssrc(1),
            attach_delay: Duration::from_millis(10),
            keyframe_interval: Duration::from_millis(500),
        }
    }
}

/// Where a subscriber's track comes from: the publisher peer and its section's mid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    pub publisher: PeerId,
    pub mid: Mid,
}

/// Counters of a forwarder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// RTP packets from publishers.
    pub rtp_in: u64,
    /// Of those, on an SSRC with no open track.
    pub rtp_unknown_ssrc: u64,
    /// Of those, that did not fit the scratch buffer when marshalled back.
    pub rtp_too_large: u64,
    /// Sealed datagrams queued (first transmissions and retransmissions).
    pub queued: u64,
    /// Of `queued`, retransmissions.
    pub retransmitted: u64,
    /// Packets a leg wrote that the sealer refused (never sent).
    pub seal_errors: u64,
    /// Times a leg found the transmit queue full.
    pub queue_full: u64,
    /// PLIs sent to publishers.
    pub plis_sent: u64,
    /// Sender reports sent to subscribers.
    pub srs_sent: u64,
    /// NACK / PLI / FIR / RR blocks from subscribers about one of their legs.
    pub nacks_in: u64,
    pub keyframe_requests_in: u64,
    pub receiver_reports_in: u64,
    /// Publisher sender reports.
    pub sender_reports_in: u64,
    /// `write_rtcp` failures.
    pub rtcp_errors: u64,
    /// Subscribers whose SRTP keys could not be read (their legs never attach).
    pub key_errors: u64,
    /// Publishers whose SRTP keys could not be read (rtc keeps opening their RTP).
    pub opener_errors: u64,
    /// Publisher video streams that resumed after an outage with packets lost or with a stale
    /// backlog (their legs rebased, a keyframe asked for: `outage.rs`).
    pub outages: u64,
}

/// A sealed datagram to send (over TCP: one frame on the (local, dest) connection).
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The socket address to send from.
    pub local: SocketAddr,
    pub dest: SocketAddr,
    pub protocol: TransportProtocol,
    pub bytes: &'a [u8],
}

/// Where a subscriber's datagrams go: (local socket address, client address, transport).
type SubPath = (SocketAddr, SocketAddr, TransportProtocol);

type TrackKey = u64;

struct PubTrack {
    publisher: PeerId,
    mid: Mid,
    kind: MediaKind,
    codecs: Vec<CodecSpec>,
    /// Negotiated header extensions of the section (id, URI).
    extmap: Vec<(u8, String)>,
    /// Publisher media SSRC, once open.
    ssrc: Option<Ssrc>,
    track: Option<Track>,
}

struct SubLeg {
    sent: SentTrack,
    source: Source,
    extmap: Vec<(u8, String)>,
    attached: Option<TrackKey>,
}

/// A peer connection the forwarder sends on, with its legs: a subscriber, or a loopback
/// publisher receiving its own tracks (the same thing to the forwarder).
struct Sub {
    capture: Option<Arc<SrtpKeyCapture>>,
    sealer: Option<SrtpSealer>,
    /// Its keys could not be read (final: its legs never attach).
    keys_failed: bool,
    path: Option<SubPath>,
    transport_seq: u16,
    epoch: Instant,
    /// When its waiting video legs are started (set at its first `Connected`:
    /// [`ForwardConfig::attach_delay`]).
    attach_at: Option<Instant>,
    legs: Vec<SubLeg>,
}

/// The transmit queue and its buffer pool.
struct TxQueue {
    free: Vec<Vec<u8>>,
    /// The buffer last handed to a leg (reused if the leg did not commit).
    current: Option<Vec<u8>>,
    queue: VecDeque<(SubPath, Vec<u8>, usize)>,
    cap: usize,
    size: usize,
}

impl TxQueue {
    fn new(cap: usize, size: usize) -> Self {
        Self {
            free: Vec::new(),
            current: None,
            queue: VecDeque::with_capacity(cap),
            cap,
            size,
        }
    }

    fn buffer(&mut self) -> &mut Vec<u8> {
        let size = self.size;
        let free = &mut self.free;
        self.current
            .get_or_insert_with(|| free.pop().unwrap_or_else(|| vec![0; size]))
    }
}

/// Captures created by the crypto hook, until [`Forwarder::add_subscriber`] (or
/// [`Forwarder::add_publisher`], for a loopback publisher) takes them.
type Captures = Arc<Mutex<HashMap<PeerId, Arc<SrtpKeyCapture>>>>;

/// The forwarding state of one shard. See the module documentation.
pub struct Forwarder {
    config: ForwardConfig,
    tracks: HashMap<TrackKey, PubTrack>,
    next_key: TrackKey,
    /// (publisher, mid) → track.
    by_mid: HashMap<(PeerId, Mid), TrackKey>,
    /// (publisher, media SSRC) → track: the RTP hot path.
    by_ssrc: HashMap<(PeerId, u32), TrackKey>,
    /// Publishers and the extmaps of their sections (mid → extmap).
    publishers: HashMap<PeerId, Vec<TrackKey>>,
    subs: PeerMap<Sub>,
    /// (subscriber, leg SSRC) → track: where the subscriber's RTCP goes.
    leg_by_ssrc: HashMap<(PeerId, u32), TrackKey>,
    captures: Captures,
    /// Publishers whose SRTP opener is not installed in the shard yet: their key capture.
    opening: HashMap<PeerId, Arc<SrtpKeyCapture>>,
    tx: TxQueue,
    scratch: Vec<u8>,
    reports: Vec<(LegId, SenderReport)>,
    next_path_refresh: Option<Instant>,
    /// Waiting video legs to start: (when, subscriber, track).
    starts: Vec<(Instant, PeerId, TrackKey)>,
    /// The earliest track timer, cached (never later than the truth; may be earlier, which
    /// only costs a wake-up): recomputed in full on timeouts and on rare events, lowered by the
    /// RTP hot path for the one track it touched.
    tracks_timeout: Option<Instant>,
    stats: ForwardStats,
}

impl Forwarder {
    /// An empty forwarder.
    pub fn new(config: ForwardConfig) -> Self {
        let tx = TxQueue::new(config.transmit_queue.max(1), config.buffer_size.max(64));
        Self {
            scratch: vec![0; config.buffer_size.max(64)],
            config,
            tracks: HashMap::new(),
            next_key: 1,
            by_mid: HashMap::new(),
            by_ssrc: HashMap::new(),
            publishers: HashMap::new(),
            subs: PeerMap::default(),
            leg_by_ssrc: HashMap::new(),
            captures: Arc::new(Mutex::new(HashMap::new())),
            opening: HashMap::new(),
            tx,
            reports: Vec::new(),
            next_path_refresh: None,
            starts: Vec::new(),
            tracks_timeout: None,
            stats: ForwardStats::default(),
        }
    }

    /// The hook to install with [`Shard::set_crypto_hook`]: every peer connection gets its own
    /// [`SrtpKeyCapture`] over rtc's default provider: the forwarder seals what subscribers and
    /// loopback publishers receive with their local keys, and opens what publishers send with
    /// their remote keys.
    pub fn crypto_hook(&self) -> CryptoHook {
        let captures = self.captures.clone();
        Box::new(move |id| {
            let inner = rtc::crypto::default_provider().ok()?;
            let capture = SrtpKeyCapture::new(inner);
            let provider: Arc<dyn RTCCryptoProvider> = capture.provider();
            captures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, capture);
            Some(provider)
        })
    }

    /// Counters.
    pub fn stats(&self) -> ForwardStats {
        self.stats
    }

    /// A publisher the shard answered: its receiving sections become tracks (opened by the
    /// first RTP packet of each). A loopback publisher's sent tracks become its legs on the
    /// tracks of their own sections; they attach once it is connected.
    pub fn add_publisher(&mut self, peer: PeerId, answer: &PublisherAnswer) {
        let extmaps = extmaps(&answer.sdp);
        let mut keys = Vec::new();
        for t in &answer.tracks {
            let key = self.next_key;
            self.next_key += 1;
            self.tracks.insert(
                key,
                PubTrack {
                    publisher: peer,
                    mid: t.mid.clone(),
                    kind: t.kind,
                    codecs: t.codecs.clone(),
                    extmap: extmaps.get(&t.mid.0).cloned().unwrap_or_default(),
                    ssrc: None,
                    track: None,
                },
            );
            self.by_mid.insert((peer, t.mid.clone()), key);
            keys.push(key);
        }
        self.publishers.insert(peer, keys);
        let capture = self
            .captures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned();
        if let Some(c) = capture {
            self.opening.insert(peer, c);
        }
        if answer.loopback.is_empty() {
            return;
        }
        // Each sent track sends back what its own section receives.
        let sources: Vec<Source> = answer
            .tracks
            .iter()
            .map(|t| Source {
                publisher: peer,
                mid: t.mid.clone(),
            })
            .collect();
        self.add_sub(peer, &answer.sdp, &answer.loopback, &sources);
    }

    /// A subscriber the shard answered at `now`; `sources[i]` is where the shard's `OutTrack`
    /// number `i` comes from. Its legs attach once it is connected and their tracks are open;
    /// meanwhile their open tracks are primed (a keyframe asked for now, see [`Track::prime`]).
    pub fn add_subscriber(
        &mut self,
        peer: PeerId,
        answer: &SubscriberAnswer,
        sources: &[Source],
        now: Instant,
    ) {
        self.add_sub(peer, &answer.sdp, &answer.tracks, sources);
        for source in sources {
            let Some(key) = self.by_mid.get(&(source.publisher, source.mid.clone())) else {
                continue;
            };
            if let Some(track) = self.tracks.get_mut(key).and_then(|t| t.track.as_mut()) {
                track.prime(now);
            }
        }
        self.recompute_timeout();
    }

    /// A subscriber of `publisher` is expected (its client is about to subscribe): its open
    /// tracks are primed at `now`, so that a keyframe is stored, or on its way, before the
    /// subscription is even created (see [`Track::prime`]). Nothing for an unknown peer.
    pub fn expect_subscriber(&mut self, publisher: PeerId, now: Instant) {
        for t in self
            .tracks
            .values_mut()
            .filter(|t| t.publisher == publisher)
        {
            if let Some(track) = t.track.as_mut() {
                track.prime(now);
            }
        }
        self.recompute_timeout();
    }

    /// A [`Sub`] sending `sent` (a subscriber's tracks, a loopback publisher's), each from
    /// `sources[t.index]`; `sdp` is our answer to it.
    fn add_sub(&mut self, peer: PeerId, sdp: &str, sent: &[SentTrack], sources: &[Source]) {
        let capture = self
            .captures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        let extmaps = extmaps(sdp);
        let legs = sent
            .iter()
            .filter_map(|t| {
                Some(SubLeg {
                    sent: t.clone(),
                    source: sources.get(t.index)?.clone(),
                    extmap: extmaps.get(&t.mid.0).cloned().unwrap_or_default(),
                    attached: None,
                })
            })
            .collect();
        self.subs.insert(
            peer,
            Sub {
                capture,
                sealer: None,
                keys_failed: false,
                path: None,
                transport_seq: rand::random(),
                epoch: Instant::now(),
                attach_at: None,
                legs,
            },
        );
    }

    /// Installs the outbound SRTP keys of a subscriber (or loopback publisher) (done by
    /// [`Forwarder::handle_event`] on `Connected` from the captured keys; public for drivers
    /// that obtain keys otherwise, and for benches). Ignored once it has a sealer: a sealer is
    /// never rebuilt.
    pub fn install_keys(&mut self, peer: PeerId, keys: &SrtpKeys) -> Result<(), String> {
        let sub = self.subs.get_mut(&peer).ok_or("no such subscriber")?;
        if sub.sealer.is_some() {
            return Ok(());
        }
        let crypto = match &sub.capture {
            Some(c) => c.inner().clone(),
            None => rtc::crypto::default_provider().map_err(|e| e.to_string())?,
        };
        let sealer = SrtpSealer::new(keys.profile, &keys.local, crypto.crypto())
            .map_err(|e| e.to_string())?;
        sub.sealer = Some(sealer);
        Ok(())
    }

    /// Sets a subscriber's path (done from the shard on `Connected` and periodically).
    pub fn set_path(
        &mut self,
        peer: PeerId,
        local: SocketAddr,
        dest: SocketAddr,
        protocol: TransportProtocol,
    ) {
        if let Some(sub) = self.subs.get_mut(&peer) {
            sub.path = Some((local, dest, protocol));
        }
    }

    /// Forgets a peer (publisher or subscriber): its tracks and the legs on them, or its legs.
    pub fn remove(&mut self, peer: PeerId, now: Instant) {
        self.captures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        self.opening.remove(&peer);
        if let Some(keys) = self.publishers.remove(&peer) {
            for key in keys {
                if let Some(t) = self.tracks.remove(&key) {
                    self.by_mid.remove(&(peer, t.mid));
                    if let Some(s) = t.ssrc {
                        self.by_ssrc.remove(&(peer, s.0));
                    }
                }
                for (sid, sub) in &mut self.subs {
                    for l in &mut sub.legs {
                        if l.attached == Some(key) {
                            l.attached = None;
                            self.leg_by_ssrc.remove(&(*sid, l.sent.ssrc.0));
                        }
                    }
                }
            }
        }
        if let Some(sub) = self.subs.remove(&peer) {
            for l in sub.legs {
                self.leg_by_ssrc.remove(&(peer, l.sent.ssrc.0));
                if let Some(key) = l.attached {
                    if let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) {
                        track.remove_leg(LegId(peer.0), now);
                    }
                }
            }
        }
        // A removed subscriber's pending starts, and those of a removed publisher's tracks.
        let (subs, tracks) = (&self.subs, &self.tracks);
        self.starts
            .retain(|(_, sid, key)| subs.contains_key(sid) && tracks.contains_key(key));
        self.recompute_timeout();
    }

    /// Consumes one shard event: RTP and RTCP are handled here (`None`), every other event is
    /// acted upon and given back for the owner.
    pub fn handle_event(
        &mut self,
        shard: &mut Shard,
        ev: ShardEvent,
        now: Instant,
    ) -> Option<ShardEvent> {
        match ev {
            ShardEvent::RtpIn { peer, packet } => {
                self.on_rtp(shard, peer, &packet, now);
                None
            }
            ShardEvent::RtcpIn { peer, packets } => {
                self.on_rtcp(shard, peer, &packets, now);
                self.recompute_timeout();
                None
            }
            ShardEvent::TrackOpen {
                peer,
                ref mid,
                ssrc,
                ..
            } => {
                if let Some(mid) = mid {
                    self.open_track(shard, peer, mid, ssrc, now);
                }
                self.recompute_timeout();
                Some(ev)
            }
            ShardEvent::Connected { peer } => {
                self.on_connected(shard, peer, now);
                self.recompute_timeout();
                Some(ev)
            }
            other => Some(other),
        }
    }

    fn open_track(&mut self, shard: &mut Shard, peer: PeerId, mid: &Mid, ssrc: Ssrc, now: Instant) {
        let Some(&key) = self.by_mid.get(&(peer, mid.clone())) else {
            return;
        };
        let Some(t) = self.tracks.get_mut(&key) else {
            return;
        };
        if let Some(old) = t.ssrc.replace(ssrc) {
            self.by_ssrc.remove(&(peer, old.0));
        }
        self.by_ssrc.insert((peer, ssrc.0), key);
        if t.track.is_none() {
            let clock_rate = t.codecs.first().map_or(90_000, |c| c.clock_rate);
            let codecs = t
                .codecs
                .iter()
                .map(|c| (c.pt, Codec::from_encoding_name(encoding_name(&c.mime))))
                .collect();
            let mut cfg = TrackConfig::new(clock_rate, codecs);
            cfg.keyframe_interval = self.config.keyframe_interval;
            if t.kind == MediaKind::Audio {
                // Audio is never NACKed (our answers give it no `nack` feedback): its ring only
                // catches duplicates, and its arena (a sixteenth of this) never grows.
                cfg.ring_capacity = 128;
            }
            t.track = Some(Track::new(&cfg));
        }
        self.attach_pending(now);
        self.poll_keyframes(shard, now);
    }

    fn on_connected(&mut self, shard: &mut Shard, peer: PeerId, now: Instant) {
        if let Ok(path) = shard.path(peer) {
            let local = shard.local_of(path.announced);
            self.set_path(peer, local, path.remote, path.protocol);
        }
        self.try_opener(shard, peer, now);
        if let Some(sub) = self.subs.get_mut(&peer) {
            tracing::debug!(peer = peer.0, "subscriber connected (ICE and DTLS)");
            sub.attach_at.get_or_insert(now + self.config.attach_delay);
            self.try_keys(shard, peer, now);
            self.attach_pending(now);
            self.poll_keyframes(shard, now);
        }
    }

    /// Builds the sealer of a subscriber (or loopback publisher) from the keys its capture
    /// recorded, unless it has one.
    /// `NotYet` is retried at the next path refresh; other failures are final (counted).
    fn try_keys(&mut self, shard: &mut Shard, peer: PeerId, now: Instant) {
        let Some(sub) = self.subs.get_mut(&peer) else {
            return;
        };
        if sub.sealer.is_some() || sub.keys_failed {
            return;
        }
        let keys = match &sub.capture {
            Some(c) => captured_keys(c, shard, peer, now),
            None => Err(KeyCaptureError::Unrecognised(
                "no key capture installed for this peer connection".into(),
            )),
        };
        let result = match keys {
            Err(KeyCaptureError::NotYet) => return,
            Err(e) => Err(e.to_string()),
            Ok(k) => self.install_keys(peer, &k),
        };
        if let Err(e) = result {
            self.stats.key_errors += 1;
            if let Some(sub) = self.subs.get_mut(&peer) {
                sub.keys_failed = true;
            }
            tracing::warn!(peer = peer.0, "no SRTP keys for forwarding: {e}");
        }
    }

    /// Builds a publisher's SRTP opener from the remote keys its capture recorded and hands it
    /// to the shard, which then opens the publisher's RTP itself ([`Shard::install_opener`]).
    /// `NotYet` is retried at the next path refresh; on any other failure rtc keeps opening it.
    fn try_opener(&mut self, shard: &mut Shard, peer: PeerId, now: Instant) {
        let Some(capture) = self.opening.get(&peer) else {
            return;
        };
        let opener = match captured_keys(capture, shard, peer, now) {
            Err(KeyCaptureError::NotYet) => return,
            Err(e) => Err(e.to_string()),
            Ok(k) => SrtpOpener::new(k.profile, &k.remote, capture.inner().crypto())
                .map_err(|e| e.to_string()),
        };
        self.opening.remove(&peer);
        match opener {
            Ok(o) => shard.install_opener(peer, o),
            Err(e) => {
                self.stats.opener_errors += 1;
                tracing::warn!(peer = peer.0, "publisher RTP stays with rtc: {e}");
            }
        }
    }

    /// Attaches every leg whose subscriber is ready and whose track is open (a video leg may
    /// be sent a stored keyframe at once, see [`Track::add_leg`]).
    fn attach_pending(&mut self, now: Instant) {
        for (sid, sub) in &mut self.subs {
            if sub.sealer.is_none() || sub.path.is_none() {
                continue;
            }
            for l in &mut sub.legs {
                if l.attached.is_some() {
                    continue;
                }
                let Some(&key) = self.by_mid.get(&(l.source.publisher, l.source.mid.clone()))
                else {
                    continue;
                };
                let Some(t) = self.tracks.get_mut(&key) else {
                    continue;
                };
                let Some(track) = t.track.as_mut() else {
                    continue;
                };
                if track.leg(LegId(sid.0)).is_some() {
                    // One leg per subscriber and track.
                    continue;
                }
                let config = leg_config(t.kind, &t.codecs, &t.extmap, l, track.ring().capacity());
                let leg = Leg::new(LegId(sid.0), &config, now);
                if leg.is_waiting_for_keyframe() {
                    let due = sub.attach_at.map_or(now, |at| at.max(now));
                    self.starts.push((due, *sid, key));
                }
                track.add_leg(leg, now);
                l.attached = Some(key);
                self.leg_by_ssrc.insert((*sid, l.sent.ssrc.0), key);
            }
        }
        self.start_due(now);
    }

    /// Starts the waiting legs whose time has come (see [`Track::start_leg`]).
    fn start_due(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.starts.len() {
            let (due, sid, key) = self.starts[i];
            if due > now {
                i += 1;
                continue;
            }
            self.starts.swap_remove(i);
            let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) else {
                continue;
            };
            let mut egress = Out {
                subs: &mut self.subs,
                tx: &mut self.tx,
                now,
                stats: &mut self.stats,
            };
            track.start_leg(LegId(sid.0), now, &mut egress);
        }
    }

    /// HOT PATH: one publisher packet to every leg of its track.
    fn on_rtp(
        &mut self,
        shard: &mut Shard,
        peer: PeerId,
        packet: &rtc::rtp::packet::Packet,
        now: Instant,
    ) {
        self.stats.rtp_in += 1;
        let Some(&key) = self.by_ssrc.get(&(peer, packet.header.ssrc)) else {
            self.stats.rtp_unknown_ssrc += 1;
            return;
        };
        // rtc hands the packet parsed; the track works on bytes: marshal it back (no
        // allocation, one copy of what rtc copied already).
        let Ok(n) = packet.marshal_to(&mut self.scratch) else {
            self.stats.rtp_too_large += 1;
            return;
        };
        let scratch = std::mem::take(&mut self.scratch);
        self.forward(shard, key, &[&scratch[..n]], now);
        self.scratch = scratch;
    }

    /// A publisher's RTP packet the shard opened itself ([`crate::engine::shard::Input::Rtp`]):
    /// the clear packet, forwarded as [`ShardEvent::RtpIn`]'s are.
    pub fn on_clear_rtp(&mut self, shard: &mut Shard, peer: PeerId, packet: &[u8], now: Instant) {
        self.on_clear_rtp_run(shard, peer, &[packet], now);
    }

    /// Consecutive RTP packets of a publisher the shard opened itself, read in one batch:
    /// forwards the longest prefix of them that is of one SSRC, as far as the transmit
    /// queue's burst budget goes ([`BURST_DATAGRAMS`] datagrams: at most that many ÷ the
    /// track's legs packets, at least one), each leg taking them together
    /// ([`Track::on_rtp_burst`]). Returns how many packets it took (at least one unless
    /// `packets` is empty); the caller sends what is queued and calls again with the rest.
    pub fn on_clear_rtp_run(
        &mut self,
        shard: &mut Shard,
        peer: PeerId,
        packets: &[&[u8]],
        now: Instant,
    ) -> usize {
        let ssrc_of = |p: &[u8]| {
            p.get(8..12)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let Some(first) = packets.first() else {
            return 0;
        };
        let Some(ssrc) = ssrc_of(first) else {
            self.stats.rtp_in += 1;
            self.stats.rtp_unknown_ssrc += 1;
            return 1;
        };
        let same = packets
            .iter()
            .take_while(|p| ssrc_of(p) == Some(ssrc))
            .count();
        let Some(&key) = self.by_ssrc.get(&(peer, ssrc)) else {
            self.stats.rtp_in += same as u64;
            self.stats.rtp_unknown_ssrc += same as u64;
            return same;
        };
        let legs = self
            .tracks
            .get(&key)
            .and_then(|t| t.track.as_ref())
            .map_or(1, |t| t.legs().len().max(1));
        let take = same.min((BURST_DATAGRAMS / legs).max(1));
        self.stats.rtp_in += take as u64;
        self.forward(shard, key, &packets[..take], now);
        take
    }

    /// Clear packets of track `key` (consecutive, one SSRC) to its legs.
    fn forward(&mut self, shard: &mut Shard, key: TrackKey, packets: &[&[u8]], now: Instant) {
        let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) else {
            self.stats.rtp_unknown_ssrc += packets.len() as u64;
            return;
        };
        let mut egress = Out {
            subs: &mut self.subs,
            tx: &mut self.tx,
            now,
            stats: &mut self.stats,
        };
        let outages = track.stats().outages;
        track.on_rtp_burst(packets, now, &mut egress);
        self.stats.outages += track.stats().outages - outages;
        let pli = track.poll_keyframe_request(now);
        if let Some(t) = track.poll_timeout() {
            self.tracks_timeout = Some(self.tracks_timeout.map_or(t, |c| c.min(t)));
        }
        if pli {
            self.send_pli(shard, key, now);
        }
    }

    fn on_rtcp(
        &mut self,
        shard: &mut Shard,
        peer: PeerId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let publisher = self.publishers.contains_key(&peer);
        for p in packets {
            let any = p.as_any();
            if let Some(sr) = any.downcast_ref::<RtcSenderReport>() {
                if publisher {
                    if let Some(&key) = self.by_ssrc.get(&(peer, sr.ssrc)) {
                        self.stats.sender_reports_in += 1;
                        if let Some(track) =
                            self.tracks.get_mut(&key).and_then(|t| t.track.as_mut())
                        {
                            track.on_sender_report(Ssrc(sr.ssrc), sr.ntp_time, sr.rtp_time, now);
                        }
                    }
                }
                for r in &sr.reports {
                    self.on_report_block(peer, r.ssrc, r.last_sender_report, r.delay, now);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                for r in &rr.reports {
                    self.on_report_block(peer, r.ssrc, r.last_sender_report, r.delay, now);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                let Some(&key) = self.leg_by_ssrc.get(&(peer, nack.media_ssrc)) else {
                    continue;
                };
                self.stats.nacks_in += 1;
                let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) else {
                    continue;
                };
                let mut egress = Out {
                    subs: &mut self.subs,
                    tx: &mut self.tx,
                    now,
                    stats: &mut self.stats,
                };
                track.on_nack(LegId(peer.0), &nack.nacks, now, &mut egress);
            } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.on_keyframe_request(peer, pli.media_ssrc, now);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for e in &fir.fir {
                    self.on_keyframe_request(peer, e.ssrc, now);
                }
            }
        }
        self.poll_keyframes(shard, now);
        self.poll_sender_reports(shard, now);
    }

    fn on_report_block(&mut self, sub: PeerId, ssrc: u32, lsr: u32, dlsr: u32, now: Instant) {
        let Some(&key) = self.leg_by_ssrc.get(&(sub, ssrc)) else {
            return;
        };
        self.stats.receiver_reports_in += 1;
        if let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) {
            track.on_receiver_report(LegId(sub.0), lsr, dlsr, now);
        }
    }

    fn on_keyframe_request(&mut self, sub: PeerId, ssrc: u32, now: Instant) {
        let Some(&key) = self.leg_by_ssrc.get(&(sub, ssrc)) else {
            return;
        };
        self.stats.keyframe_requests_in += 1;
        tracing::debug!(
            subscriber = sub.0,
            ssrc,
            "keyframe request from a subscriber"
        );
        if let Some(track) = self.tracks.get_mut(&key).and_then(|t| t.track.as_mut()) {
            track.on_keyframe_request(LegId(sub.0), now);
        }
    }

    fn send_pli(&mut self, shard: &mut Shard, key: TrackKey, now: Instant) {
        let Some(t) = self.tracks.get(&key) else {
            return;
        };
        let Some(ssrc) = t.track.as_ref().and_then(Track::source).or(t.ssrc) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: self.config.rtcp_ssrc.0,
            media_ssrc: ssrc.0,
        };
        tracing::debug!(
            publisher = t.publisher.0,
            ssrc = ssrc.0,
            "PLI sent to the publisher"
        );
        match shard.write_rtcp(t.publisher, vec![Box::new(pli)], now) {
            Ok(()) => self.stats.plis_sent += 1,
            Err(_) => self.stats.rtcp_errors += 1,
        }
    }

    fn poll_keyframes(&mut self, shard: &mut Shard, now: Instant) {
        let due: Vec<TrackKey> = self
            .tracks
            .iter_mut()
            .filter_map(|(k, t)| {
                t.track
                    .as_mut()
                    .is_some_and(|tr| tr.poll_keyframe_request(now))
                    .then_some(*k)
            })
            .collect();
        for key in due {
            self.send_pli(shard, key, now);
        }
    }

    fn poll_sender_reports(&mut self, shard: &mut Shard, now: Instant) {
        let mut reports = std::mem::take(&mut self.reports);
        for t in self.tracks.values_mut() {
            if let Some(track) = t.track.as_mut() {
                track.poll_sender_reports(now, |leg, sr| reports.push((leg, *sr)));
            }
        }
        for (leg, sr) in reports.drain(..) {
            match shard.write_rtcp(PeerId(leg.0), vec![Box::new(sr.to_rtc())], now) {
                Ok(()) => self.stats.srs_sent += 1,
                Err(_) => self.stats.rtcp_errors += 1,
            }
        }
        self.reports = reports;
    }

    /// When [`Forwarder::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.tracks_timeout,
            self.next_path_refresh.filter(|_| !self.subs.is_empty()),
            self.starts.iter().map(|s| s.0).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Keyframe requests and sender reports that are due; subscribers' paths re-read.
    pub fn handle_timeout(&mut self, shard: &mut Shard, now: Instant) {
        if self.next_path_refresh.is_none_or(|t| t <= now) {
            let mut unready = Vec::new();
            for (id, sub) in &mut self.subs {
                if let Ok(path) = shard.path(*id) {
                    sub.path = Some((shard.local_of(path.announced), path.remote, path.protocol));
                }
                if sub.sealer.is_none() && !sub.keys_failed {
                    unready.push(*id);
                }
            }
            // Keys that were not there yet at `Connected`, a path that came late.
            for id in unready {
                if shard.state(id) == Some(PeerState::Connected) {
                    self.try_keys(shard, id, now);
                }
            }
            let opening: Vec<PeerId> = self.opening.keys().copied().collect();
            for id in opening {
                if shard.state(id) == Some(PeerState::Connected) {
                    self.try_opener(shard, id, now);
                }
            }
            self.attach_pending(now);
            self.next_path_refresh = Some(now + self.config.path_refresh);
        }
        self.start_due(now);
        self.poll_keyframes(shard, now);
        self.poll_sender_reports(shard, now);
        self.recompute_timeout();
    }

    fn recompute_timeout(&mut self) {
        self.tracks_timeout = self
            .tracks
            .values()
            .filter_map(|t| t.track.as_ref()?.poll_timeout())
            .min();
    }

    /// The next sealed datagram to send (then [`Forwarder::pop_transmit`]).
    pub fn peek_transmit(&self) -> Option<Datagram<'_>> {
        self.tx
            .queue
            .front()
            .map(|((local, dest, protocol), buf, len)| Datagram {
                local: *local,
                dest: *dest,
                protocol: *protocol,
                bytes: &buf[..*len],
            })
    }

    /// Drops the datagram [`Forwarder::peek_transmit`] gave (its buffer goes back to the pool).
    pub fn pop_transmit(&mut self) {
        if let Some((_, buf, _)) = self.tx.queue.pop_front() {
            self.tx.free.push(buf);
        }
    }

    /// The queued datagrams in order, for a driver that sends a batch at a time
    /// ([`Forwarder::pop_transmits`] then drops the ones it sent).
    pub fn transmits(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.tx
            .queue
            .iter()
            .map(|((local, dest, protocol), buf, len)| Datagram {
                local: *local,
                dest: *dest,
                protocol: *protocol,
                bytes: &buf[..*len],
            })
    }

    /// Drops the first `n` queued datagrams (their buffers go back to the pool).
    pub fn pop_transmits(&mut self, n: usize) {
        for _ in 0..n {
            self.pop_transmit();
        }
    }

    /// Datagrams queued.
    pub fn queued(&self) -> usize {
        self.tx.queue.len()
    }

    /// The track a publisher's section feeds, if open (for tests and stats).
    pub fn track(&self, publisher: PeerId, mid: &Mid) -> Option<&Track> {
        let key = self.by_mid.get(&(publisher, mid.clone()))?;
        self.tracks.get(key)?.track.as_ref()
    }

    /// How many of a subscriber's legs are attached.
    pub fn attached_legs(&self, sub: PeerId) -> usize {
        self.subs.get(&sub).map_or(0, |s| {
            s.legs.iter().filter(|l| l.attached.is_some()).count()
        })
    }
}

/// The track's egress: pooled buffers, the subscriber's sealer and path.
struct Out<'a> {
    subs: &'a mut PeerMap<Sub>,
    tx: &'a mut TxQueue,
    now: Instant,
    stats: &'a mut ForwardStats,
}

impl Egress for Out<'_> {
    fn outbound(&mut self, leg: LegId) -> Option<Outbound<'_>> {
        let sub = self.subs.get_mut(&PeerId(leg.0))?;
        let sealer = sub.sealer.as_ref()?;
        sub.path?;
        if self.tx.queue.len() >= self.tx.cap {
            self.stats.queue_full += 1;
            return None;
        }
        let room = self.tx.size.saturating_sub(sealer.overhead());
        let buf = self.tx.buffer();
        Some(Outbound {
            buf: &mut buf[..room],
            transport_seq: &mut sub.transport_seq,
            abs_send_time: abs_send_time(self.now.saturating_duration_since(sub.epoch)),
        })
    }

    fn touch(&self, leg: LegId, ssrc: Ssrc, seq: SeqNo) {
        if let Some(sealer) = self
            .subs
            .get(&PeerId(leg.0))
            .and_then(|s| s.sealer.as_ref())
        {
            sealer.touch(ssrc, seq);
        }
    }

    fn commit(&mut self, leg: LegId, sent: Sent) {
        let Some(sub) = self.subs.get_mut(&PeerId(leg.0)) else {
            return;
        };
        let (Some(sealer), Some(path)) = (sub.sealer.as_mut(), sub.path) else {
            return;
        };
        let Some(mut buf) = self.tx.current.take() else {
            return;
        };
        let sealed = match sent.kind {
            // Same bytes, same index, same ROC as the first time: the same SRTP packet.
            SendKind::Retransmission => sealer.reseal(&mut buf, sent.len),
            SendKind::Media | SendKind::Rtx => sealer.seal(&mut buf, sent.len, sent.window),
        };
        match sealed {
            Ok(n) => {
                self.stats.queued += 1;
                if sent.kind != SendKind::Media {
                    self.stats.retransmitted += 1;
                }
                self.tx.queue.push_back((path, buf, n));
            }
            Err(_) => {
                self.stats.seal_errors += 1;
                self.tx.current = Some(buf);
            }
        }
    }
}

/// The SRTP keys `capture` recorded for `peer`, read with the profile the shard says its
/// handshake negotiated (`NotYet` before the handshake completed).
fn captured_keys(
    capture: &SrtpKeyCapture,
    shard: &mut Shard,
    peer: PeerId,
    now: Instant,
) -> Result<SrtpKeys, KeyCaptureError> {
    match shard.srtp_profile(peer, now) {
        Some(Ok(profile)) => capture.keys(profile),
        Some(Err(e)) => Err(e),
        None => Err(KeyCaptureError::NotYet),
    }
}

/// What a subscriber of every track of a publisher asks the shard for: one [`OutTrack`] per
/// published track (its first codec, the publisher's preferred; SSRCs chosen by the shard) and
/// the matching [`Source`]s, in the same order, for [`Forwarder::add_subscriber`].
pub fn subscription_of(
    publisher: PeerId,
    answer: &PublisherAnswer,
    stream_id: &str,
) -> (Vec<OutTrack>, Vec<Source>) {
    answer
        .tracks
        .iter()
        .filter_map(|t| {
            let codec = t.codecs.first()?.clone();
            Some((
                OutTrack {
                    kind: t.kind,
                    codec,
                    ssrc: None,
                    stream_id: stream_id.to_owned(),
                    track_id: format!("{stream_id}-{}", t.mid),
                },
                Source {
                    publisher,
                    mid: t.mid.clone(),
                },
            ))
        })
        .unzip()
}

/// The leg of subscription `l` on a track of `kind` with the publisher's `codecs` and `extmap`.
fn leg_config(
    kind: MediaKind,
    codecs: &[CodecSpec],
    extmap: &[(u8, String)],
    l: &SubLeg,
    history: usize,
) -> LegConfig {
    let clock_rate = codecs.first().map_or(90_000, |c| c.clock_rate);
    let mut cfg = LegConfig::new(l.sent.ssrc, clock_rate);
    cfg.payload_types = codecs
        .iter()
        .filter_map(|c| {
            let theirs = l.sent.codecs.iter().find(|s| s.same_format(c))?;
            Some(PtMap {
                publisher: c.pt,
                subscriber: theirs.pt,
                rtx: None,
            })
        })
        .collect();
    if cfg.payload_types.is_empty() {
        // The shard matched the track's codec by format already; keep it forwarding.
        if let Some(c) = codecs.first() {
            cfg.payload_types.push(PtMap {
                publisher: c.pt,
                subscriber: l.sent.pt,
                rtx: None,
            });
        }
    }
    let publisher: Vec<(u8, &str)> = extmap.iter().map(|(i, u)| (*i, u.as_str())).collect();
    let subscriber: Vec<(u8, &str)> = l.extmap.iter().map(|(i, u)| (*i, u.as_str())).collect();
    cfg.extensions = extension_rules(&publisher, &subscriber);
    cfg.mid = Some(l.sent.mid.clone());
    cfg.gate_on_keyframes = kind == MediaKind::Video
        && codecs
            .iter()
            .any(|c| Codec::from_encoding_name(encoding_name(&c.mime)).is_gateable());
    cfg.first_seq = SeqNo(rand::random());
    cfg.first_timestamp = rand::random();
    cfg.first_rtx_seq = SeqNo(rand::random());
    cfg.history = match kind {
        // Never NACKed (no `nack` feedback for audio in our answers): the history only maps
        // reordered packets to the numbers reserved for them, a few packets deep.
        MediaKind::Audio => 16,
        _ => u16::try_from(history).unwrap_or(nack_ring::VIDEO_CAPACITY),
    };
    cfg
}

fn encoding_name(mime: &str) -> &str {
    mime.split_once('/').map_or(mime, |(_, n)| n)
}

/// The `a=extmap` lines of an SDP by section mid: (id, URI).
pub fn extmaps(sdp: &str) -> HashMap<String, Vec<(u8, String)>> {
    let mut out: HashMap<String, Vec<(u8, String)>> = HashMap::new();
    let mut section: Vec<(u8, String)> = Vec::new();
    let mut mid: Option<String> = None;
    let mut flush = |mid: &mut Option<String>, section: &mut Vec<(u8, String)>| {
        if let Some(m) = mid.take() {
            out.insert(m, std::mem::take(section));
        }
        section.clear();
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mut mid, &mut section);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(rest) = line.strip_prefix("a=extmap:") {
            let mut parts = rest.split_whitespace();
            let id = parts
                .next()
                .and_then(|i| i.split('/').next())
                .and_then(|i| i.parse::<u8>().ok());
            if let (Some(id), Some(uri)) = (id, parts.next()) {
                section.push((id, uri.to_owned()));
            }
        }
    }
    flush(&mut mid, &mut section);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extmaps_are_read_per_mid() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=extmap:1 urn:a\r\na=extmap:3/sendonly urn:b\r\nm=video 9 X 96\r\na=extmap:4 urn:c\r\na=mid:1\r\n";
        let m = extmaps(sdp);
        assert_eq!(
            m.get("0"),
            Some(&vec![(1, "urn:a".to_owned()), (3, "urn:b".to_owned())])
        );
        assert_eq!(m.get("1"), Some(&vec![(4, "urn:c".to_owned())]));
    }
}
