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
