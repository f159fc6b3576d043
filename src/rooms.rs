//! Room directory and the `run_room` driver task: the only async code around a
//! [`signaling::room::Room`].
//!
//! Owns the map from room name to the room's task handle, room creation on first join, removal
//! when a room empties, and the supervision of room tasks (a room that panics is removed, its
//! participants get `roomClosed`, its media endpoints are released). Executes the room's
//! outputs: replies and events to sessions, media commands to the bridge, and memberships
//! (`Admitted`/`Removed`) into the session registry. One task per room; rooms run in parallel
//! and share nothing. The directory lock is held only for lookup/insert/remove, never across
//! an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::FutureExt;
use signaling::protocol::{ClientRequest, Notification};
use signaling::room::{Input, MediaReport, Output, Removal, Room, RoomConfig, SessionId};
use signaling::RoomError;

use tokio::sync::Notify;

use crate::bridge::Bridge;
use crate::drain::Lifecycle;
use crate::limits::Counters;
use crate::lock;
use crate::metrics::Latencies;
use crate::room_handle::{RoomHandle, RoomInbox};
use crate::sessions::{Admission, Outbound, Sessions};

/// What a room task needs from the rest of the process.
#[derive(Clone, Debug)]
pub(crate) struct RoomCtx {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) bridge: Arc<Bridge>,
    pub(crate) directory: Arc<Directory>,
    /// Room tasks are tracked for the drain; no new rooms while draining.
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// Where the join → first media connected time is recorded.
    pub(crate) latencies: Arc<Latencies>,
    /// Where refusals of the room limits are counted.
    pub(crate) counters: Arc<Counters>,
}

/// Why no room could be had for a join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// `max_rooms` reached.
    Limit,
    /// The server is draining: existing rooms only.
    Draining,
}

impl NoRoom {
    pub(crate) fn error(&self) -> RoomError {
        match self {
            NoRoom::Limit => RoomError::TooManyRooms,
            NoRoom::Draining => RoomError::Draining,
        }
    }
}

/// All rooms of the process.
#[derive(Debug)]
pub(crate) struct Directory {
    config: RoomConfig,
    /// Most rooms at once (`--max-rooms`).
    max_rooms: usize,
    /// Held only for lookup/insert/remove, never across an `.await`.
    inner: Mutex<DirectoryInner>,
    /// Room tasks that panicked (each was removed and its participants told `roomClosed`).
    pub(crate) panics: AtomicU64,
    /// Notified whenever a room is removed (the drain waits for the last one).
    removed: Notify,
}

#[derive(Debug, Default)]
struct DirectoryInner {
    rooms: HashMap<String, RoomHandle>,
    next_serial: u32,
}

impl Directory {
    pub(crate) fn new(config: RoomConfig, max_rooms: usize) -> Self {
        Self {
            config,
            max_rooms,
            inner: Mutex::new(DirectoryInner::default()),
            panics: AtomicU64::new(0),
            removed: Notify::new(),
        }
    }

    /// The room called `name`, created (with its task) if it does not exist and the server
    /// may create one (under `max_rooms`, not draining).
    pub(crate) fn get_or_create(&self, name: &str, ctx: &RoomCtx) -> Result<RoomHandle, NoRoom> {
        let mut inner = lock(&self.inner);
        if let Some(handle) = inner.rooms.get(name).filter(|h| !h.is_closed()) {
            return Ok(handle.clone());
        }
        if ctx.lifecycle.is_draining() {
            return Err(NoRoom::Draining);
        }
        let live = inner.rooms.values().filter(|h| !h.is_closed()).count();
        if live >= self.max_rooms {
            return Err(NoRoom::Limit);
        }
        inner.next_serial = inner.next_serial.wrapping_add(1);
        let serial = inner.next_serial;
        let (handle, rx) = RoomHandle::new(name, serial);
        inner.rooms.insert(name.to_owned(), handle.clone());
        let room = Room::new(name, serial, self.config.clone());
        let task = run_room(room, rx, handle.clone(), ctx.clone());
        ctx.lifecycle
            .tasks
            .spawn(supervise(task, handle.clone(), ctx.clone()));
        tracing::debug!(room = name, serial, "room created");
        Ok(handle)
    }

    /// Removes the entry for `handle` if it is still the current room of that name.
    fn remove(&self, handle: &RoomHandle) {
        let mut inner = lock(&self.inner);
        if inner.rooms.get(&*handle.name).is_some_and(|h| h.is(handle)) {
            inner.rooms.remove(&*handle.name);
        }
        drop(inner);
        self.removed.notify_waiters();
    }

    /// Completes once no room is left.
    pub(crate) async fn emptied(&self) {
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            if lock(&self.inner).rooms.is_empty() {
                return;
            }
            removed.await;
        }
    }

    /// Every room's handle.
    pub(crate) fn all(&self) -> Vec<RoomHandle> {
        lock(&self.inner).rooms.values().cloned().collect()
    }

    /// Names of the rooms that have at least one participant.
    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.inner)
            .rooms
            .values()
            .filter(|h| h.members() > 0)
            .map(|h| h.name.to_string())
            .collect()
    }

    /// The handle of an existing room.
    pub(crate) fn get(&self, name: &str) -> Option<RoomHandle> {
        lock(&self.inner).rooms.get(name).cloned()
    }

    /// Total participants over all rooms.
    pub(crate) fn participants(&self) -> usize {
        lock(&self.inner).rooms.values().map(|h| h.members()).sum()
    }
}

/// Runs a room task; if it panics, cleans up after it so that nothing it owned lingers: the
/// directory entry, the memberships (each member gets `roomClosed`, like an admin close) and
/// the media endpoints of the room.
async fn supervise(task: impl Future<Output = ()>, me: RoomHandle, ctx: RoomCtx) {
    if AssertUnwindSafe(task).catch_unwind().await.is_ok() {
        return;
    }
    ctx.directory.panics.fetch_add(1, Ordering::Relaxed);
    tracing::error!(room = %me.name, serial = me.serial, "room task panicked; room closed");
    ctx.directory.remove(&me);
    me.set_members(0);
    let closed = Notification::RoomClosed {
        room: me.name.to_string(),
    };
    for session in ctx.sessions.members_of(&me) {
        ctx.sessions.remove_from(&session.id, &me, true);
        session.deliver(Outbound::Notification(closed.encode()));
        session.deliver(Outbound::MembershipEnded {
            room_serial: me.serial,
        });
    }
    ctx.bridge.release_room(me.serial);
}

/// The room task: feeds inputs and timeouts to the state machine and executes its outputs.
/// Ends when the room is empty; inputs still queued then are answered as by an empty room,
/// except joins, which go to a fresh room of the same name.
async fn run_room(mut room: Room, inbox: RoomInbox, me: RoomHandle, ctx: RoomCtx) {
    let RoomInbox {
        inputs: mut rx,
        mut queries,
    } = inbox;
    // When each participant joined, until its first media endpoint connects.
    let mut joined: HashMap<SessionId, Instant> = HashMap::new();
    loop {
        let deadline = room.poll_timeout();
        let input = tokio::select! {
            input = rx.recv() => input,
            Some(query) = queries.recv() => {
                let _ = query.send(room.participants());
                continue;
            }
            () = sleep_until(deadline) => {
                room.handle_timeout(Instant::now());
                execute_outputs(&mut room, &me, &ctx, &mut joined);
                if room.is_empty() { break; }
                continue;
            }
        };
        let Some(input) = input else { break };
        let now = Instant::now();
        if let Input::Media(MediaReport::Connected { endpoint }) = &input {
            let first = room
                .endpoint_owner(*endpoint)
                .and_then(|s| joined.remove(s));
            if let Some(at) = first {
                ctx.latencies.join_to_media.observe(now - at);
            }
        }
        room.handle(now, input);
        execute_outputs(&mut room, &me, &ctx, &mut joined);
        if room.is_empty() {
            break;
        }
    }
    ctx.directory.remove(&me);
    rx.close();
    while let Some(input) = rx.recv().await {
        match input {
            Input::Request {
                session,
                id,
                request:
                    ClientRequest::JoinRoom {
                        room: name,
                        user,
                        data_channels,
                    },
            } => {
                let next = ctx.directory.get_or_create(&name, &ctx);
                let err = match &next {
                    Err(no_room) => no_room.error(),
                    Ok(_) => RoomError::RoomClosing {
                        user: user.clone(),
                        room: name.clone(),
                    },
                };
                let forwarded = Input::Request {
                    session: session.clone(),
                    id,
                    request: ClientRequest::JoinRoom {
                        room: name,
                        user,
                        data_channels,
                    },
                };
                let sent = match next {
                    Ok(next) => next.tx.send(forwarded).await.is_ok(),
                    Err(_) => false,
                };
                if !sent {
                    // Answered here, never lost: the connection waits for this reply.
                    let frame = error_frame(id, &err, &session);
                    let ok = false;
                    ctx.sessions
                        .deliver(&session, Outbound::Reply { id, frame, ok });
                }
            }
            other => {
                room.handle(Instant::now(), other);
                execute_outputs(&mut room, &me, &ctx, &mut joined);
            }
        }
    }
    tracing::debug!(room = %me.name, serial = me.serial, "room closed");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The JSON-RPC error answering request `id` of `session` (the session id inside the error
/// unless the original's exception path omits it).
fn error_frame(id: signaling::jsonrpc::Id, err: &RoomError, session: &SessionId) -> String {
    let sid = err.carries_session_id().then_some(session.0.as_str());
    signaling::jsonrpc::encode_error(id, err.code(), &err.to_string(), sid)
}

fn execute_outputs(
    room: &mut Room,
    me: &RoomHandle,
    ctx: &RoomCtx,
    joined: &mut HashMap<SessionId, Instant>,
) {
    while let Some(out) = room.poll_output() {
        match out {
            Output::Reply {
                session,
                id,
                result,
            } => {
                let ok = result.is_ok();
                let frame = match result {
                    Ok(reply) => {
                        signaling::jsonrpc::encode_result(id, reply.to_value(), &session.0)
                    }
                    Err(err) => {
                        tracing::debug!(%session, id, code = err.code(), %err, "request refused");
                        ctx.counters.room_error(&err);
                        error_frame(id, &err, &session)
                    }
                };
                ctx.sessions
                    .deliver(&session, Outbound::Reply { id, frame, ok });
            }
            Output::Notify {
                session,
                notification,
            } => ctx
                .sessions
                .deliver(&session, Outbound::Notification(notification.encode())),
            Output::Media(cmd) => ctx.bridge.execute(cmd, &me.tx),
            Output::CloseSession { session } => ctx.sessions.deliver(&session, Outbound::Close),
            Output::Admitted { session, user } => {
                tracing::info!(room = %me.name, %user, %session, "joined");
                joined.insert(session.clone(), Instant::now());
                // The one place a session becomes a participant. If its socket closed while
                // the join was in flight, the room learns it here (the connection, when it
                // ended, saw no membership to tell).
                match ctx.sessions.admit(&session, me, user) {
                    Admission::Live => {}
                    Admission::Disconnected => {
                        room.handle(Instant::now(), Input::Disconnected { session });
                    }
                    Admission::Unknown | Admission::Elsewhere => {
                        room.handle(Instant::now(), Input::Evict { session });
                    }
                }
            }
            Output::Removed { session, reason } => {
                tracing::info!(room = %me.name, %session, ?reason, "left");
                joined.remove(&session);
                ctx.sessions
                    .remove_from(&session, me, reason == Removal::RoomClosed);
                if reason != Removal::Left {
                    // `leaveRoom`'s own reply follows; anything else ends a waiting request.
                    let ended = Outbound::MembershipEnded {
                        room_serial: me.serial,
                    };
                    ctx.sessions.deliver(&session, ended);
                }
            }
        }
    }
    me.set_members(room.participant_count());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::Conn;
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// A room task that panics is reported, removed from the directory, and each of its
    /// members gets `roomClosed` and can join again.
    #[tokio::test]
    async fn a_panicking_room_closes_cleanly() {
        let ctx = RoomCtx {
            sessions: Arc::new(Sessions::default()),
            bridge: Arc::new(Bridge::new(
                media::MediaRouter::start(media::MediaConfig {
                    shards: 1,
                    udp_port: 0,
                    ..crate::Config::default().media()
                })
                .expect("one media shard binds an ephemeral port"),
            )),
            directory: Arc::new(Directory::new(RoomConfig::default(), 10)),
            lifecycle: Arc::default(),
            latencies: Arc::default(),
            counters: Arc::default(),
        };
        let handle = ctx
            .directory
            .get_or_create("r", &ctx)
            .expect("room under the limit");
        let session = ctx.sessions.create();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        session.attach(Conn {
            generation: 1,
            tx,
            kill: Arc::new(Notify::new()),
            replaced: Arc::new(Notify::new()),
        });
        ctx.sessions.admit(&session.id, &handle, "u".into());
        supervise(
            async { panic!("injected room failure") },
            handle.clone(),
            ctx.clone(),
        )
        .await;
        assert_eq!(ctx.directory.panics.load(Ordering::Relaxed), 1);
        assert!(ctx.directory.get("r").is_none());
        match rx.recv().await {
            Some(Outbound::Notification(text)) => assert!(text.contains("roomClosed"), "{text}"),
            other => panic!("expected roomClosed, got {other:?}"),
        }
        assert!(matches!(
            rx.recv().await,
            Some(Outbound::MembershipEnded { room_serial }) if room_serial == handle.serial
        ));
        assert!(matches!(
            session.membership(),
            crate::sessions::Membership::Closed { .. }
        ));
    }
}
