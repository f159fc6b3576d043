//! Process-wide media counters: live objects (peer connections, endpoints, tasks, ports) and
//! traffic totals (packets, drops by [`DropReason`], keyframe requests, dropped events).
//!
//! Owns the shared atomics and the [`TaskGuard`] that counts a spawned task for exactly as long
//! as its future exists (so an aborted task stops counting when it is dropped). Forwarding
//! tasks batch their counts locally ([`ForwardStats`]) and flush here, so the hot path does not
//! touch a shared cache line per packet.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::fanout::{DropReason, ForwardStats};

/// A snapshot of the media engine's counters (see [`crate::MediaRouter::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Peer connections built and not yet closed.
    pub peer_connections: u64,
    /// Live publisher endpoints.
    pub publishers: u64,
    /// Live subscriber endpoints.
    pub subscribers: u64,
    /// Live tasks spawned by the media engine (forwarding, RTCP, data relay, event forwarders).
    pub tasks: u64,
    /// UDP ports currently leased from the pool.
    pub ports_in_use: u64,
    /// RTP packets received from publishers.
    pub packets_received: u64,
    /// RTP packets subscriber sinks took (one per subscriber per packet).
    pub packets_forwarded: u64,
    /// RTP packets written to subscriber (or loopback) peer connections.
    pub packets_sent: u64,
    /// Drops, one entry per [`DropReason`] in [`DropReason::ALL`] order.
    pub drops: Vec<(DropReason, u64)>,
    /// Keyframe requests (PLI/FIR) sent to publishers.
    pub keyframe_requests_sent: u64,
    /// Keyframe requests received from subscribers (before coalescing).
    pub keyframe_requests_received: u64,
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
}

impl MediaStats {
    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

/// The shared counters behind [`MediaStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) peer_connections: AtomicI64,
    pub(crate) publishers: AtomicI64,
    pub(crate) subscribers: AtomicI64,
    pub(crate) tasks: AtomicI64,
    pub(crate) ports_in_use: AtomicI64,
    pub(crate) packets_received: AtomicU64,
    pub(crate) packets_forwarded: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) drops: [AtomicU64; DropReason::COUNT],
    pub(crate) keyframe_requests_sent: AtomicU64,
    pub(crate) keyframe_requests_received: AtomicU64,
    pub(crate) data_messages_relayed: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
}

fn live(v: &AtomicI64) -> u64 {
    u64::try_from(v.load(Ordering::Relaxed)).unwrap_or(0)
}

impl Counters {
    pub(crate) fn snapshot(&self) -> MediaStats {
        MediaStats {
            peer_connections: live(&self.peer_connections),
            publishers: live(&self.publishers),
            subscribers: live(&self.subscribers),
            tasks: live(&self.tasks),
            ports_in_use: live(&self.ports_in_use),
            packets_received: self.packets_received.load(Ordering::Relaxed),
            packets_forwarded: self.packets_forwarded.load(Ordering::Relaxed),
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (*r, self.drops[r.index()].load(Ordering::Relaxed)))
                .collect(),
            keyframe_requests_sent: self.keyframe_requests_sent.load(Ordering::Relaxed),
            keyframe_requests_received: self.keyframe_requests_received.load(Ordering::Relaxed),
            data_messages_relayed: self.data_messages_relayed.load(Ordering::Relaxed),
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            // The per-connection engine has no ICE-TCP.
            ice_tcp_connections: 0,
            ice_tcp_accepted: 0,
            ice_tcp_rejected: 0,
            ice_tcp_dropped: 0,
        }
    }

    /// Adds a forwarding task's batched counters.
    pub(crate) fn flush(&self, s: &ForwardStats) {
        if s.forwarded != 0 {
            self.packets_forwarded
                .fetch_add(s.forwarded, Ordering::Relaxed);
        }
        if s.written != 0 {
            self.packets_sent.fetch_add(s.written, Ordering::Relaxed);
        }
        for (i, n) in s.dropped.iter().enumerate() {
            if *n != 0 {
                self.drops[i].fetch_add(*n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn drop_one(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Increments a live-object gauge on creation and decrements it on drop.
#[derive(Debug)]
pub(crate) struct Gauge {
    counters: Arc<Counters>,
    which: fn(&Counters) -> &AtomicI64,
}

impl Gauge {
    pub(crate) fn new(counters: &Arc<Counters>, which: fn(&Counters) -> &AtomicI64) -> Self {
        which(counters).fetch_add(1, Ordering::Relaxed);
        Self {
            counters: Arc::clone(counters),
            which,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.counters).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one live task; move it into the task's future.
pub(crate) type TaskGuard = Gauge;

/// Spawns `fut` on the current Tokio runtime, counted in [`MediaStats::tasks`] while its future
/// exists.
pub(crate) fn spawn_counted<F>(counters: &Arc<Counters>, fut: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let guard: TaskGuard = Gauge::new(counters, |c| &c.tasks);
    tokio::spawn(async move {
        let _guard = guard;
        fut.await;
    })
}
