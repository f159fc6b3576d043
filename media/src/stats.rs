//! The media counters [`crate::MediaRouter::stats`] reports: live objects (endpoints, the
//! shards' peer connections), traffic totals (packets, drops by [`DropReason`], keyframe
//! requests, data-channel messages, dropped events) and each shard's load ([`ShardLoad`]).
//! Plain data: the shards keep their own counters and publish them (`engine/runtime.rs`);
//! `engine/sharded.rs` sums them here.

use std::time::Duration;

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
    /// Datagrams the kernel dropped at the shards' UDP sockets because their receive buffers
    /// were full (the shards did not read in time), since the sockets were opened; `None`
    /// where the kernel does not say (it is read from Linux's `/proc/self/net/udp*`).
    pub udp_receive_drops: Option<u64>,
    /// Each shard's load, in shard order.
    pub shards: Vec<ShardLoad>,
}

/// Upper bounds of [`ShardLoad::turns`]' buckets. Bounds for a loop whose turns normally
/// take tens to hundreds of microseconds: a turn of milliseconds is a stall worth seeing.
pub const TURN_BUCKETS: [Duration; 7] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(100),
];

/// How busy one shard thread is. A *turn* is the work between two waits of the shard's loop
/// (read a batch, forward it, run due timers and commands, send): a datagram that arrives
/// during a turn waits for the rest of it, so the turns' lengths are the latency the shard
/// itself adds, and their sum over time is how much of a core the shard uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    /// Time spent in turns since the shard started (its thread's wall time outside the wait;
    /// includes time the thread was runnable but descheduled).
    pub busy: Duration,
    /// Turns per bucket of [`TURN_BUCKETS`] (a turn counts in the first bucket whose bound it
    /// does not exceed; the last entry counts turns longer than every bound). Not cumulative.
    pub turns: [u64; TURN_BUCKETS.len() + 1],
    /// The longest turn since the shard started.
    pub longest_turn: Duration,
}

impl ShardLoad {
    /// Counts one turn of length `d`.
    pub fn record(&mut self, d: Duration) {
        self.busy += d;
        let bucket = TURN_BUCKETS
            .iter()
            .position(|bound| d <= *bound)
            .unwrap_or(TURN_BUCKETS.len());
        self.turns[bucket] += 1;
        self.longest_turn = self.longest_turn.max(d);
    }

    /// Turns counted.
    pub fn turn_count(&self) -> u64 {
        self.turns.iter().sum()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_lands_in_the_first_bucket_that_holds_it() {
        let mut load = ShardLoad::default();
        load.record(Duration::from_micros(100)); // on the bound: first bucket
        load.record(Duration::from_micros(101));
        load.record(Duration::from_millis(3));
        load.record(Duration::from_secs(1)); // above every bound
        assert_eq!(load.turns, [1, 1, 0, 0, 1, 0, 0, 1]);
        assert_eq!(load.turn_count(), 4);
        assert_eq!(load.longest_turn, Duration::from_secs(1));
        assert_eq!(
            load.busy,
            Duration::from_micros(201) + Duration::from_millis(3) + Duration::from_secs(1)
        );
    }
}
