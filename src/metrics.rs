//! `/metrics` in the Prometheus text exposition format, from the media engine's counters, the
//! room directory, the refusal counters, the process (CPU, RSS, fds, from /proc) and two
//! latency histograms (request latency per method, join → first media connected). Written by
//! hand: fixed-bucket histograms and a few dozen lines of text do not need a metrics crate.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use media::MediaStats;

use crate::cluster::ClusterStats;
use crate::limits::Counters;

/// Room-side gauges sampled at scrape time.
pub(crate) struct RoomGauges {
    pub(crate) rooms: usize,
    pub(crate) participants: usize,
    pub(crate) sessions: usize,
    pub(crate) connections: usize,
    pub(crate) room_panics: u64,
}

/// Upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram with fixed buckets; lock-free.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Count per bucket (not cumulative; summed at render).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bucket.
    over: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines (no HELP/TYPE) with extra `labels`
    /// (e.g. `method="joinRoom",`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let trimmed = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{trimmed}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{trimmed}}} {cumulative}");
    }
}

/// The room methods whose latency is measured (request dispatched → reply written).
const METHODS: [&str; 9] = [
    "joinRoom",
    "leaveRoom",
    "publishVideo",
    "unpublishVideo",
    "receiveVideoFrom",
    "unsubscribeFromVideo",
    "onIceCandidate",
    "sendMessage",
    "customRequest",
];

/// Latency histograms shared by the connection tasks and the room drivers.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    /// Per room method, in [`METHODS`] order.
    requests: [Histogram; METHODS.len()],
    /// A participant's join → its first media endpoint connected.
    pub(crate) join_to_media: Histogram,
}

impl Latencies {
    /// Records one answered room request.
    pub(crate) fn request(&self, method: &str, d: Duration) {
        if let Some(i) = METHODS.iter().position(|m| *m == method) {
            self.requests[i].observe(d);
        }
    }
}

/// This process's CPU seconds, resident memory and open fds, from /proc (Linux); zero where
/// unavailable.
fn process() -> (f64, u64, u64) {
    // /proc/self/stat: fields 14 and 15 (after the parenthesised command) are utime and stime
    // in clock ticks; USER_HZ is 100 on every Linux ABI.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    (cpu, rss, fds)
}

/// Renders one scrape.
pub(crate) fn render(
    rooms: &RoomGauges,
    refused: &Counters,
    latencies: &Latencies,
    media: &MediaStats,
) -> String {
    let mut out = String::with_capacity(8192);
    let (cpu, rss, fds) = process();
    let _ = writeln!(
        out,
        "# HELP roomd_build_info The running build.\n# TYPE roomd_build_info gauge\n\
         roomd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
    );
    let _ = writeln!(
        out,
        "# HELP roomd_request_duration_seconds Room request latency, dispatched to answered.\n\
         # TYPE roomd_request_duration_seconds histogram"
    );
    for (method, h) in METHODS.iter().zip(&latencies.requests) {
        h.render(
            &mut out,
            "roomd_request_duration_seconds",
            &format!("method=\"{method}\","),
        );
    }
    let _ = writeln!(
        out,
        "# HELP roomd_join_to_media_seconds A participant's join to its first connected media endpoint.\n\
         # TYPE roomd_join_to_media_seconds histogram"
    );
    latencies
        .join_to_media
        .render(&mut out, "roomd_join_to_media_seconds", "");
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        rss,
    );
    metric("process_open_fds", "gauge", "Open file descriptors.", fds);
    metric(
        "roomd_rooms",
        "gauge",
        "Rooms with at least one participant.",
        rooms.rooms as u64,
    );
    metric(
        "roomd_participants",
        "gauge",
        "Participants in all rooms.",
        rooms.participants as u64,
    );
    metric(
        "roomd_sessions",
        "gauge",
        "JSON-RPC sessions, including those in their grace period.",
        rooms.sessions as u64,
    );
    metric(
        "roomd_websocket_connections",
        "gauge",
        "WebSocket connections open.",
        rooms.connections as u64,
    );
    metric(
        "roomd_room_panics_total",
        "counter",
        "Room tasks that panicked (each room was closed and its members told roomClosed).",
        rooms.room_panics,
    );
    let refusals = [
        (
            "roomd_requests_rate_limited_total",
            "Requests refused by a connection's rate limit.",
            &refused.rate_limited,
        ),
        (
            "roomd_connections_closed_for_abuse_total",
            "Connections closed for exceeding the rate limit repeatedly.",
            &refused.abusive_closed,
        ),
        (
            "roomd_connections_refused_total",
            "WebSocket upgrades refused at the total connection limit.",
            &refused.refused_total,
        ),
        (
            "roomd_connections_refused_per_ip_total",
            "WebSocket upgrades refused at the per-IP connection limit.",
            &refused.refused_per_ip,
        ),
        (
            "roomd_connections_refused_origin_total",
            "WebSocket upgrades refused for their Origin.",
            &refused.refused_origin,
        ),
        (
            "roomd_admin_refused_total",
            "Admin requests refused (disabled, wrong method or token).",
            &refused.admin_refused,
        ),
    ];
    for (name, help, counter) in refusals {
        metric(name, "counter", help, counter.load(Ordering::Relaxed));
    }
    metric(
        "roomd_peer_connections",
        "gauge",
        "Media peer connections open.",
        media.peer_connections,
    );
    metric(
        "roomd_publishers",
        "gauge",
        "Publisher endpoints.",
        media.publishers,
    );
    metric(
        "roomd_subscribers",
        "gauge",
        "Subscriber endpoints.",
        media.subscribers,
    );
    metric(
        "roomd_media_shard_peer_connections",
        "gauge",
        "Peer connections the media shards hold (equal to roomd_peer_connections when settled).",
        media.shard_peers,
    );
    metric(
        "roomd_rtp_received_total",
        "counter",
        "RTP packets received from publishers.",
        media.packets_received,
    );
    metric(
        "roomd_rtp_forwarded_total",
        "counter",
        "RTP packets queued to subscribers.",
        media.packets_forwarded,
    );
    metric(
        "roomd_rtp_sent_total",
        "counter",
        "RTP packets written to subscriber peer connections.",
        media.packets_sent,
    );
    metric(
        "roomd_keyframe_requests_sent_total",
        "counter",
        "PLI/FIR sent to publishers.",
        media.keyframe_requests_sent,
    );
    metric(
        "roomd_keyframe_requests_received_total",
        "counter",
        "PLI/FIR received from subscribers.",
        media.keyframe_requests_received,
    );
    metric(
        "roomd_publisher_outages_total",
        "counter",
        "Publisher video streams that resumed after a network outage (lost packets or a stale backlog); their subscribers restarted at a keyframe.",
        media.publisher_outages,
    );
    metric(
        "roomd_data_messages_relayed_total",
        "counter",
        "Data-channel messages relayed.",
        media.data_messages_relayed,
    );
    metric(
        "roomd_media_events_dropped_total",
        "counter",
        "Media events dropped on a full queue.",
        media.events_dropped,
    );
    metric(
        "roomd_ice_tcp_connections",
        "gauge",
        "ICE-TCP connections open (sharded engine).",
        media.ice_tcp_connections,
    );
    metric(
        "roomd_ice_tcp_accepted_total",
        "counter",
        "ICE-TCP connections accepted.",
        media.ice_tcp_accepted,
    );
    metric(
        "roomd_ice_tcp_rejected_total",
        "counter",
        "ICE-TCP connections closed unauthenticated or refused over the per-shard bound.",
        media.ice_tcp_rejected,
    );
    metric(
        "roomd_ice_tcp_dropped_total",
        "counter",
        "Packets not sent on an ICE-TCP connection (write buffer full or connection gone).",
        media.ice_tcp_dropped,
    );
    metric(
        "roomd_udp_datagrams_sent_total",
        "counter",
        "UDP datagrams the media shards sent.",
        media.udp_datagrams_sent,
    );
    metric(
        "roomd_udp_gso_datagrams_total",
        "counter",
        "UDP datagrams sent inside a message of several to one client (segmentation offload).",
        media.udp_gso_datagrams,
    );
    if let Some(drops) = media.udp_receive_drops {
        metric(
            "roomd_udp_receive_drops_total",
            "counter",
            "UDP datagrams the kernel dropped at the media shards' sockets (receive buffer full: a shard did not read in time).",
            drops,
        );
    }
    render_shard_load(&mut out, &media.shards);
    let _ = writeln!(
        out,
        "# HELP roomd_room_limit_refusals_total Room requests refused by a room limit.\n\
         # TYPE roomd_room_limit_refusals_total counter"
    );
    for (limit, n) in crate::limits::RoomLimit::ALL
        .iter()
        .zip(&refused.room_limits)
    {
        let _ = writeln!(
            out,
            "roomd_room_limit_refusals_total{{limit=\"{}\"}} {}",
            limit.label(),
            n.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP roomd_rtp_dropped_total Packets not delivered to a subscriber, by reason.\n# TYPE roomd_rtp_dropped_total counter"
    );
    for (reason, n) in &media.drops {
        let _ = writeln!(out, "roomd_rtp_dropped_total{{reason=\"{reason:?}\"}} {n}");
    }
    out
}

/// Each media shard's busy time, its turns (the work between two waits of its loop: what a
/// datagram arriving during one waits for) as a histogram, and its longest turn.
fn render_shard_load(out: &mut String, shards: &[media::ShardLoad]) {
    // A family with one sample per shard.
    let per_shard = |out: &mut String,
                     name: &str,
                     kind: &str,
                     help: &str,
                     value: &dyn Fn(&media::ShardLoad) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, load) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(load));
        }
    };
    per_shard(
        out,
        "roomd_media_shard_busy_seconds_total",
        "counter",
        "Time a media shard thread spent working (outside its wait).",
        &|load| load.busy.as_secs_f64(),
    );
    per_shard(
        out,
        "roomd_media_shard_longest_turn_seconds",
        "gauge",
        "The longest turn of a media shard since it started.",
        &|load| load.longest_turn.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "# HELP roomd_media_shard_turn_seconds Length of a media shard's turns: the work between two waits, which a datagram arriving during it waits for.\n\
         # TYPE roomd_media_shard_turn_seconds histogram"
    );
    for (i, load) in shards.iter().enumerate() {
        let mut cumulative = 0;
        for (bound, n) in media::TURN_BUCKETS.iter().zip(&load.turns) {
            cumulative += n;
            let _ = writeln!(
                out,
                "roomd_media_shard_turn_seconds_bucket{{shard=\"{i}\",le=\"{}\"}} {cumulative}",
                bound.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "roomd_media_shard_turn_seconds_bucket{{shard=\"{i}\",le=\"+Inf\"}} {}\n\
             roomd_media_shard_turn_seconds_sum{{shard=\"{i}\"}} {}\n\
             roomd_media_shard_turn_seconds_count{{shard=\"{i}\"}} {}",
            load.turn_count(),
            load.busy.as_secs_f64(),
            load.turn_count()
        );
    }
}

/// One metric family: name, type, help, and its samples as (labels, value).
type Family<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);

/// Appends cluster mode's gauges and counters (only rendered in cluster mode): the rooms this
/// node owns, its relay links, frames and placements, its claim keeper's failures and Redis
/// errors.
pub(crate) fn render_cluster(out: &mut String, rooms_owned: usize, stats: &ClusterStats) {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let families: [Family<'_>; 8] = [
        (
            "roomd_cluster_rooms_owned",
            "gauge",
            "Rooms whose claim this node holds.",
            &[("", rooms_owned as u64)],
        ),
        (
            "roomd_cluster_relay_links",
            "gauge",
            "Relay links open: out, this node's clients relayed to rooms' owners; in, other nodes' clients relayed here.",
            &[
                ("direction=\"out\"", n(&stats.links_out)),
                ("direction=\"in\"", n(&stats.links_in)),
            ],
        ),
        (
            "roomd_cluster_relay_frames_total",
            "counter",
            "JSON-RPC frames relayed over this node's links (pings answered here are not).",
            &[
                ("direction=\"to_owner\"", n(&stats.frames_to_owner)),
                ("direction=\"to_client\"", n(&stats.frames_to_client)),
            ],
        ),
        (
            "roomd_cluster_relay_links_lost_total",
            "counter",
            "This node's relay links that broke without a close (the owner died or hung).",
            &[("", n(&stats.links_lost))],
        ),
        (
            "roomd_cluster_placements_total",
            "counter",
            "Joins of this node's clients: served here, relayed to another node, or refused (no node could take the room).",
            &[
                ("result=\"local\"", n(&stats.placed_local)),
                ("result=\"relayed\"", n(&stats.placed_relayed)),
                ("result=\"refused\"", n(&stats.placed_refused)),
            ],
        ),
        (
            "roomd_cluster_claim_renew_failures_total",
            "counter",
            "Room claim renewals that failed or did not answer before the claim's deadline.",
            &[("", n(&stats.renew_failures))],
        ),
        (
            "roomd_cluster_rooms_stopped_total",
            "counter",
            "Rooms this node closed because it could no longer be sure to own them.",
            &[
                ("reason=\"deadline\"", n(&stats.stopped_deadline)),
                ("reason=\"taken\"", n(&stats.stopped_taken)),
            ],
        ),
        (
            "roomd_cluster_redis_errors_total",
            "counter",
            "Redis commands of this node that failed (unreachable, timed out, refused).",
            &[("", n(&stats.redis_errors))],
        ),
    ];
    for (name, kind, help, samples) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets are cumulative, `+Inf` equals the count, the sum is in seconds.
    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{} 3\n"), "{out}");
        assert!(out.contains("x_sum{} 60.033\n"), "{out}");
    }
}
