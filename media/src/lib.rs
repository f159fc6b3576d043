//! In-process SFU: WebRTC peer connections (webrtc-rs 0.21) and RTP fan-out.
//!
//! Two engines serve the same [`MediaRouter`] API, chosen by [`MediaConfig::engine`]: the
//! sharded engine of [`engine`] (the default: shard threads, one UDP port each, sans-IO `rtc`
//! peer connections, our own forwarding path) and the per-connection engine of the modules
//! below (one webrtc-rs peer connection, UDP port and set of tasks per endpoint), which stays
//! selectable until it is deleted. The rest of this page describes the per-connection engine.
//!
//! Owns publisher endpoints (one peer connection per publishing client: the client offers, we
//! answer), subscriber endpoints (one peer connection per subscription, fed from a publisher's
//! tracks), loopback, ICE, keyframe requests and the forwarding hot path. Does not own rooms,
//! users, JSON or any Kurento vocabulary: callers address endpoints by an opaque [`EndpointKey`]
//! and exchange SDP and ICE candidates as plain strings.
//!
//! Data flow: [`MediaRouter::publish`] / [`MediaRouter::subscribe`] take an SDP offer and return
//! the SDP answer; afterwards the endpoint reports local ICE candidates and failures as
//! [`MediaEvent`]s on the channel given at creation. [`MediaRouter::release`] tears an endpoint
//! down (a publisher's release also ends every subscription fed by it).
//!
//! Modules: `config` (settings), `ports` (UDP port pool), `session` (the only place building
//! peer connections; event handler), `codecs` (codec set, SDP sections, payload-type maps),
//! [`fanout`] (the pure hot path), `publisher` (ingest tracks), `subscriber` (egress tracks),
//! `keyframe` (PLI/FIR interceptor and rate limiter), `stats` (counters).

mod codecs;
mod config;
pub mod engine;
pub mod fanout;
mod keyframe;
mod ports;
mod publisher;
mod session;
mod stats;
mod subscriber;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::RTCSessionDescription;
use webrtc::rtp_transceiver::RtpSender;

use crate::codecs::{is_supported, media_sections, Direction, Kind, MediaSection};
use crate::fanout::SlotId;
use crate::publisher::{spawn_track_hub, PublisherEndpoint, PublisherHooks, DATA_QUEUE_CAPACITY};
use crate::session::{
    apply_candidate, spawn_event_forwarder, BuildError, RoleHooks, RtpFlow, Session, SessionFactory,
};
use crate::stats::Counters;
use crate::subscriber::{attach_output, Output, Pause, SubscriberEndpoint, SubscriberHooks};

pub use crate::config::{EngineKind, MediaConfig};
pub use crate::fanout::DropReason;
pub use crate::stats::MediaStats;

/// Opaque endpoint identifier chosen by the caller; unique for the router's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey(pub u64);

/// One ICE candidate as carried by signaling (`candidate:` attribute value, mid, m-line index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceCandidate {
    /// The `candidate:...` attribute value; empty for the end-of-candidates marker.
    pub candidate: String,
    /// The media id this candidate belongs to, if known.
    pub sdp_mid: Option<String>,
    /// The m-line index this candidate belongs to, if known.
    pub sdp_m_line_index: Option<u16>,
}

/// Something an endpoint reports after its creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The server gathered a local ICE candidate for this endpoint (trickle ICE).
    LocalCandidate {
        /// The endpoint that gathered it.
        endpoint: EndpointKey,
        /// The candidate.
        candidate: IceCandidate,
    },
    /// The endpoint's peer connection is up (ICE and DTLS done); reported once.
    Connected {
        /// The endpoint that connected.
        endpoint: EndpointKey,
    },
    /// The endpoint failed after negotiation (ICE/DTLS failure, peer connection closed by the
    /// network). The description is short and safe to show to a client.
    Failed {
        /// The endpoint that failed.
        endpoint: EndpointKey,
        /// A short, client-safe description.
        description: String,
    },
}

/// Why a publish failed. Display texts are short and client-safe.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The media engine is not available.
    #[error("media not available")]
    Unavailable,
    /// The offer is not usable SDP (unparseable, no media section, section without mid).
    #[error("invalid SDP offer: {0}")]
    InvalidOffer(String),
    /// An endpoint with this key already exists (or is being negotiated).
    #[error("endpoint already exists")]
    AlreadyExists,
    /// Every UDP port of the configured range is in use (or none could be bound).
    #[error("no media port available")]
    NoPortAvailable,
    /// webrtc-rs rejected the offer or could not produce an answer.
    #[error("SDP negotiation failed: {0}")]
    Negotiation(String),
    /// The endpoint was released while its offer was being processed.
    #[error("endpoint released during negotiation")]
    Released,
}

/// Why a subscribe failed. Display texts are short and client-safe.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The media engine is not available.
    #[error("media not available")]
    Unavailable,
    /// The offer is not usable SDP (unparseable, no media section, section without mid).
    #[error("invalid SDP offer: {0}")]
    InvalidOffer(String),
    /// An endpoint with this key already exists (or is being negotiated).
    #[error("endpoint already exists")]
    AlreadyExists,
    /// No (fully negotiated) publisher endpoint has this key, or it was released meanwhile.
    #[error("publisher not found")]
    PublisherNotFound,
    /// Every UDP port of the configured range is in use (or none could be bound).
    #[error("no media port available")]
    NoPortAvailable,
    /// The subscriber's offer shares no codec with any of the publisher's tracks.
    #[error("no common codec with the publisher")]
    NoCommonCodec,
    /// webrtc-rs rejected the offer or could not produce an answer.
    #[error("SDP negotiation failed: {0}")]
    Negotiation(String),
    /// The endpoint was released while its offer was being processed.
    #[error("endpoint released during negotiation")]
    Released,
}

/// How many remote candidates are buffered for an endpoint whose offer is still being
/// processed. Full policy: further candidates are dropped with a warning (a client sends a
/// handful; 64 is only reached by a misbehaving one).
const MAX_EARLY_CANDIDATES: usize = 64;

enum Entry {
    /// publish/subscribe in progress; remote candidates are buffered until it completes.
    Negotiating {
        token: u64,
        candidates: Vec<IceCandidate>,
    },
    Publisher(Arc<PublisherEndpoint>),
    Subscriber(Arc<SubscriberEndpoint>),
}

/// Default time a new endpoint's peer connection has to reach `connected` before the endpoint
/// reports [`MediaEvent::Failed`] (see [`MediaRouter::set_connect_timeout`]).
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct Inner {
    factory: SessionFactory,
    /// Connect watchdog timeout, in milliseconds.
    connect_timeout_ms: AtomicU64,
    counters: Arc<Counters>,
    endpoints: Mutex<HashMap<EndpointKey, Entry>>,
    /// Source of slot ids, data-subscription ids and reservation tokens.
    next_id: AtomicU64,
}

/// Cheap-to-clone handle to the media engine.
#[derive(Clone)]
pub struct MediaRouter {
    inner: Arc<Inner>,
    /// Set when [`MediaConfig::engine`] is [`EngineKind::Sharded`]: every call goes there.
    sharded: Option<Arc<engine::sharded::ShardedEngine>>,
}

impl std::fmt::Debug for MediaRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRouter")
            .field("config", &self.inner.factory.config)
            .finish_non_exhaustive()
    }
}

/// What a failed negotiation must tear down.
struct Partial {
    session: Session,
    forwarder: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    outputs: Vec<Output>,
}

impl Partial {
    async fn abort(self) {
        for o in self.outputs {
            o.shutdown().await;
        }
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.session.close().await;
        self.forwarder.abort();
        let _ = self.forwarder.await;
    }
}

fn parse_offer(offer: String) -> Result<(RTCSessionDescription, Vec<MediaSection>), String> {
    let desc = RTCSessionDescription::offer(offer).map_err(|_| "unparseable SDP".to_owned())?;
    let parsed = desc.unmarshal().map_err(|_| "unparseable SDP".to_owned())?;
    codecs::check_complexity(&parsed)?;
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
    Ok((desc, sections))
}

fn parse_answer(sdp: &str) -> Vec<MediaSection> {
    match rtc::sdp::SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())) {
        Ok(sd) => media_sections(&sd),
        Err(e) => {
            warn!(error = %e, "own answer not parseable");
            Vec::new()
        }
    }
}

fn new_output_track(
    stream_id: &str,
    track_id: String,
    kind: Kind,
    codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
) -> (Arc<TrackLocalStaticRTP>, u32) {
    let ssrc = rand::random::<u32>();
    let track = TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.clone(),
        track_id,
        kind.rtp_kind(),
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    ));
    (Arc::new(track), ssrc)
}

impl MediaRouter {
    /// Creates the router with the engine `config` names; the sharded engine binds its UDP
    /// sockets here (an error if it cannot). Must be called inside a Tokio runtime.
    pub fn start(config: MediaConfig) -> std::io::Result<Self> {
        let sharded = match config.engine {
            EngineKind::PerConnection => None,
            EngineKind::Sharded => Some(Arc::new(engine::sharded::ShardedEngine::start(
                &engine::sharded::ShardedConfig {
                    shards: config.shards,
                    bind_ip: config.bind_ip,
                    public_ips: config.public_ips.clone(),
                    udp_port: config.udp_port,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                },
            )?)),
        };
        Ok(Self {
            sharded,
            ..Self::per_connection(config)
        })
    }

    /// Creates a router on the per-connection engine, whatever [`MediaConfig::engine`] says
    /// (it binds nothing up front, so it cannot fail). Must be called inside a Tokio runtime.
    pub fn new(config: MediaConfig) -> Self {
        Self::per_connection(config)
    }

    fn per_connection(config: MediaConfig) -> Self {
        let counters = Arc::new(Counters::default());
        let ports = ports::PortPool::new(config.port_min, config.port_max, Arc::clone(&counters));
        Self {
            inner: Arc::new(Inner {
                factory: SessionFactory {
                    config,
                    ports,
                    counters: Arc::clone(&counters),
                },
                counters,
                endpoints: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                connect_timeout_ms: AtomicU64::new(DEFAULT_CONNECT_TIMEOUT.as_millis() as u64),
            }),
            sharded: None,
        }
    }

    /// The UDP addresses of the sharded engine's sockets (empty on the per-connection engine).
    pub fn shard_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.sharded
            .as_ref()
            .map_or_else(Vec::new, |e| e.local_addrs())
    }

    /// Sets how long a new endpoint's peer connection may take to connect (ICE + DTLS) before
    /// the endpoint reports [`MediaEvent::Failed`] (default [`DEFAULT_CONNECT_TIMEOUT`]).
    /// Applies to endpoints created afterwards.
    pub fn set_connect_timeout(&self, timeout: std::time::Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.connect_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.inner.connect_timeout_ms.load(Ordering::Relaxed))
    }

    /// A snapshot of the media counters (live objects and traffic totals).
    pub fn stats(&self) -> MediaStats {
        if let Some(e) = &self.sharded {
            return e.stats();
        }
        self.inner.counters.snapshot()
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EndpointKey, Entry>> {
        // Poisoning only means a panic elsewhere while holding the lock; every critical section
        // leaves the map consistent (single insert/remove), so keep going.
        self.inner
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `key` for a negotiation; `None` if it is taken.
    fn reserve(&self, key: EndpointKey) -> Option<u64> {
        let token = self.next_id();
        let mut map = self.lock();
        if map.contains_key(&key) {
            return None;
        }
        map.insert(
            key,
            Entry::Negotiating {
                token,
                candidates: Vec::new(),
            },
        );
        Some(token)
    }

    /// Drops a reservation if it is still ours.
    fn unreserve(&self, key: EndpointKey, token: u64) {
        let mut map = self.lock();
        if matches!(map.get(&key), Some(Entry::Negotiating { token: t, .. }) if *t == token) {
            map.remove(&key);
        }
    }

    /// Replaces our reservation by `entry`; returns the buffered candidates, or `None` if the
    /// reservation is gone (released meanwhile) or `still_valid` says no (checked under the
    /// same lock).
    fn commit(
        &self,
        key: EndpointKey,
        token: u64,
        entry: Entry,
        still_valid: impl FnOnce(&HashMap<EndpointKey, Entry>) -> bool,
    ) -> Option<Vec<IceCandidate>> {
        let mut map = self.lock();
        let ours =
            matches!(map.get(&key), Some(Entry::Negotiating { token: t, .. }) if *t == token);
        if !ours {
            return None;
        }
        if !still_valid(&map) {
            map.remove(&key);
            return None;
        }
        match map.insert(key, entry) {
            Some(Entry::Negotiating { candidates, .. }) => Some(candidates),
            _ => Some(Vec::new()),
        }
    }

    /// Creates a publisher endpoint for `offer` and returns the SDP answer.
    ///
    /// Without `loopback` the answer receives only; with it, every send-receive audio/video
    /// section of the offer also gets the client's own media back on the same connection.
    pub async fn publish(
        &self,
        endpoint: EndpointKey,
        offer: String,
        loopback: bool,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, PublishError> {
        if let Some(e) = &self.sharded {
            return e.publish(endpoint, offer, loopback, events).await;
        }
        let (desc, sections) = parse_offer(offer).map_err(PublishError::InvalidOffer)?;
        let token = self.reserve(endpoint).ok_or(PublishError::AlreadyExists)?;
        let res = self
            .publish_inner(endpoint, token, desc, sections, loopback, events)
            .await;
        if res.is_err() {
            self.unreserve(endpoint, token);
        }
        res
    }

    async fn publish_inner(
        &self,
        endpoint: EndpointKey,
        token: u64,
        desc: RTCSessionDescription,
        sections: Vec<MediaSection>,
        loopback: bool,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, PublishError> {
        let counters = &self.inner.counters;
        let hooks = Arc::new(PublisherHooks::new(endpoint, Arc::clone(counters)));
        let flow = if loopback {
            RtpFlow::Both
        } else {
            RtpFlow::Receive
        };
        let mut partial = self
            .start_session(endpoint, events, &sections, flow, hooks.clone())
            .await
            .map_err(|BuildError::NoPort| PublishError::NoPortAvailable)?;
        match self
            .publish_negotiate(endpoint, desc, &sections, loopback, &hooks, &mut partial)
            .await
        {
            Ok((answer, hubs, loop_outputs)) => {
                let Partial {
                    session,
                    forwarder,
                    tasks,
                    outputs,
                } = partial;
                debug_assert!(outputs.is_empty());
                let ep = Arc::new(PublisherEndpoint::new(
                    endpoint, session, hubs, tasks, hooks, forwarder, counters,
                ));
                ep.set_loopback(loop_outputs);
                let pc = Arc::clone(&ep.session.pc);
                match self.commit(endpoint, token, Entry::Publisher(Arc::clone(&ep)), |_| true) {
                    Some(early) => {
                        ep.session.start_watchdog(self.connect_timeout());
                        for c in early {
                            apply_candidate(&pc, endpoint, c).await;
                        }
                        info!(
                            endpoint = endpoint.0,
                            loopback,
                            tracks = ep.hubs.len(),
                            "publisher ready"
                        );
                        Ok(answer)
                    }
                    None => {
                        ep.shutdown().await;
                        Err(PublishError::Released)
                    }
                }
            }
            Err(e) => {
                for h in hooks.abort_tasks() {
                    let _ = h.await;
                }
                partial.abort().await;
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn publish_negotiate(
        &self,
        endpoint: EndpointKey,
        desc: RTCSessionDescription,
        sections: &[MediaSection],
        loopback: bool,
        hooks: &Arc<PublisherHooks>,
        partial: &mut Partial,
    ) -> Result<(String, Vec<Arc<publisher::TrackHub>>, Vec<Output>), PublishError> {
        let pc = Arc::clone(&partial.session.pc);
        // Loopback output tracks must exist before the offer is applied, so the send-receive
        // sections pick them up and the answer becomes sendrecv.
        let mut loop_tracks: Vec<(Kind, Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>, u32)> =
            Vec::new();
        if loopback {
            let stream_id = format!("roomd-loopback-{}", endpoint.0);
            for (i, s) in sections.iter().enumerate() {
                if !matches!(s.kind, Kind::Audio | Kind::Video)
                    || s.rejected
                    || s.direction != Direction::SendRecv
                {
                    continue;
                }
                let Some(codec) = s.codecs.iter().find(|c| c.is_media() && is_supported(c)) else {
                    continue;
                };
                let (track, ssrc) = new_output_track(
                    &stream_id,
                    format!("{stream_id}-{}-{i}", s.kind.as_str()),
                    s.kind,
                    codec.to_rtc_codec(s.kind),
                );
                let sender = pc
                    .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                    .await
                    .map_err(|e| {
                        PublishError::Negotiation(session::short_error("loopback track", &e))
                    })?;
                loop_tracks.push((s.kind, track, sender, ssrc));
            }
        }

        session::set_offer(&partial.session, desc)
            .await
            .map_err(PublishError::Negotiation)?;
        let answer = session::answer(
            &partial.session,
            self.inner.factory.config.public_ips.first().copied(),
        )
        .await
        .map_err(PublishError::Negotiation)?;

        let cfg = &self.inner.factory.config;
        let mut hubs = Vec::new();
        for s in parse_answer(&answer) {
            if !matches!(s.kind, Kind::Audio | Kind::Video) || s.rejected || !s.direction.receives()
            {
                continue;
            }
            let (hub, task) = spawn_track_hub(
                hooks,
                s.kind,
                s.mid.clone(),
                s.codecs.clone(),
                cfg.keyframe_request_interval,
                &self.inner.counters,
            );
            partial.tasks.push(task);
            hubs.push(hub);
        }

        let mut outputs = Vec::new();
        let mut used = vec![false; hubs.len()];
        for (kind, track, sender, ssrc) in loop_tracks {
            let Some(i) = (0..hubs.len()).find(|i| !used[*i] && hubs[*i].kind == kind) else {
                continue;
            };
            used[i] = true;
            if let Some(o) = attach_output(
                &self.inner.counters,
                &hubs[i],
                track,
                &sender,
                ssrc,
                SlotId(self.next_id()),
                Arc::new(Pause::default()),
                partial.session.connected_watch(),
            )
            .await
            {
                outputs.push(o);
            }
        }
        Ok((answer, hubs, outputs))
    }

    /// Creates a subscriber endpoint fed by `publisher` and returns the SDP answer.
    ///
    /// The answer sends one track per publisher track the offer can receive (matched by kind,
    /// in section order), each with its own random SSRC; forwarding starts when the publisher's
    /// packets arrive. If the offer has a data-channel section, the publisher's data-channel
    /// messages are relayed to the channels the subscribing client opens.
    pub async fn subscribe(
        &self,
        endpoint: EndpointKey,
        publisher: EndpointKey,
        offer: String,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, SubscribeError> {
        if let Some(e) = &self.sharded {
            return e.subscribe(endpoint, publisher, offer, events).await;
        }
        let (desc, sections) = parse_offer(offer).map_err(SubscribeError::InvalidOffer)?;
        if endpoint == publisher {
            return Err(SubscribeError::AlreadyExists);
        }
        let publ = match self.lock().get(&publisher) {
            Some(Entry::Publisher(p)) => Arc::clone(p),
            _ => return Err(SubscribeError::PublisherNotFound),
        };
        let token = self
            .reserve(endpoint)
            .ok_or(SubscribeError::AlreadyExists)?;
        let res = self
            .subscribe_inner(endpoint, token, publ, desc, sections, events)
            .await;
        if res.is_err() {
            self.unreserve(endpoint, token);
        }
        res
    }

    async fn subscribe_inner(
        &self,
        endpoint: EndpointKey,
        token: u64,
        publ: Arc<PublisherEndpoint>,
        desc: RTCSessionDescription,
        sections: Vec<MediaSection>,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, SubscribeError> {
        let counters = &self.inner.counters;
        let hooks = Arc::new(SubscriberHooks::new(Arc::clone(counters)));
        let mut partial = self
            .start_session(endpoint, events, &sections, RtpFlow::Send, hooks.clone())
            .await
            .map_err(|BuildError::NoPort| SubscribeError::NoPortAvailable)?;
        let pause = Arc::new(Pause::default());
        let result = self
            .subscribe_negotiate(endpoint, &publ, desc, &sections, &pause, &mut partial)
            .await;
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                for h in hooks.abort_tasks() {
                    let _ = h.await;
                }
                partial.abort().await;
                return Err(e);
            }
        };

        let data = if sections
            .iter()
            .any(|s| s.kind == Kind::Application && !s.rejected)
        {
            let (tx, rx) = mpsc::channel(DATA_QUEUE_CAPACITY);
            hooks.spawn_data_sink(rx);
            let id = self.next_id();
            publ.hooks.data.add(id, tx);
            Some((Arc::clone(&publ.hooks.data), id))
        } else {
            None
        };
        let Partial {
            session,
            forwarder,
            tasks,
            outputs,
        } = partial;
        debug_assert!(tasks.is_empty());
        let ep = Arc::new(SubscriberEndpoint::new(
            endpoint, publ.key, session, hooks, pause, outputs, data, forwarder, counters,
        ));
        let pc = Arc::clone(&ep.session.pc);
        let publisher_key = publ.key;
        let committed = self.commit(endpoint, token, Entry::Subscriber(Arc::clone(&ep)), |map| {
            matches!(map.get(&publisher_key), Some(Entry::Publisher(p)) if Arc::ptr_eq(p, &publ))
        });
        match committed {
            Some(early) => {
                ep.session.start_watchdog(self.connect_timeout());
                for c in early {
                    apply_candidate(&pc, endpoint, c).await;
                }
                info!(
                    endpoint = endpoint.0,
                    publisher = publisher_key.0,
                    "subscriber ready"
                );
                Ok(answer)
            }
            None => {
                ep.shutdown().await;
                let publisher_alive = matches!(
                    self.lock().get(&publisher_key),
                    Some(Entry::Publisher(p)) if Arc::ptr_eq(p, &publ)
                );
                Err(if publisher_alive {
                    SubscribeError::Released
                } else {
                    SubscribeError::PublisherNotFound
                })
            }
        }
    }

    async fn subscribe_negotiate(
        &self,
        endpoint: EndpointKey,
        publ: &Arc<PublisherEndpoint>,
        desc: RTCSessionDescription,
        sections: &[MediaSection],
        pause: &Arc<Pause>,
        partial: &mut Partial,
    ) -> Result<String, SubscribeError> {
        let pc = Arc::clone(&partial.session.pc);
        let stream_id = format!("roomd-{}", publ.key.0);
        // One send-only track per publisher track the offer can receive, matched by kind.
        let mut used = vec![false; sections.len()];
        let mut planned = Vec::new();
        for (hi, hub) in publ.hubs.iter().enumerate() {
            let Some(si) = (0..sections.len()).find(|i| {
                !used[*i]
                    && sections[*i].kind == hub.kind
                    && !sections[*i].rejected
                    && sections[*i].direction.receives()
            }) else {
                continue;
            };
            let Some(codec) = hub.primary_codec() else {
                continue;
            };
            used[si] = true;
            let (track, ssrc) = new_output_track(
                &stream_id,
                format!("{stream_id}-{}-{hi}", hub.kind.as_str()),
                hub.kind,
                codec.to_rtc_codec(hub.kind),
            );
            let transceiver = pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        // webrtc-rs pairs a send-receive offer section only with a
                        // send-receive transceiver; it is narrowed to send-only below.
                        direction: if sections[si].direction == Direction::SendRecv {
                            RTCRtpTransceiverDirection::Sendrecv
                        } else {
                            RTCRtpTransceiverDirection::Sendonly
                        },
                        streams: vec![stream_id.clone()],
                        send_encodings: vec![],
                    }),
                )
                .await
                .map_err(|e| {
                    SubscribeError::Negotiation(session::short_error("cannot add track", &e))
                })?;
            planned.push((hi, track, ssrc, transceiver));
        }

        session::set_offer(&partial.session, desc)
            .await
            .map_err(SubscribeError::Negotiation)?;
        // A send-receive offer would turn our transceivers send-receive; we only send.
        for (_, _, _, t) in &planned {
            if let Err(e) = t.set_direction(RTCRtpTransceiverDirection::Sendonly).await {
                debug!(endpoint = endpoint.0, error = %e, "cannot force sendonly");
            }
        }
        let answer = session::answer(
            &partial.session,
            self.inner.factory.config.public_ips.first().copied(),
        )
        .await
        .map_err(SubscribeError::Negotiation)?;

        let mut attached = 0usize;
        for (hi, track, ssrc, transceiver) in planned {
            let negotiated = matches!(transceiver.mid().await, Ok(Some(_)));
            let sender = match transceiver.sender().await {
                Ok(Some(s)) => s,
                _ => continue,
            };
            if !negotiated {
                continue;
            }
            let hub = &publ.hubs[hi];
            if let Some(o) = attach_output(
                &self.inner.counters,
                hub,
                track,
                &sender,
                ssrc,
                SlotId(self.next_id()),
                Arc::clone(pause),
                partial.session.connected_watch(),
            )
            .await
            {
                attached += 1;
                partial.outputs.push(o);
            }
        }
        let wants_media = sections
            .iter()
            .any(|s| matches!(s.kind, Kind::Audio | Kind::Video) && s.direction.receives());
        if attached == 0 && wants_media && !publ.hubs.is_empty() {
            return Err(SubscribeError::NoCommonCodec);
        }
        Ok(answer)
    }

    /// Adds a remote ICE candidate to an endpoint. Unknown endpoints and unusable candidates
    /// (mDNS `.local`, end-of-candidates) are ignored. Candidates for an endpoint whose
    /// publish/subscribe is still in progress are buffered and applied when it completes.
    pub async fn add_candidate(&self, endpoint: EndpointKey, candidate: IceCandidate) {
        if let Some(e) = &self.sharded {
            return e.add_candidate(endpoint, candidate).await;
        }
        if session::ignorable_candidate(&candidate) {
            debug!(endpoint = endpoint.0, "ignoring empty or mDNS candidate");
            return;
        }
        let pc = {
            let mut map = self.lock();
            match map.get_mut(&endpoint) {
                None => {
                    debug!(
                        endpoint = endpoint.0,
                        "candidate for unknown endpoint ignored"
                    );
                    return;
                }
                Some(Entry::Negotiating { candidates, .. }) => {
                    if candidates.len() < MAX_EARLY_CANDIDATES {
                        candidates.push(candidate);
                    } else {
                        warn!(endpoint = endpoint.0, "too many early candidates; dropped");
                    }
                    return;
                }
                Some(Entry::Publisher(p)) => Arc::clone(&p.session.pc),
                Some(Entry::Subscriber(s)) => Arc::clone(&s.session.pc),
            }
        };
        apply_candidate(&pc, endpoint, candidate).await;
    }

    /// Tears an endpoint down; a publisher's release also ends the subscriptions it feeds.
    /// Unknown endpoints are ignored. Returns once the peer connections are closed, their tasks
    /// ended and their ports returned.
    pub async fn release(&self, endpoint: EndpointKey) {
        if let Some(e) = &self.sharded {
            return e.release(endpoint).await;
        }
        let (publisher, subscribers) = {
            let mut map = self.lock();
            match map.remove(&endpoint) {
                None => {
                    debug!(endpoint = endpoint.0, "release of unknown endpoint ignored");
                    return;
                }
                Some(Entry::Negotiating { .. }) => {
                    // The in-flight publish/subscribe notices at commit and tears down itself.
                    return;
                }
                Some(Entry::Subscriber(s)) => (None, vec![s]),
                Some(Entry::Publisher(p)) => {
                    let keys: Vec<EndpointKey> = map
                        .iter()
                        .filter_map(|(k, e)| match e {
                            Entry::Subscriber(s) if s.publisher == endpoint => Some(*k),
                            _ => None,
                        })
                        .collect();
                    let subs = keys
                        .into_iter()
                        .filter_map(|k| match map.remove(&k) {
                            Some(Entry::Subscriber(s)) => Some(s),
                            _ => None,
                        })
                        .collect();
                    (Some(p), subs)
                }
            }
        };
        for s in subscribers {
            s.shutdown().await;
        }
        if let Some(p) = publisher {
            p.shutdown().await;
        }
    }

    /// Builds the peer connection of a new endpoint with its event forwarder; the shared
    /// first step of publish and subscribe.
    async fn start_session(
        &self,
        endpoint: EndpointKey,
        events: mpsc::Sender<MediaEvent>,
        sections: &[MediaSection],
        flow: RtpFlow,
        hooks: Arc<dyn RoleHooks>,
    ) -> Result<Partial, BuildError> {
        let (ev_tx, forwarder) = spawn_event_forwarder(&self.inner.counters, events);
        let first_mid = sections.first().and_then(|s| s.mid.clone());
        match self
            .inner
            .factory
            .build(endpoint, ev_tx, first_mid, flow, hooks)
            .await
        {
            Ok(session) => Ok(Partial {
                session,
                forwarder,
                tasks: Vec::new(),
                outputs: Vec::new(),
            }),
            Err(e) => {
                forwarder.abort();
                Err(e)
            }
        }
    }

    /// Releases every endpoint (graceful shutdown).
    pub async fn release_all(&self) {
        if let Some(e) = &self.sharded {
            return e.release_all().await;
        }
        let keys: Vec<EndpointKey> = self.lock().keys().copied().collect();
        for k in keys {
            self.release(k).await;
        }
    }

    /// Test hook: stops (or resumes) draining a subscriber's packet queues, simulating a
    /// subscriber that cannot keep up. Returns whether the subscriber exists.
    #[doc(hidden)]
    pub fn pause_subscriber(&self, endpoint: EndpointKey, paused: bool) -> bool {
        match self.lock().get(&endpoint) {
            Some(Entry::Subscriber(s)) => {
                s.pause.set(paused);
                true
            }
            _ => false,
        }
    }
}
