//! The UDP port pool over `[port_min, port_max]`: webrtc-rs 0.21 has no port-range setting, so
//! every peer connection is bound to one concrete `bind_ip:port` leased from here.
//!
//! Owns which ports this process has handed out. A [`PortLease`] returns its port when dropped;
//! the session drops it only after the peer connection is closed. Ports are handed out
//! round-robin so a just-released port (whose socket may still be closing) is not reused at
//! once; a port some other process holds simply fails to bind and the caller asks for the next.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::stats::{Counters, Gauge};

#[derive(Debug)]
struct State {
    min: u16,
    max: u16,
    /// Next port to try (round-robin cursor).
    next: u16,
    in_use: HashSet<u16>,
}

/// Shared pool of UDP ports.
#[derive(Clone, Debug)]
pub(crate) struct PortPool {
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
}

/// One leased port; returned to the pool on drop.
#[derive(Debug)]
pub(crate) struct PortLease {
    port: u16,
    pool: Arc<Mutex<State>>,
    _gauge: Gauge,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        // A poisoned lock only means another thread panicked while holding it; the set is
        // still consistent (every mutation is a single insert/remove).
        let mut st = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        st.in_use.remove(&self.port);
    }
}

impl PortPool {
    /// A pool over `[min, max]` (swapped if given backwards).
    pub(crate) fn new(min: u16, max: u16, counters: Arc<Counters>) -> Self {
        let (min, max) = if min <= max { (min, max) } else { (max, min) };
        Self {
            state: Arc::new(Mutex::new(State {
                min,
                max,
                next: min,
                in_use: HashSet::new(),
            })),
            counters,
        }
    }

    /// Number of ports in the range.
    pub(crate) fn size(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        usize::from(st.max - st.min) + 1
    }

    /// Leases the next free port, or `None` when every port of the range is leased.
    pub(crate) fn acquire(&self) -> Option<PortLease> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let size = u32::from(st.max - st.min) + 1;
        for _ in 0..size {
            let candidate = st.next;
            st.next = if st.next >= st.max {
                st.min
            } else {
                st.next + 1
            };
            if st.in_use.insert(candidate) {
                return Some(PortLease {
                    port: candidate,
                    pool: Arc::clone(&self.state),
                    _gauge: Gauge::new(&self.counters, |c| &c.ports_in_use),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_robin_and_returns_on_drop() {
        let pool = PortPool::new(5000, 5002, Arc::default());
        let a = pool.acquire().expect("free port");
        let b = pool.acquire().expect("free port");
        let c = pool.acquire().expect("free port");
        assert_eq!((a.port(), b.port(), c.port()), (5000, 5001, 5002));
        assert!(pool.acquire().is_none());
        drop(b);
        assert_eq!(pool.acquire().expect("returned port").port(), 5001);
        assert_eq!(pool.size(), 3);
    }
}
