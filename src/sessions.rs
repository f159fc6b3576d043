//! Session registry: kurento-jsonrpc sessions, which outlive their WebSocket.
//!
//! Owns the map from session id to [`Slot`]: the session's current connection (if any) and
//! the room it is bound to. Room drivers deliver replies and events through [`Hub::deliver`];
//! a session without a connection (inside its grace period) loses them, as the original did.
//! Does not own the WebSocket itself (that is `session.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;
use signaling::room::SessionId;
use tokio::sync::{mpsc, Notify};

use crate::lock;
use crate::rooms::RoomHandle;

/// Frames queued for one connection. When full, the connection is closed (its `kill` is
/// notified): a signaling message cannot be dropped (a lost answer or candidate breaks the
/// call), and a client that stops reading must not make the server buffer without bound.
pub(crate) const OUTBOUND_CAPACITY: usize = 1024;

/// What a connection must write or do.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An event frame.
    Notification(String),
    /// The answer to a room request.
    Reply {
        id: signaling::jsonrpc::Id,
        frame: String,
        /// Set on a successful `joinRoom`: the room the session is now bound to.
        joined: Option<RoomHandle>,
    },
    /// Close the WebSocket with 1000 (after a successful `leaveRoom`).
    Close,
}

/// The live connection of a session.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Distinguishes successive connections of one session.
    pub(crate) generation: u64,
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// Notified when the outbound queue overflowed: the connection must close.
    pub(crate) kill: Arc<Notify>,
}

/// The room a session is in.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub(crate) room: RoomHandle,
    pub(crate) user: String,
}

/// One kurento-jsonrpc session.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: SessionId,
    /// Held only for tiny, non-async critical sections.
    inner: Mutex<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    conn: Option<Conn>,
    binding: Option<Binding>,
    /// Generation of the last connection attached.
    last_generation: u64,
}

impl Slot {
    /// Queues a message for the current connection; lost when there is none.
    pub(crate) fn deliver(&self, msg: Outbound) {
        let mut inner = lock(&self.inner);
        let Some(conn) = &inner.conn else {
            tracing::trace!(session = %self.id, "no connection; message dropped");
            return;
        };
        match conn.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(session = %self.id, "outbound queue full; closing the connection");
                conn.kill.notify_one();
                inner.conn = None;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => inner.conn = None,
        }
    }

    /// Makes `conn` the session's connection, returning the previous one's kill switch.
    pub(crate) fn attach(&self, conn: Conn) -> Option<Arc<Notify>> {
        let mut inner = lock(&self.inner);
        inner.last_generation = conn.generation;
        inner.conn.replace(conn).map(|old| old.kill)
    }

    /// Forgets the connection if it is still `generation`; true if it was.
    pub(crate) fn detach(&self, generation: u64) -> bool {
        let mut inner = lock(&self.inner);
        if inner
            .conn
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            inner.conn = None;
            true
        } else {
            false
        }
    }

    /// True when the session has had no connection since `generation` was detached.
    pub(crate) fn is_abandoned_since(&self, generation: u64) -> bool {
        let inner = lock(&self.inner);
        inner.conn.is_none() && inner.last_generation == generation
    }

    pub(crate) fn binding(&self) -> Option<Binding> {
        lock(&self.inner).binding.clone()
    }

    pub(crate) fn bind(&self, binding: Option<Binding>) {
        lock(&self.inner).binding = binding;
    }
}

/// All sessions of the process.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    /// Held only for lookups and inserts, never across an `.await`.
    sessions: Mutex<HashMap<SessionId, Arc<Slot>>>,
}

impl Hub {
    /// Creates a session with a fresh id in kurento-jsonrpc's format (base 32, 26 digits).
    pub(crate) fn create(&self) -> Arc<Slot> {
        let mut sessions = lock(&self.sessions);
        loop {
            let id = SessionId(new_session_id());
            if sessions.contains_key(&id) {
                continue; // 130 random bits: practically never.
            }
            let slot = Arc::new(Slot {
                id: id.clone(),
                inner: Mutex::new(SlotInner::default()),
            });
            sessions.insert(id, Arc::clone(&slot));
            return slot;
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Slot>> {
        lock(&self.sessions).get(&SessionId(id.to_owned())).cloned()
    }

    pub(crate) fn remove(&self, id: &SessionId) {
        lock(&self.sessions).remove(id);
    }

    /// Delivers to a session by id; lost when the session is unknown.
    pub(crate) fn deliver(&self, id: &SessionId, msg: Outbound) {
        let slot = lock(&self.sessions).get(id).cloned();
        if let Some(slot) = slot {
            slot.deliver(msg);
        }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// 130 random bits written in base 32 with digits `[0-9a-v]`, like `BigInteger(130, rnd)
/// .toString(32)` in kurento-jsonrpc (we always write all 26 digits).
fn new_session_id() -> String {
    const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut rng = rand::thread_rng();
    (0..26)
        .map(|_| char::from(DIGITS[rng.gen_range(0..32)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_have_the_kurento_format_and_differ() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 26);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'v').contains(&c)));
    }
}
