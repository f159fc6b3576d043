//! roomd: a drop-in replacement for the Kurento Room Server with an in-process WebRTC SFU.
//!
//! This is the composition root, the only code that sees both the `signaling` crate (pure
//! protocol and room logic) and the `media` crate (webrtc-rs). [`serve`] runs the whole server
//! on a listener so that `main`, the tests and the benches start it the same way.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub mod config;

mod bridge;
mod demo;
mod hub;
mod metrics;
mod rooms;
mod server;
mod session;
mod tls;

pub use config::Config;

/// Shared state of the server.
#[derive(Debug)]
struct AppState {
    config: Config,
    hub: Arc<hub::Hub>,
    rooms: Arc<rooms::Directory>,
    room_ctx: rooms::RoomCtx,
}

/// Serves `/room`, the REST calls and the media engine on `listener` until `shutdown`
/// completes.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Bad TLS files stop the start-up with a clear error, before anything is bound or spawned.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::server_config(cert, key)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        _ => None,
    };
    let media = media::MediaRouter::new(config.media());
    let hub = Arc::new(hub::Hub::default());
    let rooms = Arc::new(rooms::Directory::new(config.room()));
    let room_ctx = rooms::RoomCtx {
        hub: Arc::clone(&hub),
        bridge: Arc::new(bridge::Bridge::new(media)),
        directory: Arc::clone(&rooms),
    };
    let state = Arc::new(AppState {
        config,
        hub,
        rooms,
        room_ctx,
    });
    let router = server::router(Arc::clone(&state));
    let served = match tls {
        None => {
            tracing::info!(addr = %listener.local_addr()?, "roomd listening (http, ws)");
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            tracing::info!(addr = %listener.local_addr()?, "roomd listening (https, wss)");
            axum::serve(tls::TlsListener::new(listener, tls)?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    // Close every peer connection and return its port before the process goes away.
    state.room_ctx.bridge.media().release_all().await;
    served
}

/// Locks a std mutex, recovering the data if a panicking holder poisoned it. Every critical
/// section in this crate is a single map or field update, so the data stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
