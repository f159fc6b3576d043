//! Media engine configuration: network (bind address, announced address, UDP port range) and
//! keyframe-request pacing. Queue capacities are constants next to the channels they size
//! (`fanout.rs`, `publisher.rs`, `session.rs`), each documented with its full policy.

use std::net::IpAddr;
use std::time::Duration;

/// Network and queue configuration of the media engine.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Local address the peer connections bind to and announce as host candidates.
    pub bind_ip: IpAddr,
    /// Addresses announced instead of `bind_ip` (1:1 NAT; several: e.g. IPv4 and IPv6), if any.
    /// The per-connection engine announces the first only.
    pub public_ips: Vec<IpAddr>,
    /// Lowest UDP port of the pool used for peer connections (inclusive).
    pub port_min: u16,
    /// Highest UDP port of the pool used for peer connections (inclusive).
    pub port_max: u16,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
    /// Which engine serves the endpoints.
    pub engine: EngineKind,
    /// Sharded engine: number of shards (threads, one UDP socket each).
    pub shards: usize,
    /// Sharded engine: UDP port of the first shard (shard `i` binds `udp_port + i`); 0 lets the
    /// system choose.
    pub udp_port: u16,
}

/// The media engine serving publish/subscribe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// One webrtc-rs peer connection with its own UDP port and tasks per endpoint (`port_min`
    /// ..`port_max`): the former engine, kept selectable while the sharded one beds in.
    PerConnection,
    /// Shard threads on the sans-IO `rtc` core, one UDP port each (`shards`, `udp_port`):
    /// publish, subscribe, loopback, data channels, trickle ICE, NACK, keyframe requests.
    #[default]
    Sharded,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            public_ips: Vec::new(),
            port_min: 40000,
            port_max: 40999,
            keyframe_request_interval: Duration::from_millis(500),
            engine: EngineKind::Sharded,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            udp_port: 40000,
        }
    }
}
