//! `/metrics` in the Prometheus text exposition format, from the media engine's counters and
//! the room directory. Written by hand: a dozen lines of text do not need a metrics crate.

use std::fmt::Write as _;

use std::sync::atomic::Ordering;

use media::MediaStats;

use crate::limits::Counters;

/// Room-side gauges sampled at scrape time.
pub(crate) struct RoomGauges {
    pub(crate) rooms: usize,
    pub(crate) participants: usize,
    pub(crate) sessions: usize,
    pub(crate) connections: usize,
    pub(crate) room_panics: u64,
}

/// Renders one scrape.
pub(crate) fn render(rooms: &RoomGauges, refused: &Counters, media: &MediaStats) -> String {
    let mut out = String::with_capacity(2048);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
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
        "roomd_media_tasks",
        "gauge",
        "Tasks of the media engine.",
        media.tasks,
    );
    metric(
        "roomd_media_ports_in_use",
        "gauge",
        "UDP ports leased from the pool.",
        media.ports_in_use,
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
    let _ = writeln!(
        out,
        "# HELP roomd_rtp_dropped_total Packets not delivered to a subscriber, by reason.\n# TYPE roomd_rtp_dropped_total counter"
    );
    for (reason, n) in &media.drops {
        let _ = writeln!(out, "roomd_rtp_dropped_total{{reason=\"{reason:?}\"}} {n}");
    }
    out
}
