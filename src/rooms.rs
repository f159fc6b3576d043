//! Room directory and the `run_room` driver task: the only async code around a
//! [`signaling::room::Room`].
//!
//! Owns the map from room name to the room's task handle, room creation on first join, and
//! removal when a room empties. One task per room; rooms run in parallel and share nothing.
//! The directory lock is held only for lookup/insert/remove, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use signaling::protocol::{ClientRequest, Reply};
use signaling::room::{Input, Output, Room, RoomConfig};
use tokio::sync::mpsc;

use crate::bridge::Bridge;
use crate::hub::{Hub, Outbound};
use crate::lock;

/// Inputs queued for one room task (requests, media reports, connection events). When full,
/// senders wait (`send().await`): requests must not be lost and their order matters. The room
/// task never awaits anyone else, so the wait is short.
pub(crate) const ROOM_INBOX_CAPACITY: usize = 1024;

/// A cheap-to-clone handle to a room task.
#[derive(Clone, Debug)]
pub(crate) struct RoomHandle {
    pub(crate) name: Arc<str>,
    /// Unique per created room (also the room's endpoint-id prefix).
    pub(crate) serial: u32,
    pub(crate) tx: mpsc::Sender<Input>,
    /// Participants, as last published by the room task (for `/getAllRooms` and metrics).
    members: Arc<AtomicUsize>,
}

impl RoomHandle {
    /// True once the room task has stopped accepting inputs.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a room task needs from the rest of the process.
#[derive(Clone, Debug)]
pub(crate) struct RoomCtx {
    pub(crate) hub: Arc<Hub>,
    pub(crate) bridge: Arc<Bridge>,
    pub(crate) directory: Arc<Directory>,
}

/// All rooms of the process.
#[derive(Debug)]
pub(crate) struct Directory {
    config: RoomConfig,
    /// Held only for lookup/insert/remove, never across an `.await`.
    inner: Mutex<DirectoryInner>,
}

#[derive(Debug, Default)]
struct DirectoryInner {
    rooms: HashMap<String, RoomHandle>,
    next_serial: u32,
}

impl Directory {
    pub(crate) fn new(config: RoomConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(DirectoryInner::default()),
        }
    }

    /// The room called `name`, created (with its task) if it does not exist.
    pub(crate) fn get_or_create(&self, name: &str, ctx: &RoomCtx) -> RoomHandle {
        let mut inner = lock(&self.inner);
        if let Some(handle) = inner.rooms.get(name).filter(|h| !h.is_closed()) {
            return handle.clone();
        }
        inner.next_serial = inner.next_serial.wrapping_add(1);
        let serial = inner.next_serial;
        let (tx, rx) = mpsc::channel(ROOM_INBOX_CAPACITY);
        let handle = RoomHandle {
            name: Arc::from(name),
            serial,
            tx,
            members: Arc::new(AtomicUsize::new(0)),
        };
        inner.rooms.insert(name.to_owned(), handle.clone());
        let room = Room::new(name, serial, self.config.clone());
        tokio::spawn(run_room(room, rx, handle.clone(), ctx.clone()));
        tracing::debug!(room = name, serial, "room created");
        handle
    }

    /// Removes the entry for `handle` if it is still the current room of that name.
    fn remove(&self, handle: &RoomHandle) {
        let mut inner = lock(&self.inner);
        if inner
            .rooms
            .get(&*handle.name)
            .is_some_and(|h| h.serial == handle.serial)
        {
            inner.rooms.remove(&*handle.name);
        }
    }

    /// Names of the rooms that have at least one participant.
    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.inner)
            .rooms
            .values()
            .filter(|h| h.members.load(Ordering::Relaxed) > 0)
            .map(|h| h.name.to_string())
            .collect()
    }

    /// The handle of an existing room.
    pub(crate) fn get(&self, name: &str) -> Option<RoomHandle> {
        lock(&self.inner).rooms.get(name).cloned()
    }

    /// Total participants over all rooms.
    pub(crate) fn participants(&self) -> usize {
        lock(&self.inner)
            .rooms
            .values()
            .map(|h| h.members.load(Ordering::Relaxed))
            .sum()
    }
}

/// The room task: feeds inputs and timeouts to the state machine and executes its outputs.
/// Ends when the room is empty; inputs still queued then are answered as by an empty room,
/// except joins, which go to a fresh room of the same name.
async fn run_room(mut room: Room, mut rx: mpsc::Receiver<Input>, me: RoomHandle, ctx: RoomCtx) {
    loop {
        let deadline = room.poll_timeout();
        let input = tokio::select! {
            input = rx.recv() => input,
            () = sleep_until(deadline) => {
                room.handle_timeout(Instant::now());
                execute_outputs(&mut room, &me, &ctx);
                if room.is_empty() { break; }
                continue;
            }
        };
        let Some(input) = input else { break };
        room.handle(Instant::now(), input);
        execute_outputs(&mut room, &me, &ctx);
        if room.is_empty() {
            break;
        }
    }
    ctx.directory.remove(&me);
    rx.close();
    while let Some(input) = rx.recv().await {
        match input {
            Input::Request {
                request: ClientRequest::JoinRoom { ref room, .. },
                ..
            } => {
                let next = ctx.directory.get_or_create(room, &ctx);
                if next.tx.send(input).await.is_err() {
                    tracing::warn!(room = %me.name, "join lost while a room was being replaced");
                }
            }
            other => {
                room.handle(Instant::now(), other);
                execute_outputs(&mut room, &me, &ctx);
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

fn execute_outputs(room: &mut Room, me: &RoomHandle, ctx: &RoomCtx) {
    while let Some(out) = room.poll_output() {
        match out {
            Output::Reply {
                session,
                id,
                result,
            } => {
                let (frame, joined) = match result {
                    Ok(reply) => {
                        let joined = match &reply {
                            Reply::Joined(_) => Some(me.clone()),
                            _ => None,
                        };
                        let frame =
                            signaling::jsonrpc::encode_result(id, reply.to_value(), &session.0);
                        (frame, joined)
                    }
                    Err(err) => {
                        tracing::debug!(%session, id, code = err.code(), %err, "request refused");
                        let sid = err.carries_session_id().then_some(session.0.as_str());
                        let frame =
                            signaling::jsonrpc::encode_error(id, err.code(), &err.to_string(), sid);
                        (frame, None)
                    }
                };
                ctx.hub
                    .deliver(&session, Outbound::Reply { id, frame, joined });
            }
            Output::Notify {
                session,
                notification,
            } => ctx
                .hub
                .deliver(&session, Outbound::Notification(notification.encode())),
            Output::Media(cmd) => ctx.bridge.execute(cmd, &me.tx),
            Output::CloseSession { session } => ctx.hub.deliver(&session, Outbound::Close),
        }
    }
    me.members
        .store(room.participant_count(), Ordering::Relaxed);
}
