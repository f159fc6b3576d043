//! The built-in demo page at `/`: a video-call client in plain HTML/CSS/JS, embedded in the
//! binary (no CDN, no build step). It speaks the Kurento room protocol like KurentoRoom.js, so
//! `cargo run --release` and two tabs on http://localhost:8080/ make a call.

use std::sync::Arc;

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::AppState;

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
const STYLE_CSS: &str = include_str!("demo/style.css");
const FAVICON_SVG: &str = include_str!("demo/favicon.svg");

/// The demo's routes: `/` (and `/index.html`) and its assets under `/demo/`.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/index.html",
            get(|| asset("text/html; charset=utf-8", INDEX_HTML)),
        )
        .route(
            "/demo/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/demo/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route(
            "/demo/favicon.svg",
            get(|| asset("image/svg+xml", FAVICON_SVG)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // no-cache: a browser revalidates, so an upgraded server never runs with a stale page.
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
}
