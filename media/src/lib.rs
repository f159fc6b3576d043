//! In-process SFU on webrtc-rs's sans-IO core (`rtc` 0.21): shard threads, each with one UDP
//! socket for all its peer connections, and our own forwarding fast path.
//!
//! Owns publisher endpoints (one peer connection per publishing client: the client offers, we
//! answer), subscriber endpoints (one peer connection per subscription, fed from a publisher's
//! tracks), loopback, ICE, keyframe requests, NACK answers, sender reports, the data-channel
//! relay and the forwarding hot path. Does not own rooms, users, JSON or any Kurento
//! vocabulary: callers address endpoints by an opaque [`EndpointKey`] and exchange SDP and ICE
//! candidates as plain strings. The engine itself is [`engine`] (its module list says which
//! file owns what); [`MediaRouter`] is a thin, cheap-to-clone handle on it.
//!
//! # The contract of [`MediaRouter`]
//!
//! - [`MediaRouter::start`] binds one UDP socket per shard ([`MediaConfig::shards`], ports
//!   from [`MediaConfig::udp_port`]) and starts the shard threads; an error if a port cannot be
//!   bound. Dropping the last handle stops the threads.
//! - [`MediaRouter::publish`] takes a client's offer and returns our answer (ICE-lite, one
//!   host candidate per announced address, `a=end-of-candidates`). The endpoint is placed on
//!   the shard of its key's group (the high 32 bits of the [`EndpointKey`]: a room), so a
//!   room's endpoints share a shard. With `loopback` the client's own media comes back on the
//!   same connection. The offer is checked before any peer connection exists
//!   ([`PublishError::InvalidOffer`]); a key in use is [`PublishError::AlreadyExists`].
//! - [`MediaRouter::subscribe`] takes a client's offer for a live publisher's media and returns
//!   the answer: one track per publisher track the offer can receive (matched by kind, in
//!   section order), each with its own SSRC, sequence numbers and payload types; the
//!   publisher's data-channel messages too when the offer has a data section. The subscriber
//!   goes on its publisher's shard. Forwarding starts once its connection is up, with a
//!   keyframe requested from the publisher. A publisher that is unknown or still negotiating
//!   is [`SubscribeError::PublisherNotFound`]; an offer that wants media but can receive none
//!   of the publisher's codecs is [`SubscribeError::NoCommonCodec`].
//! - [`MediaRouter::add_candidate`] passes a client's trickled candidate to the endpoint's
//!   shard through the same ordered command queue as its creation (a candidate given while
//!   the answer is being made follows the creation). Unknown endpoints and unusable candidates (empty,
//!   end-of-candidates, mDNS `.local`) are ignored; a candidate is never needed (ICE-lite: the
//!   client's checks teach the shard its address).
//! - [`MediaRouter::expect_subscriber`] says a subscription to a live publisher is coming (a
//!   participant joined its room): its video tracks are asked for a keyframe now, so that the
//!   subscriber's video starts from a stored keyframe. Ignored for anything but a live
//!   publisher.
//! - Commands wait for room in a full shard command queue (backpressure on the caller, never
//!   an error); a shard that stopped answers [`PublishError::Unavailable`] /
//!   [`SubscribeError::Unavailable`].
//! - [`MediaRouter::release`] ends an endpoint; a publisher's release first ends every
//!   subscription it feeds. It returns once the shard removed the peer connections. Releasing
//!   an endpoint whose publish/subscribe is in flight makes that call fail with `Released`.
//!   Unknown keys are ignored. [`MediaRouter::release_all`] releases everything (shutdown).
//!
//! Events of one endpoint arrive on the channel given at its creation, in this order:
//! [`MediaEvent::LocalCandidate`] (one per announced address; it may come before the answer is
//! returned, and is in the answer too), then at most one [`MediaEvent::Connected`] (ICE and
//! DTLS done), then at most one [`MediaEvent::Failed`] (never connected within
//! [`MediaConfig::connect_timeout`], or connected and then failed: ICE consent lost, DTLS
//! closed). Nothing comes after [`MediaRouter::release`] began; the sender is dropped then.
//! The engine never waits on an endpoint's channel: an event that does not fit is dropped and
//! counted ([`MediaStats::events_dropped`]), so size it for a handful of events.

mod config;
pub mod engine;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use crate::config::{MediaConfig, DEFAULT_CONNECT_TIMEOUT};
pub use crate::stats::{DropReason, MediaStats, ShardLoad, TURN_BUCKETS};

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
    /// rtc rejected the offer or could not produce an answer, or the shard was busy.
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
    /// The subscriber's offer shares no codec with any of the publisher's tracks.
    #[error("no common codec with the publisher")]
    NoCommonCodec,
    /// rtc rejected the offer or could not produce an answer, or the shard was busy.
    #[error("SDP negotiation failed: {0}")]
    Negotiation(String),
    /// The endpoint was released while its offer was being processed.
    #[error("endpoint released during negotiation")]
    Released,
}

/// Cheap-to-clone handle to the media engine. See the crate documentation for its contract.
#[derive(Clone, Debug)]
pub struct MediaRouter {
    engine: Arc<engine::sharded::ShardedEngine>,
}

impl MediaRouter {
    /// Binds one UDP socket per shard and starts the shard threads (an error if a socket
    /// cannot be bound or a thread not started).
    pub fn start(config: MediaConfig) -> std::io::Result<Self> {
        Ok(Self {
            engine: Arc::new(engine::sharded::ShardedEngine::start(&config)?),
        })
    }

    /// The bound UDP address of every shard, in shard order.
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        self.engine.local_addrs()
    }

    /// A snapshot of the media counters (live objects and traffic totals).
    pub fn stats(&self) -> MediaStats {
        self.engine.stats()
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
        self.engine.publish(endpoint, offer, loopback, events).await
    }

    /// Creates a subscriber endpoint fed by `publisher` and returns the SDP answer.
    pub async fn subscribe(
        &self,
        endpoint: EndpointKey,
        publisher: EndpointKey,
        offer: String,
        events: mpsc::Sender<MediaEvent>,
    ) -> Result<String, SubscribeError> {
        self.engine
            .subscribe(endpoint, publisher, offer, events)
            .await
    }

    /// Adds a client's ICE candidate to an endpoint.
    pub async fn add_candidate(&self, endpoint: EndpointKey, candidate: IceCandidate) {
        self.engine.add_candidate(endpoint, candidate).await;
    }

    /// A subscriber of the publisher endpoint `publisher` is coming (a participant joined its
    /// room): the publisher is asked for a keyframe now, so that one is stored when the
    /// subscriber connects and its video starts without waiting for the publisher (coalesced
    /// with the track's other keyframe requests, `MediaConfig`'s keyframe interval). Nothing for
    /// an unknown endpoint, a subscriber, or a publisher still negotiating.
    pub async fn expect_subscriber(&self, publisher: EndpointKey) {
        self.engine.expect_subscriber(publisher).await;
    }

    /// Ends an endpoint (a publisher's subscriptions first); returns once the shard removed
    /// the peer connections.
    pub async fn release(&self, endpoint: EndpointKey) {
        self.engine.release(endpoint).await;
    }

    /// Releases every endpoint (graceful shutdown).
    pub async fn release_all(&self) {
        self.engine.release_all().await;
    }
}
