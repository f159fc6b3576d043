//! Session registry: kurento-jsonrpc sessions, which outlive their WebSocket.
//!
//! Owns the map from session id to [`Session`]: the session's current connection (if any) and
//! its membership (the room it is a participant of). The membership is written only by room
//! drivers, from the room state machine's `Admitted`/`Removed` outputs; connections only read
//! it. Admission and a connection's end are decided under the same per-session lock, so a
//! join that completes after its socket closed is always seen by one side (see
//! [`Session::admit`] and [`Session::detach`]). Room drivers deliver replies and events
//! through [`Sessions::deliver`]; a session without a connection (inside its grace period)
//! loses them, as the original did. Does not own the WebSocket (`connection.rs`) nor rooms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;
use signaling::jsonrpc::Id;
use signaling::room::{Membership as RouteMembership, SessionId};
use tokio::sync::{mpsc, Notify};

use crate::lock;
use crate::room_handle::RoomHandle;

/// Frames queued for one connection. When full, the connection is closed (its `kill` is
/// notified): a signaling message cannot be dropped (a lost answer or candidate breaks the
/// call), and a client that stops reading must not make the server buffer without bound.
pub(crate) const OUTBOUND_CAPACITY: usize = 1024;

/// What a connection must write or do.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// An event frame.
    Notification(String),
    /// The answer to a room request (`ok`: a result, not an error).
    Reply { id: Id, frame: String, ok: bool },
    /// The session stopped being a participant of the room with this serial without asking
    /// (evicted, room closed): a request still waiting for that room will not be answered.
    MembershipEnded { room_serial: u32 },
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
    /// Notified when another connection took the session over (`connect`): it must close.
    pub(crate) replaced: Arc<Notify>,
}

/// The room a session is in, as far as routing its requests is concerned.
#[derive(Clone, Debug, Default)]
pub(crate) enum Membership {
    #[default]
    None,
    In {
        room: RoomHandle,
        user: String,
    },
    /// Its room was closed by an administrator (`leaveRoom` answers "room not found").
    Closed {
        room: Arc<str>,
    },
}

impl Membership {
    /// The view `signaling::room::route` decides on.
    pub(crate) fn view(&self) -> RouteMembership<'_> {
        match self {
            Self::None => RouteMembership::None,
            Self::In { room, user } => RouteMembership::In {
                room: &room.name,
                user,
            },
            Self::Closed { room } => RouteMembership::Closed { room },
        }
    }

    pub(crate) fn room(&self) -> Option<&RoomHandle> {
        match self {
            Self::In { room, .. } => Some(room),
            Self::None | Self::Closed { .. } => None,
        }
    }
}

/// What a room driver learns when it admits a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The session has a connection.
    Live,
    /// The session exists but its connection is gone: the grace period must start now.
    Disconnected,
    /// The session is already a participant of another room (a join sent before a
    /// reconnection, admitted after the new socket joined elsewhere): evict it from this one.
    Elsewhere,
    /// The session no longer exists (closed or expired): evict at once.
    Unknown,
}

/// What ending a connection found.
#[derive(Debug)]
pub(crate) enum Detached {
    /// Another connection had taken the session over: nothing to do.
    Superseded,
    /// The session lost its connection; it is in this room (if any).
    Now(Option<RoomHandle>),
}

/// One kurento-jsonrpc session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    /// Held only for tiny, non-async critical sections.
    inner: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    conn: Option<Conn>,
    membership: Membership,
    /// Generation of the last connection attached.
    last_generation: u64,
}

impl Session {
    /// Queues a message for the current connection; lost when there is none. On a full queue
    /// the connection is told to close; it stays attached until it detaches itself, so that
    /// its end is handled like any other (grace period, then eviction) — clearing it here made
    /// the ending connection believe another socket had taken the session over.
    pub(crate) fn deliver(&self, msg: Outbound) {
        let inner = lock(&self.inner);
        let Some(conn) = &inner.conn else {
            tracing::trace!(session = %self.id, "no connection; message dropped");
            return;
        };
        match conn.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(session = %self.id, "outbound queue full; closing the connection");
                conn.kill.notify_one();
            }
            // The connection task is ending; it detaches itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Makes `conn` the session's connection. Returns the previous connection's `replaced` switch
    /// and the room the session is in, read in the same step as the attach (so that a room
    /// admitting the session concurrently is either seen here or sees this connection).
    pub(crate) fn attach(&self, conn: Conn) -> (Option<Arc<Notify>>, Option<RoomHandle>) {
        let mut inner = lock(&self.inner);
        inner.last_generation = conn.generation;
        let old = inner.conn.replace(conn).map(|old| old.replaced);
        (old, inner.membership.room().cloned())
    }

    /// Forgets the connection if it is still `generation`, and returns the room to tell, read
    /// in the same step: a room admitting the session afterwards sees no connection.
    pub(crate) fn detach(&self, generation: u64) -> Detached {
        let mut inner = lock(&self.inner);
        if inner
            .conn
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            inner.conn = None;
            Detached::Now(inner.membership.room().cloned())
        } else {
            Detached::Superseded
        }
    }

    /// True when the session has had no connection since `generation` was detached.
    pub(crate) fn is_abandoned_since(&self, generation: u64) -> bool {
        let inner = lock(&self.inner);
        inner.conn.is_none() && inner.last_generation == generation
    }

    pub(crate) fn membership(&self) -> Membership {
        lock(&self.inner).membership.clone()
    }

    /// Records that `room` admitted the session as `user` (room drivers only).
    fn admit(&self, room: RoomHandle, user: String) -> Admission {
        let mut inner = lock(&self.inner);
        if inner.membership.room().is_some_and(|r| !r.is(&room)) {
            return Admission::Elsewhere; // One room per session: the first admission stands.
        }
        inner.membership = Membership::In { room, user };
        if inner.conn.is_some() {
            Admission::Live
        } else {
            Admission::Disconnected
        }
    }

    /// Records that `room` no longer has the session (room drivers only). A membership of
    /// another room is left alone.
    fn remove_from(&self, room: &RoomHandle, closed: bool) {
        let mut inner = lock(&self.inner);
        if inner.membership.room().is_some_and(|r| r.is(room)) {
            inner.membership = if closed {
                Membership::Closed {
                    room: Arc::clone(&room.name),
                }
            } else {
                Membership::None
            };
        }
    }
}

/// All sessions of the process.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    /// Held only for lookups and inserts, never across an `.await`.
    map: Mutex<HashMap<SessionId, Arc<Session>>>,
}

impl Sessions {
    /// Creates a session with a fresh id in kurento-jsonrpc's format (base 32, 26 digits).
    pub(crate) fn create(&self) -> Arc<Session> {
        let mut map = lock(&self.map);
        loop {
            let id = SessionId(new_session_id());
            if map.contains_key(&id) {
                continue; // 130 random bits: practically never.
            }
            let session = Arc::new(Session {
                id: id.clone(),
                inner: Mutex::new(SessionState::default()),
            });
            map.insert(id, Arc::clone(&session));
            return session;
        }
    }

    /// Creates a session with the id `id` chose elsewhere (cluster mode: the relaying node's,
    /// so that the client keeps the id it was given), or with a fresh id if `id` is taken here.
    pub(crate) fn create_as(&self, id: String) -> Arc<Session> {
        let mut map = lock(&self.map);
        let id = SessionId(id);
        if map.contains_key(&id) {
            drop(map);
            return self.create();
        }
        let session = Arc::new(Session {
            id: id.clone(),
            inner: Mutex::new(SessionState::default()),
        });
        map.insert(id, Arc::clone(&session));
        session
    }

    pub(crate) fn get(&self, id: &SessionId) -> Option<Arc<Session>> {
        lock(&self.map).get(id).cloned()
    }

    pub(crate) fn remove(&self, id: &SessionId) {
        lock(&self.map).remove(id);
    }

    /// Delivers to a session by id; lost when the session is unknown.
    pub(crate) fn deliver(&self, id: &SessionId, msg: Outbound) {
        if let Some(session) = self.get(id) {
            session.deliver(msg);
        }
    }

    /// A room admitted `id` as `user`: record the membership, say whether it is connected.
    pub(crate) fn admit(&self, id: &SessionId, room: &RoomHandle, user: String) -> Admission {
        match self.get(id) {
            Some(session) => session.admit(room.clone(), user),
            None => Admission::Unknown,
        }
    }

    /// `room` no longer has `id` as a participant.
    pub(crate) fn remove_from(&self, id: &SessionId, room: &RoomHandle, closed: bool) {
        if let Some(session) = self.get(id) {
            session.remove_from(room, closed);
        }
    }

    /// Sessions whose membership is `room` (after a room task died).
    pub(crate) fn members_of(&self, room: &RoomHandle) -> Vec<Arc<Session>> {
        lock(&self.map)
            .values()
            .filter(|s| lock(&s.inner).membership.room().is_some_and(|r| r.is(room)))
            .cloned()
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Every session that is in a room, with the room's name (cluster mode's session
    /// directory publishes them).
    pub(crate) fn in_rooms(&self) -> Vec<(SessionId, String)> {
        lock(&self.map)
            .values()
            .filter_map(|s| {
                let room = lock(&s.inner).membership.room().map(|r| r.name.to_string());
                room.map(|room| (s.id.clone(), room))
            })
            .collect()
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

    fn conn(generation: u64) -> Conn {
        Conn {
            generation,
            tx: mpsc::channel(1).0,
            kill: Arc::new(Notify::new()),
            replaced: Arc::new(Notify::new()),
        }
    }

    /// The ghost race, both orders: whichever of "room admits" and "socket ends" comes
    /// second learns of the first, so the room always hears that the participant is gone.
    #[test]
    fn admission_and_disconnection_always_meet() {
        let sessions = Sessions::default();
        let (room, _rx) = RoomHandle::new("r", 1);

        // Socket ends first: the admission finds no connection.
        let s = sessions.create();
        s.attach(conn(1));
        assert!(matches!(s.detach(1), Detached::Now(None)));
        assert_eq!(
            sessions.admit(&s.id, &room, "u".into()),
            Admission::Disconnected
        );

        // Admission first: the end of the socket finds the room.
        let s = sessions.create();
        s.attach(conn(2));
        assert_eq!(sessions.admit(&s.id, &room, "u".into()), Admission::Live);
        assert!(matches!(s.detach(2), Detached::Now(Some(r)) if r.is(&room)));

        // A session already forgotten is evicted at once.
        let id = s.id.clone();
        sessions.remove(&id);
        assert_eq!(sessions.admit(&id, &room, "u".into()), Admission::Unknown);
    }

    /// One room per session even when a join sent before a reconnection is admitted after the
    /// new socket's join: the first admission stands, the second room must evict.
    #[test]
    fn a_second_room_cannot_admit_a_member_of_another() {
        let sessions = Sessions::default();
        let (gamma, _rx1) = RoomHandle::new("gamma", 1);
        let (beta, _rx2) = RoomHandle::new("beta", 2);
        let s = sessions.create();
        s.attach(conn(1));
        assert_eq!(sessions.admit(&s.id, &gamma, "u".into()), Admission::Live);
        assert_eq!(
            sessions.admit(&s.id, &beta, "u".into()),
            Admission::Elsewhere
        );
        assert!(s.membership().room().is_some_and(|r| r.is(&gamma)));
    }

    /// A late `Removed` of an old room does not clear the membership of a newer one.
    #[test]
    fn removal_only_clears_the_membership_of_that_room() {
        let sessions = Sessions::default();
        let (old, _rx1) = RoomHandle::new("r", 1);
        let (new, _rx2) = RoomHandle::new("r", 2);
        let s = sessions.create();
        sessions.admit(&s.id, &new, "u".into());
        sessions.remove_from(&s.id, &old, false);
        assert!(s.membership().room().is_some_and(|r| r.is(&new)));
        sessions.remove_from(&s.id, &new, true);
        assert!(matches!(s.membership(), Membership::Closed { .. }));
    }
}
