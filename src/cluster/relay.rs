//! The client's side of a relayed connection: once a client's join goes to a room owned by
//! another node, its connection task hands the socket to [`run`], which moves the client's
//! JSON-RPC frames verbatim to the owner's `/cluster/relay` and the owner's frames verbatim
//! back. The owner serves the link as an ordinary connection, so its answers (SDP with its own
//! media address, its session id) reach the client unchanged and media goes to the owner.
//!
//! Owns only the transport of the link: `ping` is answered here and the ping watchdog runs
//! here (the client's heartbeat never crosses nodes); a link that ends without a close frame
//! (the owner died) gives the client `roomClosed` and a close.
//!
//! A link carries one membership: once the client's session is out of the owner's room
//! (`roomClosed`, `participantEvicted`, or its join refused there), a new `joinRoom` is not
//! sent over it but handed back to the connection task, which places it afresh (the room may
//! live elsewhere now, or be another room). The link is closed only after every request sent
//! over it has been answered, so that no answer is lost.

use std::borrow::Cow;
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use signaling::jsonrpc::{self, Decoded, Id};
use signaling::protocol::{self, Method, Notification, TransportRequest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Upstream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::node::{CLIENT_HEADER, SECRET_HEADER, SESSION_HEADER};
use super::{ClusterStats, LinkGauge};

/// An open link to a room's owner.
pub(crate) type Link = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest the link to an owner may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer of the link, as the server's per socket (`server.rs`): tungstenite zeroes the
/// free part of its read buffer at every read, and at its default of 128 KiB that memset was the
/// relay's largest single cost (11 % of its CPU per relayed request, BENCHMARKS.md §6).
const LINK_READ_BUFFER: usize = 16 * 1024;
/// kurento-jsonrpc's default heartbeat when the first ping carries no interval.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(20_000);
/// The watchdog closes a connection after this many intervals without a ping.
const MISSED_PINGS_TO_CLOSE: u32 = 3;
/// Frames of the client kept while a link is drained before a new placement; past it, further
/// requests are refused (answered with an error) until the placement happens.
const MAX_HELD_FOR_REJOIN: usize = 256;
/// JSON-RPC error code of a request refused at the transport level (as the connection task's).
const TRANSPORT_REFUSED: i64 = -32000;

/// Opens the link to `url`, presenting the cluster secret and the client's address.
pub(crate) async fn connect(
    url: &str,
    secret: &str,
    client: Option<SocketAddr>,
    session: Option<&str>,
) -> Result<Link, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad relay URL {url}: {e}"))?;
    let headers = request.headers_mut();
    let secret =
        HeaderValue::from_str(secret).map_err(|_| "cluster secret is not a header value")?;
    headers.insert(SECRET_HEADER, secret);
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(SESSION_HEADER, v);
    }
    if let Some(client) = client {
        if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
            headers.insert(CLIENT_HEADER, v);
        }
    }
    let config = WebSocketConfig::default().read_buffer_size(LINK_READ_BUFFER);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((link, _))) => Ok(link),
        Ok(Err(e)) => Err(format!("cannot reach the room's node at {url}: {e}")),
        Err(_) => Err(format!("the room's node at {url} did not answer in time")),
    }
}

/// How the relay ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// The client's socket ended (or its watchdog fired, or the server stops).
    Client,
    /// The owner closed the link with a close frame (leave, closeSession, its drain).
    Owner,
    /// The link broke without a close frame: the owner is gone.
    Lost,
    /// The client's session was out of the owner's room and the client joined again: the link
    /// is closed, and `frames` (the join and what the client sent after it) are the connection
    /// task's again, with the ping watchdog as it stands.
    Rejoin {
        frames: Vec<String>,
        watchdog: Option<(Duration, Instant)>,
    },
}

/// A frame of the client, as far as the relay needs to know it.
enum Inbound {
    /// A `ping`, with its pong.
    Ping(String),
    /// A `joinRoom` with this id.
    Join(Id),
    /// Any other request (answered by the owner).
    Request(Id),
    /// Not a request: nothing will answer it.
    Other,
}

/// What the relay must know of a frame of the owner; everything else is skipped unparsed.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(default)]
    id: Option<Id>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default)]
    result: Option<serde::de::IgnoredAny>,
}

/// Joins (or the reconnection's `connect`) awaiting their answer that are remembered; a client
/// pipelining more is judged by the first ones only.
const MAX_ENTRIES: usize = 16;

/// The `closeSession` that ends the owner's session before a link is given up for a rejoin
/// (its answer is not the client's: it is not forwarded).
const CLOSE_SESSION: &str = r#"{"jsonrpc":"2.0","method":"closeSession","params":{},"id":0}"#;

/// A client joining again out of the owner's room: its frames from the join on, kept until
/// every request sent over the link is answered and the owner has closed the session (each
/// step bounded by two heartbeats, `by`).
struct Rejoin {
    frames: Vec<String>,
    by: Instant,
    /// `closeSession` sent; waiting for the link to close.
    closing: bool,
}

impl Rejoin {
    fn end(self, watchdog: Option<(Duration, Instant)>) -> RelayEnd {
        RelayEnd::Rejoin {
            frames: self.frames,
            watchdog,
        }
    }
}

/// Whether the client's session is in the owner's room, as the frames on the link tell.
#[derive(Debug, Default)]
struct Membership {
    /// Requests whose success puts the session in the room (joins sent while out of it, the
    /// `connect` of a reconnection), not answered yet.
    entries: Vec<Id>,
    /// In the room (an entry request succeeded, and no `roomClosed` or eviction since).
    inside: bool,
    /// Requests sent over the link and not answered yet.
    outstanding: usize,
}

impl Membership {
    /// A request went to the owner; `entry`: one whose success puts the session in the room.
    fn sent(&mut self, id: Id, entry: bool) {
        self.outstanding += 1;
        if entry && !self.inside && self.entries.len() < MAX_ENTRIES {
            self.entries.push(id);
        }
    }

    /// A frame came from the owner.
    fn heard(&mut self, text: &str) {
        let Ok(peek) = serde_json::from_str::<Peek<'_>>(text) else {
            return;
        };
        match (peek.method.as_deref(), peek.id) {
            (None, Some(id)) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                if let Some(i) = self.entries.iter().position(|e| *e == id) {
                    self.entries.swap_remove(i);
                    self.inside |= peek.result.is_some();
                }
            }
            (Some("roomClosed" | "participantEvicted"), _) => self.inside = false,
            _ => {}
        }
    }

    /// Whether a join now must be placed afresh rather than sent over this link.
    fn rejoins(&self) -> bool {
        !self.inside && self.entries.is_empty()
    }
}

/// Moves frames between the client (`stream`/`sink`) and the owner (`link`), starting with
/// `first` (the join and any request queued behind it), until either side ends. The link is
/// pinged every `heartbeat`; when nothing at all came from the owner for two of them (a
/// machine gone without closing TCP, a hung process), the owner counts as lost.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<R, W, E>(
    stream: &mut R,
    sink: &mut W,
    link: Box<Link>,
    first: Vec<String>,
    room: &str,
    mut watchdog: Option<(Duration, Instant)>,
    write_timeout: Duration,
    heartbeat: Duration,
    stop: CancellationToken,
    stats: &ClusterStats,
) -> RelayEnd
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
    E: Display,
{
    let mut link = *link;
    let _open = LinkGauge::open(&stats.links_out);
    let mut membership = Membership::default();
    for (i, text) in first.into_iter().enumerate() {
        match classify(&text, &mut watchdog) {
            Inbound::Join(id) => membership.sent(id, true),
            // The `connect` of a reconnection.
            Inbound::Request(id) => membership.sent(id, i == 0),
            Inbound::Ping(_) | Inbound::Other => {}
        }
        ClusterStats::bump(&stats.frames_to_owner);
        if link.send(Upstream::text(text)).await.is_err() {
            return lost(sink, room, write_timeout, stats).await;
        }
    }
    let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut rejoin: Option<Rejoin> = None;
    loop {
        if let Some(r) = rejoin
            .as_mut()
            .filter(|r| !r.closing && membership.outstanding == 0)
        {
            // Every answer is in: the owner forgets the session at once (the client keeps its
            // id, which may come back to this owner on a new link), then closes the link.
            r.closing = true;
            r.by = Instant::now() + heartbeat * 2;
            if link.send(Upstream::text(CLOSE_SESSION)).await.is_err() {
                return rejoin.map_or(RelayEnd::Lost, |r| r.end(watchdog));
            }
        }
        let deadline = watchdog.map(|(_, d)| d);
        let drained_by = rejoin.as_ref().map(|r| r.by);
        tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() >= heartbeat * 2 {
                    tracing::warn!(room, "cluster: the room's node stopped answering the relay link");
                    return lost(sink, room, write_timeout, stats).await;
                }
                if link.send(Upstream::Ping(Default::default())).await.is_err() {
                    return lost(sink, room, write_timeout, stats).await;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let inbound = classify(text.as_str(), &mut watchdog);
                    if let Inbound::Ping(pong) = inbound {
                        if !write(sink, Message::Text(pong.into()), write_timeout).await {
                            let _ = link.close(None).await;
                            return RelayEnd::Client;
                        }
                        continue;
                    }
                    if let Some(Rejoin { frames, .. }) = &mut rejoin {
                        if frames.len() < MAX_HELD_FOR_REJOIN {
                            frames.push(text.as_str().to_owned());
                        } else if let Inbound::Join(id) | Inbound::Request(id) = inbound {
                            let refused = jsonrpc::encode_error(id, TRANSPORT_REFUSED, "Too many requests in flight", None);
                            if !write(sink, Message::Text(refused.into()), write_timeout).await {
                                let _ = link.close(None).await;
                                return RelayEnd::Client;
                            }
                        }
                        continue;
                    }
                    match inbound {
                        Inbound::Join(_) if membership.rejoins() => {
                            tracing::debug!(room, "cluster: the client joins again out of its room; placed afresh");
                            rejoin = Some(Rejoin {
                                frames: vec![text.as_str().to_owned()],
                                by: Instant::now() + heartbeat * 2,
                                closing: false,
                            });
                            continue;
                        }
                        Inbound::Join(id) => membership.sent(id, true),
                        Inbound::Request(id) => membership.sent(id, false),
                        Inbound::Ping(_) | Inbound::Other => {}
                    }
                    ClusterStats::bump(&stats.frames_to_owner);
                    if link.send(Upstream::text(text.as_str())).await.is_err() {
                        return lost(sink, room, write_timeout, stats).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = link.close(None).await;
                    return RelayEnd::Client;
                }
                Some(Ok(_)) => {}
            },
            frame = link.next() => match frame.inspect(|_| heard = Instant::now()) {
                Some(Ok(Upstream::Text(_))) if rejoin.as_ref().is_some_and(|r| r.closing) => {
                    // The answer to the relay's own closeSession: not the client's.
                }
                Some(Ok(Upstream::Text(text))) => {
                    membership.heard(text.as_str());
                    ClusterStats::bump(&stats.frames_to_client);
                    if !write(sink, Message::Text(text.as_str().into()), write_timeout).await {
                        let _ = link.close(None).await;
                        return RelayEnd::Client;
                    }
                }
                Some(Ok(Upstream::Close(_))) | None | Some(Err(_))
                    if rejoin.as_ref().is_some_and(|r| r.closing) =>
                {
                    return rejoin.map_or(RelayEnd::Lost, |r| r.end(watchdog));
                }
                Some(Ok(Upstream::Close(frame))) => {
                    let close = frame.map(|f| CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = write(sink, Message::Close(close), write_timeout).await;
                    return RelayEnd::Owner;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return lost(sink, room, write_timeout, stats).await,
            },
            () = sleep_until(drained_by) => {
                if rejoin.as_ref().is_some_and(|r| r.closing) {
                    let _ = link.close(None).await;
                    return rejoin.map_or(RelayEnd::Lost, |r| r.end(watchdog));
                }
                tracing::warn!(room, outstanding = membership.outstanding, "cluster: the room's node left requests unanswered; the client's join is placed afresh anyway");
                membership.outstanding = 0;
            }
            () = sleep_until(deadline) => {
                let reason = "Close for not receive ping from client";
                let _ = write(sink, close(1000, reason), write_timeout).await;
                let _ = link.close(None).await;
                return RelayEnd::Client;
            }
            () = stop.cancelled() => {
                let _ = write(sink, close(1001, "Server shutting down"), write_timeout).await;
                let _ = link.close(None).await;
                return RelayEnd::Client;
            }
        }
    }
}

/// The owner vanished: the client hears `roomClosed`, then its socket is closed.
async fn lost<W: Sink<Message> + Unpin>(
    sink: &mut W,
    room: &str,
    timeout: Duration,
    stats: &ClusterStats,
) -> RelayEnd {
    tracing::warn!(room, "cluster: relay link to the room's node lost");
    ClusterStats::bump(&stats.links_lost);
    let closed = Notification::RoomClosed {
        room: room.to_owned(),
    };
    let _ = write(sink, Message::Text(closed.encode().into()), timeout).await;
    let _ = write(sink, close(1011, "Room's node lost"), timeout).await;
    RelayEnd::Lost
}

/// What a frame of the client is; a `ping` is answered (arming or re-arming the watchdog).
fn classify(text: &str, watchdog: &mut Option<(Duration, Instant)>) -> Inbound {
    let Decoded::Request(request) = jsonrpc::decode(text) else {
        return Inbound::Other;
    };
    match request.method.as_str() {
        "joinRoom" => return Inbound::Join(request.id),
        "ping" => {}
        _ => return Inbound::Request(request.id),
    }
    let Ok(Method::Transport(TransportRequest::Ping { interval_ms })) =
        protocol::parse(&request.method, &request.params)
    else {
        return Inbound::Request(request.id);
    };
    let interval = match *watchdog {
        Some((interval, _)) => interval,
        None => interval_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_PING_INTERVAL),
    };
    *watchdog = Some((interval, Instant::now() + interval * MISSED_PINGS_TO_CLOSE));
    Inbound::Ping(jsonrpc::encode_pong(
        request.id,
        request.params.session_id(),
    ))
}

async fn write<W: Sink<Message> + Unpin>(sink: &mut W, msg: Message, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sink.send(msg)).await,
        Ok(Ok(()))
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: Id) -> String {
        jsonrpc::encode_result(id, serde_json::json!({"value": []}), "s")
    }

    fn refusal(id: Id) -> String {
        jsonrpc::encode_error(id, 204, "Cannot place the room", None)
    }

    /// In the room once the join succeeded, out of it on `roomClosed` or eviction; a refused
    /// join leaves it out; every answer settles one outstanding request.
    #[test]
    fn membership_follows_the_owners_frames() {
        let mut m = Membership::default();
        m.sent(1, true);
        assert!(!m.rejoins(), "the join is under way");
        m.sent(2, false);
        m.heard(&answer(1));
        assert!(m.inside && !m.rejoins());
        assert_eq!(m.outstanding, 1);
        m.heard(&Notification::RoomClosed { room: "r".into() }.encode());
        assert!(m.rejoins());
        m.heard(&refusal(2));
        assert_eq!(m.outstanding, 0);

        let mut m = Membership::default();
        m.sent(7, true);
        m.heard(&refusal(7));
        assert!(m.rejoins(), "a refused join leaves the session out");
        m.sent(8, true);
        m.sent(9, true);
        m.heard(&answer(9));
        assert!(m.inside, "a pipelined join that succeeded counts");
        m.heard(&jsonrpc::encode_notification(
            "participantEvicted",
            serde_json::json!({}),
        ));
        assert!(!m.inside);
        assert!(!m.rejoins(), "join 8 is still unanswered");
        m.heard("not json");
        m.heard(&refusal(8));
        assert!(m.rejoins());
        assert_eq!(m.outstanding, 0);
    }
}
