//! In-process SFU: WebRTC peer connections (webrtc-rs 0.21) and RTP fan-out.
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

use std::net::IpAddr;
use std::time::Duration;

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
    /// The endpoint failed after negotiation (ICE/DTLS failure, peer connection closed by the
    /// network). The description is short and safe to show to a client.
    Failed {
        /// The endpoint that failed.
        endpoint: EndpointKey,
        /// A short, client-safe description.
        description: String,
    },
}

/// Network and queue configuration of the media engine.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Local address the peer connections bind to and announce as host candidates.
    pub bind_ip: IpAddr,
    /// Address announced instead of `bind_ip` (1:1 NAT), if any.
    pub public_ip: Option<IpAddr>,
    /// Lowest UDP port of the pool used for peer connections (inclusive).
    pub port_min: u16,
    /// Highest UDP port of the pool used for peer connections (inclusive).
    pub port_max: u16,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            public_ip: None,
            port_min: 40000,
            port_max: 40999,
            keyframe_request_interval: Duration::from_millis(500),
        }
    }
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The media engine is not available.
    #[error("media not available")]
    Unavailable,
}

/// Why a subscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The media engine is not available.
    #[error("media not available")]
    Unavailable,
}

/// Cheap-to-clone handle to the media engine.
#[derive(Clone, Debug)]
pub struct MediaRouter {
    _config: MediaConfig,
}

impl MediaRouter {
    /// Creates the router. Must be called inside a Tokio runtime.
    pub fn new(config: MediaConfig) -> Self {
        Self { _config: config }
    }

    /// Creates a publisher endpoint for `offer` and returns the SDP answer.
    pub async fn publish(
        &self,
        _endpoint: EndpointKey,
        _offer: String,
        _loopback: bool,
        _events: tokio::sync::mpsc::Sender<MediaEvent>,
    ) -> Result<String, PublishError> {
        Err(PublishError::Unavailable)
    }

    /// Creates a subscriber endpoint fed by `publisher` and returns the SDP answer.
    pub async fn subscribe(
        &self,
        _endpoint: EndpointKey,
        _publisher: EndpointKey,
        _offer: String,
        _events: tokio::sync::mpsc::Sender<MediaEvent>,
    ) -> Result<String, SubscribeError> {
        Err(SubscribeError::Unavailable)
    }

    /// Adds a remote ICE candidate to an endpoint. Unknown endpoints and unusable candidates
    /// (mDNS `.local`, end-of-candidates) are ignored.
    pub async fn add_candidate(&self, _endpoint: EndpointKey, _candidate: IceCandidate) {}

    /// Tears an endpoint down; a publisher's release also ends the subscriptions it feeds.
    /// Unknown endpoints are ignored.
    pub async fn release(&self, _endpoint: EndpointKey) {}
}
