//! Media engine configuration: addresses (bound and announced), the shards and their UDP
//! ports, keyframe-request pacing, the connect timeout and the UDP send offload. Queue capacities are constants next
//! to the queues they size (`engine/runtime.rs`, `engine/forward.rs`), each documented with its
//! full policy.

use std::net::IpAddr;
use std::time::Duration;

/// Configuration of the media engine ([`crate::MediaRouter::start`]).
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Local address the shards' UDP sockets bind to (and announce, without `public_ip`).
    pub bind_ip: IpAddr,
    /// Addresses announced in candidates instead of `bind_ip` (1:1 NAT; several: e.g. IPv4 and
    /// IPv6), if any.
    pub public_ips: Vec<IpAddr>,
    /// Minimum time between two keyframe requests sent to one publisher track.
    pub keyframe_request_interval: Duration,
    /// Number of shards: threads, each with one UDP socket for all its peer connections.
    pub shards: usize,
    /// UDP port of the first shard (shard `i` binds `udp_port + i`); 0 lets the system choose
    /// every shard's port (tests).
    pub udp_port: u16,
    /// Time a new endpoint's peer connection has to connect (ICE + DTLS) before the endpoint
    /// reports [`crate::MediaEvent::Failed`].
    pub connect_timeout: Duration,
    /// Send a burst of datagrams to one client as one message with UDP segmentation offload
    /// (`UDP_SEGMENT`, Linux ≥ 4.18) where the kernel takes it; off: one message each.
    pub udp_gso: bool,
}

/// Default [`MediaConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            public_ips: Vec::new(),
            keyframe_request_interval: Duration::from_millis(500),
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            udp_port: 40000,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            udp_gso: true,
        }
    }
}
