//! The handle of a running room: what the session registry records as a session's room and
//! what connections send room requests through. Its own module so that the registry
//! (`sessions.rs`) and the room driver (`rooms.rs`) meet here instead of importing each other.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signaling::room::{Input, ParticipantView};
use tokio::sync::{mpsc, oneshot};

/// Inputs queued for one room task (requests, media reports, connection events). When full,
/// senders wait (`send().await`): requests must not be lost and their order matters. The room
/// task never awaits anyone else, so the wait is short.
pub(crate) const ROOM_INBOX_CAPACITY: usize = 1024;

/// Administrator queries queued for one room task. When full, the query is refused (HTTP 503):
/// an administrator can retry; a room is never slowed by them.
pub(crate) const ROOM_QUERY_CAPACITY: usize = 8;

/// An administrator's question: who is in the room.
pub(crate) type ParticipantsQuery = oneshot::Sender<Vec<ParticipantView>>;

/// What a room task receives.
#[derive(Debug)]
pub(crate) struct RoomInbox {
    pub(crate) inputs: mpsc::Receiver<Input>,
    pub(crate) queries: mpsc::Receiver<ParticipantsQuery>,
}

/// A cheap-to-clone handle to a room task.
#[derive(Clone, Debug)]
pub(crate) struct RoomHandle {
    pub(crate) name: Arc<str>,
    /// Unique per created room (also the room's endpoint-id prefix).
    pub(crate) serial: u32,
    pub(crate) tx: mpsc::Sender<Input>,
    pub(crate) queries: mpsc::Sender<ParticipantsQuery>,
    /// Participants, as last published by the room task (for `/getAllRooms` and metrics).
    members: Arc<AtomicUsize>,
}

impl RoomHandle {
    /// A handle and the receiving end of its inbox.
    pub(crate) fn new(name: &str, serial: u32) -> (Self, RoomInbox) {
        let (tx, inputs) = mpsc::channel(ROOM_INBOX_CAPACITY);
        let (queries_tx, queries) = mpsc::channel(ROOM_QUERY_CAPACITY);
        let handle = Self {
            name: Arc::from(name),
            serial,
            tx,
            queries: queries_tx,
            members: Arc::new(AtomicUsize::new(0)),
        };
        (handle, RoomInbox { inputs, queries })
    }

    /// Who is in the room; `None` when the room is gone or too busy with queries.
    pub(crate) async fn participants(&self) -> Option<Vec<ParticipantView>> {
        let (tx, rx) = oneshot::channel();
        self.queries.try_send(tx).ok()?;
        rx.await.ok()
    }

    /// True once the room task has stopped accepting inputs.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Same room (not just the same name).
    pub(crate) fn is(&self, other: &RoomHandle) -> bool {
        self.serial == other.serial
    }

    pub(crate) fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    pub(crate) fn set_members(&self, n: usize) {
        self.members.store(n, Ordering::Relaxed);
    }
}
