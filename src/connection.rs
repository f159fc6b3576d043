//! One task per WebSocket: frames in, JSON-RPC decoded, room requests to the room task,
//! replies and events out.
//!
//! Owns the kurento-jsonrpc transport habits of a connection: `ping` answered at once (even
//! while a room request of the same session waits for media), the ping watchdog (close after
//! 3 × the interval the first ping announced), `connect` rebinding a session, `closeSession`,
//! the start of the reconnection grace period when the socket drops, the per-connection
//! request rate limit, and strict FIFO processing of the session's room requests: the next
//! one is dispatched only when the previous one has been answered. In cluster mode a join (or a
//! `connect` for a session unknown here) first asks the directory where it goes; that look-up
//! runs in a task of its own while this task goes on answering `ping` and holds every other
//! frame until the answer, so the order of requests is the same as without it. Where a room request goes
//! is decided by `signaling::room::route`, not here; memberships are written by room drivers
//! (`rooms.rs`), not here. Generic over the frame stream and sink, so that its races are unit
//! tested without sockets (see the tests at the end).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use std::fmt::Display;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use signaling::jsonrpc::{self, Decoded, Id};
use signaling::protocol::{self, ClientRequest, Method, ParseError, TransportRequest};
use signaling::room::{route, Input, Route, SessionId};
use signaling::RoomError;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::cluster::node::Directed;
use crate::cluster::relay::RelayEnd;
use crate::cluster::{ClusterStats, LinkGauge};
use crate::sessions::{Conn, Detached, Outbound, Session, OUTBOUND_CAPACITY};
use crate::AppState;

/// kurento-jsonrpc's default heartbeat interval when the first ping carries none.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(20_000);
/// The watchdog closes a connection after this many intervals without a ping.
const MISSED_PINGS_TO_CLOSE: u32 = 3;
/// Room requests of one connection waiting behind the one in flight. When full, further
/// requests are answered at once with a transport error instead of being queued.
const MAX_QUEUED_REQUESTS: usize = 256;
/// Longest the closing handshake may take once the connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// WebSocket close code for a normal closure.
const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code when the server cannot keep up with the client (queue overflow).
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// WebSocket close code when the server shuts down.
const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code for a client that keeps breaking the rules (rate limit).
const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// JSON-RPC error code of transport-level refusals (queue full, rate limited), in the
/// implementation-defined server-error range; kurento-jsonrpc clients treat it as any error.
const TRANSPORT_REFUSED: i64 = -32000;
/// The message of a request refused because [`MAX_QUEUED_REQUESTS`] already wait.
const TOO_MANY_IN_FLIGHT: &str = "Too many requests in flight";

/// How a connection ended, which decides what happens to its session.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The socket dropped (or the watchdog closed it): the grace period starts.
    Dropped,
    /// `leaveRoom` or `closeSession`: the session is already gone.
    Finished,
    /// The session's room lives on another node and the socket was relayed there; this
    /// node's session (never in a room here) is forgotten.
    Relayed,
}

struct Connection {
    state: Arc<AppState>,
    generation: u64,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<Notify>,
    replaced: Arc<Notify>,
    session: Option<Arc<Session>>,
    /// The room request waiting for its answer.
    in_flight: Option<InFlight>,
    /// Each with its frame's text in cluster mode (a join relayed to another node takes the
    /// requests queued behind it along verbatim).
    queue: VecDeque<(Id, ClientRequest, Option<String>)>,
    /// (interval, deadline) once the first ping arrived.
    watchdog: Option<(Duration, Instant)>,
    rate: RateLimit,
    /// The client's address, for logs.
    peer: Option<std::net::SocketAddr>,
    /// A link from another node relaying its client (`/cluster/relay`): joins are served here
    /// or refused, never relayed again.
    relayed: bool,
    /// Set when a join goes to another node: this connection becomes a relay.
    relay: Option<RelayStart>,
    /// A directory look-up under way (cluster mode: where a join or a reconnection goes). It
    /// runs in its own task, so that this one keeps answering `ping` meanwhile.
    pending: Option<Pending>,
    /// Frames (other than `ping`) that arrived while `pending` ran, verbatim: handled in order
    /// once it is done, exactly as if they had arrived then.
    held: VecDeque<String>,
    /// On a relay link: the id the relaying node gave the client's session.
    preset_session: Option<String>,
}

/// What the relay needs to take over the socket.
struct RelayStart {
    link: Box<crate::cluster::relay::Link>,
    room: String,
    /// The join and the requests queued behind it, verbatim.
    first: Vec<String>,
    /// The session id the client knows, kept if it joins again out of the owner's room.
    session: Option<String>,
}

/// A directory look-up running in its own task, and what its answer is for.
struct Pending {
    task: tokio::task::JoinHandle<Directed>,
    then: Then,
}

/// What waits for a directory look-up.
enum Then {
    /// A join: sent to a room here, relayed, or refused, by the look-up's answer.
    Join {
        id: Id,
        method: &'static str,
        input: Input,
        room: String,
        /// The join's frame (relayed verbatim when the room lives elsewhere).
        raw: Option<String>,
        /// When it was dispatched (its latency includes the look-up).
        sent: Instant,
    },
    /// A `connect` with a session id unknown here: relayed to the node holding the session, or
    /// answered with a reconnection error.
    Reconnect {
        id: Id,
        raw: String,
        session: String,
    },
}

/// A room request sent to a room and not answered yet.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    id: Id,
    /// The room (serial) it was sent to.
    room_serial: u32,
    method: &'static str,
    sent: Instant,
}

/// Serves one WebSocket (its frame stream and sink) until it closes.
pub(crate) async fn run_connection<R, W, E>(
    stream: R,
    sink: W,
    state: Arc<AppState>,
    generation: u64,
    peer: Option<std::net::SocketAddr>,
) where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
    E: Display,
{
    serve(stream, sink, state, generation, peer, None).await;
}

/// Serves a relay link from another node (cluster mode) carrying the client at `client`,
/// whose session that node named `session`.
pub(crate) async fn run_relayed_connection<R, W, E>(
    stream: R,
    sink: W,
    state: Arc<AppState>,
    generation: u64,
    client: std::net::SocketAddr,
    session: Option<String>,
) where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
    E: Display,
{
    serve(stream, sink, state, generation, Some(client), Some(session)).await;
}

async fn serve<R, W, E>(
    mut stream: R,
    mut sink: W,
    state: Arc<AppState>,
    generation: u64,
    peer: Option<std::net::SocketAddr>,
    // `Some` on a relay link, with the session id the relaying node chose, if any.
    relayed: Option<Option<String>>,
) where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
    E: Display,
{
    let (tx, mut rx) = mpsc::channel(OUTBOUND_CAPACITY);
    // A relay link of another node is counted as such while it is served.
    let cluster = state.cluster.clone();
    let _link_in = cluster
        .as_ref()
        .filter(|_| relayed.is_some())
        .map(|c| LinkGauge::open(&c.stats().links_in));
    let rate = RateLimit::new(
        state.config.requests_per_second,
        state.config.request_burst,
        Instant::now(),
    );
    let mut conn = Connection {
        state,
        generation,
        tx,
        kill: Arc::new(Notify::new()),
        replaced: Arc::new(Notify::new()),
        session: None,
        in_flight: None,
        queue: VecDeque::new(),
        watchdog: None,
        rate,
        peer,
        relayed: relayed.is_some(),
        relay: None,
        pending: None,
        held: VecDeque::new(),
        preset_session: relayed.flatten(),
    };
    let end = 'socket: loop {
        // Frames held for this task (a join handed back by the relay) are handled first.
        let mut resume = !conn.held.is_empty();
        let end = loop {
            let deadline = conn.watchdog.map(|(_, d)| d);
            let kill = Arc::clone(&conn.kill);
            let replaced = Arc::clone(&conn.replaced);
            let stop = conn.state.lifecycle.stop.clone();
            let event = if std::mem::take(&mut resume) {
                Event::Resume
            } else {
                tokio::select! {
                    frame = stream.next() => Event::Frame(frame),
                    out = rx.recv() => Event::Out(out),
                    () = kill.notified() => Event::Overflow,
                    () = replaced.notified() => Event::Replaced,
                    () = stop.cancelled() => Event::Shutdown,
                    () = sleep_until(deadline) => Event::Watchdog,
                    directed = look_up(&mut conn.pending) => Event::Directed(directed),
                }
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
                Event::Directed(directed) => conn.on_directed(directed, &mut frames).await,
                Event::Resume => conn.replay(&mut frames).await,
                Event::Overflow => {
                    frames.push(Frame::Close(
                        CLOSE_TRY_AGAIN_LATER,
                        "Outbound queue overflow",
                    ));
                    Step::End(End::Dropped)
                }
                Event::Replaced => {
                    frames.push(Frame::Close(
                        CLOSE_NORMAL,
                        "Session taken over by a new connection",
                    ));
                    Step::End(End::Dropped)
                }
                Event::Shutdown => {
                    frames.push(Frame::Close(CLOSE_GOING_AWAY, "Server shutting down"));
                    Step::End(End::Dropped)
                }
                Event::Watchdog => {
                    let reason = "Close for not receive ping from client";
                    frames.push(Frame::Close(CLOSE_NORMAL, reason));
                    Step::End(End::Dropped)
                }
            };
            let mut write_failed = false;
            let write_timeout = conn.state.config.write_timeout();
            for frame in frames {
                let msg = match frame {
                    Frame::Text(t) => Message::Text(t.into()),
                    Frame::Close(code, reason) => close(code, reason),
                };
                // A write stuck on a client that does not read is cut short by its timeout, or at
                // once when the outbound queue overflows meanwhile (the client is too far behind).
                let written = tokio::select! {
                    r = tokio::time::timeout(write_timeout, sink.send(msg)) => matches!(r, Ok(Ok(()))),
                    () = conn.kill.notified() => false,
                };
                if !written {
                    write_failed = true;
                    break;
                }
            }
            if write_failed {
                // The socket is stuck or broken: a close frame would wait behind the stuck write.
                tracing::debug!("websocket write failed, timed out or overflowed");
                break End::Dropped;
            }
            match step {
                Step::End(end) => break end,
                Step::Continue if conn.relay.is_some() => break End::Relayed,
                Step::Continue => {}
            }
        };
        let (End::Relayed, Some(relay), Some(cluster)) = (&end, conn.relay.take(), &cluster) else {
            break end;
        };
        // The room lives on another node: from now on this task only moves frames.
        let RelayStart {
            link,
            room,
            mut first,
            session,
        } = relay;
        first.extend(conn.held.drain(..));
        let stop = conn.state.lifecycle.stop.clone();
        let timeout = conn.state.config.write_timeout();
        let heartbeat = Duration::from_millis(conn.state.config.cluster_claim_ttl_ms) / 3;
        let ended = crate::cluster::relay::run(
            &mut stream,
            &mut sink,
            link,
            first,
            &room,
            conn.watchdog,
            timeout,
            heartbeat,
            stop,
            cluster.stats(),
        )
        .await;
        tracing::debug!(room, ?ended, client = ?conn.peer, "relayed connection ended");
        if let RelayEnd::Rejoin { frames, watchdog } = ended {
            // Out of the owner's room and joining again: placed afresh, under the session id
            // the client knows.
            conn.watchdog = watchdog;
            conn.preset_session = session;
            conn.held = frames.into();
            continue 'socket;
        }
        break End::Relayed;
    };
    // The close handshake gets a short bound: after a stuck write there is nothing to wait for.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    conn.finish(end).await;
}

enum Event<E> {
    Frame(Option<Result<Message, E>>),
    Out(Option<Outbound>),
    Overflow,
    Replaced,
    Shutdown,
    Watchdog,
    /// The directory look-up under way finished (or its task failed).
    Directed(Result<Directed, tokio::task::JoinError>),
    /// Frames held for this task are to be handled (after a relay handed the socket back).
    Resume,
}

enum Step {
    Continue,
    End(End),
}

/// What became of one room request.
enum Dispatch {
    /// Sent to the room with this serial; its answer comes from there.
    Sent(u32),
    /// Answered here with this error.
    Answer(RoomError),
    /// A join whose room must be looked up in the cluster's directory first.
    Place { room: String, input: Input },
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

/// Refuses request `id` at the transport level (rate limit, queue full), before any room sees
/// it: a [`TRANSPORT_REFUSED`] error saying `message`.
fn refuse(id: Id, message: &str, frames: &mut Vec<Frame>) {
    frames.push(Frame::Text(jsonrpc::encode_error(
        id,
        TRANSPORT_REFUSED,
        message,
        None,
    )));
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The answer of the directory look-up under way; never, when there is none.
async fn look_up(pending: &mut Option<Pending>) -> Result<Directed, tokio::task::JoinError> {
    match pending {
        Some(p) => (&mut p.task).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn on_text(&mut self, text: &str, frames: &mut Vec<Frame>) -> Step {
        let request = match jsonrpc::decode(text) {
            Decoded::Request(r) => r,
            Decoded::Notification { method } => {
                // DEVIATION (docs/protocol.md §1.8): requests without id are never executed.
                tracing::debug!(%method, "request without id ignored");
                return self.count_against_rate(frames);
            }
            Decoded::Ignored(why) => {
                tracing::debug!(?why, "inbound frame ignored");
                return self.count_against_rate(frames);
            }
        };
        if !self.rate.allow(Instant::now()) {
            self.state
                .counters
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            refuse(request.id, "Too many requests: slow down", frames);
            return self.abuse_check(frames);
        }
        let method = protocol::parse(&request.method, &request.params);
        let is_ping = matches!(method, Ok(Method::Transport(TransportRequest::Ping { .. })));
        if self.pending.is_some() && !is_ping {
            // The directory is being asked where a join (or reconnection) goes: everything
            // else waits for its answer, in order; `ping` never waits.
            if self.held.len() + self.queue.len() >= MAX_QUEUED_REQUESTS {
                refuse(request.id, TOO_MANY_IN_FLIGHT, frames);
            } else {
                self.held.push_back(text.to_owned());
            }
            return Step::Continue;
        }
        self.on_request(request, method, text, frames).await
    }

    /// Handles the frames held while a directory look-up ran, in order, until one of them
    /// starts another look-up or a relay (the rest stay held) or ends the connection. Their
    /// rate was counted when they arrived.
    async fn replay(&mut self, frames: &mut Vec<Frame>) -> Step {
        while self.pending.is_none() && self.relay.is_none() {
            let Some(text) = self.held.pop_front() else {
                break;
            };
            let Decoded::Request(request) = jsonrpc::decode(&text) else {
                continue; // Only requests are held.
            };
            let method = protocol::parse(&request.method, &request.params);
            if let Step::End(end) = self.on_request(request, method, &text, frames).await {
                return Step::End(end);
            }
        }
        Step::Continue
    }

    /// One request, its rate already counted.
    async fn on_request(
        &mut self,
        request: jsonrpc::Request,
        method: Result<Method, ParseError>,
        text: &str,
        frames: &mut Vec<Frame>,
    ) -> Step {
        let id = request.id;
        match method {
            Ok(Method::Transport(t)) => {
                self.on_transport(id, t, &request.params, text, frames)
                    .await
            }
            Ok(Method::Room(r)) => {
                if self.queue.len() >= MAX_QUEUED_REQUESTS {
                    refuse(id, TOO_MANY_IN_FLIGHT, frames);
                    return Step::Continue;
                }
                let raw = self.state.cluster.is_some().then(|| text.to_owned());
                self.queue.push_back((id, r, raw));
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

    /// Frames that are not requests (garbage, notifications) cost a token too, so that a flood
    /// of them is bounded like a flood of requests; they get no answer.
    fn count_against_rate(&mut self, frames: &mut Vec<Frame>) -> Step {
        if self.rate.allow(Instant::now()) {
            return Step::Continue;
        }
        self.state
            .counters
            .rate_limited
            .fetch_add(1, Ordering::Relaxed);
        self.abuse_check(frames)
    }

    /// A connection refused by the rate limit this many times in a row is closed.
    fn abuse_check(&mut self, frames: &mut Vec<Frame>) -> Step {
        if self.rate.refused_in_a_row() < self.rate.burst() {
            return Step::Continue;
        }
        tracing::info!(session = ?self.session.as_ref().map(|s| &s.id), "rate limit abused; connection closed");
        self.state
            .counters
            .abusive_closed
            .fetch_add(1, Ordering::Relaxed);
        frames.push(Frame::Close(CLOSE_POLICY_VIOLATION, "Too many requests"));
        Step::End(End::Dropped)
    }

    async fn on_transport(
        &mut self,
        id: Id,
        t: TransportRequest,
        params: &jsonrpc::Params,
        raw: &str,
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
                    Some(sid) => match self.state.sessions.get(&SessionId(sid.clone())) {
                        Some(session) => {
                            self.adopt(session).await;
                            jsonrpc::encode_result(id, Value::from("reconnection successful"), &sid)
                        }
                        None => {
                            if self.look_up_session(id, &sid, raw) {
                                return Step::Continue; // Answered when the look-up ends.
                            }
                            jsonrpc::encode_error(
                                id,
                                jsonrpc::RECONNECTION_ERROR,
                                "reconnection error",
                                None,
                            )
                        }
                    },
                    None => {
                        let session = self.session();
                        jsonrpc::encode_result(id, Value::from("OK"), &session.id.0)
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
                let Some(session) = self.session.take() else {
                    return Step::Continue; // No session yet: only "bye".
                };
                // Forgotten first: a join still in flight is then admitted into a session
                // that no longer exists, and its room evicts it at once.
                self.state.sessions.remove(&session.id);
                if let Detached::Now(Some(room)) = session.detach(self.generation) {
                    let evict = Input::Evict {
                        session: session.id.clone(),
                    };
                    let _ = room.tx.send(evict).await;
                }
                frames.push(Frame::Close(CLOSE_NORMAL, ""));
                Step::End(End::Finished)
            }
        }
    }

    /// Cluster mode: a `connect` for a session this node does not know asks the directory
    /// which node holds it (in a task of its own); whether it did. The answer, in
    /// [`Connection::on_directed`], relays the socket there or refuses the reconnection.
    fn look_up_session(&mut self, id: Id, sid: &str, raw: &str) -> bool {
        let Some(cluster) = self.state.cluster.clone() else {
            return false;
        };
        if self.relayed {
            return false;
        }
        let (sid, peer) = (sid.to_owned(), self.peer);
        let asked = sid.clone();
        let task = tokio::spawn(async move { cluster.direct_reconnect(&asked, peer).await });
        self.pending = Some(Pending {
            task,
            then: Then::Reconnect {
                id,
                raw: raw.to_owned(),
                session: sid,
            },
        });
        true
    }

    /// The directory look-up under way answered: its join goes to a room here, is relayed or
    /// refused; its reconnection is relayed or refused. Then the frames held meanwhile are
    /// handled.
    async fn on_directed(
        &mut self,
        directed: Result<Directed, tokio::task::JoinError>,
        frames: &mut Vec<Frame>,
    ) -> Step {
        let Some(Pending { then, .. }) = self.pending.take() else {
            return Step::Continue;
        };
        let directed = directed.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cluster directory look-up failed");
            Directed::Refused(format!("directory look-up failed: {e}"))
        });
        match (then, directed) {
            (
                Then::Join {
                    id,
                    method,
                    input,
                    room,
                    sent,
                    ..
                },
                Directed::Here,
            ) => match self.join_here(&room, input).await {
                Ok(room_serial) => {
                    self.in_flight = Some(InFlight {
                        id,
                        room_serial,
                        method,
                        sent,
                    });
                }
                Err(err) => {
                    let frame = self.error_frame(id, &err);
                    frames.push(Frame::Text(frame));
                }
            },
            (Then::Join { id, .. }, Directed::Refused(why)) => {
                tracing::warn!(%why, client = ?self.peer, "join refused: no node for the room");
                let code = RoomError::TooManyRooms.code();
                let msg = format!("Cannot place the room: {why}");
                frames.push(Frame::Text(jsonrpc::encode_error(id, code, &msg, None)));
            }
            (Then::Join { raw, .. }, Directed::There { link, room }) => {
                let session = self.session.as_ref().map(|s| s.id.0.clone());
                self.start_relay(link, room, raw, session);
                return Step::Continue;
            }
            (Then::Reconnect { raw, session, .. }, Directed::There { link, room }) => {
                self.start_relay(link, room, Some(raw), Some(session));
                return Step::Continue;
            }
            (Then::Reconnect { id, .. }, Directed::Here | Directed::Refused(_)) => {
                frames.push(Frame::Text(jsonrpc::encode_error(
                    id,
                    jsonrpc::RECONNECTION_ERROR,
                    "reconnection error",
                    None,
                )));
            }
        }
        self.pump(frames).await;
        self.replay(frames).await
    }

    /// Hands the socket to the relay once this event's frames are written: `first` and the
    /// requests queued behind it go over `link` first (the frames held meanwhile follow).
    /// This node's session never enters a room: forgotten now, the owner's is used; the
    /// client keeps knowing its id as `session`.
    fn start_relay(
        &mut self,
        link: Box<crate::cluster::relay::Link>,
        room: String,
        first: Option<String>,
        session: Option<String>,
    ) {
        let first = first
            .into_iter()
            .chain(self.queue.drain(..).filter_map(|(_, _, raw)| raw))
            .collect();
        if let Some(session) = self.session.take() {
            self.state.sessions.remove(&session.id);
            let _ = session.detach(self.generation);
        }
        self.relay = Some(RelayStart {
            link,
            room,
            first,
            session,
        });
    }

    /// Takes over an existing session (`connect` with its id).
    async fn adopt(&mut self, session: Arc<Session>) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &session))
        {
            return;
        }
        if let Some(previous) = self.session.take() {
            // This connection had created a session of its own: it is abandoned.
            if let Detached::Now(None) = previous.detach(self.generation) {
                self.state.sessions.remove(&previous.id);
            }
        }
        let (old, room) = session.attach(self.conn());
        if let Some(replaced) = old {
            replaced.notify_one(); // The session's previous socket, if still open, is closed.
        }
        if let Some(room) = room {
            let input = Input::Reconnected {
                session: session.id.clone(),
            };
            let _ = room.tx.send(input).await;
        }
        self.session = Some(session);
    }

    fn conn(&self) -> Conn {
        Conn {
            generation: self.generation,
            tx: self.tx.clone(),
            kill: Arc::clone(&self.kill),
            replaced: Arc::clone(&self.replaced),
        }
    }

    /// The session of this connection, created on first use.
    fn session(&mut self) -> Arc<Session> {
        if let Some(session) = &self.session {
            return Arc::clone(session);
        }
        let session = match self.preset_session.take() {
            Some(id) => self.state.sessions.create_as(id),
            None => self.state.sessions.create(),
        };
        session.attach(self.conn());
        self.session = Some(Arc::clone(&session));
        session
    }

    fn error_frame(&mut self, id: Id, err: &RoomError) -> String {
        let sid = if err.carries_session_id() {
            Some(self.session().id.0.clone())
        } else {
            None
        };
        jsonrpc::encode_error(id, err.code(), &err.to_string(), sid.as_deref())
    }

    async fn on_outbound(&mut self, out: Outbound, frames: &mut Vec<Frame>) -> Step {
        match out {
            Outbound::Notification(text) => frames.push(Frame::Text(text)),
            Outbound::Reply { id, frame, ok } => {
                let Some(done) = self.in_flight.filter(|f| f.id == id) else {
                    // Already answered here when the membership ended (see below).
                    tracing::debug!(id, "late reply dropped");
                    return Step::Continue;
                };
                frames.push(Frame::Text(frame));
                self.in_flight = None;
                self.state
                    .latencies
                    .request(done.method, done.sent.elapsed());
                if ok {
                    self.log_success(done.method);
                    if done.method == "joinRoom" {
                        self.publish_session();
                    }
                }
                self.pump(frames).await;
            }
            Outbound::MembershipEnded { room_serial } => {
                // Evicted or the room closed: that room will not answer what is in flight
                // there (a request sent to another room, e.g. a join, still waits).
                if let Some(done) = self.in_flight.filter(|f| f.room_serial == room_serial) {
                    self.in_flight = None;
                    let session = self.session().id.clone();
                    let err = RoomError::NoParticipant { session: session.0 };
                    frames.push(Frame::Text(self.error_frame(done.id, &err)));
                    self.pump(frames).await;
                }
            }
            Outbound::Close => {
                // After a successful leaveRoom: the session is destroyed with the socket. A
                // join queued behind the leave may have been admitted meanwhile: forgotten
                // first and evicted from wherever it is, exactly as `closeSession`.
                if let Some(session) = self.session.take() {
                    self.state.sessions.remove(&session.id);
                    if let Detached::Now(Some(room)) = session.detach(self.generation) {
                        let evict = Input::Evict {
                            session: session.id.clone(),
                        };
                        let _ = room.tx.send(evict).await;
                    }
                }
                frames.push(Frame::Close(CLOSE_NORMAL, ""));
                return Step::End(End::Finished);
            }
        }
        Step::Continue
    }

    /// Cluster mode: tells the session directory that this node holds the session now.
    fn publish_session(&self) {
        let (Some(cluster), Some(session)) = (&self.state.cluster, &self.session) else {
            return;
        };
        if let signaling::room::Membership::In { room, .. } = session.membership().view() {
            cluster.session_joined(&session.id.0, room);
        }
    }

    /// One `info` line per successful join, leave, publish and subscribe, with room, user,
    /// session and client address (what an operator greps for).
    fn log_success(&self, method: &'static str) {
        let what = match method {
            "joinRoom" => "join",
            "leaveRoom" => "leave",
            "publishVideo" => "publish",
            "unpublishVideo" => "unpublish",
            "receiveVideoFrom" => "subscribe",
            "unsubscribeFromVideo" => "unsubscribe",
            _ => return,
        };
        let Some(session) = &self.session else { return };
        let membership = session.membership();
        let (room, user) = match membership.view() {
            signaling::room::Membership::In { room, user } => (room.to_owned(), user.to_owned()),
            _ => (String::new(), String::new()),
        };
        tracing::info!(%room, %user, session = %session.id, client = ?self.peer, "{what}");
    }

    /// Dispatches queued room requests until one goes to a room (and must be waited for).
    async fn pump(&mut self, frames: &mut Vec<Frame>) {
        while self.in_flight.is_none() && self.pending.is_none() {
            let Some((id, request, raw)) = self.queue.pop_front() else {
                return;
            };
            let method = request.method();
            match self.dispatch(id, request).await {
                Dispatch::Sent(room_serial) => {
                    self.in_flight = Some(InFlight {
                        id,
                        room_serial,
                        method,
                        sent: Instant::now(),
                    })
                }
                Dispatch::Answer(err) => {
                    let frame = self.error_frame(id, &err);
                    frames.push(Frame::Text(frame));
                }
                Dispatch::Place { room, input } => {
                    self.place(id, method, input, room, raw);
                }
            }
        }
    }

    /// Sends one room request where `signaling::room::route` says (returning the room's
    /// serial), or answers it here, or hands a join to the cluster's directory.
    async fn dispatch(&mut self, id: Id, request: ClientRequest) -> Dispatch {
        match self.dispatch_here(id, request).await {
            Ok(serial) => Dispatch::Sent(serial),
            Err(other) => other,
        }
    }

    /// Cluster mode: asks the directory where a join of `room` goes, in a task of its own;
    /// [`Connection::on_directed`] goes on with its answer.
    fn place(
        &mut self,
        id: Id,
        method: &'static str,
        input: Input,
        room: String,
        raw: Option<String>,
    ) {
        let Some(cluster) = self.state.cluster.clone() else {
            return; // Unreachable: only cluster mode places.
        };
        let relayed = self.relayed;
        let peer = self.peer;
        // The owner gives the client's session the id this node already gave it.
        let session = self.session.as_ref().map(|s| s.id.0.clone());
        let name = room.clone();
        let task = tokio::spawn(async move {
            cluster
                .direct_join(&name, relayed, peer, session.as_deref())
                .await
        });
        self.pending = Some(Pending {
            task,
            then: Then::Join {
                id,
                method,
                input,
                room,
                raw,
                sent: Instant::now(),
            },
        });
    }

    async fn dispatch_here(&mut self, id: Id, request: ClientRequest) -> Result<u32, Dispatch> {
        let session = self.session();
        let membership = session.membership();
        let decision = route(&session.id, membership.view(), &request);
        let input = Input::Request {
            session: session.id.clone(),
            id,
            request,
        };
        match decision {
            Route::Answer(err) => Err(Dispatch::Answer(err)),
            Route::Member => {
                let room = membership.room().cloned();
                match room {
                    Some(room) if room.tx.send(input).await.is_ok() => Ok(room.serial),
                    // The room task is gone (its removal reaches us through the registry).
                    _ => Err(Dispatch::Answer(RoomError::NoParticipant {
                        session: session.id.0.clone(),
                    })),
                }
            }
            Route::Join(room) => {
                if let Some(cluster) = &self.state.cluster {
                    if !cluster.serves(&room) {
                        return Err(Dispatch::Place { room, input });
                    }
                    if !self.relayed {
                        ClusterStats::bump(&cluster.stats().placed_local);
                    }
                }
                self.join_here(&room, input).await.map_err(Dispatch::Answer)
            }
        }
    }

    /// Sends a join to room `name` of this node, created if needed; the room's serial.
    async fn join_here(&mut self, name: &str, mut input: Input) -> Result<u32, RoomError> {
        // A room that just emptied refuses new inputs; the directory then has a new one.
        for _ in 0..8 {
            let handle = self
                .state
                .rooms
                .get_or_create(name, &self.state.room_ctx)
                .map_err(|no_room| {
                    let err = no_room.error();
                    self.state.counters.room_error(&err);
                    err
                })?;
            match handle.tx.send(input).await {
                Ok(()) => return Ok(handle.serial),
                Err(mpsc::error::SendError(back)) => input = back,
            }
        }
        tracing::warn!(room = %name, "could not reach a room for a join");
        let user = match input {
            Input::Request {
                request: ClientRequest::JoinRoom { user, .. },
                ..
            } => user,
            _ => String::new(),
        };
        Err(RoomError::RoomClosing {
            user,
            room: name.to_owned(),
        })
    }

    /// After the socket closed: start the grace period, or forget the session.
    async fn finish(self, end: End) {
        let Some(session) = self.session else { return };
        if end != End::Dropped {
            return;
        }
        let Detached::Now(room) = session.detach(self.generation) else {
            return; // Another connection took the session over.
        };
        if let Some(room) = room {
            let input = Input::Disconnected {
                session: session.id.clone(),
            };
            let _ = room.tx.send(input).await;
        }
        // The session stays reachable for `connect` during the grace period. Its room (if it
        // is admitted later, after this point) starts its own grace period on admission.
        let sessions = Arc::clone(&self.state.sessions);
        let grace = self.state.config.reconnection_grace();
        let generation = self.generation;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if session.is_abandoned_since(generation) {
                sessions.remove(&session.id);
            }
        });
    }
}

/// Token bucket for one connection's requests: `burst` at once, refilled at `rate` per
/// second. Time is passed in.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
}

impl RateLimit {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            refused_in_a_row: 0,
        }
    }

    /// Takes a token if there is one.
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
            false
        }
    }

    fn refused_in_a_row(&self) -> u32 {
        self.refused_in_a_row
    }

    fn burst(&self) -> u32 {
        // `burst` came from a u32 (at least 1).
        self.burst as u32
    }
}

#[cfg(test)]
mod tests {
    //! The connection's races, driven through in-memory frame channels instead of sockets,
    //! against the real registries and room tasks. Time is tokio's paused clock.

    use super::*;
    use futures_util::sink;
    use futures_util::stream;
    use serde_json::json;
    use std::convert::Infallible;

    struct Harness {
        to_server: Option<mpsc::Sender<Message>>,
        from_server: mpsc::Receiver<Message>,
        task: tokio::task::JoinHandle<()>,
    }

    fn config() -> crate::Config {
        crate::Config {
            reconnection_grace_ms: 500,
            requests_per_second: 10,
            request_burst: 5,
            // Tests run in parallel: each server's media shards on ports of their own.
            rtc_udp_port: 0,
            ..crate::Config::default()
        }
    }

    fn connect(state: &Arc<AppState>, generation: u64) -> Harness {
        let (to_server, rx) = mpsc::channel::<Message>(64);
        let (tx, from_server) = mpsc::channel::<Message>(64);
        let frames = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok::<_, Infallible>(m), rx))
        });
        let out = sink::unfold(tx, |tx, m: Message| async move {
            tx.send(m).await.map_err(|_| "test reader gone")?;
            Ok::<_, &'static str>(tx)
        });
        let task = tokio::spawn(run_connection(
            Box::pin(frames),
            Box::pin(out),
            Arc::clone(state),
            generation,
            None,
        ));
        Harness {
            to_server: Some(to_server),
            from_server,
            task,
        }
    }

    impl Harness {
        async fn send(&mut self, id: i64, method: &str, params: Value) {
            let frame = json!({"jsonrpc":"2.0","id":id,"method":method,"params":params});
            self.to_server
                .as_ref()
                .expect("stream still open")
                .send(Message::Text(frame.to_string().into()))
                .await
                .expect("connection task reads");
        }

        /// The next text frame, as JSON; `None` once the connection closed.
        async fn next(&mut self) -> Option<Value> {
            loop {
                match self.from_server.recv().await? {
                    Message::Text(t) => return Some(serde_json::from_str(&t).expect("JSON")),
                    Message::Close(_) => return None,
                    _ => continue,
                }
            }
        }

        async fn reply_to(&mut self, id: i64) -> Value {
            loop {
                let v = self.next().await.expect("a reply before the close");
                if v["id"] == json!(id) {
                    return v;
                }
            }
        }

        /// Ends the frame stream as an abrupt TCP close would, and waits for the task.
        async fn vanish(mut self) {
            self.to_server = None;
            self.task.await.expect("connection task ends cleanly");
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    /// The ghost race: `joinRoom` sent, socket gone before the answer. The room admits the
    /// participant after the connection ended; it must still be evicted after the grace
    /// period, and the name becomes free again.
    #[tokio::test(start_paused = true)]
    async fn a_join_whose_socket_vanished_leaves_no_ghost() {
        let state =
            Arc::new(AppState::new(config()).expect("the media shards bind ephemeral ports"));
        for i in 0..20 {
            let mut c = connect(&state, 100 + i);
            c.send(1, "joinRoom", json!({"room":"r","user":format!("u{i}")}))
                .await;
            c.vanish().await;
        }
        until("the room is empty and forgotten", || {
            state.rooms.participants() == 0 && state.rooms.names().is_empty()
        })
        .await;
        until("every session is forgotten", || state.sessions.len() == 0).await;
        let mut again = connect(&state, 999);
        again
            .send(1, "joinRoom", json!({"room":"r","user":"u0"}))
            .await;
        let reply = again.reply_to(1).await;
        assert_eq!(reply["result"]["value"], json!([]), "{reply}");
    }

    /// `closeSession` while the join is in flight: the participant is evicted at once when
    /// the room admits it (no grace period for a session that asked to end).
    #[tokio::test(start_paused = true)]
    async fn close_session_with_a_join_in_flight_evicts_at_admission() {
        let state =
            Arc::new(AppState::new(config()).expect("the media shards bind ephemeral ports"));
        let mut watcher = connect(&state, 1);
        watcher
            .send(1, "joinRoom", json!({"room":"r","user":"w"}))
            .await;
        watcher.reply_to(1).await;
        let mut c = connect(&state, 2);
        c.send(1, "joinRoom", json!({"room":"r","user":"x"})).await;
        c.send(2, "closeSession", json!({})).await;
        // The watcher hears of x at most once, and then of its departure.
        let mut joined = 0;
        loop {
            let n = watcher.next().await.expect("watcher stays connected");
            match n["method"].as_str() {
                Some("participantJoined") => joined += 1,
                Some("participantLeft") => break,
                _ => {}
            }
        }
        assert!(joined <= 1);
        assert_eq!(state.rooms.participants(), 1);
    }

    /// An admin close while a request waits for the room: the connection answers it (102)
    /// and the late answer of the room, if any, is not sent twice.
    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_when_the_room_closes_is_answered_once() {
        let state =
            Arc::new(AppState::new(config()).expect("the media shards bind ephemeral ports"));
        let mut c = connect(&state, 1);
        c.send(1, "joinRoom", json!({"room":"r","user":"a"})).await;
        c.reply_to(1).await;
        let room = state.rooms.get("r").expect("room exists");
        room.tx.send(Input::Close).await.expect("room task alive");
        c.send(
            2,
            "sendMessage",
            json!({"userMessage":"a","roomMessage":"r","message":"m"}),
        )
        .await;
        c.send(3, "leaveRoom", json!({})).await;
        let mut answers = Vec::new();
        while answers.len() < 2 {
            let v = c.next().await.expect("connection open");
            if v.get("id").is_some() {
                answers.push(v);
            }
        }
        assert_eq!(answers[0]["id"], json!(2));
        assert_eq!(answers[1]["id"], json!(3));
        assert!(
            answers[1]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Room 'r' not found")),
            "{}",
            answers[1]
        );
    }

    /// Past the burst, requests are refused with -32000 (the connection survives); refused
    /// `burst` times in a row, the connection is closed with 1008.
    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_refuses_then_closes_an_abuser() {
        let state =
            Arc::new(AppState::new(config()).expect("the media shards bind ephemeral ports"));
        let mut c = connect(&state, 1);
        for id in 1..=5 {
            c.send(id, "ping", json!({})).await;
            assert!(c.reply_to(id).await.get("result").is_some());
        }
        c.send(6, "ping", json!({})).await;
        assert_eq!(c.reply_to(6).await["error"]["code"], json!(-32000));
        // Refilled at 10/s: one more is allowed after 100 ms.
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.send(7, "ping", json!({})).await;
        assert!(c.reply_to(7).await.get("result").is_some());
        for id in 8..=13 {
            c.send(id, "ping", json!({})).await;
        }
        let mut refused = 0;
        let close = loop {
            match c.from_server.recv().await {
                Some(Message::Text(_)) => refused += 1,
                Some(Message::Close(frame)) => break frame,
                Some(_) => {}
                None => panic!("no close frame"),
            }
        };
        assert_eq!(refused, 5);
        assert_eq!(close.map(|f| f.code), Some(CLOSE_POLICY_VIOLATION));
        assert_eq!(state.counters.abusive_closed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn token_bucket_refills_at_its_rate_and_caps_at_its_burst() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2, 3, t0);
        assert!((0..3).all(|_| r.allow(t0)));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(500)));
        assert!(!r.allow(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| r.allow(later)).count(), 3);
    }
}
