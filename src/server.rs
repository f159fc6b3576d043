//! HTTP surface: the Kurento WebSocket at `/room`, the room server's REST calls, the demo
//! app's `/getClientConfig` and `/iceServers`, the admin `/close`, `/health` and `/metrics`.
//!
//! Like the original's Spring `@RequestMapping`s, the REST calls answer any HTTP method and
//! add no CORS headers. The WebSocket needs no subprotocol; it accepts any `Origin` unless
//! `--allowed-origins` is set, and is refused (503/429) past the connection limits. Admin
//! actions are `POST` only, need `Authorization: Bearer <--admin-token>`, and are off (403)
//! when no token is configured: a page a visitor opens must never be able to close rooms.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::json;

use crate::connection::{run_connection, run_relayed_connection};
use crate::limits::Refusal;
use crate::AppState;

/// Connection generations, to tell successive sockets of one session apart.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/room", get(ws_upgrade))
        .route(crate::cluster::node::RELAY_PATH, get(relay_upgrade))
        .route("/getAllRooms", any(all_rooms))
        .route("/getUpdateSpeakerInterval", any(update_speaker_interval))
        .route("/getThresholdSpeaker", any(threshold_speaker))
        .route("/getClientConfig", any(client_config))
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::admin::routes())
        .merge(crate::ice_servers::routes());
    if state.config.metrics_bind.is_none() {
        router = router.route("/metrics", get(metrics));
    }
    if !state.config.no_demo {
        router = router.merge(crate::demo::routes());
    }
    router.with_state(state)
}

/// `/metrics` alone, for its own listener (`--metrics-bind`).
pub(crate) fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Read buffer preallocated per WebSocket: room messages are small (an SDP offer is 3–10 kB), and
/// a larger message is still read whole, over several reads. tungstenite's default of 128 KiB
/// per connection was 19 % of roomd's heap in a 1→25 massif profile (BENCHMARKS.md §4.1).
const WS_READ_BUFFER: usize = 16 * 1024;

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !origin_allowed(&state.config.allowed_origins, &headers) {
        state
            .counters
            .refused_origin
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, "websocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "Origin not allowed").into_response();
    }
    let permit = match state.connections.admit(peer.ip()) {
        Ok(permit) => permit,
        Err(Refusal::Total) => {
            state.counters.refused_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "websocket refused: connection limit reached");
            return (StatusCode::SERVICE_UNAVAILABLE, "Too many connections").into_response();
        }
        Err(Refusal::PerIp) => {
            state
                .counters
                .refused_per_ip
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "websocket refused: per-IP connection limit reached");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many connections from this address",
            )
                .into_response();
        }
    };
    let max = state.config.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _permit = permit; // Held for the connection's life.
            let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
            let (sink, stream) = socket.split();
            let tasks = state.lifecycle.tasks.clone();
            // Tracked: the drain waits for every WebSocket to close.
            tasks
                .track_future(run_connection(stream, sink, state, generation, Some(peer)))
                .await;
        })
}

/// `/cluster/relay`: another node relays one client of a room this node owns (or should own).
/// Served as an ordinary connection, except that a join there is never relayed again. Needs
/// cluster mode and the cluster secret (404 / 403 otherwise); the per-IP limit counts the
/// relayed client's own address.
async fn relay_upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(node): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(cluster) = &state.cluster else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = headers
        .get(crate::cluster::node::SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !crate::admin::constant_time_eq(given, cluster.secret().as_bytes()) {
        tracing::warn!(%node, "relay link refused: bad cluster secret");
        return (StatusCode::FORBIDDEN, "Bad cluster secret").into_response();
    }
    let peer = headers
        .get(crate::cluster::node::CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok())
        .unwrap_or(node);
    let session = headers
        .get(crate::cluster::node::SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(permit) = state.connections.admit(peer.ip()) else {
        state.counters.refused_total.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "Too many connections").into_response();
    };
    let max = state.config.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _permit = permit; // Held for the connection's life.
            let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
            let (sink, stream) = socket.split();
            let tasks = state.lifecycle.tasks.clone();
            tasks
                .track_future(run_relayed_connection(
                    stream, sink, state, generation, peer, session,
                ))
                .await;
        })
}

/// Whether the request's `Origin` may open `/room`: any when no list is configured; with a
/// list, only those (a request without `Origin`, i.e. not from a browser, is let through).
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)),
        Some(Err(_)) => false,
    }
}

/// The rooms with participants; in cluster mode every node's, except when another node asks
/// (then this node's own).
async fn all_rooms(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Json<Vec<String>> {
    let asked_by_a_node = headers.contains_key(crate::cluster::forward::FORWARDED_HEADER);
    match &state.cluster {
        Some(cluster) if !asked_by_a_node => Json(cluster.all_rooms().await),
        _ => Json(state.rooms.names()),
    }
}

async fn update_speaker_interval(State(state): State<Arc<AppState>>) -> Json<i64> {
    Json(state.config.update_speaker_interval)
}

async fn threshold_speaker(State(state): State<Arc<AppState>>) -> Json<i64> {
    Json(state.config.threshold_speaker)
}

async fn client_config(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "loopbackRemote": state.config.loopback_remote,
        "loopbackAndLocal": state.config.loopback_and_local,
        "filterRequestParam": state.config.filter_request_param,
    }))
}

/// Liveness: the process serves HTTP.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 while serving, 503 once draining (load balancers stop sending new clients;
/// existing calls go on).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready".into_response()
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "rooms": state.rooms.names().len(),
        "participants": state.rooms.participants(),
        "sessions": state.sessions.len(),
        "connections": state.connections.open(),
        "mediaEndpoints": state.room_ctx.bridge.live_endpoints(),
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let gauges = crate::metrics::RoomGauges {
        rooms: state.rooms.names().len(),
        participants: state.rooms.participants(),
        sessions: state.sessions.len(),
        connections: state.connections.open(),
        room_panics: state.rooms.panics.load(Ordering::Relaxed),
    };
    let mut body = crate::metrics::render(
        &gauges,
        &state.counters,
        &state.latencies,
        &state.room_ctx.bridge.media().stats(),
    );
    if let Some(cluster) = &state.cluster {
        crate::metrics::render_cluster(&mut body, cluster.rooms_owned(), cluster.stats());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}
