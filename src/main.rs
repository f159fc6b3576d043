//! The `roomd` binary: parse the configuration, start logging, serve until Ctrl-C/SIGTERM;
//! the first signal drains (see the library's `serve`), a second one exits at once.

use std::io::IsTerminal;

use roomd::config::LogFormat;
use roomd::Config;
use tracing_subscriber::EnvFilter;

/// Without `RUST_LOG`: our own `info`, webrtc-rs's crates (`webrtc`, `rtc*`) only from `warn`;
/// they log every ICE check and every peer connection at `info`.
const DEFAULT_LOG_FILTER: &str = "info,webrtc=warn,rtc=warn";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let config = match Config::load(std::env::args_os()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("roomd: {e}");
            std::process::exit(2);
        }
    };
    if config.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        // No ANSI colour codes in files and journals: only when stderr is a terminal.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let listener = tokio::net::TcpListener::bind((config.bind, config.port)).await?;
    let first_signal = async {
        shutdown_signal().await;
        tracing::info!("draining; a second signal exits at once");
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting without waiting for the drain");
            std::process::exit(1);
        });
    };
    roomd::serve(config, listener, first_signal).await
}

/// Completes on Ctrl-C or SIGTERM (containers stop with SIGTERM).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
