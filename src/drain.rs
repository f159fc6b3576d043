//! Graceful shutdown ("drain"): on the first SIGTERM the server stops being ready, creates no
//! new rooms, and lets existing calls go on until their rooms empty or the drain timeout
//! passes; then the remaining rooms are closed (`roomClosed`), every WebSocket is closed with
//! 1001, and the process exits 0. A second signal exits at once (see `main.rs`).
//!
//! Owns the process lifecycle: the draining flag, the tracker of every WebSocket and room task
//! (axum's graceful shutdown does not wait for upgraded WebSockets), and the token that tells
//! those tasks to stop. Does not own what a room does on close (the room state machine).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use signaling::room::Input;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;

/// Longest the closing rooms and sockets get to flush their last frames.
const FLUSH_BOUND: Duration = Duration::from_secs(5);

/// The lifecycle of the process's long-lived tasks.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    draining: AtomicBool,
    /// Every WebSocket connection task and room task.
    pub(crate) tasks: TaskTracker,
    /// Cancelled when the remaining connections must close.
    pub(crate) stop: CancellationToken,
}

impl Lifecycle {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Runs the drain to its end: returns when every room is gone and every connection closed (or
/// the bounds passed).
pub(crate) async fn drain(state: &AppState) {
    let life = &state.lifecycle;
    life.draining.store(true, Ordering::Relaxed);
    crate::notify::send("STOPPING=1");
    let timeout = state.config.drain_timeout();
    tracing::info!(
        rooms = state.rooms.names().len(),
        participants = state.rooms.participants(),
        timeout_s = timeout.as_secs(),
        "draining: not ready, no new rooms; waiting for rooms to empty"
    );
    if tokio::time::timeout(timeout, state.rooms.emptied())
        .await
        .is_err()
    {
        let rooms = state.rooms.all();
        tracing::info!(
            rooms = rooms.len(),
            "drain timeout: closing the remaining rooms"
        );
        for room in rooms {
            let _ = room.tx.send(Input::Close).await;
        }
        if tokio::time::timeout(FLUSH_BOUND, state.rooms.emptied())
            .await
            .is_err()
        {
            tracing::warn!("rooms still open after the flush bound");
        }
    }
    life.stop.cancel();
    life.tasks.close();
    if tokio::time::timeout(FLUSH_BOUND, life.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = life.tasks.len(),
            "tasks still running after the flush bound"
        );
    }
    tracing::info!("drained");
}
