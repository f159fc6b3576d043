//! The media counters [`crate::MediaRouter::stats`] reports: live objects (endpoints, the
//! shards' peer connections) and traffic totals (packets, drops by [`DropReason`], keyframe
//! requests, data-channel messages, dropped events). Plain data: the shards keep their own
//! counters and publish them (`engine/runtime.rs`); `engine/sharded.rs` sums them here.

/// Why a packet or message did not reach a subscriber, as `/metrics` labels them
/// (`roomd_rtp_dropped_total{reason}`). The engine's finer reasons (`engine::leg::DropReason`,
/// `engine::demux::DropReason`) stay inside the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A sealed packet did not fit in the shard's transmit queue (the shard is overloaded):
    /// dropped for that subscriber only, which then waits for a keyframe.
    SubscriberQueueFull,
    /// A data-channel message was not sent on a subscriber's channel (its unacknowledged
    /// bytes were over the bound, or the channel was not open).
    DataChannelDropped,
}

impl DropReason {
    /// Every reason, in [`MediaStats::drops`] order.
    pub const ALL: [DropReason; 2] = [
        DropReason::SubscriberQueueFull,
        DropReason::DataChannelDropped,
    ];
}

/// A snapshot of the media engine's counters. Endpoint counts are exact; the shards' figures
/// are at most `engine::runtime::SNAPSHOT_INTERVAL` old, except right after a publish,
/// subscribe or release returns (the shard publishes them before it answers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Live endpoints (publishers and subscribers): one peer connection each.
    pub peer_connections: u64,
    /// Live publisher endpoints.
    pub publishers: u64,
    /// Live subscriber endpoints.
    pub subscribers: u64,
    /// rtc peer connections the shards hold: equal to `peer_connections` once negotiations
    /// and releases are done; more would be a leak.
    pub shard_peers: u64,
    /// RTP packets received from publishers.
    pub packets_received: u64,
    /// RTP packets forwarded to subscribers (one per subscriber leg per packet).
    pub packets_forwarded: u64,
    /// RTP packets sealed and queued to subscriber (or loopback) connections.
    pub packets_sent: u64,
    /// Drops, one entry per [`DropReason`] in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
    /// Keyframe requests (PLI/FIR) sent to publishers.
    pub keyframe_requests_sent: u64,
    /// Keyframe requests received from subscribers (before coalescing).
    pub keyframe_requests_received: u64,
    /// Publisher video streams that came back from an outage with packets lost or with a
    /// backlog of stale frames: their subscribers were restarted at a keyframe.
    pub publisher_outages: u64,
    /// Data-channel messages relayed to subscribers.
    pub data_messages_relayed: u64,
    /// Media events dropped because an endpoint's event queue was full.
    pub events_dropped: u64,
    /// Sharded engine: ICE-TCP connections open now.
    pub ice_tcp_connections: u64,
    /// Sharded engine: ICE-TCP connections accepted since start.
    pub ice_tcp_accepted: u64,
    /// Sharded engine: ICE-TCP connections closed without an authenticated STUN request, or
    /// refused past the per-shard bound.
    pub ice_tcp_rejected: u64,
    /// Sharded engine: packets not sent on an ICE-TCP connection (its write buffer full, or the
    /// connection gone).
    pub ice_tcp_dropped: u64,
    /// UDP datagrams the shards' sockets sent.
    pub udp_datagrams_sent: u64,
    /// Of those, datagrams sent inside a message of several to one client (UDP segmentation
    /// offload).
    pub udp_gso_datagrams: u64,
}

impl MediaStats {
    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}
