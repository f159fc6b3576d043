//! Randomized model test of the room state machine ([`signaling::room`]): random interleavings
//! of everything that can happen to rooms, with the room's guarantees checked after every step.
//!
//! The test plays the rest of the server around real [`Room`]s, written against the public API
//! only, in a small simulated world:
//!
//! - **9 clients**, each with at most one WebSocket connection and a kurento-jsonrpc session
//!   that outlives it. A connection keeps a FIFO of room requests and, like the server,
//!   dispatches one at a time, routing it with [`route`] on the session's membership, and waits
//!   for its reply (or for the end of its membership) before dispatching the next. Requests
//!   (`joinRoom`, `publishVideo`, `unpublishVideo`, `receiveVideoFrom`, `unsubscribeFromVideo`,
//!   `onIceCandidate`, `leaveRoom`, `sendMessage`, `customRequest`, with wrong names and rooms
//!   now and then) are sent at random moments, also while earlier ones wait. Sockets drop with
//!   requests still in flight (the room still processes them; their replies go nowhere), are
//!   taken over by a second socket, or end with `closeSession`; clients come back with
//!   `connect` (resuming the session, or failing once it expired and starting a fresh one).
//! - **A session registry** (the server's `sessions.rs`): membership recorded from
//!   [`Output::Admitted`] and [`Output::Removed`]; on `Admitted` of a session whose socket is
//!   gone the driver feeds [`Input::Disconnected`] back (or [`Input::Evict`] when the session no
//!   longer exists); a dropped session is forgotten when its grace period ends.
//! - **3 room names** served by a directory of room instances, each with its own inbox (inputs
//!   are delivered to a room at random later steps, so a join can still be in flight when its
//!   socket dies). A room instance is created by the first join routed to it and retired when it
//!   is empty after an input; inputs still in its inbox are then handled as `rooms.rs` does
//!   (joins go to a fresh instance of the same name, the rest to the empty room). An
//!   administrator closes a room now and then.
//! - **A fake media engine** that creates an endpoint for each `Publish`/`Subscribe`, answers it
//!   (or rejects it) at a random later step, emits local ICE candidates and failures, and tears
//!   an endpoint down on `Release` (after its negotiation, as `bridge.rs` does).
//! - **Simulated time**: grace periods (10 s) run out through [`Room::poll_timeout`] /
//!   [`Room::handle_timeout`] and the registry's own timer, in random order.
//!
//! Three driver rules beyond room.rs's own documentation are modelled, because without them this
//! test finds ghost participants (a participant nobody will ever evict, or a session in two
//! rooms); the server must follow them too:
//!
//! 1. `Admitted` of a session whose registry membership is another room (its socket died with a
//!    join in flight, and it joined elsewhere from a new socket) is answered with
//!    [`Input::Evict`] to the admitting room; the membership stays.
//! 2. The `Close` that follows a successful `leaveRoom` destroys the session like
//!    `closeSession`: the room of any membership it has by then (a join queued behind the
//!    `leaveRoom` is dispatched when the leave's reply arrives) gets [`Input::Evict`].
//! 3. The end of a membership (eviction, room closed) stops a connection waiting only for a
//!    request it dispatched to that room, not for one already dispatched elsewhere.
//!
//! Invariants, checked after every step (and the per-input ones after every room input); a
//! failure names the seed, the step and the last 120 steps, room inputs and outputs:
//!
//! - every participant of every room has a live connection, or a grace period running in that
//!   room (or an eviction on its way to it); no live participant has one running; `poll_timeout`
//!   is the earliest grace deadline, and a timeout evicts exactly the participants whose deadline
//!   passed;
//! - a session is a participant of at most one room, and the registry's membership says which;
//! - each participant learns of each other participant exactly once (join result or
//!   `participantJoined`, then nothing until `participantLeft`) and of each publication exactly
//!   once (`streams` in the join result or `participantPublished`, then nothing until
//!   `participantUnpublished`): per observer, what it was told equals the room's participants
//!   and their publishing state;
//! - no notification goes to a session that is not a participant of the room, except its own
//!   `participantEvicted` / `roomClosed` (exactly one per eviction / close); a reply goes only
//!   to the sender of a request the room received; `sendMessage` reaches every participant once;
//!   `iceCandidate` goes only to the endpoint's owner, after the reply carrying its answer, each
//!   candidate once and in order; `mediaError` only to the failed endpoint's owner;
//! - a room instance exists iff it has participants (or holds the join it was created for), and
//!   its participant count matches what its outputs said;
//! - every request a room received gets exactly one reply, in arrival order per session, unless
//!   its session is removed from the room first (then none; `leaveRoom` is answered after its
//!   own removal); at the end every request of a live connection has been answered;
//! - media: every endpoint is released exactly once (a second release only for an answer that
//!   arrived after the release); the engine's live endpoints are exactly the ones rooms still
//!   hold (publications and subscriptions, negotiating ones included); no endpoint outlives its
//!   owner's participation; a subscription never outlives its publisher; candidates reach only
//!   held endpoints of their sender, early ones when the endpoint is created;
//! - at the end of each case everyone leaves, closes or times out, and there are no rooms, no
//!   sessions, no endpoints and no unanswered requests.
//!
//! `ROOMD_MODEL_CASES` (default 48), `ROOMD_MODEL_STEPS` (random steps per case, default 3000)
//! and `ROOMD_MODEL_SEED` (default fixed; case `i` uses seed + i) size the run; cases run on all
//! cores. A failing case prints the exact command that replays it. The documented long run
//! (10 million random steps, release build), from `signaling/`:
//!
//! ```text
//! ROOMD_MODEL_CASES=2000 ROOMD_MODEL_STEPS=5000 cargo test --release --test model -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use signaling::jsonrpc::Id;
use signaling::protocol::{Candidate, ClientRequest, Notification, Reply};
use signaling::room::{
    route, EndpointId, Input, MediaCommand, MediaReport, Membership, NegotiationFailure, Output,
    Removal, Room, RoomConfig, Route, SessionId,
};
use signaling::RoomError;

const DEFAULT_CASES: u64 = 48;
const DEFAULT_STEPS: u64 = 3_000;
const DEFAULT_SEED: u64 = 0x0DE1_5EED_2024;
const CLIENTS: usize = 9;
const ROOM_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const GRACE: Duration = Duration::from_secs(10);
/// Room limits small enough to be hit often: 9 clients for rooms of 7, 4 publishers, offers
/// of 64 bytes (5 % of the model's offers are longer), 4 client candidates per endpoint.
const MAX_PARTICIPANTS: usize = 7;
const MAX_PUBLISHERS: usize = 4;
const MAX_SDP_BYTES: usize = 64;
const MAX_CANDIDATES: usize = 4;
/// The room's documented caps (room.rs), mirrored to know what it must still deliver.
const MAX_HELD_CANDIDATES: usize = 64;
const MAX_EARLY_CANDIDATES_PER_NAME: usize = 32;
const MAX_EARLY_NAMES: usize = 32;
/// Requests a client queues on its connection before it stops sending (keeps the room's
/// per-participant backlog, 256, far away: beyond it replies may overtake each other).
const MAX_QUEUED: usize = 3;
/// Events (steps, room inputs, room outputs) kept for a failure report.
const TRACE: usize = 120;

#[test]
fn random_interleavings_keep_the_room_invariants() {
    let cases = env_u64("ROOMD_MODEL_CASES", DEFAULT_CASES);
    let steps = env_u64("ROOMD_MODEL_STEPS", DEFAULT_STEPS);
    let seed = env_u64("ROOMD_MODEL_SEED", DEFAULT_SEED);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads
        .min(usize::try_from(cases).unwrap_or(usize::MAX))
        .max(1);
    let started = Instant::now();
    let next_case = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let random_steps = AtomicU64::new(0);
    let all_steps = AtomicU64::new(0);
    let stats = Mutex::new(Stats::default());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // Another case failed: stop taking new ones (the failure is reported by the
                // thread that panicked; this guard makes the others notice).
                let _guard = StopOnPanic(&stop);
                while !stop.load(Ordering::Relaxed) {
                    let case = next_case.fetch_add(1, Ordering::Relaxed);
                    if case >= cases {
                        break;
                    }
                    let (total, case_stats) = World::new(seed.wrapping_add(case), steps).run();
                    random_steps.fetch_add(steps, Ordering::Relaxed);
                    all_steps.fetch_add(total, Ordering::Relaxed);
                    stats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .add(&case_stats);
                }
            });
        }
    });
    eprintln!(
        "room model: {cases} cases x {steps} random steps = {} steps ({} with wind-down), \
         seeds {seed:#x}.., {threads} threads, {:.1?}, no invariant violated",
        random_steps.into_inner(),
        all_steps.into_inner(),
        started.elapsed()
    );
    let s = stats.into_inner().unwrap_or_else(PoisonError::into_inner);
    eprintln!(
        "  rooms created {}, joins {} (socket already gone {}, session gone {}, already in another \
         room {}), leaves {}, evicted by grace {}, other evictions {}, removed by room close {}, \
         joins re-routed from a retiring room {}",
        s.rooms_created,
        s.admitted,
        s.admitted_disconnected,
        s.admitted_gone,
        s.admitted_elsewhere,
        s.left,
        s.evicted_by_grace,
        s.evicted_otherwise,
        s.room_closed,
        s.joins_rerouted
    );
    eprintln!(
        "  publications answered {}, subscriptions answered {}, negotiations failed {}, \
         receiveVideoFrom answered 302 {}, requests dropped with their participant \
         {}, early client candidates forwarded {}, server candidates notified {}, refused by a \
         room limit {}, replies {}, notifications {}",
        s.published,
        s.subscribed,
        s.negotiation_failed,
        s.subscribe_302,
        s.dropped_requests,
        s.early_candidates,
        s.server_candidates,
        s.refused_by_limit,
        s.replies,
        s.notifications
    );
}

struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        }
        Err(_) => default,
    }
}

/// Fails the case with the seed, step and recent history unless `cond` holds.
macro_rules! check {
    ($log:expr, $cond:expr, $($what:tt)+) => {
        if !$cond {
            $log.fail(format!($($what)+))
        }
    };
}

// ------------------------------------------------------------------------------------------
// The world's state
// ------------------------------------------------------------------------------------------

/// One thing the world does in a step (kept in the trace; replays are by seed).
#[derive(Clone, Debug)]
enum Action {
    /// A room task takes the next input of its inbox.
    Deliver { room: u32 },
    /// A connection task takes the next message a room sent it.
    Outbox { client: usize },
    /// A client sends a room request on its connection.
    Request {
        client: usize,
        id: Id,
        request: ClientRequest,
    },
    /// A client opens a WebSocket and `connect`s (resuming its session, or a fresh one).
    Open { client: usize, resume: bool },
    /// A second socket `connect`s to the session while the first is still open.
    Takeover { client: usize },
    /// The socket drops without `closeSession`.
    Drop { client: usize },
    /// `closeSession`.
    CloseSession { client: usize },
    /// Time passes; due grace periods end.
    Advance { millis: u64 },
    /// The media engine finishes a negotiation.
    Negotiated {
        endpoint: EndpointId,
        outcome: Result<(), NegotiationFailure>,
    },
    /// The media engine gathers a local candidate.
    LocalCandidate { endpoint: EndpointId },
    /// An endpoint fails after negotiation.
    EndpointFailed { endpoint: EndpointId },
    /// An administrator closes a room.
    AdminClose { room: u32 },
}

#[derive(Debug)]
enum Event {
    Step(u64, Action),
    Input(u32, Input),
    Timeout(u32),
    Output(u32, Output),
}

/// Seed, position and recent history, for failure reports.
struct Log {
    seed: u64,
    steps: u64,
    step: u64,
    trace: VecDeque<Event>,
}

impl Log {
    fn push(&mut self, event: Event) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(event);
    }

    #[cold]
    fn fail(&self, what: String) -> ! {
        let mut msg = format!(
            "room model invariant violated: {what}\n  seed {:#x}, step {} of {}\n  replay: \
             ROOMD_MODEL_SEED={:#x} ROOMD_MODEL_CASES=1 ROOMD_MODEL_STEPS={} cargo test --test \
             model\n  last events (room #n = room instance serial n):\n",
            self.seed, self.step, self.steps, self.seed, self.steps
        );
        for event in &self.trace {
            let _ = match event {
                Event::Step(n, a) => writeln!(msg, "  step {n}: {a:?}"),
                Event::Input(r, i) => writeln!(msg, "      room #{r} <- {i:?}"),
                Event::Timeout(r) => writeln!(msg, "      room #{r} <- timeout"),
                Event::Output(r, o) => writeln!(msg, "      room #{r} -> {o:?}"),
            };
        }
        panic!("{msg}");
    }
}

struct Client {
    user: String,
    /// The session this client last had (it may have expired since).
    session: Option<SessionId>,
    sessions_made: u32,
    conn: Option<Conn>,
}

/// A connection task.
struct Conn {
    generation: u64,
    session: SessionId,
    /// Room requests not yet dispatched.
    queue: VecDeque<(Id, ClientRequest)>,
    /// The dispatched request this connection waits for, and the room it went to.
    in_flight: Option<(Id, u32)>,
    /// What room drivers delivered, not yet taken by the connection task.
    outbox: VecDeque<Outbound>,
}

#[derive(Debug)]
enum Outbound {
    Reply(Id),
    /// The session stopped being a participant of this room without asking (evicted, room
    /// closed): a request waiting for that room will not be answered.
    MembershipEnded(u32),
    /// Close the socket (after a successful `leaveRoom`).
    Close,
}

/// A session in the registry.
struct HubSession {
    client: usize,
    /// Generation of the attached connection.
    conn: Option<u64>,
    dropped_at: Option<Instant>,
    membership: Mem,
}

#[derive(Clone, Debug, PartialEq)]
enum Mem {
    None,
    In { room: u32, user: String },
    Closed { room: String },
}

/// A room instance, its task's inbox, and what its outputs said about it.
struct RoomSim {
    name: String,
    room: Room,
    inbox: VecDeque<Input>,
    members: BTreeMap<SessionId, Member>,
    /// Requests the room has taken and not yet answered, per session, in arrival order.
    outstanding: BTreeMap<SessionId, VecDeque<Id>>,
    /// Endpoints created by a command and not yet released.
    held: BTreeMap<EndpointId, Held>,
    last_endpoint: u64,
    processed_any: bool,
    retired: bool,
}

struct Member {
    user: String,
    /// What this participant was told about the others: name → publishing. `None` until its
    /// join result.
    known: Option<BTreeMap<String, bool>>,
    /// The reply carrying its publisher's answer went out (and no unpublish since).
    publishing: bool,
    /// Grace deadline the room was given (Disconnected processed, no Reconnected since).
    deadline: Option<Instant>,
    /// Client candidates the room must be buffering, by endpoint name.
    early: BTreeMap<String, VecDeque<String>>,
}

struct Held {
    owner: SessionId,
    /// Kurento's endpoint name: the owner's name for its publisher, the publisher's otherwise.
    name: String,
    /// The publisher endpoint feeding a subscription.
    publisher: Option<EndpointId>,
    request: Id,
    answered: bool,
    /// Server candidates the room accepted for it, and how many it notified.
    received: Vec<String>,
    notified: usize,
    /// Client candidates forwarded to it.
    candidates: usize,
}

/// A request sent to a room and not answered yet.
struct Pending {
    room: u32,
    request: ClientRequest,
    processed: bool,
    member_at_processing: bool,
    /// For joins of non-participants: what the room must answer.
    join_expect: Option<JoinExpect>,
    /// An `onIceCandidate` whose candidate went to its endpoint at once.
    forwarded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum JoinExpect {
    Admit,
    EmptyName,
    NameTaken,
    Full,
}

/// A media engine endpoint.
struct EngineEndpoint {
    room: u32,
    up: bool,
    /// Release requested while negotiating: torn down once the negotiation ends.
    releasing: bool,
    candidates: u32,
}

/// What one room input produced that must be cross-checked once all its outputs are out.
#[derive(Default)]
struct Batch {
    timeout: bool,
    evict_inputs: Vec<SessionId>,
    admitted: Vec<SessionId>,
    removed: Vec<(SessionId, Removal)>,
    evicted_told: Vec<SessionId>,
    closed_told: Vec<SessionId>,
    left_ok: Vec<SessionId>,
    closed_sessions: Vec<SessionId>,
    chats: Vec<Chat>,
    created: Vec<EndpointId>,
    /// An answer for an endpoint the room no longer holds: it must release it again.
    may_release: Option<EndpointId>,
    /// A failure of a held endpoint: (owner, description, reported).
    media_error: Option<(SessionId, String, bool)>,
}

struct Chat {
    text: String,
    user: String,
    expected: BTreeSet<SessionId>,
    got: BTreeSet<SessionId>,
}

/// How often the interesting things happened (printed, to show the model reaches them).
#[derive(Default)]
struct Stats {
    admitted: u64,
    admitted_disconnected: u64,
    admitted_gone: u64,
    admitted_elsewhere: u64,
    left: u64,
    evicted_by_grace: u64,
    evicted_otherwise: u64,
    room_closed: u64,
    published: u64,
    subscribed: u64,
    negotiation_failed: u64,
    subscribe_302: u64,
    dropped_requests: u64,
    joins_rerouted: u64,
    rooms_created: u64,
    early_candidates: u64,
    server_candidates: u64,
    refused_by_limit: u64,
    replies: u64,
    notifications: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        let fields = [
            (&mut self.admitted, o.admitted),
            (&mut self.admitted_disconnected, o.admitted_disconnected),
            (&mut self.admitted_gone, o.admitted_gone),
            (&mut self.admitted_elsewhere, o.admitted_elsewhere),
            (&mut self.left, o.left),
            (&mut self.evicted_by_grace, o.evicted_by_grace),
            (&mut self.evicted_otherwise, o.evicted_otherwise),
            (&mut self.room_closed, o.room_closed),
            (&mut self.published, o.published),
            (&mut self.subscribed, o.subscribed),
            (&mut self.negotiation_failed, o.negotiation_failed),
            (&mut self.subscribe_302, o.subscribe_302),
            (&mut self.dropped_requests, o.dropped_requests),
            (&mut self.joins_rerouted, o.joins_rerouted),
            (&mut self.rooms_created, o.rooms_created),
            (&mut self.early_candidates, o.early_candidates),
            (&mut self.server_candidates, o.server_candidates),
            (&mut self.refused_by_limit, o.refused_by_limit),
            (&mut self.replies, o.replies),
            (&mut self.notifications, o.notifications),
        ];
        for (mine, theirs) in fields {
            *mine += theirs;
        }
    }
}

struct World {
    stats: Stats,
    log: Log,
    rng: StdRng,
    now: Instant,
    next_id: Id,
    next_generation: u64,
    next_serial: u32,
    clients: Vec<Client>,
    hub: BTreeMap<SessionId, HubSession>,
    directory: BTreeMap<String, u32>,
    rooms: BTreeMap<u32, RoomSim>,
    engine: BTreeMap<EndpointId, EngineEndpoint>,
    pending: BTreeMap<(SessionId, Id), Pending>,
}

fn origin(text: &str, tag: &str) -> Option<(SessionId, Id)> {
    let mut parts = text.split(' ');
    if parts.next()? != tag {
        return None;
    }
    let session = SessionId(parts.next()?.to_owned());
    let id = parts.next()?.parse().ok()?;
    Some((session, id))
}

fn endpoint_of(text: &str) -> Option<EndpointId> {
    let mut parts = text.split(' ');
    if parts.next()? != "srv" {
        return None;
    }
    parts.next()?.parse().ok().map(EndpointId)
}

fn answer_for(endpoint: EndpointId) -> String {
    format!("answer {}", endpoint.0)
}

impl World {
    fn new(seed: u64, steps: u64) -> Self {
        Self {
            stats: Stats::default(),
            log: Log {
                seed,
                steps,
                step: 0,
                trace: VecDeque::with_capacity(TRACE),
            },
            rng: StdRng::seed_from_u64(seed),
            now: Instant::now(),
            next_id: 0,
            next_generation: 0,
            next_serial: 0,
            clients: (0..CLIENTS)
                .map(|i| Client {
                    user: format!("u{i}"),
                    session: None,
                    sessions_made: 0,
                    conn: None,
                })
                .collect(),
            hub: BTreeMap::new(),
            directory: BTreeMap::new(),
            rooms: BTreeMap::new(),
            engine: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// Runs the random steps and the wind-down; returns the number of steps taken.
    fn run(mut self) -> (u64, Stats) {
        for _ in 0..self.log.steps {
            let action = self.random_action();
            self.step(action);
        }
        self.wind_down();
        (self.log.step, self.stats)
    }

    fn step(&mut self, action: Action) {
        self.log.step += 1;
        self.log.push(Event::Step(self.log.step, action.clone()));
        self.apply(action);
        self.check_world();
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Deliver { room } => {
                let input = self.rooms.get_mut(&room).and_then(|r| r.inbox.pop_front());
                if let Some(input) = input {
                    self.feed(room, input);
                }
            }
            Action::Outbox { client } => self.take_outbound(client),
            Action::Request {
                client,
                id,
                request,
            } => {
                if let Some(conn) = self.clients[client].conn.as_mut() {
                    conn.queue.push_back((id, request));
                    self.pump(client);
                }
            }
            Action::Open { client, resume } => self.open(client, resume),
            Action::Takeover { client } => self.takeover(client),
            Action::Drop { client } => self.drop_connection(client),
            Action::CloseSession { client } => self.close_session(client),
            Action::Advance { millis } => self.advance(Duration::from_millis(millis)),
            Action::Negotiated { endpoint, outcome } => self.negotiated(endpoint, outcome),
            Action::LocalCandidate { endpoint } => {
                if let Some(ep) = self.engine.get_mut(&endpoint) {
                    ep.candidates += 1;
                    let report = MediaReport::LocalCandidate {
                        endpoint,
                        candidate: Candidate {
                            candidate: format!("srv {} {}", endpoint.0, ep.candidates),
                            sdp_mid: Some("0".into()),
                            sdp_m_line_index: Some(0),
                        },
                    };
                    let room = ep.room;
                    self.send(room, Input::Media(report));
                }
            }
            Action::EndpointFailed { endpoint } => {
                if let Some(ep) = self.engine.get(&endpoint) {
                    let report = MediaReport::Failed {
                        endpoint,
                        description: format!("fail {}", endpoint.0),
                    };
                    let room = ep.room;
                    self.send(room, Input::Media(report));
                }
            }
            Action::AdminClose { room } => {
                self.send(room, Input::Close);
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Choosing what happens
    // --------------------------------------------------------------------------------------

    fn random_action(&mut self) -> Action {
        loop {
            let roll = self.rng.gen_range(0..1000);
            let action = match roll {
                0..=299 => self
                    .pick_room(|r| !r.inbox.is_empty())
                    .map(|room| Action::Deliver { room }),
                300..=449 => self
                    .pick_client(|c| c.conn.as_ref().is_some_and(|c| !c.outbox.is_empty()))
                    .map(|client| Action::Outbox { client }),
                450..=689 => self
                    .pick_client(|c| c.conn.as_ref().is_some_and(|c| c.queue.len() < MAX_QUEUED))
                    .map(|client| self.random_request(client)),
                690..=769 => self.pick_endpoint(|e| !e.up).map(|endpoint| {
                    let outcome = if self.rng.gen_bool(0.85) {
                        Ok(())
                    } else {
                        Err(match self.rng.gen_range(0..5) {
                            0 => NegotiationFailure::Unavailable,
                            1 => NegotiationFailure::OfferRejected("bad offer".into()),
                            2 => NegotiationFailure::EndpointCreation,
                            3 => NegotiationFailure::NoAnswer,
                            _ => NegotiationFailure::PublisherGone,
                        })
                    };
                    Action::Negotiated { endpoint, outcome }
                }),
                770..=799 => self
                    .pick_endpoint(|_| true)
                    .map(|endpoint| Action::LocalCandidate { endpoint }),
                800..=807 => self
                    .pick_endpoint(|e| e.up)
                    .map(|endpoint| Action::EndpointFailed { endpoint }),
                808..=859 => self
                    .pick_client(|c| c.conn.is_none())
                    .map(|client| Action::Open {
                        client,
                        resume: self.rng.gen_bool(0.8),
                    }),
                860..=879 => self
                    .pick_client(|c| c.conn.is_some())
                    .map(|client| Action::Drop { client }),
                880..=899 => self
                    .pick_client(|c| c.conn.is_some())
                    .map(|client| Action::Takeover { client }),
                900..=907 => self
                    .pick_client(|c| c.conn.is_some())
                    .map(|client| Action::CloseSession { client }),
                908..=958 => Some(Action::Advance {
                    millis: if self.rng.gen_bool(0.5) {
                        self.rng.gen_range(1..500)
                    } else {
                        self.rng.gen_range(500..6_000)
                    },
                }),
                959..=960 if self.rng.gen_bool(0.5) => self
                    .pick_room(|r| !r.members.is_empty())
                    .map(|room| Action::AdminClose { room }),
                _ => self
                    .pick_room(|r| !r.inbox.is_empty())
                    .map(|room| Action::Deliver { room }),
            };
            if let Some(action) = action {
                return action;
            }
        }
    }

    fn pick_room(&mut self, pred: impl Fn(&RoomSim) -> bool) -> Option<u32> {
        let fit: Vec<u32> = self
            .rooms
            .iter()
            .filter(|(_, r)| pred(r))
            .map(|(s, _)| *s)
            .collect();
        (!fit.is_empty()).then(|| fit[self.rng.gen_range(0..fit.len())])
    }

    fn pick_client(&mut self, pred: impl Fn(&Client) -> bool) -> Option<usize> {
        let fit: Vec<usize> = (0..CLIENTS).filter(|&i| pred(&self.clients[i])).collect();
        (!fit.is_empty()).then(|| fit[self.rng.gen_range(0..fit.len())])
    }

    fn pick_endpoint(&mut self, pred: impl Fn(&EngineEndpoint) -> bool) -> Option<EndpointId> {
        let fit: Vec<EndpointId> = self
            .engine
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(id, _)| *id)
            .collect();
        (!fit.is_empty()).then(|| fit[self.rng.gen_range(0..fit.len())])
    }

    fn random_request(&mut self, client: usize) -> Action {
        self.next_id += 1;
        let id = self.next_id;
        let me = self.clients[client].user.clone();
        let session = self.clients[client]
            .conn
            .as_ref()
            .map(|c| c.session.clone())
            .expect("a connected client");
        let (room, peers): (Option<String>, Vec<String>) =
            match self.hub.get(&session).map(|h| &h.membership) {
                Some(Mem::In { room, .. }) => match self.rooms.get(room) {
                    Some(r) => (
                        Some(r.name.clone()),
                        r.members
                            .values()
                            .map(|m| m.user.clone())
                            .filter(|u| *u != me)
                            .collect(),
                    ),
                    None => (None, Vec::new()),
                },
                _ => (None, Vec::new()),
            };
        let rng = &mut self.rng;
        let peer = |rng: &mut StdRng| {
            if !peers.is_empty() && rng.gen_bool(0.85) {
                peers[rng.gen_range(0..peers.len())].clone()
            } else {
                format!("u{}", rng.gen_range(0..CLIENTS))
            }
        };
        let sid = &session.0;
        let offer = |rng: &mut StdRng| {
            let mut offer = format!("offer {sid} {id}");
            if rng.gen_bool(0.05) {
                offer.push(' ');
                offer.push_str(&"x".repeat(MAX_SDP_BYTES));
            }
            offer
        };
        let any_room = |rng: &mut StdRng| ROOM_NAMES[rng.gen_range(0..ROOM_NAMES.len())].to_owned();
        let roll = if room.is_none() && rng.gen_bool(0.6) {
            0
        } else {
            rng.gen_range(0..100)
        };
        let request = match roll {
            0..=3 => ClientRequest::JoinRoom {
                room: match &room {
                    Some(r) if rng.gen_bool(0.6) => r.clone(),
                    _ => any_room(rng),
                },
                user: match rng.gen_range(0..100) {
                    0..=87 => me.clone(),
                    88..=95 => format!("u{}", rng.gen_range(0..CLIENTS)),
                    _ => String::new(),
                },
                data_channels: rng.gen_bool(0.2),
            },
            4..=18 => ClientRequest::PublishVideo {
                sdp_offer: offer(rng),
                do_loopback: rng.gen_bool(0.2),
            },
            19..=24 => ClientRequest::UnpublishVideo,
            25..=53 => ClientRequest::ReceiveVideoFrom {
                sender: peer(rng),
                sdp_offer: offer(rng),
            },
            54..=61 => ClientRequest::UnsubscribeFromVideo { sender: peer(rng) },
            62..=79 => ClientRequest::OnIceCandidate {
                endpoint_name: if rng.gen_bool(0.4) {
                    me.clone()
                } else {
                    peer(rng)
                },
                candidate: Candidate {
                    candidate: if rng.gen_bool(0.08) {
                        String::new()
                    } else {
                        format!("cli {sid} {id}")
                    },
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            },
            80..=84 => ClientRequest::LeaveRoom,
            85..=98 => ClientRequest::SendMessage {
                user_message: if rng.gen_bool(0.93) {
                    me.clone()
                } else {
                    peer(rng)
                },
                room_message: match &room {
                    Some(r) if rng.gen_bool(0.93) => r.clone(),
                    _ => any_room(rng),
                },
                message: format!("msg {sid} {id}"),
            },
            _ => ClientRequest::CustomRequest,
        };
        Action::Request {
            client,
            id,
            request,
        }
    }

    // --------------------------------------------------------------------------------------
    // Connections and the session registry (what connection.rs / sessions.rs do)
    // --------------------------------------------------------------------------------------

    fn open(&mut self, client: usize, resume: bool) {
        if self.clients[client].conn.is_some() {
            return;
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let resumable = self.clients[client]
            .session
            .clone()
            .filter(|s| resume && self.hub.contains_key(s));
        let session = match resumable {
            Some(session) => {
                // `connect` with the session id: rebind; the room hears `Reconnected`.
                let hs = self.hub.get_mut(&session).expect("checked above");
                hs.conn = Some(generation);
                hs.dropped_at = None;
                if let Mem::In { room, .. } = hs.membership {
                    self.send(
                        room,
                        Input::Reconnected {
                            session: session.clone(),
                        },
                    );
                }
                session
            }
            None => {
                // `connect` without id (or after 40007 for an expired id): a fresh session.
                let c = &mut self.clients[client];
                c.sessions_made += 1;
                let session = SessionId(format!("c{client}.{}", c.sessions_made));
                c.session = Some(session.clone());
                self.hub.insert(
                    session.clone(),
                    HubSession {
                        client,
                        conn: Some(generation),
                        dropped_at: None,
                        membership: Mem::None,
                    },
                );
                session
            }
        };
        self.clients[client].conn = Some(Conn {
            generation,
            session,
            queue: VecDeque::new(),
            in_flight: None,
            outbox: VecDeque::new(),
        });
    }

    fn takeover(&mut self, client: usize) {
        let Some(old) = self.clients[client].conn.take() else {
            return;
        };
        // The old socket is killed; its queue and undelivered messages die with it, and its
        // end finds itself superseded (no Disconnected).
        self.next_generation += 1;
        let generation = self.next_generation;
        let hs = self
            .hub
            .get_mut(&old.session)
            .expect("a live connection's session");
        hs.conn = Some(generation);
        if let Mem::In { room, .. } = hs.membership {
            self.send(
                room,
                Input::Reconnected {
                    session: old.session.clone(),
                },
            );
        }
        self.clients[client].conn = Some(Conn {
            generation,
            session: old.session,
            queue: VecDeque::new(),
            in_flight: None,
            outbox: VecDeque::new(),
        });
    }

    fn drop_connection(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.take() else {
            return;
        };
        let now = self.now;
        let Some(hs) = self.hub.get_mut(&conn.session) else {
            return;
        };
        if hs.conn == Some(conn.generation) {
            hs.conn = None;
            hs.dropped_at = Some(now);
            if let Mem::In { room, .. } = hs.membership {
                self.send(
                    room,
                    Input::Disconnected {
                        session: conn.session,
                    },
                );
            }
        }
    }

    fn close_session(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.take() else {
            return;
        };
        // "bye", evict from the room, forget the session, close.
        if let Some(hs) = self.hub.remove(&conn.session) {
            if let Mem::In { room, .. } = hs.membership {
                self.send(
                    room,
                    Input::Evict {
                        session: conn.session,
                    },
                );
            }
        }
    }

    /// The connection task takes one message a room driver delivered.
    fn take_outbound(&mut self, client: usize) {
        let Some(conn) = self.clients[client].conn.as_mut() else {
            return;
        };
        let Some(msg) = conn.outbox.pop_front() else {
            return;
        };
        match msg {
            Outbound::Reply(id) => {
                if conn.in_flight.is_some_and(|(waiting, _)| waiting == id) {
                    conn.in_flight = None;
                    self.pump(client);
                }
            }
            Outbound::MembershipEnded(room) => {
                // Only a request that went to that room stops waiting: one dispatched since
                // (to the next room) will be answered.
                if conn.in_flight.is_some_and(|(_, to)| to == room) {
                    conn.in_flight = None;
                    self.pump(client);
                }
            }
            Outbound::Close => {
                // After a successful leaveRoom: the session ends with the socket. A request
                // queued behind the leaveRoom was dispatched when its reply arrived; if it was a
                // join that got admitted meanwhile, that room must hear that the session is
                // gone, as for closeSession (otherwise it keeps a participant nobody evicts).
                let conn = self.clients[client].conn.take().expect("checked above");
                if let Some(hs) = self.hub.remove(&conn.session) {
                    if let Mem::In { room, .. } = hs.membership {
                        self.send(
                            room,
                            Input::Evict {
                                session: conn.session,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Dispatches queued requests until one goes to a room.
    fn pump(&mut self, client: usize) {
        loop {
            let Some(conn) = self.clients[client].conn.as_mut() else {
                return;
            };
            if conn.in_flight.is_some() {
                return;
            }
            let Some((id, request)) = conn.queue.pop_front() else {
                return;
            };
            let session = conn.session.clone();
            let Some(hs) = self.hub.get(&session) else {
                self.log.fail(format!(
                    "live connection of {session} without a registered session"
                ))
            };
            let membership = hs.membership.clone();
            let view = match &membership {
                Mem::None => Membership::None,
                Mem::In { room, user } => Membership::In {
                    room: self.rooms.get(room).map_or("", |r| r.name.as_str()),
                    user,
                },
                Mem::Closed { room } => Membership::Closed { room },
            };
            let target = match route(&session, view, &request) {
                Route::Answer(_) => None,
                Route::Join(name) => Some(self.room_named(&name)),
                Route::Member => match membership {
                    Mem::In { room, .. } if self.rooms.contains_key(&room) => Some(room),
                    _ => None, // answered at once: no participant
                },
            };
            let Some(room) = target else {
                continue;
            };
            self.pending.insert(
                (session.clone(), id),
                Pending {
                    room,
                    request: request.clone(),
                    processed: false,
                    member_at_processing: false,
                    join_expect: None,
                    forwarded: false,
                },
            );
            self.send(
                room,
                Input::Request {
                    session,
                    id,
                    request,
                },
            );
            if let Some(conn) = self.clients[client].conn.as_mut() {
                conn.in_flight = Some((id, room));
            }
        }
    }

    /// Delivers to the session's current connection; lost when there is none.
    fn deliver(&mut self, session: &SessionId, msg: Outbound) {
        let Some(hs) = self.hub.get(session) else {
            return;
        };
        let Some(generation) = hs.conn else {
            return;
        };
        if let Some(conn) = self.clients[hs.client]
            .conn
            .as_mut()
            .filter(|c| c.generation == generation)
        {
            conn.outbox.push_back(msg);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        enum Due {
            Session(SessionId),
            Room(u32),
        }
        let mut due: Vec<Due> = self
            .hub
            .iter()
            .filter(|(_, h)| h.conn.is_none() && h.dropped_at.is_some_and(|t| t + GRACE <= now))
            .map(|(s, _)| Due::Session(s.clone()))
            .collect();
        due.extend(
            self.rooms
                .iter()
                .filter(|(_, r)| r.room.poll_timeout().is_some_and(|t| t <= now))
                .map(|(s, _)| Due::Room(*s)),
        );
        // The registry's timer and the rooms' timers race; any order.
        for i in (1..due.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            due.swap(i, j);
        }
        for d in due {
            match d {
                Due::Session(s) => {
                    self.hub.remove(&s);
                }
                Due::Room(serial) => {
                    if self.rooms.contains_key(&serial) {
                        self.feed_timeout(serial);
                    }
                }
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // The media engine (what bridge.rs and the media crate do)
    // --------------------------------------------------------------------------------------

    fn negotiated(&mut self, endpoint: EndpointId, outcome: Result<(), NegotiationFailure>) {
        let Some(ep) = self.engine.get_mut(&endpoint) else {
            return;
        };
        if ep.up {
            return;
        }
        let room = ep.room;
        let report = match outcome {
            Ok(()) => {
                if ep.releasing {
                    self.engine.remove(&endpoint);
                } else {
                    ep.up = true;
                }
                MediaReport::Answered {
                    endpoint,
                    answer: answer_for(endpoint),
                }
            }
            Err(failure) => {
                self.engine.remove(&endpoint);
                MediaReport::Rejected { endpoint, failure }
            }
        };
        self.send(room, Input::Media(report));
    }

    fn engine_command(&mut self, room: u32, cmd: &MediaCommand) {
        match cmd {
            MediaCommand::Publish { endpoint, .. } | MediaCommand::Subscribe { endpoint, .. } => {
                self.engine.insert(
                    *endpoint,
                    EngineEndpoint {
                        room,
                        up: false,
                        releasing: false,
                        candidates: 0,
                    },
                );
            }
            MediaCommand::AddCandidate { .. } | MediaCommand::ExpectSubscriber { .. } => {}
            MediaCommand::Release { endpoint } => {
                if let Some(ep) = self.engine.get_mut(endpoint) {
                    if ep.up {
                        self.engine.remove(endpoint);
                    } else {
                        ep.releasing = true;
                    }
                }
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Rooms: the directory and the room driver (what rooms.rs does)
    // --------------------------------------------------------------------------------------

    fn room_named(&mut self, name: &str) -> u32 {
        if let Some(serial) = self.directory.get(name) {
            return *serial;
        }
        self.next_serial += 1;
        self.stats.rooms_created += 1;
        let serial = self.next_serial;
        let config = RoomConfig {
            reconnection_grace: GRACE,
            max_participants: MAX_PARTICIPANTS,
            max_publishers: MAX_PUBLISHERS,
            max_sdp_bytes: MAX_SDP_BYTES,
            max_candidates_per_endpoint: MAX_CANDIDATES,
        };
        self.rooms.insert(
            serial,
            RoomSim {
                name: name.to_owned(),
                room: Room::new(name, serial, config),
                inbox: VecDeque::new(),
                members: BTreeMap::new(),
                outstanding: BTreeMap::new(),
                held: BTreeMap::new(),
                last_endpoint: u64::from(serial) << 32,
                processed_any: false,
                retired: false,
            },
        );
        self.directory.insert(name.to_owned(), serial);
        serial
    }

    /// Queues an input for a room task; lost when the room is gone (its inbox is closed).
    fn send(&mut self, room: u32, input: Input) -> bool {
        match self.rooms.get_mut(&room) {
            Some(r) => {
                r.inbox.push_back(input);
                true
            }
            None => false,
        }
    }

    fn feed(&mut self, serial: u32, input: Input) {
        let mut batch = Batch::default();
        self.before_input(serial, &input, &mut batch);
        self.log.push(Event::Input(serial, input.clone()));
        let now = self.now;
        let r = self.rooms.get_mut(&serial).expect("a fed room exists");
        r.processed_any = true;
        r.room.handle(now, input);
        self.drain(serial, &mut batch);
        self.after_batch(serial, batch);
    }

    fn feed_timeout(&mut self, serial: u32) {
        let mut batch = Batch {
            timeout: true,
            ..Batch::default()
        };
        self.log.push(Event::Timeout(serial));
        let now = self.now;
        let r = self
            .rooms
            .get_mut(&serial)
            .expect("a timed-out room exists");
        r.processed_any = true;
        r.room.handle_timeout(now);
        self.drain(serial, &mut batch);
        self.after_batch(serial, batch);
    }

    /// An input the driver feeds back while executing outputs (its outputs join the batch).
    fn feed_back(&mut self, serial: u32, input: Input, batch: &mut Batch) {
        self.before_input(serial, &input, batch);
        self.log.push(Event::Input(serial, input.clone()));
        let now = self.now;
        let r = self.rooms.get_mut(&serial).expect("a fed room exists");
        r.room.handle(now, input);
    }

    fn drain(&mut self, serial: u32, batch: &mut Batch) {
        loop {
            let Some(out) = self
                .rooms
                .get_mut(&serial)
                .and_then(|r| r.room.poll_output())
            else {
                return;
            };
            self.log.push(Event::Output(serial, out.clone()));
            self.on_output(serial, &out, batch);
        }
    }

    /// Retires an empty room instance: joins still queued go to a fresh instance of the same
    /// name, everything else is handled by the empty room, then it is gone.
    fn retire(&mut self, serial: u32) {
        let r = self.rooms.get_mut(&serial).expect("a retiring room exists");
        r.retired = true;
        if self.directory.get(&r.name) == Some(&serial) {
            self.directory.remove(&r.name);
        }
        while let Some(input) = self
            .rooms
            .get_mut(&serial)
            .and_then(|r| r.inbox.pop_front())
        {
            match input {
                Input::Request {
                    ref session,
                    id,
                    request: ClientRequest::JoinRoom { ref room, .. },
                } => {
                    let next = self.room_named(room);
                    self.stats.joins_rerouted += 1;
                    if let Some(p) = self.pending.get_mut(&(session.clone(), id)) {
                        p.room = next;
                    }
                    self.send(next, input);
                }
                other => self.feed(serial, other),
            }
        }
        let r = self.rooms.remove(&serial).expect("a retiring room exists");
        check!(
            self.log,
            r.members.is_empty() && r.held.is_empty() && r.outstanding.is_empty(),
            "retired room #{serial} still has participants, endpoints or requests"
        );
    }

    fn before_input(&mut self, serial: u32, input: &Input, batch: &mut Batch) {
        let now = self.now;
        let r = self.rooms.get_mut(&serial).expect("a fed room exists");
        match input {
            Input::Request {
                session,
                id,
                request,
            } => {
                let member = r.members.contains_key(session);
                let Some(p) = self.pending.get_mut(&(session.clone(), *id)) else {
                    self.log
                        .fail(format!("room #{serial} got {session} #{id}, never sent"))
                };
                check!(
                    self.log,
                    p.room == serial && !p.processed,
                    "room #{serial} got {session} #{id} twice or meant for room #{}",
                    p.room
                );
                p.processed = true;
                p.member_at_processing = member;
                if let (ClientRequest::JoinRoom { user, .. }, false) = (request, member) {
                    p.join_expect = Some(if user.is_empty() {
                        JoinExpect::EmptyName
                    } else if r.members.values().any(|m| m.user == *user) {
                        JoinExpect::NameTaken
                    } else if r.members.len() >= MAX_PARTICIPANTS {
                        JoinExpect::Full
                    } else {
                        JoinExpect::Admit
                    });
                }
                r.outstanding
                    .entry(session.clone())
                    .or_default()
                    .push_back(*id);
            }
            Input::Disconnected { session } => {
                if let Some(m) = r.members.get_mut(session) {
                    m.deadline = Some(now + GRACE);
                }
            }
            Input::Reconnected { session } => {
                if let Some(m) = r.members.get_mut(session) {
                    m.deadline = None;
                }
            }
            Input::Evict { session } => batch.evict_inputs.push(session.clone()),
            Input::Media(MediaReport::Answered { endpoint, .. }) => {
                if !r.held.contains_key(endpoint) {
                    batch.may_release = Some(*endpoint);
                }
            }
            // Not generated by this model (admin force-unpublish is pinned by the room unit tests).
            Input::Media(MediaReport::Rejected { .. })
            | Input::Close
            | Input::ForceUnpublish { .. } => {}
            Input::Media(MediaReport::LocalCandidate {
                endpoint,
                candidate,
            }) => {
                if let Some(h) = r.held.get_mut(endpoint) {
                    if h.answered || h.received.len() < MAX_HELD_CANDIDATES {
                        h.received.push(candidate.candidate.clone());
                    }
                }
            }
            // Not generated by this model: it changes nothing in a room.
            Input::Media(MediaReport::Connected { .. }) => {}
            Input::Media(MediaReport::Failed {
                endpoint,
                description,
            }) => {
                if let Some(h) = r.held.get(endpoint) {
                    batch.media_error = Some((h.owner.clone(), description.clone(), false));
                }
            }
        }
    }

    fn on_output(&mut self, serial: u32, out: &Output, batch: &mut Batch) {
        match out {
            Output::Reply {
                session,
                id,
                result,
            } => self.on_reply(serial, session, *id, result, batch),
            Output::Notify {
                session,
                notification,
            } => self.on_notify(serial, session, notification, batch),
            Output::Media(cmd) => {
                self.on_media(serial, cmd, batch);
                self.engine_command(serial, cmd);
            }
            Output::CloseSession { session } => {
                check!(
                    self.log,
                    batch.left_ok.contains(session) && !batch.closed_sessions.contains(session),
                    "CloseSession for {session} without a successful leaveRoom reply before it"
                );
                batch.closed_sessions.push(session.clone());
                self.deliver(session, Outbound::Close);
            }
            Output::Admitted { session, user } => self.on_admitted(serial, session, user, batch),
            Output::Removed { session, reason } => self.on_removed(serial, session, *reason, batch),
        }
    }

    fn on_admitted(&mut self, serial: u32, session: &SessionId, user: &str, batch: &mut Batch) {
        let r = self.rooms.get_mut(&serial).expect("room");
        let front = r.outstanding.get(session).and_then(|q| q.front()).copied();
        let joins_as = front
            .and_then(|id| self.pending.get(&(session.clone(), id)))
            .and_then(|p| match &p.request {
                ClientRequest::JoinRoom { user, .. } => Some(user.as_str()),
                _ => None,
            });
        check!(
            self.log,
            joins_as == Some(user) && !r.members.contains_key(session),
            "Admitted {session} as {user:?} in room #{serial}, but its request being executed \
             is a join as {joins_as:?} (or it is a participant already)"
        );
        r.members.insert(
            session.clone(),
            Member {
                user: user.to_owned(),
                known: None,
                publishing: false,
                deadline: None,
                early: BTreeMap::new(),
            },
        );
        batch.admitted.push(session.clone());
        self.stats.admitted += 1;
        // The driver records the membership and tells the room what it missed.
        let feedback = match self.hub.get_mut(session) {
            None => Some(Input::Evict {
                session: session.clone(),
            }),
            Some(hs) => match &hs.membership {
                // A join routed while the session was in no room, admitted after the session
                // became a participant elsewhere (its socket died with the join in flight and
                // the client rejoined elsewhere from a new socket): one room per session, so
                // this room lets it go at once and the membership stays as it is.
                Mem::In { room, .. } if *room != serial => Some(Input::Evict {
                    session: session.clone(),
                }),
                _ => {
                    hs.membership = Mem::In {
                        room: serial,
                        user: user.to_owned(),
                    };
                    hs.conn.is_none().then(|| Input::Disconnected {
                        session: session.clone(),
                    })
                }
            },
        };
        match (&feedback, self.hub.contains_key(session)) {
            (Some(Input::Disconnected { .. }), _) => self.stats.admitted_disconnected += 1,
            (Some(_), false) => self.stats.admitted_gone += 1,
            (Some(_), true) => self.stats.admitted_elsewhere += 1,
            (None, _) => {}
        }
        if let Some(input) = feedback {
            self.feed_back(serial, input, batch);
        }
    }

    fn on_removed(&mut self, serial: u32, session: &SessionId, reason: Removal, batch: &mut Batch) {
        let now = self.now;
        let r = self.rooms.get_mut(&serial).expect("room");
        let Some(m) = r.members.remove(session) else {
            self.log.fail(format!(
                "Removed {session} ({reason:?}) from room #{serial}, not a participant"
            ))
        };
        match reason {
            Removal::Evicted if batch.timeout => check!(
                self.log,
                m.deadline.is_some_and(|t| t <= now),
                "a timeout evicted {session}, whose grace period runs until {:?} (now {:?})",
                m.deadline,
                now
            ),
            Removal::Evicted => check!(
                self.log,
                batch.evict_inputs.contains(session),
                "{session} evicted from room #{serial} without an Evict input"
            ),
            Removal::RoomClosed | Removal::Left => {}
        }
        // Requests the room took from the session and did not answer are dropped, except the
        // leaveRoom being executed, which is answered next.
        let mut queue = r.outstanding.remove(session).unwrap_or_default();
        if reason == Removal::Left {
            let leave = queue.pop_front();
            let is_leave = leave
                .and_then(|id| self.pending.get(&(session.clone(), id)))
                .is_some_and(|p| p.request == ClientRequest::LeaveRoom);
            check!(
                self.log,
                is_leave,
                "{session} left room #{serial} while its oldest open request is not a leaveRoom"
            );
            r.outstanding
                .insert(session.clone(), leave.into_iter().collect());
        }
        for id in queue {
            self.pending.remove(&(session.clone(), id));
            self.stats.dropped_requests += 1;
        }
        match reason {
            Removal::Left => self.stats.left += 1,
            Removal::Evicted if batch.timeout => self.stats.evicted_by_grace += 1,
            Removal::Evicted => self.stats.evicted_otherwise += 1,
            Removal::RoomClosed => self.stats.room_closed += 1,
        }
        batch.removed.push((session.clone(), reason));
        let name = r.name.clone();
        // The driver clears the membership if it is this room's.
        let mut ended = false;
        if let Some(hs) = self.hub.get_mut(session) {
            if matches!(hs.membership, Mem::In { room, .. } if room == serial) {
                hs.membership = if reason == Removal::RoomClosed {
                    Mem::Closed { room: name }
                } else {
                    Mem::None
                };
                ended = reason != Removal::Left;
            }
        }
        if ended {
            self.deliver(session, Outbound::MembershipEnded(serial));
        }
    }

    fn on_reply(
        &mut self,
        serial: u32,
        session: &SessionId,
        id: Id,
        result: &Result<Reply, RoomError>,
        batch: &mut Batch,
    ) {
        let Some(p) = self.pending.remove(&(session.clone(), id)) else {
            self.log.fail(format!(
                "reply to {session} #{id}, which waits for no reply (answered already, dropped \
                 with its participant, or never sent)"
            ))
        };
        check!(
            self.log,
            p.room == serial && p.processed,
            "reply to {session} #{id} from room #{serial}, which has not taken that request"
        );
        let r = self.rooms.get_mut(&serial).expect("room");
        let front = r.outstanding.get_mut(session).and_then(VecDeque::pop_front);
        check!(
            self.log,
            front == Some(id),
            "reply to {session} #{id} while its earlier request #{front:?} is unanswered"
        );
        if r.outstanding.get(session).is_some_and(VecDeque::is_empty) {
            r.outstanding.remove(session);
        }
        self.stats.replies += 1;
        if matches!(
            result,
            Err(RoomError::RoomFull { .. } | RoomError::TooManyCandidates { .. })
        ) {
            self.stats.refused_by_limit += 1;
        }
        let is_join = matches!(p.request, ClientRequest::JoinRoom { .. });
        if !p.member_at_processing && !is_join {
            check!(
                self.log,
                matches!(result, Err(RoomError::NoParticipant { .. })),
                "{session} #{id} reached room #{serial} while not a participant: expected \
                 'no participant', got {result:?}"
            );
            self.deliver(session, Outbound::Reply(id));
            return;
        }
        let is_member = r.members.contains_key(session);
        let is_leave = p.request == ClientRequest::LeaveRoom;
        check!(
            self.log,
            result.is_err() || is_member || is_leave,
            "successful reply to {session} #{id}, not a participant of room #{serial}"
        );
        match (&p.request, result) {
            (ClientRequest::JoinRoom { user, .. }, Ok(Reply::Joined(peers))) => {
                check!(
                    self.log,
                    p.join_expect == Some(JoinExpect::Admit) && batch.admitted.contains(session),
                    "join of {session} as {user:?} succeeded; expected {:?}",
                    p.join_expect
                );
                let mut expected: Vec<(String, bool)> = r
                    .members
                    .iter()
                    .filter(|(s, _)| *s != session)
                    .map(|(_, m)| (m.user.clone(), m.publishing))
                    .collect();
                let mut got: Vec<(String, bool)> = peers
                    .iter()
                    .map(|p| (p.name.clone(), p.publishing))
                    .collect();
                expected.sort();
                got.sort();
                check!(
                    self.log,
                    got == expected,
                    "join result of {session} lists {got:?}; the room has {expected:?}"
                );
                let Some(me) = r.members.get_mut(session) else {
                    self.log
                        .fail(format!("join result to {session}, not admitted"))
                };
                check!(
                    self.log,
                    me.known.is_none(),
                    "second join result to {session}"
                );
                me.known = Some(got.into_iter().collect());
            }
            (ClientRequest::JoinRoom { user, .. }, Err(e)) => {
                let fits = match p.join_expect {
                    Some(JoinExpect::EmptyName) => matches!(e, RoomError::EmptyUserName),
                    Some(JoinExpect::NameTaken) => matches!(e, RoomError::UserExists { .. }),
                    Some(JoinExpect::Full) => matches!(e, RoomError::RoomFull { .. }),
                    Some(JoinExpect::Admit) => false,
                    None => matches!(
                        e,
                        RoomError::UserExists { .. } | RoomError::AlreadyJoined { .. }
                    ),
                };
                check!(
                    self.log,
                    fits,
                    "join of {session} as {user:?} refused with {e:?}; expected {:?}",
                    p.join_expect
                );
            }
            (ClientRequest::PublishVideo { .. }, Ok(Reply::SdpAnswer(answer)))
            | (ClientRequest::ReceiveVideoFrom { .. }, Ok(Reply::SdpAnswer(answer))) => {
                let publishing = matches!(p.request, ClientRequest::PublishVideo { .. });
                let Some((endpoint, h)) = r.held.iter_mut().find(|(_, h)| {
                    h.owner == *session && h.request == id && h.publisher.is_none() == publishing
                }) else {
                    self.log.fail(format!(
                        "{session} #{id} answered, but no endpoint was negotiated for it"
                    ))
                };
                check!(
                    self.log,
                    *answer == answer_for(*endpoint) && !h.answered,
                    "{session} #{id} got answer {answer:?}, not its endpoint {endpoint:?}'s \
                     (or a second one)"
                );
                h.answered = true;
                if publishing {
                    self.stats.published += 1;
                } else {
                    self.stats.subscribed += 1;
                }
                if publishing {
                    let me = r.members.get_mut(session).expect("checked member");
                    check!(self.log, !me.publishing, "{session} published twice");
                    me.publishing = true;
                }
            }
            (
                ClientRequest::PublishVideo { .. } | ClientRequest::ReceiveVideoFrom { .. },
                Err(e),
            ) => {
                match e {
                    RoomError::SubscribeSdp { .. } => self.stats.subscribe_302 += 1,
                    RoomError::MediaUnavailable
                    | RoomError::OfferRejected { .. }
                    | RoomError::PublisherEndpoint
                    | RoomError::SubscriberEndpoint
                    | RoomError::PublishSdp { .. } => self.stats.negotiation_failed += 1,
                    RoomError::TooManyPublishers { .. } | RoomError::OfferTooLarge { .. } => {
                        self.stats.refused_by_limit += 1
                    }
                    _ => {}
                }
                check!(
                    self.log,
                    !r.held
                        .values()
                        .any(|h| h.owner == *session && h.request == id),
                    "{session} #{id} failed but its endpoint is still held"
                );
            }
            (ClientRequest::UnpublishVideo, Ok(Reply::Empty)) => {
                let me = r.members.get_mut(session).expect("checked member");
                check!(
                    self.log,
                    me.publishing,
                    "unpublish of {session} succeeded while not publishing"
                );
                me.publishing = false;
                check!(
                    self.log,
                    !r.held
                        .values()
                        .any(|h| h.owner == *session && h.publisher.is_none()),
                    "unpublish of {session} succeeded; its publisher endpoint is still held"
                );
            }
            (ClientRequest::UnsubscribeFromVideo { sender }, Ok(Reply::Empty)) => {
                check!(
                    self.log,
                    !r.held
                        .values()
                        .any(|h| h.owner == *session && h.publisher.is_some() && h.name == *sender),
                    "unsubscribe of {session} from {sender} succeeded; the subscription is held"
                );
            }
            (ClientRequest::LeaveRoom, Ok(Reply::Empty)) => {
                check!(
                    self.log,
                    !is_member && batch.removed.contains(&(session.clone(), Removal::Left)),
                    "leaveRoom of {session} answered without removing it first"
                );
                batch.left_ok.push(session.clone());
            }
            (
                ClientRequest::SendMessage {
                    user_message,
                    room_message,
                    message,
                },
                result,
            ) => {
                let me = &r.members.get(session).expect("checked member").user;
                let fits = match result {
                    Ok(Reply::Empty) => *user_message == *me && *room_message == r.name,
                    Err(RoomError::UserMessageMismatch { .. }) => *user_message != *me,
                    Err(RoomError::RoomMessageMismatch { .. }) => {
                        *user_message == *me && *room_message != r.name
                    }
                    _ => false,
                };
                check!(
                    self.log,
                    fits,
                    "sendMessage of {session} as {user_message:?} to {room_message:?} answered \
                     {result:?}"
                );
                if result.is_ok() {
                    batch.chats.push(Chat {
                        text: message.clone(),
                        user: user_message.clone(),
                        expected: r.members.keys().cloned().collect(),
                        got: BTreeSet::new(),
                    });
                }
            }
            (
                ClientRequest::OnIceCandidate {
                    endpoint_name,
                    candidate,
                },
                Ok(Reply::Empty),
            ) => {
                if !candidate.candidate.is_empty() && !p.forwarded {
                    let exists = r
                        .held
                        .values()
                        .any(|h| h.owner == *session && h.name == *endpoint_name);
                    check!(
                        self.log,
                        !exists,
                        "candidate of {session} for its existing endpoint {endpoint_name} was \
                         not forwarded"
                    );
                    let me = r.members.get_mut(session).expect("checked member");
                    let fits =
                        me.early.contains_key(endpoint_name) || me.early.len() < MAX_EARLY_NAMES;
                    if fits {
                        let list = me.early.entry(endpoint_name.clone()).or_default();
                        if list.len() < MAX_EARLY_CANDIDATES_PER_NAME {
                            list.push_back(candidate.candidate.clone());
                        }
                    }
                }
                check!(
                    self.log,
                    !(candidate.candidate.is_empty() && p.forwarded),
                    "end-of-candidates marker of {session} forwarded to the media layer"
                );
            }
            (
                ClientRequest::OnIceCandidate { endpoint_name, .. },
                Err(RoomError::TooManyCandidates { .. }),
            ) => {
                let full = r.held.values().any(|h| {
                    h.owner == *session
                        && h.name == *endpoint_name
                        && h.candidates >= MAX_CANDIDATES
                });
                check!(
                    self.log,
                    full,
                    "candidate of {session} for {endpoint_name} refused, but that endpoint has \
                     room for more (or does not exist)"
                );
            }
            (
                ClientRequest::UnpublishVideo | ClientRequest::UnsubscribeFromVideo { .. },
                Err(_),
            ) => {}
            (request, result) => self.log.fail(format!(
                "{request:?} of {session} #{id} answered with {result:?}"
            )),
        }
        self.deliver(session, Outbound::Reply(id));
    }

    fn on_notify(&mut self, serial: u32, session: &SessionId, n: &Notification, batch: &mut Batch) {
        self.stats.notifications += 1;
        let r = self.rooms.get_mut(&serial).expect("room");
        match n {
            Notification::ParticipantEvicted => {
                check!(
                    self.log,
                    batch.removed.contains(&(session.clone(), Removal::Evicted))
                        && !r.members.contains_key(session)
                        && !batch.evicted_told.contains(session),
                    "participantEvicted to {session}, not (or already told) evicted from #{serial}"
                );
                batch.evicted_told.push(session.clone());
                return;
            }
            Notification::RoomClosed { room } => {
                check!(
                    self.log,
                    *room == r.name
                        && batch
                            .removed
                            .contains(&(session.clone(), Removal::RoomClosed))
                        && !r.members.contains_key(session)
                        && !batch.closed_told.contains(session),
                    "roomClosed {room} to {session}, not (or already told) removed by a close"
                );
                batch.closed_told.push(session.clone());
                return;
            }
            _ => {}
        }
        check!(
            self.log,
            r.members.contains_key(session),
            "{n:?} to {session}, not a participant of room #{serial}"
        );
        match n {
            Notification::ParticipantJoined { id } => {
                let exists = r.members.iter().any(|(s, m)| s != session && m.user == *id);
                let me = r.members.get_mut(session).expect("checked member");
                check!(
                    self.log,
                    exists && *id != me.user,
                    "participantJoined {id} to {session}: no such other participant"
                );
                let Some(known) = me.known.as_mut() else {
                    self.log.fail(format!(
                        "participantJoined to {session} before its join result"
                    ))
                };
                check!(
                    self.log,
                    known.insert(id.clone(), false).is_none(),
                    "{session} learnt twice that {id} is in the room"
                );
            }
            Notification::ParticipantLeft { name } => {
                let still = r.members.values().any(|m| m.user == *name);
                let me = r.members.get_mut(session).expect("checked member");
                let forgot = me.known.as_mut().and_then(|k| k.remove(name)).is_some();
                check!(
                    self.log,
                    !still && forgot,
                    "participantLeft {name} to {session}: still present, or never known to it"
                );
            }
            Notification::ParticipantPublished { id } => {
                let publishing = r
                    .members
                    .iter()
                    .any(|(s, m)| s != session && m.user == *id && m.publishing);
                let me = r.members.get_mut(session).expect("checked member");
                let was = me.known.as_mut().and_then(|k| k.get_mut(id));
                check!(
                    self.log,
                    publishing && was.as_deref() == Some(&false),
                    "participantPublished {id} to {session}: not publishing, unknown, or known \
                     publishing already ({was:?})"
                );
                if let Some(flag) = was {
                    *flag = true;
                }
            }
            Notification::ParticipantUnpublished { name } => {
                let stopped = r
                    .members
                    .iter()
                    .any(|(s, m)| s != session && m.user == *name && !m.publishing);
                let me = r.members.get_mut(session).expect("checked member");
                let was = me.known.as_mut().and_then(|k| k.get_mut(name));
                check!(
                    self.log,
                    stopped && was.as_deref() == Some(&true),
                    "participantUnpublished {name} to {session}: still publishing, or not known \
                     as publishing ({was:?})"
                );
                if let Some(flag) = was {
                    *flag = false;
                }
            }
            Notification::SendMessage {
                room,
                user,
                message,
            } => {
                let chat = batch.chats.iter_mut().find(|c| c.text == *message);
                let Some(chat) = chat else {
                    self.log
                        .fail(format!("sendMessage {message:?} to {session}, never sent"))
                };
                check!(
                    self.log,
                    *room == r.name && *user == chat.user && chat.got.insert(session.clone()),
                    "sendMessage {message:?} to {session} twice or with wrong room/user"
                );
            }
            Notification::IceCandidate {
                endpoint_name,
                candidate,
            } => {
                let endpoint = endpoint_of(&candidate.candidate);
                let h = endpoint.and_then(|e| r.held.get_mut(&e));
                let Some(h) = h else {
                    self.log.fail(format!(
                        "iceCandidate {candidate:?} to {session} for an endpoint not held"
                    ))
                };
                check!(
                    self.log,
                    h.owner == *session
                        && h.name == *endpoint_name
                        && h.answered
                        && h.received.get(h.notified) == Some(&candidate.candidate),
                    "iceCandidate {:?} as {endpoint_name} to {session}: owner {}, name {}, \
                     answered {}, next expected {:?}",
                    candidate.candidate,
                    h.owner,
                    h.name,
                    h.answered,
                    h.received.get(h.notified)
                );
                h.notified += 1;
                self.stats.server_candidates += 1;
            }
            Notification::MediaError { error } => {
                let expected = batch
                    .media_error
                    .as_mut()
                    .filter(|(owner, description, seen)| {
                        owner == session && !*seen && error.contains(description.as_str())
                    });
                let Some(expected) = expected else {
                    self.log.fail(format!(
                        "mediaError {error:?} to {session}, not its failure"
                    ))
                };
                expected.2 = true;
            }
            Notification::ParticipantEvicted
            | Notification::RoomClosed { .. }
            | Notification::CustomNotification(_) => {
                self.log.fail(format!("unexpected {n:?} to {session}"))
            }
        }
    }

    fn on_media(&mut self, serial: u32, cmd: &MediaCommand, batch: &mut Batch) {
        let r = self.rooms.get_mut(&serial).expect("room");
        match cmd {
            MediaCommand::Publish {
                endpoint, offer, ..
            }
            | MediaCommand::Subscribe {
                endpoint, offer, ..
            } => {
                check!(
                    self.log,
                    endpoint.0 >> 32 == u64::from(serial) && endpoint.0 > r.last_endpoint,
                    "room #{serial} created endpoint {endpoint:?} out of its range or reused one"
                );
                r.last_endpoint = endpoint.0;
                check!(
                    self.log,
                    offer.len() <= MAX_SDP_BYTES,
                    "{cmd:?}: an offer over {MAX_SDP_BYTES} bytes reached the media layer"
                );
                let Some((owner, id)) = origin(offer, "offer") else {
                    self.log
                        .fail(format!("{cmd:?} carries an offer no client sent"))
                };
                let p = self.pending.get(&(owner.clone(), id));
                let p = p.filter(|p| p.room == serial && p.processed);
                let Some(m) = r.members.get(&owner) else {
                    self.log
                        .fail(format!("{cmd:?} for {owner}, not a participant"))
                };
                let (name, publisher) = match (cmd, p.map(|p| &p.request)) {
                    (MediaCommand::Publish { .. }, Some(ClientRequest::PublishVideo { .. })) => {
                        let again = r
                            .held
                            .values()
                            .any(|h| h.owner == owner && h.publisher.is_none());
                        check!(self.log, !again, "second publisher endpoint for {owner}");
                        (m.user.clone(), None)
                    }
                    (
                        MediaCommand::Subscribe { publisher, .. },
                        Some(ClientRequest::ReceiveVideoFrom { sender, .. }),
                    ) => {
                        let feeding = r.held.get(publisher).is_some_and(|h| {
                            h.publisher.is_none()
                                && h.answered
                                && h.owner != owner
                                && h.name == *sender
                        });
                        check!(
                            self.log,
                            feeding && *sender != m.user,
                            "{owner} subscribes to {sender} through {publisher:?}, which is not \
                             {sender}'s answered publisher endpoint"
                        );
                        let again = r.held.values().any(|h| {
                            h.owner == owner && h.publisher.is_some() && h.name == *sender
                        });
                        check!(
                            self.log,
                            !again,
                            "second subscription of {owner} to {sender}"
                        );
                        (sender.clone(), Some(*publisher))
                    }
                    _ => self
                        .log
                        .fail(format!("{cmd:?} does not come from a request of that kind")),
                };
                r.held.insert(
                    *endpoint,
                    Held {
                        owner,
                        name,
                        publisher,
                        request: id,
                        answered: false,
                        received: Vec::new(),
                        notified: 0,
                        candidates: 0,
                    },
                );
                batch.created.push(*endpoint);
            }
            MediaCommand::AddCandidate {
                endpoint,
                candidate,
            } => {
                let Some(h) = r.held.get_mut(endpoint) else {
                    self.log
                        .fail(format!("{cmd:?} for an endpoint the room does not hold"))
                };
                h.candidates += 1;
                let from = origin(&candidate.candidate, "cli");
                let Some((sender, id)) = from.filter(|(s, _)| *s == h.owner) else {
                    self.log
                        .fail(format!("{cmd:?}: not a candidate of the owner {}", h.owner))
                };
                match self.pending.get_mut(&(sender.clone(), id)) {
                    Some(p) => {
                        let fits = matches!(
                            &p.request,
                            ClientRequest::OnIceCandidate { endpoint_name, candidate: c }
                                if *endpoint_name == h.name && c == candidate
                        );
                        check!(
                            self.log,
                            fits && p.processed && !p.forwarded && h.candidates <= MAX_CANDIDATES,
                            "{cmd:?} does not match {sender} #{id}, forwarded twice, or beyond \
                             the endpoint's {MAX_CANDIDATES} candidates"
                        );
                        p.forwarded = true;
                    }
                    None => {
                        let name = h.name.clone();
                        let m = r.members.get_mut(&sender).expect("holder is a member");
                        let early = m.early.get_mut(&name);
                        let next = early.and_then(VecDeque::pop_front);
                        check!(
                            self.log,
                            next.as_ref() == Some(&candidate.candidate),
                            "{cmd:?} is not the next buffered candidate of {sender} for {name} \
                             ({next:?})"
                        );
                        self.stats.early_candidates += 1;
                        if m.early.get(&name).is_some_and(VecDeque::is_empty) {
                            m.early.remove(&name);
                        }
                    }
                }
            }
            MediaCommand::ExpectSubscriber { publisher } => {
                check!(
                    self.log,
                    r.held.contains_key(publisher),
                    "room #{serial} expects a subscriber of {publisher:?}, which it does not hold"
                );
            }
            MediaCommand::Release { endpoint } => {
                check!(
                    self.log,
                    endpoint.0 >> 32 == u64::from(serial) && endpoint.0 <= r.last_endpoint,
                    "room #{serial} releases {endpoint:?}, which it never created"
                );
                if r.held.remove(endpoint).is_none() {
                    check!(
                        self.log,
                        batch.may_release == Some(*endpoint),
                        "room #{serial} releases {endpoint:?} a second time"
                    );
                    batch.may_release = None;
                }
            }
        }
    }

    /// Cross-checks of one room input once all its outputs are out; retires an empty room.
    fn after_batch(&mut self, serial: u32, batch: Batch) {
        let now = self.now;
        let r = self.rooms.get(&serial).expect("room");
        for (s, why) in &batch.removed {
            let told = match why {
                Removal::Evicted => batch.evicted_told.contains(s),
                Removal::RoomClosed => batch.closed_told.contains(s),
                Removal::Left => batch.left_ok.contains(s) && batch.closed_sessions.contains(s),
            };
            check!(
                self.log,
                told,
                "{s} removed ({why:?}) without participantEvicted / roomClosed / leave reply \
                 and close"
            );
        }
        for chat in &batch.chats {
            check!(
                self.log,
                chat.got == chat.expected,
                "sendMessage {:?} reached {:?}; the room had {:?}",
                chat.text,
                chat.got,
                chat.expected
            );
        }
        if let Some((owner, description, seen)) = &batch.media_error {
            check!(
                self.log,
                *seen,
                "failure {description:?} not reported to {owner}"
            );
        }
        check!(
            self.log,
            batch.may_release.is_none(),
            "answer for released endpoint {:?} not released again",
            batch.may_release
        );
        for e in &batch.created {
            if let Some(h) = r.held.get(e) {
                let buffered = r
                    .members
                    .get(&h.owner)
                    .is_some_and(|m| m.early.contains_key(&h.name));
                check!(
                    self.log,
                    !buffered,
                    "early candidates of {} for {} not forwarded to the new {e:?}",
                    h.owner,
                    h.name
                );
            }
        }
        let publishers = r.held.values().filter(|h| h.publisher.is_none()).count();
        check!(
            self.log,
            publishers <= MAX_PUBLISHERS,
            "room #{serial} holds {publishers} publishers, over its limit of {MAX_PUBLISHERS}"
        );
        let mut answered_publishers = BTreeSet::new();
        for (e, h) in &r.held {
            check!(
                self.log,
                r.members.contains_key(&h.owner),
                "room #{serial} still holds {e:?} of {}, who left (never released)",
                h.owner
            );
            match h.publisher {
                Some(p) => check!(
                    self.log,
                    r.held
                        .get(&p)
                        .is_some_and(|ph| ph.publisher.is_none() && ph.name == h.name),
                    "subscription {e:?} of {} outlives its publisher endpoint {p:?}",
                    h.owner
                ),
                None if h.answered => {
                    answered_publishers.insert(&h.owner);
                }
                None => {}
            }
            if h.answered {
                check!(
                    self.log,
                    h.notified == h.received.len(),
                    "server candidates of {e:?} held back after its answer ({} of {})",
                    h.notified,
                    h.received.len()
                );
            }
        }
        for (s, m) in &r.members {
            check!(
                self.log,
                m.publishing == answered_publishers.contains(s),
                "{s} publishing is {} but its answered publisher endpoint says otherwise",
                m.publishing
            );
            check!(self.log, r.room.contains(s), "room #{serial} lost {s}");
            if batch.timeout {
                check!(
                    self.log,
                    m.deadline.is_none_or(|t| t > now),
                    "timeout left {s} in room #{serial} after its grace period"
                );
            }
        }
        check!(
            self.log,
            r.members.len() == r.room.participant_count(),
            "room #{serial} counts {} participants; its outputs said {}",
            r.room.participant_count(),
            r.members.len()
        );
        if r.room.is_empty() && !r.retired {
            self.retire(serial);
        }
    }

    // --------------------------------------------------------------------------------------
    // Invariants after every step
    // --------------------------------------------------------------------------------------

    fn check_world(&self) {
        let now = self.now;
        let mut member_of: BTreeMap<&SessionId, u32> = BTreeMap::new();
        for (serial, r) in &self.rooms {
            check!(
                self.log,
                self.directory.get(&r.name) == Some(serial),
                "room #{serial} ({}) is not the directory's",
                r.name
            );
            check!(
                self.log,
                !r.members.is_empty() || (!r.processed_any && !r.inbox.is_empty()),
                "room #{serial} exists without participants"
            );
            check!(
                self.log,
                r.members.len() == r.room.participant_count(),
                "room #{serial} participant count"
            );
            let earliest = r.members.values().filter_map(|m| m.deadline).min();
            check!(
                self.log,
                r.room.poll_timeout() == earliest && earliest.is_none_or(|t| t > now),
                "room #{serial} poll_timeout {:?}, grace deadlines given {earliest:?}, now {now:?}",
                r.room.poll_timeout()
            );
            let mut names = BTreeSet::new();
            for (s, m) in &r.members {
                check!(
                    self.log,
                    names.insert(&m.user),
                    "two participants named {}",
                    m.user
                );
                if let Some(other) = member_of.insert(s, *serial) {
                    self.log.fail(format!(
                        "{s} is a participant of rooms #{other} and #{serial} at once"
                    ));
                }
                // What it was told equals who is there and who publishes.
                let Some(known) = &m.known else {
                    self.log.fail(format!("{s} admitted without a join result"))
                };
                let accurate = known.len() + 1 == r.members.len()
                    && r.members
                        .iter()
                        .filter(|(o, _)| *o != s)
                        .all(|(_, o)| known.get(&o.user) == Some(&o.publishing));
                if !accurate {
                    let truth: BTreeMap<&str, bool> = r
                        .members
                        .iter()
                        .filter(|(o, _)| *o != s)
                        .map(|(_, o)| (o.user.as_str(), o.publishing))
                        .collect();
                    self.log.fail(format!(
                        "{s} ({}) in room #{serial} knows {known:?}; the room is {truth:?}",
                        m.user
                    ));
                }
                // Live, or a grace period running (or an eviction) in this very room.
                let hub = self.hub.get(s);
                let live = hub.is_some_and(|h| h.conn.is_some());
                let transit = r.inbox.iter().rev().find_map(|i| match i {
                    Input::Disconnected { session } if session == s => Some(Some(true)),
                    Input::Reconnected { session } if session == s => Some(Some(false)),
                    Input::Evict { session } if session == s => Some(None),
                    _ => None,
                });
                if let Some(grace) = transit.unwrap_or(Some(m.deadline.is_some())) {
                    check!(
                        self.log,
                        grace != live,
                        "participant {s} of room #{serial}: connection {}, grace period {}: {}",
                        if live { "live" } else { "gone" },
                        if grace { "running" } else { "not running" },
                        if live {
                            "a live participant is going to be evicted"
                        } else {
                            "nobody will ever evict it"
                        }
                    );
                }
                if let Some(h) = hub {
                    check!(
                        self.log,
                        h.membership
                            == Mem::In {
                                room: *serial,
                                user: m.user.clone(),
                            },
                        "{s} is a participant of room #{serial}; the registry says {:?}",
                        h.membership
                    );
                }
            }
            for s in r.outstanding.keys() {
                check!(
                    self.log,
                    r.members.contains_key(s),
                    "room #{serial} holds unanswered requests of non-participant {s}"
                );
            }
            for e in r.held.keys() {
                let in_engine = self.engine.contains_key(e);
                let rejected = r.inbox.iter().any(|i| {
                    matches!(i, Input::Media(MediaReport::Rejected { endpoint, .. })
                        if endpoint == e)
                });
                check!(
                    self.log,
                    in_engine || rejected,
                    "room #{serial} holds {e:?}, which the media engine does not have"
                );
            }
        }
        for (s, h) in &self.hub {
            if let Mem::In { room, .. } = &h.membership {
                check!(
                    self.log,
                    member_of.get(s) == Some(room),
                    "registry puts {s} in room #{room}, which does not have it"
                );
            }
            if let Some(generation) = h.conn {
                check!(
                    self.log,
                    self.clients[h.client]
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.generation == generation && c.session == *s),
                    "registry attaches {s} to a connection that is gone"
                );
            }
        }
        for (e, ep) in &self.engine {
            let held = self
                .rooms
                .get(&ep.room)
                .is_some_and(|r| r.held.contains_key(e));
            check!(
                self.log,
                held || (!ep.up && ep.releasing),
                "media endpoint {e:?} is alive but no room holds it (leaked)"
            );
        }
        for ((s, id), p) in &self.pending {
            check!(
                self.log,
                self.rooms.contains_key(&p.room),
                "{s} #{id} waits for room #{}, which is gone",
                p.room
            );
        }
    }

    // --------------------------------------------------------------------------------------
    // End of a case
    // --------------------------------------------------------------------------------------

    /// Runs everything queued until nothing moves: inboxes, connections, negotiations.
    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            let action =
                if let Some((room, _)) = self.rooms.iter().find(|(_, r)| !r.inbox.is_empty()) {
                    Action::Deliver { room: *room }
                } else if let Some(client) = (0..CLIENTS).find(|&i| {
                    self.clients[i]
                        .conn
                        .as_ref()
                        .is_some_and(|c| !c.outbox.is_empty())
                }) {
                    Action::Outbox { client }
                } else if let Some((endpoint, _)) = self.engine.iter().find(|(_, e)| !e.up) {
                    Action::Negotiated {
                        endpoint: *endpoint,
                        outcome: Ok(()),
                    }
                } else {
                    return;
                };
            self.step(action);
        }
        self.log.fail("the world does not settle".into());
    }

    fn wind_down(&mut self) {
        self.settle();
        for (i, c) in self.clients.iter().enumerate() {
            if let Some(conn) = &c.conn {
                check!(
                    self.log,
                    conn.in_flight.is_none() && conn.queue.is_empty(),
                    "client {i}: request #{:?} on a live connection is never answered",
                    conn.in_flight
                );
            }
        }
        // Everyone goes: leaves, closes the session, or just disappears.
        for client in 0..CLIENTS {
            if self.clients[client].conn.is_none() {
                continue;
            }
            let action = match self.rng.gen_range(0..3) {
                0 => {
                    self.next_id += 1;
                    Action::Request {
                        client,
                        id: self.next_id,
                        request: ClientRequest::LeaveRoom,
                    }
                }
                1 => Action::CloseSession { client },
                _ => Action::Drop { client },
            };
            self.step(action);
        }
        self.settle();
        for client in 0..CLIENTS {
            if self.clients[client].conn.is_some() {
                self.step(Action::Drop { client });
            }
        }
        for _ in 0..3 {
            self.settle();
            self.step(Action::Advance {
                millis: u64::try_from(GRACE.as_millis()).expect("small") + 1_000,
            });
        }
        self.settle();
        check!(
            self.log,
            self.rooms.is_empty() && self.directory.is_empty(),
            "rooms left after everyone went: {:?}",
            self.directory
        );
        check!(
            self.log,
            self.engine.is_empty(),
            "media endpoints left after everyone went: {:?}",
            self.engine.keys().collect::<Vec<_>>()
        );
        check!(
            self.log,
            self.pending.is_empty() && self.hub.is_empty(),
            "{} requests unanswered and {} sessions left after everyone went",
            self.pending.len(),
            self.hub.len()
        );
    }
}
