//! The engine behind [`crate::MediaRouter`]: the shard threads, the table of endpoints (which shard, which role, whose events), and one dispatcher thread per
//! shard that turns the shard's events into each endpoint's [`MediaEvent`]s.
//!
//! ```text
//!  MediaRouter::publish/subscribe/add_candidate/release
//!        │  (placement: the group of an EndpointKey, its high 32 bits, picks the shard;
//!        │   a subscriber goes where its publisher is)
//!        ▼
//!  ShardRuntime ──[commands, bounded]──▶ shard thread (socket, Shard, Forwarder, DataRelay)
//!                                              │
//!  endpoint's mpsc::Sender<MediaEvent> ◀── dispatcher thread ◀──[events, bounded]
//! ```
//!
//! Owns [`ShardedEngine`] and the offer and candidate checks made before a shard is asked.
//! Does not own negotiation (the shard's
//! `peer.rs`), forwarding (`forward.rs`), the data-channel relay (`data.rs`) or the socket loop
//! (`runtime.rs`).
//!
//! The contract (the crate documentation has it whole): a publisher's release also ends every
//! subscription it feeds; `Connected` is reported once per endpoint, `Failed` at most once and
//! never after a release; events stop when the endpoint is released (its sender is dropped).
//! Full policy of an endpoint's event queue (given by the caller): the dispatcher never
//! blocks the shard's events on one endpoint; an event that does not fit is dropped and
//! counted (`events_dropped`). Candidates are in the answer too, so a dropped candidate event
//! costs nothing; a dropped `Failed` is covered by the connect watchdog of the caller.
//!
//! Data channels: a subscriber whose offer has a data section receives its publisher's
//! data-channel messages on the channels its client opens (the shard's relay, `data.rs`);
//! `data_messages_relayed` and the `DataChannelDropped` drops come from its counters.
//!
//! Loopback (`doLoopback`) is the shard's: the publisher's answer sends its own media back on
//! the same connection (see `forward.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::codecs::{check_offer, Kind};
use super::forward::subscription_of;
use super::peer::{NegotiationError, PeerId, PublisherAnswer};
use super::runtime::{CommandSlot, RuntimeConfig, RuntimeEvent, RuntimeStats, ShardRuntime};
use super::shard::{FailReason, ShardError};
use crate::{
    DropReason, EndpointKey, IceCandidate, MediaConfig, MediaEvent, MediaStats, PublishError,
    SubscribeError,
};

/// Where an endpoint lives and whom it tells.
struct Endpoint {
    shard: usize,
    /// Set by publish/subscribe while negotiating; the endpoint is live once it is `None`.
    negotiating: Option<u64>,
    events: mpsc::Sender<MediaEvent>,
    connected: bool,
    role: Role,
}

enum Role {
    /// The answer's tracks, for the subscriptions to come.
    Publisher(Option<PublisherAnswer>),
    Subscriber {
        publisher: EndpointKey,
    },
}

struct Table {
    endpoints: HashMap<EndpointKey, Endpoint>,
    next_token: u64,
}

struct Shared {
    table: Mutex<Table>,
    events_dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent (single inserts and removes).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shard threads and their endpoints. See the module documentation.
pub struct ShardedEngine {
    runtimes: Vec<ShardRuntime>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShardedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedEngine")
            .field(
                "ports",
                &self
                    .runtimes
                    .iter()
                    .map(|r| r.local_addr())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ShardedEngine {
    /// Binds one socket per shard and starts the shard and dispatcher threads.
    pub fn start(config: &MediaConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                endpoints: HashMap::new(),
                next_token: 1,
            }),
            events_dropped: AtomicU64::new(0),
        });
        let mut runtimes = Vec::new();
        for i in 0..config.shards.max(1) {
            let port = if config.udp_port == 0 {
                0
            } else {
                u16::try_from(usize::from(config.udp_port) + i).map_err(|_| {
                    std::io::Error::other(format!(
                        "shard {i}: UDP port {} + {i} is beyond 65535",
                        config.udp_port
                    ))
                })?
            };
            let mut rc = RuntimeConfig::new(SocketAddr::new(config.bind_ip, port));
            rc.connect_timeout = config.connect_timeout;
            rc.udp_gso = config.udp_gso;
            rc.forward.keyframe_interval = config.keyframe_request_interval;
            // Port 0: the bound port (see `RuntimeConfig::announced`).
            rc.announced = config
                .public_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            let (runtime, events) = ShardRuntime::spawn(rc)?;
            let shared2 = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("shard {i} events"))
                .spawn(move || dispatch(&shared2, &events))?;
            info!(shard = i, addr = %runtime.local_addr(), "media shard started");
            runtimes.push(runtime);
        }
        Ok(Self { runtimes, shared })
    }

    /// The bound socket address of every shard.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.runtimes.iter().map(|r| r.local_addr()).collect()
    }

    /// The shard of a new publisher: endpoints of one group (a room) share a shard.
    fn place(&self, key: EndpointKey) -> usize {
        let group = key.0 >> 32;
        usize::try_from(group % self.runtimes.len() as u64).unwrap_or(0)
    }

    /// Enters `key` as negotiating; `None` if it exists.
    fn reserve(
        &self,
        key: EndpointKey,
        shard: usize,
        role: Role,
        events: mpsc::Sender<MediaEvent>,
    ) -> Option<u64> {
        let mut t = self.shared.lock();
        if t.endpoints.contains_key(&key) {
            return None;
        }
        let token = t.next_token;
        t.next_token += 1;
        t.endpoints.insert(
            key,
            Endpoint {
                shard,
                negotiating: Some(token),
                events,
                connected: false,
                role,
            },
        );
        Some(token)
    }

    /// Ends the negotiation `token` of `key`: true if the endpoint is still ours (it was not
    /// released meanwhile), and then it is live.
    fn commit(&self, key: EndpointKey, token: u64, answer: Option<PublisherAnswer>) -> bool {
        let mut t = self.shared.lock();
        match t.endpoints.get_mut(&key) {
            Some(e) if e.negotiating == Some(token) => {
                e.negotiating = None;
                if let Role::Publisher(slot) = &mut e.role {
                    *slot = answer;
                }
                true
            }
            _ => false,
        }
    }

    fn unreserve(&self, key: EndpointKey, token: u64) {
        let mut t = self.shared.lock();
        if t.endpoints.get(&key).and_then(|e| e.negotiating) == Some(token) {
            t.endpoints.remove(&key);
        }
    }

    /// Removes peer `key` from its shard and waits until the shard did.
    async fn remove_peer(&self, shard: usize, key: EndpointKey) {
        match self.runtimes[shard].reserve().await {
            Ok(slot) => {
                let _ = slot.remove(PeerId(key.0)).await;
            }
            Err(e) => warn!(endpoint = key.0, error = %e, "could not remove peer"),
        }
    }

    /// Sends one negotiation command to `shard` (waiting for room in its queue) and waits for
    /// the answer; on any failure the reservation `token` of `key` is given back.
    async fn negotiate<T>(
        &self,
        key: EndpointKey,
        token: u64,
        shard: usize,
        send: impl FnOnce(CommandSlot<'_>) -> oneshot::Receiver<Result<T, ShardError>>,
    ) -> Result<T, Refusal> {
        let result = match self.runtimes[shard].reserve().await {
            Ok(slot) => match send(slot).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(Refusal::from(e)),
                Err(_) => Err(Refusal::Unavailable),
            },
            // Only `Stopped` is possible when waiting for room.
            Err(_) => Err(Refusal::Unavailable),
        };
        if result.is_err() {
            self.unreserve(key, token);
        }
        result
    }

    /// See [`crate::MediaRouter::publish`].
    pub async fn publish(
        &self,
        key: EndpointKey,
        offer: String,
        loopback: bool,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, PublishError> {
        check_offer(&offer).map_err(PublishError::InvalidOffer)?;
        let shard = self.place(key);
        let token = self
            .reserve(key, shard, Role::Publisher(None), events)
            .ok_or(PublishError::AlreadyExists)?;
        let answer = self
            .negotiate(key, token, shard, |slot| {
                slot.publish(PeerId(key.0), offer, loopback)
            })
            .await?;
        let sdp = answer.sdp.clone();
        if !self.commit(key, token, Some(answer)) {
            self.remove_peer(shard, key).await;
            return Err(PublishError::Released);
        }
        Ok(sdp)
    }

    /// See [`crate::MediaRouter::subscribe`].
    pub async fn subscribe(
        &self,
        key: EndpointKey,
        publisher: EndpointKey,
        offer: String,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, SubscribeError> {
        let sections = check_offer(&offer).map_err(SubscribeError::InvalidOffer)?;
        if key == publisher {
            return Err(SubscribeError::AlreadyExists);
        }
        let (shard, published) = {
            let t = self.shared.lock();
            match t.endpoints.get(&publisher) {
                Some(Endpoint {
                    shard,
                    negotiating: None,
                    role: Role::Publisher(Some(answer)),
                    ..
                }) => (*shard, answer.clone()),
                _ => return Err(SubscribeError::PublisherNotFound),
            }
        };
        let token = self
            .reserve(key, shard, Role::Subscriber { publisher }, events)
            .ok_or(SubscribeError::AlreadyExists)?;
        let (tracks, sources) = subscription_of(
            PeerId(publisher.0),
            &published,
            &format!("roomd-{}", publisher.0),
        );
        let wanted = tracks.len();
        let answer = self
            .negotiate(key, token, shard, |slot| {
                slot.subscribe(PeerId(key.0), PeerId(publisher.0), offer, tracks, sources)
            })
            .await?;
        let wants_media = sections
            .iter()
            .any(|s| matches!(s.kind, Kind::Audio | Kind::Video) && s.direction.receives());
        if answer.tracks.is_empty() && wanted > 0 && wants_media {
            self.unreserve(key, token);
            self.remove_peer(shard, key).await;
            return Err(SubscribeError::NoCommonCodec);
        }
        if !self.commit(key, token, None) {
            self.remove_peer(shard, key).await;
            return Err(SubscribeError::Released);
        }
        // The publisher may have been released while this subscription was negotiated.
        let orphan = {
            let mut t = self.shared.lock();
            if t.endpoints.contains_key(&publisher) {
                false
            } else {
                t.endpoints.remove(&key);
                true
            }
        };
        if orphan {
            self.remove_peer(shard, key).await;
            return Err(SubscribeError::PublisherNotFound);
        }
        Ok(answer.sdp)
    }

    /// See [`crate::MediaRouter::add_candidate`]. Candidates of an endpoint still negotiating
    /// go into the same ordered command queue, behind its creation.
    pub async fn add_candidate(&self, key: EndpointKey, candidate: IceCandidate) {
        if ignorable_candidate(&candidate) {
            return;
        }
        let Some(shard) = self.shared.lock().endpoints.get(&key).map(|e| e.shard) else {
            debug!(endpoint = key.0, "candidate for unknown endpoint ignored");
            return;
        };
        match self.runtimes[shard].reserve().await {
            Ok(slot) => match slot.add_candidate(PeerId(key.0), candidate.candidate).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(endpoint = key.0, error = %e, "remote candidate refused"),
                Err(_) => {}
            },
            Err(e) => warn!(endpoint = key.0, error = %e, "remote candidate dropped"),
        }
    }

    /// See [`crate::MediaRouter::expect_subscriber`].
    pub async fn expect_subscriber(&self, publisher: EndpointKey) {
        let shard = {
            let t = self.shared.lock();
            match t.endpoints.get(&publisher) {
                Some(e) if matches!(e.role, Role::Publisher(_)) && e.negotiating.is_none() => {
                    e.shard
                }
                _ => {
                    debug!(
                        endpoint = publisher.0,
                        "subscriber expected for no live publisher"
                    );
                    return;
                }
            }
        };
        match self.runtimes[shard].reserve().await {
            Ok(slot) => {
                let _ = slot.expect_subscriber(PeerId(publisher.0)).await;
            }
            Err(e) => warn!(endpoint = publisher.0, error = %e, "expected subscriber not told"),
        }
    }

    /// See [`crate::MediaRouter::release`].
    pub async fn release(&self, key: EndpointKey) {
        let removed: Vec<(EndpointKey, usize)> = {
            let mut t = self.shared.lock();
            let Some(e) = t.endpoints.remove(&key) else {
                debug!(endpoint = key.0, "release of unknown endpoint ignored");
                return;
            };
            let mut removed = vec![(key, e.shard)];
            if matches!(e.role, Role::Publisher(_)) {
                let fed: Vec<EndpointKey> = t
                    .endpoints
                    .iter()
                    .filter(|(_, s)| matches!(s.role, Role::Subscriber { publisher } if publisher == key))
                    .map(|(k, _)| *k)
                    .collect();
                for k in fed {
                    if let Some(s) = t.endpoints.remove(&k) {
                        removed.push((k, s.shard));
                    }
                }
            }
            removed
        };
        // Subscribers first, then the publisher; a negotiation in flight finds its entry
        // gone at commit and removes its own peer (the command queue keeps the order).
        for (k, shard) in removed.into_iter().rev() {
            self.remove_peer(shard, k).await;
        }
    }

    /// See [`crate::MediaRouter::release_all`].
    pub async fn release_all(&self) {
        let keys: Vec<EndpointKey> = self.shared.lock().endpoints.keys().copied().collect();
        for k in keys {
            self.release(k).await;
        }
    }

    /// Counters: live objects from the endpoint table (exact at once), traffic from the
    /// shards' latest published statistics (at most [`super::runtime::SNAPSHOT_INTERVAL`]
    /// old).
    pub fn stats(&self) -> MediaStats {
        let (publishers, subscribers) = {
            let t = self.shared.lock();
            t.endpoints
                .values()
                .fold((0u64, 0u64), |(p, s), e| match e.role {
                    Role::Publisher(_) => (p + 1, s),
                    Role::Subscriber { .. } => (p, s + 1),
                })
        };
        let mut sum = RuntimeStats::default();
        let mut shards = Vec::with_capacity(self.runtimes.len());
        for r in &self.runtimes {
            let s = r.snapshot();
            shards.push(s.load);
            sum.shard.peers += s.shard.peers;
            sum.forward.rtp_in += s.forward.rtp_in;
            sum.forward.queued += s.forward.queued;
            sum.forward.queue_full += s.forward.queue_full;
            sum.forward.plis_sent += s.forward.plis_sent;
            sum.forward.keyframe_requests_in += s.forward.keyframe_requests_in;
            sum.forward.outages += s.forward.outages;
            sum.data.relayed += s.data.relayed;
            sum.data.dropped += s.data.dropped;
            sum.datagrams_sent += s.datagrams_sent;
            sum.gso_datagrams += s.gso_datagrams;
            sum.events_dropped += s.events_dropped;
            sum.tcp.open += s.tcp.open;
            sum.tcp.accepted += s.tcp.accepted;
            sum.tcp.refused += s.tcp.refused + s.tcp.unauthenticated;
            sum.tcp.dropped_full += s.tcp.dropped_full + s.tcp.dropped_no_connection;
        }
        let inodes: Vec<u64> = self
            .runtimes
            .iter()
            .filter_map(ShardRuntime::socket_inode)
            .collect();
        MediaStats {
            peer_connections: publishers + subscribers,
            publishers,
            subscribers,
            shard_peers: sum.shard.peers as u64,
            packets_received: sum.forward.rtp_in,
            packets_forwarded: sum.forward.queued,
            packets_sent: sum.forward.queued,
            drops: DropReason::ALL
                .iter()
                .map(|r| {
                    let n = match r {
                        DropReason::SubscriberQueueFull => sum.forward.queue_full,
                        DropReason::DataChannelDropped => sum.data.dropped,
                    };
                    (*r, n)
                })
                .collect(),
            keyframe_requests_sent: sum.forward.plis_sent,
            keyframe_requests_received: sum.forward.keyframe_requests_in,
            publisher_outages: sum.forward.outages,
            data_messages_relayed: sum.data.relayed,
            events_dropped: sum.events_dropped + self.shared.events_dropped.load(Ordering::Relaxed),
            ice_tcp_connections: sum.tcp.open as u64,
            ice_tcp_accepted: sum.tcp.accepted,
            ice_tcp_rejected: sum.tcp.refused,
            ice_tcp_dropped: sum.tcp.dropped_full,
            udp_datagrams_sent: sum.datagrams_sent,
            udp_gso_datagrams: sum.gso_datagrams,
            udp_receive_drops: super::runtime::udp_receive_drops(&inodes),
            shards,
        }
    }
}

/// Whether a client's candidate is not worth a shard command: the empty end-of-candidates
/// marker, or an mDNS `.local` address (never resolved; the client's checks then arrive from
/// its real address, which ICE-lite learns from them).
pub(crate) fn ignorable_candidate(c: &IceCandidate) -> bool {
    let s = c.candidate.trim();
    if s.is_empty() {
        return true;
    }
    let body = s.strip_prefix("candidate:").unwrap_or(s);
    body.split_whitespace()
        .nth(4)
        .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
}

/// Routes one shard's events to their endpoints until the shard thread ends.
fn dispatch(shared: &Shared, events: &std_mpsc::Receiver<RuntimeEvent>) {
    use super::shard::ShardEvent as E;
    for ev in events {
        let (peer, event) = match ev {
            E::LocalCandidate {
                peer,
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => (
                peer,
                Some(MediaEvent::LocalCandidate {
                    endpoint: EndpointKey(peer.0),
                    candidate: IceCandidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index: Some(sdp_mline_index),
                    },
                }),
            ),
            E::Connected { peer } => (
                peer,
                Some(MediaEvent::Connected {
                    endpoint: EndpointKey(peer.0),
                }),
            ),
            E::Failed { peer, reason } => (
                peer,
                Some(MediaEvent::Failed {
                    endpoint: EndpointKey(peer.0),
                    description: match reason {
                        FailReason::Transport => "media connection failed (ICE/DTLS)",
                        FailReason::ConnectTimeout => "media connection timed out",
                    }
                    .to_owned(),
                }),
            ),
            E::Disconnected { peer } => {
                debug!(endpoint = peer.0, "no STUN from the client for a while");
                (peer, None)
            }
            E::TrackOpen { peer, ssrc, .. } => {
                debug!(endpoint = peer.0, ssrc = ssrc.0, "publisher track open");
                (peer, None)
            }
            // Consumed inside the shard thread; never reported.
            E::RtpIn { .. }
            | E::RtcpIn { .. }
            | E::ChannelOpen { .. }
            | E::ChannelClose { .. }
            | E::DataIn { .. } => continue,
        };
        let Some(event) = event else { continue };
        let key = EndpointKey(peer.0);
        let mut t = shared.lock();
        let Some(e) = t.endpoints.get_mut(&key) else {
            continue; // Released: its events end with it.
        };
        if matches!(event, MediaEvent::Connected { .. }) {
            if e.connected {
                continue;
            }
            e.connected = true;
        }
        if e.events.try_send(event).is_err() {
            shared.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why a shard did not answer a publish or subscribe, in the words both errors share.
enum Refusal {
    AlreadyExists,
    InvalidOffer(String),
    Negotiation(String),
    Unavailable,
}

impl From<ShardError> for Refusal {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::DuplicatePeer(_) | ShardError::UfragTaken => Refusal::AlreadyExists,
            ShardError::Negotiation(NegotiationError::InvalidOffer(m)) => Refusal::InvalidOffer(m),
            ShardError::Negotiation(n) => Refusal::Negotiation(n.to_string()),
            other => Refusal::Negotiation(other.to_string()),
        }
    }
}

impl From<Refusal> for PublishError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::AlreadyExists => PublishError::AlreadyExists,
            Refusal::InvalidOffer(m) => PublishError::InvalidOffer(m),
            Refusal::Negotiation(m) => PublishError::Negotiation(m),
            Refusal::Unavailable => PublishError::Unavailable,
        }
    }
}

impl From<Refusal> for SubscribeError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::AlreadyExists => SubscribeError::AlreadyExists,
            Refusal::InvalidOffer(m) => SubscribeError::InvalidOffer(m),
            Refusal::Negotiation(m) => SubscribeError::Negotiation(m),
            Refusal::Unavailable => SubscribeError::Unavailable,
        }
    }
}
