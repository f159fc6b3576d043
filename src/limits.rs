//! Admission limits of WebSocket connections (in total and per client IP) and the counters of
//! every refusal the server makes (limits, rate limit, origin, admin token), for `/metrics`.
//!
//! The per-room and per-endpoint limits are not here: the room state machine owns them
//! (`signaling::room::RoomConfig`), the directory owns the room count (`rooms.rs`) and each
//! connection its request rate (`connection.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::lock;

/// Counters of refusals, exported by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Requests refused by a connection's rate limit.
    pub(crate) rate_limited: AtomicU64,
    /// Connections closed for exceeding the rate limit `burst` times in a row.
    pub(crate) abusive_closed: AtomicU64,
    /// WebSocket upgrades refused: the server holds `max_connections`.
    pub(crate) refused_total: AtomicU64,
    /// WebSocket upgrades refused: the client IP holds `max_connections_per_ip`.
    pub(crate) refused_per_ip: AtomicU64,
    /// WebSocket upgrades refused: `Origin` not in `allowed_origins`.
    pub(crate) refused_origin: AtomicU64,
    /// Admin requests refused (no token configured, wrong token, wrong method).
    pub(crate) admin_refused: AtomicU64,
    /// Room requests refused by a room limit, by limit (see [`RoomLimit`]).
    pub(crate) room_limits: [AtomicU64; RoomLimit::ALL.len()],
}

/// The limits the rooms enforce (their errors come from the room state machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoomLimit {
    Rooms,
    Participants,
    Publishers,
    SdpBytes,
    Candidates,
}

impl RoomLimit {
    pub(crate) const ALL: [RoomLimit; 5] = [
        RoomLimit::Rooms,
        RoomLimit::Participants,
        RoomLimit::Publishers,
        RoomLimit::SdpBytes,
        RoomLimit::Candidates,
    ];

    /// The limit behind a room error, if it is one.
    pub(crate) fn of(err: &signaling::RoomError) -> Option<RoomLimit> {
        use signaling::RoomError as E;
        match err {
            E::TooManyRooms => Some(RoomLimit::Rooms),
            E::RoomFull { .. } => Some(RoomLimit::Participants),
            E::TooManyPublishers { .. } => Some(RoomLimit::Publishers),
            E::OfferTooLarge { .. } => Some(RoomLimit::SdpBytes),
            E::TooManyCandidates { .. } => Some(RoomLimit::Candidates),
            _ => None,
        }
    }

    /// Its label in `/metrics`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RoomLimit::Rooms => "rooms",
            RoomLimit::Participants => "participants_per_room",
            RoomLimit::Publishers => "publishers_per_room",
            RoomLimit::SdpBytes => "sdp_bytes",
            RoomLimit::Candidates => "candidates_per_endpoint",
        }
    }
}

impl Counters {
    /// Counts a room error if it is a limit's refusal.
    pub(crate) fn room_error(&self, err: &signaling::RoomError) {
        if let Some(limit) = RoomLimit::of(err) {
            let i = RoomLimit::ALL
                .iter()
                .position(|l| *l == limit)
                .unwrap_or_default();
            self.room_limits[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Why a connection is not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerIp,
}

/// Counts open WebSocket connections.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    /// (total, per IP). Held only to count.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admits one more connection from `ip`; the permit gives it back when dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let mut open = lock(&self.open);
        if open.0 >= self.max_total {
            return Err(Refusal::Total);
        }
        let per_ip = open.1.entry(ip).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *per_ip += 1;
        open.0 += 1;
        Ok(ConnectionPermit {
            limits: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        lock(&self.open).0
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.limits.open);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_ip_and_in_total_and_come_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let a1 = limits.admit(a).expect("first from a");
        let _a2 = limits.admit(a).expect("second from a");
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let _b1 = limits.admit(b).expect("first from b");
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _b2 = limits.admit(b).expect("a place came back");
    }
}
