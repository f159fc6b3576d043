//! Room state machine: one [`Room`] per Kurento room name.
//!
//! Owns who is in the room, who publishes, who subscribes to whom, which JSON-RPC requests
//! are still waiting for a media answer, early ICE candidates, and the reconnection grace
//! period of participants whose WebSocket dropped. Does not own sockets, tasks, timers or
//! WebRTC objects. Feed it with [`Room::handle`] and [`Room::handle_timeout`]; everything the
//! outside world must do comes back, in order, from [`Room::poll_output`]. Time is passed in;
//! this module never reads the clock.
//!
//! Ordering rules it guarantees (docs/protocol.md §4): every operation is atomic within the room,
//! so any two participants learn of each other exactly once (through the join result or
//! `participantJoined`) and of each publication exactly once; notifications and replies come
//! out in the original's send order; server ICE candidates for an endpoint are held until the
//! reply carrying its SDP answer has been emitted; requests of one participant are answered
//! in arrival order, even while one of them waits for media.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::error::RoomError;
use crate::jsonrpc::Id;
use crate::protocol::{media_error_text, Candidate, ClientRequest, Notification, Peer, Reply};

/// A kurento-jsonrpc session id. It identifies a participant and survives reconnections.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub String);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A media endpoint (publisher or subscriber peer connection), unique across all rooms of a
/// process as long as every room gets its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u64);

/// Tunables of a room.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// How long a participant whose WebSocket dropped stays in the room (kurento-jsonrpc's
    /// `ws.sessionReconnectionTime`, 10 s by default).
    pub reconnection_grace: Duration,
    /// Most participants in one room, those in their grace period included.
    pub max_participants: usize,
    /// Most publishers (publications, negotiating ones included) in one room.
    pub max_publishers: usize,
    /// Largest SDP offer accepted by `publishVideo` and `receiveVideoFrom`, in bytes.
    pub max_sdp_bytes: usize,
    /// Most client ICE candidates accepted per endpoint.
    pub max_candidates_per_endpoint: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            reconnection_grace: Duration::from_secs(10),
            max_participants: 1000,
            max_publishers: 100,
            max_sdp_bytes: 64 * 1024,
            max_candidates_per_endpoint: 100,
        }
    }
}

/// Something that happens to a room.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A decoded room method of a session (a participant, or a session joining).
    Request {
        /// Who asks.
        session: SessionId,
        /// The request id to answer.
        id: Id,
        /// What it asks.
        request: ClientRequest,
    },
    /// The media layer reports on an endpoint.
    Media(MediaReport),
    /// The session's WebSocket closed without `closeSession`: the grace period starts.
    Disconnected {
        /// The session.
        session: SessionId,
    },
    /// `connect` rebound the session to a new WebSocket within the grace period.
    Reconnected {
        /// The session.
        session: SessionId,
    },
    /// Evict the session now (`closeSession`, an expired grace period decided elsewhere).
    Evict {
        /// The session.
        session: SessionId,
    },
    /// Admin close of the whole room (`roomClosed` to everyone).
    Close,
    /// Admin force-unpublish: the session's publication (and every subscription to it) is
    /// released; everyone, the publisher included, gets `participantUnpublished`.
    ForceUnpublish {
        /// The publisher's session.
        session: SessionId,
    },
}

/// What an administrator sees of one participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantView {
    /// Its session.
    pub session: SessionId,
    /// Its name.
    pub name: String,
    /// Publishing (answer sent), or negotiating a publication.
    pub publication: Option<PublicationState>,
    /// The publishers it subscribes to, by name.
    pub subscriptions: Vec<String>,
    /// False while its WebSocket is gone (inside the reconnection grace period).
    pub connected: bool,
}

/// The state of a publication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicationState {
    /// Waiting for the media engine's answer.
    Negotiating,
    /// Answered: streaming.
    Streaming,
}

/// Why the media layer could not negotiate an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NegotiationFailure {
    /// There is no media engine.
    Unavailable,
    /// The offer was rejected (invalid SDP, no common codec); the text is client-safe.
    OfferRejected(String),
    /// The endpoint could not be created (its id is in use in the media engine).
    EndpointCreation,
    /// The engine produced no answer.
    NoAnswer,
    /// The publisher endpoint a subscription needs no longer exists.
    PublisherGone,
}

/// What the media layer reports back.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaReport {
    /// The SDP answer for a [`MediaCommand::Publish`] or [`MediaCommand::Subscribe`].
    Answered {
        /// The endpoint.
        endpoint: EndpointId,
        /// The SDP answer.
        answer: String,
    },
    /// The negotiation failed.
    Rejected {
        /// The endpoint.
        endpoint: EndpointId,
        /// Why.
        failure: NegotiationFailure,
    },
    /// The server gathered a local ICE candidate for the endpoint.
    LocalCandidate {
        /// The endpoint.
        endpoint: EndpointId,
        /// The candidate.
        candidate: Candidate,
    },
    /// The endpoint's media connection is up (reported once per endpoint).
    Connected {
        /// The endpoint.
        endpoint: EndpointId,
    },
    /// The endpoint failed after negotiation.
    Failed {
        /// The endpoint.
        endpoint: EndpointId,
        /// A short client-safe description.
        description: String,
    },
}

/// What the media layer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCommand {
    /// Create a publisher endpoint and answer `offer`; report [`MediaReport::Answered`] or
    /// [`MediaReport::Rejected`].
    Publish {
        /// The new endpoint.
        endpoint: EndpointId,
        /// The client's offer.
        offer: String,
        /// Send the publisher's media back to it on the same peer connection.
        loopback: bool,
    },
    /// Create a subscriber endpoint fed by `publisher` and answer `offer`.
    Subscribe {
        /// The new endpoint.
        endpoint: EndpointId,
        /// The publisher endpoint feeding it.
        publisher: EndpointId,
        /// The client's offer.
        offer: String,
    },
    /// Add a client ICE candidate to an endpoint (always after its Publish/Subscribe).
    AddCandidate {
        /// The endpoint.
        endpoint: EndpointId,
        /// The candidate.
        candidate: Candidate,
    },
    /// Tear the endpoint down. Harmless for an unknown endpoint.
    Release {
        /// The endpoint.
        endpoint: EndpointId,
    },
    /// A subscriber to this publisher endpoint is coming: a participant joined, and clients
    /// subscribe to every publisher listed in their join answer. The media layer may prepare
    /// (the engine asks the publisher for a keyframe now, so that one is stored by the time the
    /// subscriber connects). Harmless for an unknown endpoint.
    ExpectSubscriber {
        /// The publisher endpoint.
        publisher: EndpointId,
    },
}

/// Something the outside world must do, in this order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Answer a request.
    Reply {
        /// To whom.
        session: SessionId,
        /// The request id.
        id: Id,
        /// The result.
        result: Result<Reply, RoomError>,
    },
    /// Send an event.
    Notify {
        /// To whom.
        session: SessionId,
        /// The event.
        notification: Notification,
    },
    /// Drive the media layer.
    Media(MediaCommand),
    /// Close the session's WebSocket (code 1000) once everything before this is written
    /// (after a successful `leaveRoom`).
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// The session became a participant under `user`. Comes before anything sent to it as a
    /// participant. The driver records the membership and, when the session's connection is
    /// already gone, answers with [`Input::Disconnected`] (or [`Input::Evict`] for a session
    /// that no longer exists): a join whose socket closed while the join was in flight must
    /// not leave a participant that nobody will ever disconnect.
    Admitted {
        /// The session.
        session: SessionId,
        /// Its participant name.
        user: String,
    },
    /// The session is no longer a participant (left, evicted, or the room was closed).
    Removed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: Removal,
    },
}

/// Why a participant left its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// `leaveRoom`.
    Left,
    /// Evicted: grace period over, `closeSession`, or its session vanished.
    Evicted,
    /// The whole room was closed by an administrator: the session's `leaveRoom` now answers
    /// "room not found" (docs/protocol.md checklist 71).
    RoomClosed,
}

/// What the server knows of a session's room, as recorded from [`Output::Admitted`] and
/// [`Output::Removed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership<'a> {
    /// In no room.
    None,
    /// A participant of `room` under `user`.
    In {
        /// The room.
        room: &'a str,
        /// The participant name.
        user: &'a str,
    },
    /// Its room was closed by an administrator.
    Closed {
        /// The room that was closed.
        room: &'a str,
    },
}

/// Where a session's room request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the room of this name (created if it does not exist): a join.
    Join(String),
    /// To the room the session is a participant of.
    Member,
    /// Nowhere: answer at once with this error.
    Answer(RoomError),
}

/// Decides where `request` of `session` goes. The rules that need more than one room live
/// here and only here: one room per session, and what a session in no room is answered.
/// Everything else is decided by the [`Room`] the request reaches.
pub fn route(session: &SessionId, membership: Membership<'_>, request: &ClientRequest) -> Route {
    match (request, membership) {
        (ClientRequest::CustomRequest, _) => Route::Answer(RoomError::UnsupportedMethod),
        (
            ClientRequest::JoinRoom { room, .. },
            Membership::In {
                room: current,
                user,
            },
        ) => {
            if room == current {
                Route::Member // The room answers (104 or 101).
            } else {
                // DEVIATION (docs/protocol.md §3.1): one room per session.
                Route::Answer(RoomError::AlreadyJoined {
                    session: session.0.clone(),
                    room: current.to_owned(),
                    user: user.to_owned(),
                })
            }
        }
        (ClientRequest::JoinRoom { room, .. }, _) => Route::Join(room.clone()),
        (_, Membership::In { .. }) => Route::Member,
        (ClientRequest::LeaveRoom, Membership::Closed { room }) => {
            Route::Answer(RoomError::RoomNotFound {
                room: room.to_owned(),
            })
        }
        (_, Membership::None | Membership::Closed { .. }) => {
            Route::Answer(RoomError::NoParticipant {
                session: session.0.clone(),
            })
        }
    }
}

/// Server candidates held for one endpoint until its answer is out; more are dropped.
const MAX_HELD_CANDIDATES: usize = 64;
/// Early client candidates buffered per endpoint name; more are dropped (still answered).
const MAX_EARLY_CANDIDATES_PER_NAME: usize = 32;
/// Distinct endpoint names with early candidates per participant; more are dropped.
const MAX_EARLY_NAMES: usize = 32;
/// Requests queued behind one waiting for media, per participant; more are answered with
/// the error the original gave a timed-out media call.
const MAX_BACKLOG: usize = 256;

/// One Kurento room.
#[derive(Debug)]
pub struct Room {
    name: String,
    config: RoomConfig,
    endpoint_prefix: u64,
    next_endpoint: u32,
    /// In join order; rooms are small, so lookups are linear scans.
    participants: Vec<Participant>,
    /// Sessions whose backlog must be re-examined at the end of the current input.
    to_drain: Vec<SessionId>,
    out: VecDeque<Output>,
}

#[derive(Debug)]
struct Participant {
    session: SessionId,
    name: String,
    /// Set while the WebSocket is gone: evicted at this instant unless it reconnects.
    evict_at: Option<Instant>,
    publication: Option<Endpoint>,
    /// By the publisher's user name.
    subscriptions: BTreeMap<String, Endpoint>,
    /// The endpoint whose negotiation the participant's next request waits for.
    pending: Option<EndpointId>,
    backlog: VecDeque<(Id, ClientRequest)>,
    /// Client candidates for endpoints that do not exist yet, by endpoint name.
    early: BTreeMap<String, Vec<Candidate>>,
}

#[derive(Debug)]
struct Endpoint {
    id: EndpointId,
    /// Client candidates added so far (capped by `max_candidates_per_endpoint`).
    candidates: usize,
    /// `Some` until the reply carrying the answer has been emitted.
    negotiating: Option<Negotiation>,
}

#[derive(Debug)]
struct Negotiation {
    request: Id,
    held: Vec<Candidate>,
}

impl Participant {
    fn is_publishing(&self) -> bool {
        self.publication
            .as_ref()
            .is_some_and(|p| p.negotiating.is_none())
    }
}

impl Room {
    /// Creates an empty room. `endpoint_prefix` must be unique per room in a process; it
    /// forms the high 32 bits of every [`EndpointId`] this room allocates.
    pub fn new(name: impl Into<String>, endpoint_prefix: u32, config: RoomConfig) -> Self {
        Self {
            name: name.into(),
            config,
            endpoint_prefix: u64::from(endpoint_prefix) << 32,
            next_endpoint: 0,
            participants: Vec::new(),
            to_drain: Vec::new(),
            out: VecDeque::new(),
        }
    }

    /// The room name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when nobody is in the room (the driver then removes it).
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
    }

    /// Number of participants, including those in their reconnection grace period.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// True when `session` is a participant of this room.
    pub fn contains(&self, session: &SessionId) -> bool {
        self.index_of(session).is_some()
    }

    /// Applies one input. Never blocks and never reads the clock.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Request {
                session,
                id,
                request,
            } => self.handle_request(session, id, request),
            Input::Media(report) => self.handle_media(report),
            Input::Disconnected { session } => {
                let grace = self.config.reconnection_grace;
                if let Some(p) = self.participant_mut(&session) {
                    p.evict_at = Some(now + grace);
                }
            }
            Input::Reconnected { session } => {
                if let Some(p) = self.participant_mut(&session) {
                    p.evict_at = None;
                }
            }
            Input::Evict { session } => self.evict(&session),
            Input::Close => self.close(),
            Input::ForceUnpublish { session } => self.force_unpublish(&session),
        }
        self.drain_backlogs();
    }

    /// The next instant at which [`Room::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.participants.iter().filter_map(|p| p.evict_at).min()
    }

    /// Evicts every participant whose grace period ended at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<SessionId> = self
            .participants
            .iter()
            .filter(|p| p.evict_at.is_some_and(|t| t <= now))
            .map(|p| p.session.clone())
            .collect();
        for session in expired {
            self.evict(&session);
        }
        self.drain_backlogs();
    }

    /// The session owning `endpoint` (its publisher or one of its subscriptions), if any.
    pub fn endpoint_owner(&self, endpoint: EndpointId) -> Option<&SessionId> {
        let (index, _) = self.owner_of(endpoint)?;
        Some(&self.participants[index].session)
    }

    /// Who is in the room, in join order (for administrators).
    pub fn participants(&self) -> Vec<ParticipantView> {
        self.participants
            .iter()
            .map(|p| ParticipantView {
                session: p.session.clone(),
                name: p.name.clone(),
                publication: p.publication.as_ref().map(|e| match e.negotiating {
                    Some(_) => PublicationState::Negotiating,
                    None => PublicationState::Streaming,
                }),
                subscriptions: p.subscriptions.keys().cloned().collect(),
                connected: p.evict_at.is_none(),
            })
            .collect()
    }

    /// The next thing the outside world must do; drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn handle_request(&mut self, session: SessionId, id: Id, request: ClientRequest) {
        if let Some(p) = self.participant_mut(&session) {
            if p.pending.is_some() {
                if p.backlog.len() < MAX_BACKLOG {
                    p.backlog.push_back((id, request));
                } else {
                    let user = p.name.clone();
                    self.reply(&session, id, Err(RoomError::PublishSdp { user }));
                }
                return;
            }
        }
        self.execute(session, id, request);
    }

    fn execute(&mut self, session: SessionId, id: Id, request: ClientRequest) {
        if let ClientRequest::JoinRoom { user, .. } = request {
            return self.join(session, id, user);
        }
        if request == ClientRequest::CustomRequest {
            // [`route`] answers it before it reaches a room; a room that gets one anyway gives
            // route's answer rather than deciding a second time.
            if let Route::Answer(err) = route(&session, Membership::None, &request) {
                return self.reply(&session, id, Err(err));
            }
        }
        let Some(index) = self.index_of(&session) else {
            let err = RoomError::NoParticipant {
                session: session.0.clone(),
            };
            return self.reply(&session, id, Err(err));
        };
        match request {
            ClientRequest::PublishVideo {
                sdp_offer,
                do_loopback,
            } => self.publish(index, id, sdp_offer, do_loopback),
            ClientRequest::UnpublishVideo => self.unpublish(index, id),
            ClientRequest::ReceiveVideoFrom { sender, sdp_offer } => {
                self.subscribe(index, id, sender, sdp_offer)
            }
            ClientRequest::UnsubscribeFromVideo { sender } => self.unsubscribe(index, id, sender),
            ClientRequest::OnIceCandidate {
                endpoint_name,
                candidate,
            } => self.add_candidate(index, id, endpoint_name, candidate),
            ClientRequest::LeaveRoom => self.leave(index, id),
            ClientRequest::SendMessage {
                user_message,
                room_message,
                message,
            } => self.send_message(index, id, user_message, room_message, message),
            // Both are answered above, before the participant lookup; routing them back
            // through `execute` keeps this match total without a panic path.
            other @ (ClientRequest::JoinRoom { .. } | ClientRequest::CustomRequest) => {
                self.execute(session, id, other)
            }
        }
    }

    fn join(&mut self, session: SessionId, id: Id, user: String) {
        if let Some(index) = self.index_of(&session) {
            // DEVIATION (docs/protocol.md §3.1): a second join on the same session changes nothing.
            let me = &self.participants[index];
            let err = if me.name == user || self.index_of_name(&user).is_some() {
                RoomError::UserExists {
                    user,
                    room: self.name.clone(),
                }
            } else {
                RoomError::AlreadyJoined {
                    session: session.0.clone(),
                    room: self.name.clone(),
                    user: me.name.clone(),
                }
            };
            return self.reply(&session, id, Err(err));
        }
        if user.is_empty() {
            return self.reply(&session, id, Err(RoomError::EmptyUserName));
        }
        if self.index_of_name(&user).is_some() {
            let err = RoomError::UserExists {
                user,
                room: self.name.clone(),
            };
            return self.reply(&session, id, Err(err));
        }
        if self.participants.len() >= self.config.max_participants {
            let err = RoomError::RoomFull {
                room: self.name.clone(),
                max: self.config.max_participants,
            };
            return self.reply(&session, id, Err(err));
        }
        // Snapshot and insertion are one step: every present participant is either listed
        // in the result or (for later joiners) told by participantJoined, never both.
        let peers: Vec<Peer> = self
            .participants
            .iter()
            .map(|p| Peer {
                name: p.name.clone(),
                publishing: p.is_publishing(),
            })
            .collect();
        self.out.push_back(Output::Admitted {
            session: session.clone(),
            user: user.clone(),
        });
        self.notify_all_except(None, &Notification::ParticipantJoined { id: user.clone() });
        // The joiner's client subscribes to every publisher of its answer next.
        let expected: Vec<EndpointId> = self
            .participants
            .iter()
            .filter(|p| p.is_publishing())
            .filter_map(|p| p.publication.as_ref().map(|e| e.id))
            .collect();
        for publisher in expected {
            self.out
                .push_back(Output::Media(MediaCommand::ExpectSubscriber { publisher }));
        }
        self.participants.push(Participant {
            session: session.clone(),
            name: user,
            evict_at: None,
            publication: None,
            subscriptions: BTreeMap::new(),
            pending: None,
            backlog: VecDeque::new(),
            early: BTreeMap::new(),
        });
        self.reply(&session, id, Ok(Reply::Joined(peers)));
    }

    fn publish(&mut self, index: usize, id: Id, offer: String, loopback: bool) {
        if self.participants[index].publication.is_some() {
            let user = self.participants[index].name.clone();
            let session = self.participants[index].session.clone();
            return self.reply(&session, id, Err(RoomError::AlreadyPublishing { user }));
        }
        let session = self.participants[index].session.clone();
        if let Err(err) = self.check_offer(&offer) {
            return self.reply(&session, id, Err(err));
        }
        let publishers = self
            .participants
            .iter()
            .filter(|p| p.publication.is_some())
            .count();
        if publishers >= self.config.max_publishers {
            let err = RoomError::TooManyPublishers {
                room: self.name.clone(),
                max: self.config.max_publishers,
            };
            return self.reply(&session, id, Err(err));
        }
        let endpoint = self.allocate_endpoint();
        let p = &mut self.participants[index];
        let early = p.early.remove(&p.name).unwrap_or_default();
        p.publication = Some(Endpoint {
            id: endpoint,
            candidates: early.len(),
            negotiating: Some(Negotiation {
                request: id,
                held: Vec::new(),
            }),
        });
        p.pending = Some(endpoint);
        self.out.push_back(Output::Media(MediaCommand::Publish {
            endpoint,
            offer,
            loopback,
        }));
        for candidate in early {
            self.out
                .push_back(Output::Media(MediaCommand::AddCandidate {
                    endpoint,
                    candidate,
                }));
        }
    }

    fn unpublish(&mut self, index: usize, id: Id) {
        let p = &mut self.participants[index];
        let session = p.session.clone();
        let name = p.name.clone();
        if !p.is_publishing() {
            return self.reply(&session, id, Err(RoomError::NotStreaming { user: name }));
        }
        if let Some(publication) = p.publication.take() {
            self.release(publication.id);
        }
        self.cancel_subscriptions_to(&name);
        self.reply(&session, id, Ok(Reply::Empty));
        self.notify_all_except(
            Some(&session),
            &Notification::ParticipantUnpublished { name },
        );
    }

    fn subscribe(&mut self, index: usize, id: Id, sender: String, offer: String) {
        let session = self.participants[index].session.clone();
        let Some(sender_index) = self.index_of_name(&sender) else {
            let err = RoomError::SenderNotFound {
                sender,
                room: self.name.clone(),
            };
            return self.reply(&session, id, Err(err));
        };
        let publisher = match &self.participants[sender_index].publication {
            Some(Endpoint {
                id,
                negotiating: None,
                ..
            }) => *id,
            _ => {
                let err = RoomError::SenderNotStreaming {
                    sender,
                    room: self.name.clone(),
                };
                return self.reply(&session, id, Err(err));
            }
        };
        if sender_index == index {
            return self.reply(&session, id, Err(RoomError::LoopbackOnlyWhenPublishing));
        }
        if self.participants[index].subscriptions.contains_key(&sender) {
            let err = RoomError::SubscribeSdp {
                user: self.participants[index].name.clone(),
                sender,
            };
            return self.reply(&session, id, Err(err));
        }
        if let Err(err) = self.check_offer(&offer) {
            return self.reply(&session, id, Err(err));
        }
        let endpoint = self.allocate_endpoint();
        let p = &mut self.participants[index];
        let early = p.early.remove(&sender).unwrap_or_default();
        p.subscriptions.insert(
            sender,
            Endpoint {
                id: endpoint,
                candidates: early.len(),
                negotiating: Some(Negotiation {
                    request: id,
                    held: Vec::new(),
                }),
            },
        );
        p.pending = Some(endpoint);
        self.out.push_back(Output::Media(MediaCommand::Subscribe {
            endpoint,
            publisher,
            offer,
        }));
        for candidate in early {
            self.out
                .push_back(Output::Media(MediaCommand::AddCandidate {
                    endpoint,
                    candidate,
                }));
        }
    }

    fn unsubscribe(&mut self, index: usize, id: Id, sender: String) {
        let session = self.participants[index].session.clone();
        if self.index_of_name(&sender).is_none() {
            let err = RoomError::UnsubscribeSenderNotFound {
                sender,
                room: self.name.clone(),
            };
            return self.reply(&session, id, Err(err));
        }
        // Succeeds whether or not a subscription exists (docs/protocol.md §3.5).
        if let Some(sub) = self.participants[index].subscriptions.remove(&sender) {
            self.release(sub.id);
        }
        self.reply(&session, id, Ok(Reply::Empty));
    }

    fn add_candidate(&mut self, index: usize, id: Id, endpoint_name: String, c: Candidate) {
        let p = &mut self.participants[index];
        let session = p.session.clone();
        // The end-of-candidates marker some browsers send is accepted and ignored.
        if !c.candidate.is_empty() {
            let max = self.config.max_candidates_per_endpoint;
            let target = if endpoint_name == p.name {
                p.publication.as_mut()
            } else {
                p.subscriptions.get_mut(&endpoint_name)
            };
            match target {
                Some(ep) if ep.candidates >= max => {
                    let err = RoomError::TooManyCandidates {
                        endpoint: endpoint_name,
                        max,
                    };
                    return self.reply(&session, id, Err(err));
                }
                Some(ep) => {
                    ep.candidates += 1;
                    let endpoint = ep.id;
                    self.out
                        .push_back(Output::Media(MediaCommand::AddCandidate {
                            endpoint,
                            candidate: c,
                        }));
                }
                None => {
                    // Unknown or not-yet-created endpoints are never an error: buffer.
                    let room_for_name =
                        p.early.contains_key(&endpoint_name) || p.early.len() < MAX_EARLY_NAMES;
                    if room_for_name {
                        let list = p.early.entry(endpoint_name).or_default();
                        if list.len() < MAX_EARLY_CANDIDATES_PER_NAME {
                            list.push(c);
                        }
                    }
                }
            }
        }
        self.reply(&session, id, Ok(Reply::Empty));
    }

    fn leave(&mut self, index: usize, id: Id) {
        let session = self.participants[index].session.clone();
        let name = self.remove_participant(index, Removal::Left);
        self.notify_all_except(None, &Notification::ParticipantLeft { name });
        self.reply(&session, id, Ok(Reply::Empty));
        self.out.push_back(Output::CloseSession { session });
    }

    fn send_message(&mut self, index: usize, id: Id, user: String, room: String, message: String) {
        let p = &self.participants[index];
        let session = p.session.clone();
        if user != p.name {
            let err = RoomError::UserMessageMismatch { given: user };
            return self.reply(&session, id, Err(err));
        }
        if room != self.name {
            let err = RoomError::RoomMessageMismatch { given: room };
            return self.reply(&session, id, Err(err));
        }
        self.reply(&session, id, Ok(Reply::Empty));
        let notification = Notification::SendMessage {
            room,
            user,
            message,
        };
        self.notify_all_except(None, &notification);
    }

    fn evict(&mut self, session: &SessionId) {
        let Some(index) = self.index_of(session) else {
            return;
        };
        let name = self.remove_participant(index, Removal::Evicted);
        self.notify_all_except(None, &Notification::ParticipantLeft { name });
        self.notify(session, Notification::ParticipantEvicted);
    }

    fn force_unpublish(&mut self, session: &SessionId) {
        let Some(p) = self.participant_mut(session) else {
            return;
        };
        // Only a streaming publication: one still negotiating has a request waiting for its
        // answer, which must come (the administrator can retry once it has).
        if !p.is_publishing() {
            return;
        }
        let name = p.name.clone();
        if let Some(publication) = p.publication.take() {
            self.release(publication.id);
        }
        self.cancel_subscriptions_to(&name);
        self.notify_all_except(None, &Notification::ParticipantUnpublished { name });
    }

    fn close(&mut self) {
        let room = self.name.clone();
        while !self.participants.is_empty() {
            let session = self.participants[0].session.clone();
            self.remove_participant(0, Removal::RoomClosed);
            self.notify(&session, Notification::RoomClosed { room: room.clone() });
        }
    }

    fn handle_media(&mut self, report: MediaReport) {
        match report {
            MediaReport::Answered { endpoint, answer } => {
                self.finish_negotiation(endpoint, Ok(answer))
            }
            MediaReport::Rejected { endpoint, failure } => {
                self.finish_negotiation(endpoint, Err(failure))
            }
            MediaReport::LocalCandidate {
                endpoint,
                candidate,
            } => {
                let Some((index, endpoint_name)) = self.owner_of(endpoint) else {
                    return;
                };
                let p = &mut self.participants[index];
                let session = p.session.clone();
                let Some(ep) = p.endpoint_mut(endpoint) else {
                    return;
                };
                match &mut ep.negotiating {
                    Some(n) => {
                        if n.held.len() < MAX_HELD_CANDIDATES {
                            n.held.push(candidate);
                        }
                    }
                    None => self.notify(
                        &session,
                        Notification::IceCandidate {
                            endpoint_name,
                            candidate,
                        },
                    ),
                }
            }
            // Nothing changes in the room; the driver measures join → media with it.
            MediaReport::Connected { .. } => {}
            MediaReport::Failed {
                endpoint,
                description,
            } => {
                let Some((index, _)) = self.owner_of(endpoint) else {
                    return;
                };
                let session = self.participants[index].session.clone();
                let error = media_error_text("MEDIA_ERROR", &description, 304);
                self.notify(&session, Notification::MediaError { error });
            }
        }
    }

    fn finish_negotiation(
        &mut self,
        endpoint: EndpointId,
        outcome: Result<String, NegotiationFailure>,
    ) {
        let Some((index, endpoint_name)) = self.owner_of(endpoint) else {
            // Released while the media layer was still negotiating: make sure whatever it
            // built is torn down (releasing an unknown endpoint is harmless).
            if outcome.is_ok() {
                self.release(endpoint);
            }
            return;
        };
        let p = &mut self.participants[index];
        let session = p.session.clone();
        let user = p.name.clone();
        let is_publisher = p.publication.as_ref().is_some_and(|e| e.id == endpoint);
        let Some(negotiation) = p.endpoint_mut(endpoint).and_then(|e| e.negotiating.take()) else {
            return; // A duplicate report for a live endpoint.
        };
        if p.pending == Some(endpoint) {
            p.pending = None;
            self.to_drain.push(session.clone());
        }
        match outcome {
            Ok(answer) => {
                self.reply(&session, negotiation.request, Ok(Reply::SdpAnswer(answer)));
                if is_publisher {
                    let notification = Notification::ParticipantPublished { id: user };
                    self.notify_all_except(Some(&session), &notification);
                }
                for candidate in negotiation.held {
                    let notification = Notification::IceCandidate {
                        endpoint_name: endpoint_name.clone(),
                        candidate,
                    };
                    self.notify(&session, notification);
                }
            }
            Err(failure) => {
                let p = &mut self.participants[index];
                if is_publisher {
                    p.publication = None;
                } else {
                    p.subscriptions.remove(&endpoint_name);
                }
                self.release(endpoint);
                let err = match (failure, is_publisher) {
                    (NegotiationFailure::Unavailable, _) => RoomError::MediaUnavailable,
                    (NegotiationFailure::OfferRejected(detail), _) => {
                        RoomError::OfferRejected { detail }
                    }
                    (NegotiationFailure::EndpointCreation, true) => RoomError::PublisherEndpoint,
                    (NegotiationFailure::EndpointCreation, false) => RoomError::SubscriberEndpoint,
                    (NegotiationFailure::NoAnswer, true) => RoomError::PublishSdp { user },
                    (NegotiationFailure::NoAnswer | NegotiationFailure::PublisherGone, false)
                    | (NegotiationFailure::PublisherGone, true) => RoomError::SubscribeSdp {
                        user,
                        sender: endpoint_name,
                    },
                };
                self.reply(&session, negotiation.request, Err(err));
            }
        }
    }

    /// Removes a participant with everything it owns, and every other participant's
    /// subscription to it. Returns its name. Queued requests of the removed participant are
    /// dropped: its socket is gone or about to be closed.
    fn remove_participant(&mut self, index: usize, reason: Removal) -> String {
        let p = self.participants.remove(index);
        self.out.push_back(Output::Removed {
            session: p.session.clone(),
            reason,
        });
        if let Some(publication) = p.publication {
            self.release(publication.id);
        }
        for sub in p.subscriptions.into_values() {
            self.release(sub.id);
        }
        self.cancel_subscriptions_to(&p.name);
        p.name
    }

    /// Releases every subscription to `publisher`. A subscription still negotiating answers
    /// its request with 302 ("the publisher endpoint was released meanwhile").
    fn cancel_subscriptions_to(&mut self, publisher: &str) {
        let mut cancelled = Vec::new();
        for p in &mut self.participants {
            if let Some(sub) = p.subscriptions.remove(publisher) {
                if let Some(n) = sub.negotiating {
                    if p.pending == Some(sub.id) {
                        p.pending = None;
                        self.to_drain.push(p.session.clone());
                    }
                    cancelled.push((p.session.clone(), p.name.clone(), n.request));
                }
                self.out
                    .push_back(Output::Media(MediaCommand::Release { endpoint: sub.id }));
            }
        }
        for (session, user, request) in cancelled {
            let err = RoomError::SubscribeSdp {
                user,
                sender: publisher.to_owned(),
            };
            self.reply(&session, request, Err(err));
        }
    }

    /// Runs queued requests of participants whose blocking negotiation finished, until one
    /// of them blocks again.
    fn drain_backlogs(&mut self) {
        while let Some(session) = self.to_drain.pop() {
            while let Some((id, request)) = self
                .participant_mut(&session)
                .filter(|p| p.pending.is_none())
                .and_then(|p| p.backlog.pop_front())
            {
                self.execute(session.clone(), id, request);
            }
        }
    }

    /// The participant owning `endpoint`, and the endpoint name Kurento uses for it: the
    /// owner's own name for its publisher, the publisher's name for a subscription.
    fn owner_of(&self, endpoint: EndpointId) -> Option<(usize, String)> {
        self.participants.iter().enumerate().find_map(|(i, p)| {
            if p.publication.as_ref().is_some_and(|e| e.id == endpoint) {
                return Some((i, p.name.clone()));
            }
            p.subscriptions
                .iter()
                .find(|(_, e)| e.id == endpoint)
                .map(|(name, _)| (i, name.clone()))
        })
    }

    fn check_offer(&self, offer: &str) -> Result<(), RoomError> {
        if offer.len() > self.config.max_sdp_bytes {
            return Err(RoomError::OfferTooLarge {
                size: offer.len(),
                max: self.config.max_sdp_bytes,
            });
        }
        Ok(())
    }

    fn allocate_endpoint(&mut self) -> EndpointId {
        // 2^32 endpoints per room before reuse; a room that lives that long has long since
        // released the endpoints whose numbers come back.
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        EndpointId(self.endpoint_prefix | u64::from(self.next_endpoint))
    }

    fn release(&mut self, endpoint: EndpointId) {
        self.out
            .push_back(Output::Media(MediaCommand::Release { endpoint }));
    }

    fn reply(&mut self, session: &SessionId, id: Id, result: Result<Reply, RoomError>) {
        self.out.push_back(Output::Reply {
            session: session.clone(),
            id,
            result,
        });
    }

    fn notify(&mut self, session: &SessionId, notification: Notification) {
        self.out.push_back(Output::Notify {
            session: session.clone(),
            notification,
        });
    }

    fn notify_all_except(&mut self, except: Option<&SessionId>, notification: &Notification) {
        for p in &self.participants {
            if Some(&p.session) != except {
                self.out.push_back(Output::Notify {
                    session: p.session.clone(),
                    notification: notification.clone(),
                });
            }
        }
    }

    fn index_of(&self, session: &SessionId) -> Option<usize> {
        self.participants.iter().position(|p| &p.session == session)
    }

    fn index_of_name(&self, name: &str) -> Option<usize> {
        self.participants.iter().position(|p| p.name == name)
    }

    fn participant_mut(&mut self, session: &SessionId) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| &p.session == session)
    }
}

impl Participant {
    fn endpoint_mut(&mut self, endpoint: EndpointId) -> Option<&mut Endpoint> {
        if let Some(e) = self.publication.as_mut().filter(|e| e.id == endpoint) {
            return Some(e);
        }
        self.subscriptions.values_mut().find(|e| e.id == endpoint)
    }
}

#[cfg(test)]
mod tests;
