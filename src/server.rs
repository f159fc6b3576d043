//! HTTP surface: the Kurento WebSocket at `/room`, the room server's REST calls, the demo
//! app's `/getClientConfig` and admin `/close`, and `/health`.
//!
//! Like the original's Spring `@RequestMapping`s, the REST calls answer any HTTP method and
//! add no CORS headers. The WebSocket accepts any `Origin` and no subprotocol is required.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;
use signaling::room::Input;

use crate::session::run_connection;
use crate::AppState;

/// Connection generations, to tell successive sockets of one session apart.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/room", get(ws_upgrade))
        .route("/getAllRooms", any(all_rooms))
        .route("/getUpdateSpeakerInterval", any(update_speaker_interval))
        .route("/getThresholdSpeaker", any(threshold_speaker))
        .route("/getClientConfig", any(client_config))
        .route("/close", any(close_room))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::demo::routes())
        .with_state(state)
}

/// Read buffer preallocated per WebSocket: room messages are small (an SDP offer is 3–10 kB), and
/// a larger message is still read whole, over several reads. tungstenite's default of 128 KiB
/// per connection was 19 % of roomd's heap in a 1→25 massif profile (BENCHMARKS.md §4.1).
const WS_READ_BUFFER: usize = 16 * 1024;

async fn ws_upgrade(ws: WebSocketUpgrade, State(state): State<Arc<AppState>>) -> Response {
    let max = state.config.max_message_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
            run_connection(socket, state, generation)
        })
}

async fn all_rooms(State(state): State<Arc<AppState>>) -> Json<Vec<String>> {
    Json(state.rooms.names())
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

/// The demo's admin close: `roomClosed` to every participant; 404 for an unknown room,
/// 400 without `room`.
async fn close_room(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(name) = query.get("room") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(room) = state.rooms.get(name).filter(|r| !r.is_closed()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match room.tx.send(Input::Close).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "rooms": state.rooms.names().len(),
        "participants": state.rooms.participants(),
        "sessions": state.hub.len(),
        "mediaEndpoints": state.room_ctx.bridge.live_endpoints(),
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let gauges = crate::metrics::RoomGauges {
        rooms: state.rooms.names().len(),
        participants: state.rooms.participants(),
        sessions: state.hub.len(),
    };
    let body = crate::metrics::render(&gauges, &state.room_ctx.bridge.media().stats());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}
