//! One task per WebSocket: frames in, JSON-RPC decoded, room requests to the room task,
//! replies and events out.
//!
//! Owns the kurento-jsonrpc transport habits of a connection: `ping` answered at once (even
//! while a room request of the same session waits for media), the ping watchdog (close after
//! 3 × the interval the first ping announced), `connect` rebinding a session, `closeSession`,
//! the start of the reconnection grace period when the socket drops, and strict FIFO
//! processing of the session's room requests: the next one is dispatched only when the
//! previous one has been answered. Does not own room state (the room task does) nor the
//! session registry (the hub does).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use signaling::jsonrpc::{self, Decoded, Id};
use signaling::protocol::{self, ClientRequest, Method, ParseError, TransportRequest};
use signaling::room::Input;
use signaling::RoomError;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::hub::{Binding, Conn, Outbound, Slot, OUTBOUND_CAPACITY};
use crate::rooms::RoomHandle;
use crate::AppState;

/// kurento-jsonrpc's default heartbeat interval when the first ping carries none.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(20_000);
/// The watchdog closes a connection after this many intervals without a ping.
const MISSED_PINGS_TO_CLOSE: u32 = 3;
/// Room requests of one connection waiting behind the one in flight. When full, further
/// requests are answered at once with a transport error instead of being queued.
const MAX_QUEUED_REQUESTS: usize = 256;
/// Longest a single frame may take to be written. A client that stops reading makes the
/// write wait on TCP backpressure; past this the connection is given up (grace period).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket close code for a normal closure.
const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the server cannot keep up with the client (queue overflow).
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// How a connection ended, which decides what happens to its session.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The socket dropped (or the watchdog closed it): the grace period starts.
    Dropped,
    /// `leaveRoom` or `closeSession`: the session is already gone.
    Finished,
}

struct Connection {
    state: Arc<AppState>,
    generation: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Notify>,
    slot: Option<Arc<Slot>>,
    /// The room request waiting for its answer.
    in_flight: Option<InFlight>,
    queue: VecDeque<(Id, ClientRequest)>,
    /// (interval, deadline) once the first ping arrived.
    watchdog: Option<(Duration, Instant)>,
}

struct InFlight {
    id: Id,
    /// For `joinRoom`: the name to bind to on success.
    joining_as: Option<String>,
}

/// Serves one WebSocket until it closes.
pub(crate) async fn run_connection(socket: WebSocket, state: Arc<AppState>, generation: u64) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let mut conn = Connection {
        state,
        generation,
        tx,
        kill: Arc::new(Notify::new()),
        slot: None,
        in_flight: None,
        queue: VecDeque::new(),
        watchdog: None,
    };
    let end = loop {
        let deadline = conn.watchdog.map(|(_, d)| d);
        let kill = Arc::clone(&conn.kill);
        let event = tokio::select! {
            frame = stream.next() => Event::Frame(frame),
            out = rx.recv() => Event::Out(out),
            () = kill.notified() => Event::Overflow,
            () = sleep_until(deadline) => Event::Watchdog,
        };
        let mut frames = Vec::new();
        let step = match event {
            Event::Frame(Some(Ok(Message::Text(text)))) => {
                conn.on_text(text.as_str(), &mut frames).await
            }
            Event::Frame(Some(Ok(Message::Close(_)))) | Event::Frame(None) => {
                Step::End(End::Dropped)
            }
            Event::Frame(Some(Err(e))) => {
                tracing::debug!(error = %e, "websocket read failed");
                Step::End(End::Dropped)
            }
            Event::Frame(Some(Ok(_))) => Step::Continue, // binary, ping, pong: nothing to do
            Event::Out(Some(out)) => conn.on_outbound(out, &mut frames).await,
            Event::Out(None) => Step::End(End::Dropped), // unreachable while `conn.tx` lives
            Event::Overflow => {
                frames.push(Frame::Close(
                    CLOSE_TRY_AGAIN_LATER,
                    "Outbound queue overflow",
                ));
                Step::End(End::Dropped)
            }
            Event::Watchdog => {
                let reason = "Close for not receive ping from client";
                frames.push(Frame::Close(CLOSE_NORMAL, reason));
                Step::End(End::Dropped)
            }
        };
        let mut write_failed = false;
        for frame in frames {
            let msg = match frame {
                Frame::Text(t) => Message::Text(t.into()),
                Frame::Close(code, reason) => close(code, reason),
            };
            match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    write_failed = true;
                    break;
                }
            }
        }
        match step {
            Step::End(end) => break end,
            Step::Continue if write_failed => {
                tracing::debug!("websocket write failed or timed out");
                break End::Dropped;
            }
            Step::Continue => {}
        }
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
    conn.finish(end).await;
}

enum Event {
    Frame(Option<Result<Message, axum::Error>>),
    Out(Option<Outbound>),
    Overflow,
    Watchdog,
}

enum Step {
    Continue,
    End(End),
}

enum Frame {
    Text(String),
    /// A close frame: code and reason.
    Close(u16, &'static str),
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn on_text(&mut self, text: &str, frames: &mut Vec<Frame>) -> Step {
        let request = match jsonrpc::decode(text) {
            Decoded::Request(r) => r,
            Decoded::Notification { method } => {
                // DEVIATION (protocol.md §1.8): requests without id are never executed.
                tracing::debug!(%method, "request without id ignored");
                return Step::Continue;
            }
            Decoded::Ignored(why) => {
                tracing::debug!(?why, "inbound frame ignored");
                return Step::Continue;
            }
        };
        let id = request.id;
        match protocol::parse(&request.method, &request.params) {
            Ok(Method::Transport(t)) => self.on_transport(id, t, &request.params, frames).await,
            Ok(Method::Room(r)) => {
                if self.queue.len() >= MAX_QUEUED_REQUESTS {
                    let msg = "Too many requests in flight";
                    frames.push(Frame::Text(jsonrpc::encode_error(id, -32000, msg, None)));
                    return Step::Continue;
                }
                self.queue.push_back((id, r));
                self.pump(frames).await;
                Step::Continue
            }
            Err(e) => {
                let frame = match e {
                    ParseError::UnknownMethod => jsonrpc::encode_error(
                        id,
                        jsonrpc::METHOD_NOT_FOUND,
                        "Method not found",
                        None,
                    ),
                    ParseError::ParamsNotAnObject => {
                        jsonrpc::encode_error(id, jsonrpc::INVALID_PARAMS, "Invalid params", None)
                    }
                    ParseError::Room(err) => self.error_frame(id, &err),
                };
                tracing::debug!(id, method = %request.method, "request refused before dispatch");
                // Answered at once; ordering with queued requests of this session is kept
                // because a malformed request never reaches a room.
                frames.push(Frame::Text(frame));
                Step::Continue
            }
        }
    }

    async fn on_transport(
        &mut self,
        id: Id,
        t: TransportRequest,
        params: &jsonrpc::Params,
        frames: &mut Vec<Frame>,
    ) -> Step {
        match t {
            TransportRequest::Ping { interval_ms } => {
                let interval = match self.watchdog {
                    Some((interval, _)) => interval,
                    None => interval_ms
                        .filter(|ms| *ms > 0)
                        .map(Duration::from_millis)
                        .unwrap_or(DEFAULT_PING_INTERVAL),
                };
                self.watchdog = Some((interval, Instant::now() + interval * MISSED_PINGS_TO_CLOSE));
                frames.push(Frame::Text(jsonrpc::encode_pong(id, params.session_id())));
                Step::Continue
            }
            TransportRequest::Connect { session_id } => {
                let frame = match session_id {
                    Some(sid) => match self.state.hub.get(&sid) {
                        Some(slot) => {
                            self.adopt(slot).await;
                            jsonrpc::encode_result(id, Value::from("reconnection successful"), &sid)
                        }
                        None => jsonrpc::encode_error(
                            id,
                            jsonrpc::RECONNECTION_ERROR,
                            "reconnection error",
                            None,
                        ),
                    },
                    None => {
                        let slot = self.slot();
                        jsonrpc::encode_result(id, Value::from("OK"), &slot.id.0)
                    }
                };
                frames.push(Frame::Text(frame));
                Step::Continue
            }
            TransportRequest::CloseSession => {
                frames.push(Frame::Text(jsonrpc::encode_plain_result(
                    id,
                    Value::from("bye"),
                )));
                let Some(slot) = self.slot.take() else {
                    return Step::Continue; // No session yet: only "bye".
                };
                if let Some(binding) = slot.binding() {
                    let evict = Input::Evict {
                        session: slot.id.clone(),
                    };
                    let _ = binding.room.tx.send(evict).await;
                }
                slot.detach(self.generation);
                self.state.hub.remove(&slot.id);
                frames.push(Frame::Close(CLOSE_NORMAL, ""));
                Step::End(End::Finished)
            }
        }
    }

    /// Takes over an existing session (`connect` with its id).
    async fn adopt(&mut self, slot: Arc<Slot>) {
        if self.slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            return;
        }
        if let Some(previous) = self.slot.take() {
            // This connection had created a session of its own: it is abandoned.
            previous.detach(self.generation);
            if previous.binding().is_none() {
                self.state.hub.remove(&previous.id);
            }
        }
        let old = slot.attach(self.conn());
        if let Some(kill) = old {
            kill.notify_one(); // The session's previous socket, if still open, is closed.
        }
        if let Some(binding) = slot.binding() {
            let input = Input::Reconnected {
                session: slot.id.clone(),
            };
            let _ = binding.room.tx.send(input).await;
        }
        self.slot = Some(slot);
    }

    fn conn(&self) -> Conn {
        Conn {
            generation: self.generation,
            tx: self.tx.clone(),
            kill: Arc::clone(&self.kill),
        }
    }

    /// The session of this connection, created on first use.
    fn slot(&mut self) -> Arc<Slot> {
        if let Some(slot) = &self.slot {
            return Arc::clone(slot);
        }
        let slot = self.state.hub.create();
        slot.attach(self.conn());
        self.slot = Some(Arc::clone(&slot));
        slot
    }

    fn error_frame(&mut self, id: Id, err: &RoomError) -> String {
        let sid = if err.carries_session_id() {
            Some(self.slot().id.0.clone())
        } else {
            None
        };
        jsonrpc::encode_error(id, err.code(), &err.to_string(), sid.as_deref())
    }

    async fn on_outbound(&mut self, out: Outbound, frames: &mut Vec<Frame>) -> Step {
        match out {
            Outbound::Notification(text) => frames.push(Frame::Text(text)),
            Outbound::Reply { id, frame, joined } => {
                frames.push(Frame::Text(frame));
                if self.in_flight.as_ref().is_some_and(|f| f.id == id) {
                    let done = self.in_flight.take();
                    if let (
                        Some(room),
                        Some(InFlight {
                            joining_as: Some(user),
                            ..
                        }),
                    ) = (joined, done)
                    {
                        if let Some(slot) = &self.slot {
                            slot.bind(Some(Binding { room, user }));
                        }
                    }
                    self.pump(frames).await;
                }
            }
            Outbound::Close => {
                // After a successful leaveRoom: the session is destroyed with the socket.
                if let Some(slot) = self.slot.take() {
                    slot.bind(None);
                    slot.detach(self.generation);
                    self.state.hub.remove(&slot.id);
                }
                frames.push(Frame::Close(CLOSE_NORMAL, ""));
                return Step::End(End::Finished);
            }
        }
        Step::Continue
    }

    /// Dispatches queued room requests until one goes to a room (and must be waited for).
    async fn pump(&mut self, frames: &mut Vec<Frame>) {
        while self.in_flight.is_none() {
            let Some((id, request)) = self.queue.pop_front() else {
                return;
            };
            match self.dispatch(id, request).await {
                Ok(in_flight) => self.in_flight = Some(in_flight),
                Err(err) => {
                    let frame = self.error_frame(id, &err);
                    frames.push(Frame::Text(frame));
                }
            }
        }
    }

    /// Sends one room request to its room, or answers it here when no room can (the session
    /// is in no room, or its room is gone).
    async fn dispatch(&mut self, id: Id, request: ClientRequest) -> Result<InFlight, RoomError> {
        let slot = self.slot();
        let session = slot.id.clone();
        let binding = slot.binding().filter(|b| !b.room.is_closed());
        if let ClientRequest::CustomRequest = request {
            return Err(RoomError::UnsupportedMethod);
        }
        if let ClientRequest::JoinRoom { room, user, .. } = &request {
            if let Some(b) = &binding {
                if &*b.room.name != room.as_str() {
                    // DEVIATION (protocol.md §3.1): one room per session.
                    return Err(RoomError::AlreadyJoined {
                        session: session.0,
                        room: b.room.name.to_string(),
                        user: b.user.clone(),
                    });
                }
            }
            let user = user.clone();
            let room_name = room.clone();
            let mut input = Input::Request {
                session,
                id,
                request,
            };
            // A room that just emptied refuses new inputs; the directory then has a new one.
            for _ in 0..8 {
                let handle = match &binding {
                    Some(b) => b.room.clone(),
                    None => self.room_for_join(&room_name),
                };
                match handle.tx.send(input).await {
                    Ok(()) => {
                        return Ok(InFlight {
                            id,
                            joining_as: Some(user),
                        })
                    }
                    Err(mpsc::error::SendError(back)) => input = back,
                }
            }
            tracing::warn!(room = %room_name, "could not reach a room for a join");
            return Err(RoomError::RoomClosing {
                user,
                room: room_name,
            });
        }
        let Some(b) = binding else {
            if let (ClientRequest::LeaveRoom, Some(stale)) = (&request, slot.binding()) {
                // The room was closed by an administrator while the session was in it.
                slot.bind(None);
                return Err(RoomError::RoomNotFound {
                    room: stale.room.name.to_string(),
                });
            }
            return Err(RoomError::NoParticipant { session: session.0 });
        };
        let input = Input::Request {
            session: session.clone(),
            id,
            request,
        };
        match b.room.tx.send(input).await {
            Ok(()) => Ok(InFlight {
                id,
                joining_as: None,
            }),
            Err(_) => Err(RoomError::NoParticipant { session: session.0 }),
        }
    }

    fn room_for_join(&self, name: &str) -> RoomHandle {
        self.state.rooms.get_or_create(name, &self.state.room_ctx)
    }

    /// After the socket closed: start the grace period, or forget the session.
    async fn finish(self, end: End) {
        let Some(slot) = self.slot else { return };
        if end == End::Finished || !slot.detach(self.generation) {
            return; // Finished, or another connection took the session over.
        }
        if let Some(binding) = slot.binding() {
            let input = Input::Disconnected {
                session: slot.id.clone(),
            };
            let _ = binding.room.tx.send(input).await;
        }
        // The session stays reachable for `connect` during the grace period.
        let hub = Arc::clone(&self.state.hub);
        let grace = self.state.config.reconnection_grace();
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if slot.is_abandoned_since(generation) {
                hub.remove(&slot.id);
            }
        });
    }
}
