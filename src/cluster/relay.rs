//! The client's side of a relayed connection: once a client's join goes to a room owned by
//! another node, its connection task hands the socket to [`run`], which moves the client's
//! JSON-RPC frames verbatim to the owner's `/cluster/relay` and the owner's frames verbatim
//! back. The owner serves the link as an ordinary connection, so its answers (SDP with its own
//! media address, its session id) reach the client unchanged and media goes to the owner.
//!
//! Owns only the transport of the link: `ping` is answered here and the ping watchdog runs
//! here (the client's heartbeat never crosses nodes); a link that ends without a close frame
//! (the owner died) gives the client `roomClosed` and a close.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use signaling::jsonrpc::{self, Decoded};
use signaling::protocol::{self, Method, Notification, TransportRequest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as Upstream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::node::{CLIENT_HEADER, SECRET_HEADER, SESSION_HEADER};

/// An open link to a room's owner.
pub(crate) type Link = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest the link to an owner may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// kurento-jsonrpc's default heartbeat when the first ping carries no interval.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(20_000);
/// The watchdog closes a connection after this many intervals without a ping.
const MISSED_PINGS_TO_CLOSE: u32 = 3;

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
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((link, _))) => {
            if let MaybeTlsStream::Plain(tcp) = link.get_ref() {
                let _ = tcp.set_nodelay(true);
            }
            Ok(link)
        }
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
) -> RelayEnd
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    W: Sink<Message> + Unpin,
    E: Display,
{
    let mut link = *link;
    for text in first {
        if link.send(Upstream::text(text)).await.is_err() {
            return lost(sink, room, write_timeout).await;
        }
    }
    let mut beat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        let deadline = watchdog.map(|(_, d)| d);
        tokio::select! {
            _ = beat.tick() => {
                if heard.elapsed() >= heartbeat * 2 {
                    tracing::warn!(room, "cluster: the room's node stopped answering the relay link");
                    return lost(sink, room, write_timeout).await;
                }
                if link.send(Upstream::Ping(Default::default())).await.is_err() {
                    return lost(sink, room, write_timeout).await;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(pong) = ping(text.as_str(), &mut watchdog) {
                        if !write(sink, Message::Text(pong.into()), write_timeout).await {
                            let _ = link.close(None).await;
                            return RelayEnd::Client;
                        }
                    } else if link.send(Upstream::text(text.as_str())).await.is_err() {
                        return lost(sink, room, write_timeout).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = link.close(None).await;
                    return RelayEnd::Client;
                }
                Some(Ok(_)) => {}
            },
            frame = link.next() => match frame.inspect(|_| heard = Instant::now()) {
                Some(Ok(Upstream::Text(text))) => {
                    if !write(sink, Message::Text(text.as_str().into()), write_timeout).await {
                        let _ = link.close(None).await;
                        return RelayEnd::Client;
                    }
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
                None | Some(Err(_)) => return lost(sink, room, write_timeout).await,
            },
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
async fn lost<W: Sink<Message> + Unpin>(sink: &mut W, room: &str, timeout: Duration) -> RelayEnd {
    tracing::warn!(room, "cluster: relay link to the room's node lost");
    let closed = Notification::RoomClosed {
        room: room.to_owned(),
    };
    let _ = write(sink, Message::Text(closed.encode().into()), timeout).await;
    let _ = write(sink, close(1011, "Room's node lost"), timeout).await;
    RelayEnd::Lost
}

/// The pong for a `ping` frame (arming or re-arming the watchdog), `None` for anything else.
fn ping(text: &str, watchdog: &mut Option<(Duration, Instant)>) -> Option<String> {
    let Decoded::Request(request) = jsonrpc::decode(text) else {
        return None;
    };
    let Ok(Method::Transport(TransportRequest::Ping { interval_ms })) =
        protocol::parse(&request.method, &request.params)
    else {
        return None;
    };
    let interval = match *watchdog {
        Some((interval, _)) => interval,
        None => interval_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_PING_INTERVAL),
    };
    *watchdog = Some((interval, Instant::now() + interval * MISSED_PINGS_TO_CLOSE));
    Some(jsonrpc::encode_pong(
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
