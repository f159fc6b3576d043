//! The admin API: JSON over HTTP under `/admin`, plus the legacy `/close?room=R` of the
//! Kurento demo. Everything here needs `Authorization: Bearer <--admin-token>` and is off (403)
//! without a configured token; actions that change something are `POST` only, so that a page a
//! visitor opens can never trigger them (an `<img src>` or a link sends a GET without the
//! header). Reads (`GET /admin/rooms`) need the token too: they show who is in which room.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | GET | `/admin/rooms` | every room: participants, their publication, subscriptions, connection |
//! | POST | `/admin/rooms/{room}/close` | `roomClosed` to everyone in the room |
//! | POST | `/admin/rooms/{room}/participants/{name}/evict` | `participantEvicted` to it, `participantLeft` to the others |
//! | POST | `/admin/rooms/{room}/participants/{name}/unpublish` | its publication released, `participantUnpublished` to everyone |
//! | POST | `/close?room=R` | the Kurento demo's close (same as `/admin/rooms/R/close`) |
//!
//! In cluster mode an action on a room owned by another node is forwarded to that node
//! (`cluster/forward.rs`) and its answer returned; `GET /admin/rooms` lists this node's rooms.
//!
//! Owns authentication of admin requests and their JSON; what each action does to a room is the
//! room state machine's (`Input::Close`, `Input::Evict`, `Input::ForceUnpublish`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use signaling::room::{Input, ParticipantView, PublicationState};

use crate::room_handle::RoomHandle;
use crate::AppState;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/close", any(legacy_close))
        .route("/admin/rooms", any(list_rooms))
        .route("/admin/rooms/{room}/close", any(close_room))
        .route(
            "/admin/rooms/{room}/participants/{name}/{action}",
            any(participant_action),
        )
}

/// The refusal to answer an admin request, if any: no token configured (403), a method other
/// than `allowed` (405), a missing or wrong bearer token (401). The token is compared in
/// constant time.
fn refusal(
    state: &AppState,
    allowed: Method,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response> {
    let token = state
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty());
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let refused = match token {
        None => (
            StatusCode::FORBIDDEN,
            "Admin API disabled (no --admin-token)",
        )
            .into_response(),
        Some(_) if *method != allowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, allowed.as_str())],
            "Method not allowed",
        )
            .into_response(),
        Some(token) if !constant_time_eq(given.as_bytes(), token.as_bytes()) => {
            (StatusCode::UNAUTHORIZED, "Bad or missing bearer token").into_response()
        }
        Some(_) => return None,
    };
    state.counters.admin_refused.fetch_add(1, Ordering::Relaxed);
    Some(refused)
}

/// Byte equality in time independent of where the inputs differ (secrets).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": what }))).into_response()
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": "room busy or closing; retry" })),
    )
        .into_response()
}

/// Cluster mode: the owner's answer to this same request when `room` lives on another node
/// (and the request was not itself forwarded); `None` to act here.
async fn on_owner(
    state: &AppState,
    room: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let cluster = state.cluster.as_ref()?;
    if live_room(state, room).is_some()
        || headers.contains_key(crate::cluster::forward::FORWARDED_HEADER)
    {
        return None;
    }
    let base = cluster.owner_elsewhere(room).await?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Some(
        match crate::cluster::forward::post(&base, path, auth).await {
            Ok((status, body)) => (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(why) => (StatusCode::BAD_GATEWAY, Json(json!({ "error": why }))).into_response(),
        },
    )
}

fn live_room(state: &AppState, name: &str) -> Option<RoomHandle> {
    state.rooms.get(name).filter(|r| !r.is_closed())
}

fn view_json(p: &ParticipantView) -> Value {
    json!({
        "name": p.name,
        "session": p.session.0,
        "publishing": match p.publication {
            None => Value::Null,
            Some(PublicationState::Negotiating) => json!("negotiating"),
            Some(PublicationState::Streaming) => json!("streaming"),
        },
        "subscriptions": p.subscriptions,
        "connected": p.connected,
    })
}

async fn list_rooms(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&state, Method::GET, &method, &headers) {
        return refused;
    }
    let mut rooms = Vec::new();
    for room in state.rooms.all() {
        // A room that ends meanwhile is simply left out.
        if let Some(participants) = room.participants().await {
            rooms.push(json!({
                "room": &*room.name,
                "participants": participants.iter().map(view_json).collect::<Vec<_>>(),
            }));
        }
    }
    Json(json!({ "rooms": rooms })).into_response()
}

async fn close(state: &AppState, name: &str) -> Response {
    let Some(room) = live_room(state, name) else {
        return not_found("no such room");
    };
    match room.tx.send(Input::Close).await {
        Ok(()) => Json(json!({ "closed": name })).into_response(),
        Err(_) => not_found("no such room"),
    }
}

async fn close_room(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Response {
    if let Some(refused) = refusal(&state, Method::POST, &method, &headers) {
        return refused;
    }
    if let Some(answer) = on_owner(&state, &room, &uri, &headers).await {
        return answer;
    }
    close(&state, &room).await
}

/// The Kurento demo's `/close?room=R`: 400 without `room`, 404 for an unknown room.
async fn legacy_close(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(refused) = refusal(&state, Method::POST, &method, &headers) {
        return refused;
    }
    let Some(name) = query.get("room") else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if let Some(answer) = on_owner(&state, name, &uri, &headers).await {
        return answer;
    }
    let resp = close(&state, name).await;
    if resp.status().is_success() {
        StatusCode::OK.into_response()
    } else {
        resp
    }
}

async fn participant_action(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((room, name, action)): Path<(String, String, String)>,
) -> Response {
    if let Some(refused) = refusal(&state, Method::POST, &method, &headers) {
        return refused;
    }
    if let Some(answer) = on_owner(&state, &room, &uri, &headers).await {
        return answer;
    }
    let Some(handle) = live_room(&state, &room) else {
        return not_found("no such room");
    };
    let Some(participants) = handle.participants().await else {
        return busy();
    };
    let Some(p) = participants.into_iter().find(|p| p.name == name) else {
        return not_found("no such participant");
    };
    let input = match action.as_str() {
        "evict" => Input::Evict { session: p.session },
        "unpublish" if p.publication == Some(PublicationState::Streaming) => {
            Input::ForceUnpublish { session: p.session }
        }
        "unpublish" => return not_found("participant is not streaming"),
        _ => return not_found("no such action (evict, unpublish)"),
    };
    match handle.tx.send(input).await {
        Ok(()) => {
            Json(json!({ "room": room, "participant": name, "done": action })).into_response()
        }
        Err(_) => not_found("no such room"),
    }
}
