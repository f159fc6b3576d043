//! roomd: a drop-in replacement for the Kurento Room Server with an in-process WebRTC SFU.
//!
//! This is the composition root, the only code that sees both the `signaling` crate (pure
//! protocol and room logic) and the `media` crate (webrtc-rs). [`serve`] runs the whole server
//! on a listener so that `main`, the tests and the benches start it the same way.

use std::future::Future;

use axum::serve::ListenerExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub mod config;
mod config_file;

mod admin;
mod bridge;
pub mod cluster;
mod connection;
mod demo;
mod drain;
mod ice_servers;
mod limits;
mod metrics;
mod notify;
mod room_handle;
mod rooms;
mod server;
mod sessions;
mod tls;

pub use config::Config;
pub use config_file::{ConfigError, CONFIG_TOML_ENV};

/// Shared state of the server.
#[derive(Debug)]
struct AppState {
    config: Config,
    sessions: Arc<sessions::Sessions>,
    rooms: Arc<rooms::Directory>,
    room_ctx: rooms::RoomCtx,
    connections: Arc<limits::ConnectionLimits>,
    counters: Arc<limits::Counters>,
    lifecycle: Arc<drain::Lifecycle>,
    latencies: Arc<metrics::Latencies>,
    /// Cluster mode (`--redis-url`); `None` on a single node.
    cluster: Option<Arc<cluster::node::Cluster>>,
}

impl AppState {
    /// Everything but the listener: the media engine, the registries, the limits.
    fn new(config: Config) -> std::io::Result<Self> {
        let media = media::MediaRouter::start(config.media())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start media: {e}")))?;
        let sessions = Arc::new(sessions::Sessions::default());
        let rooms = Arc::new(rooms::Directory::new(config.room(), config.max_rooms));
        let lifecycle = Arc::new(drain::Lifecycle::default());
        let latencies = Arc::new(metrics::Latencies::default());
        let counters = Arc::new(limits::Counters::default());
        let room_ctx = rooms::RoomCtx {
            sessions: Arc::clone(&sessions),
            bridge: Arc::new(bridge::Bridge::new(media)),
            directory: Arc::clone(&rooms),
            lifecycle: Arc::clone(&lifecycle),
            latencies: Arc::clone(&latencies),
            counters: Arc::clone(&counters),
        };
        let connections =
            limits::ConnectionLimits::new(config.max_connections, config.max_connections_per_ip);
        Ok(Self {
            config,
            sessions,
            rooms,
            room_ctx,
            connections,
            counters,
            lifecycle,
            latencies,
            cluster: None,
        })
    }
}

/// Serves `/room`, the REST calls and the media engine on `listener`. When `shutdown`
/// completes the server drains (see `drain.rs`: not ready, no new rooms, calls go on until
/// their rooms empty or the drain timeout, then `roomClosed`) and returns once done.
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
    cluster::node::Cluster::validate(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ice = ice_servers::IceServers::from_config(&config)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    announce(&config, listener.local_addr()?);
    ice.announce();
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr}: {e}"),
            )
        })?),
        None => None,
    };
    let http = listener.local_addr()?;
    let mut state = AppState::new(config)?;
    state.cluster = cluster::node::Cluster::start(
        &state.config,
        http,
        Arc::clone(&state.rooms),
        Arc::clone(&state.sessions),
        Arc::clone(&state.lifecycle),
    )
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let state = Arc::new(state);
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let router = server::metrics_router(Arc::clone(&state));
        let stop = state.lifecycle.stop.clone();
        state.lifecycle.tasks.spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let router = server::router(Arc::clone(&state))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    // The HTTP server stops accepting only after the drain: WebSockets of existing calls and
    // `/readyz` (503 meanwhile) stay served until then.
    let drained = {
        let state = Arc::clone(&state);
        async move {
            shutdown.await;
            drain::drain(&state).await;
        }
    };
    if let Some(every) = notify::watchdog_interval() {
        let stop = state.lifecycle.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => notify::send("WATCHDOG=1"),
                    () = stop.cancelled() => break,
                }
            }
        });
    }
    let served = match tls {
        None => {
            tracing::info!(addr = %listener.local_addr()?, "roomd listening (http, ws)");
            // HTTP is bound (by the caller) and the media engine's sockets by `AppState::new`.
            notify::send("READY=1");
            axum::serve(nodelay(listener), router)
                .with_graceful_shutdown(drained)
                .await
        }
        Some(tls) => {
            tracing::info!(addr = %listener.local_addr()?, "roomd listening (https, wss)");
            // The TLS listener sets TCP_NODELAY itself; tap_io only lends it `ConnectInfo`.
            let listener = tls::TlsListener::new(listener, tls)?.tap_io(|_| {});
            notify::send("READY=1");
            axum::serve(listener, router)
                .with_graceful_shutdown(drained)
                .await
        }
    };
    // Close every peer connection and return its port before the process goes away.
    state.room_ctx.bridge.media().release_all().await;
    served
}

/// The start-up lines an operator needs: version, where HTTP listens, what media announces —
/// and a warning when HTTP is reachable from other machines while media announces only a
/// loopback address (their calls would connect signaling but get no media).
fn announce(config: &Config, http: std::net::SocketAddr) {
    let announced = if config.public_ips.is_empty() {
        vec![config.media_ip]
    } else {
        config.public_ips.clone()
    };
    let shards = config.media().shards;
    let first = usize::from(config.rtc_udp_port);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %http,
        media_ip = %config.media_ip,
        announced = ?announced,
        shards,
        udp_ports = %if first == 0 {
            "chosen by the system".to_owned()
        } else {
            format!(
                "{first}-{} (UDP, and TCP for ICE-TCP)",
                first + shards.max(1) - 1
            )
        },
        "roomd starting"
    );
    if !http.ip().is_loopback() && announced.iter().all(std::net::IpAddr::is_loopback) {
        tracing::warn!(
            %http,
            announced = ?announced,
            "HTTP is reachable from other machines but media announces a loopback address: \
             remote clients will get no media; set --media-ip (and --public-ip behind NAT)"
        );
    }
}

/// The plain listener with TCP_NODELAY set on every accepted socket: a reply written right
/// after another frame must not wait for the client's delayed ACK (Nagle), which cost ~40 ms
/// per two-frame reply. (The TLS listener sets it in its own accept loop.)
fn nodelay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn set(tcp: &mut tokio::net::TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    }
    listener.tap_io(set)
}

/// Locks a std mutex, recovering the data if a panicking holder poisoned it. Every critical
/// section in this crate is a single map or field update, so the data stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    /// Defect: replies that follow another frame waited ~40 ms for a delayed ACK because the
    /// plain listener left Nagle on. Every socket it accepts must have TCP_NODELAY.
    #[tokio::test]
    async fn accepted_sockets_have_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let mut listener = super::nodelay(listener);
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().expect("read TCP_NODELAY"));
        drop(client.await.expect("connect task").expect("connected"));
    }
}
