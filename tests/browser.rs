//! Proof in a real browser: starts roomd in-process on 127.0.0.1:0 (default, sharded media
//! engine) and runs the headless-Chromium suite of `tests/browser/run.mjs` against it, a
//! 60-second call checked every 5 s among its scenarios (the built-in demo page at `/`, the same page
//! over HTTPS/`wss://` from a second roomd with a throw-away certificate, and a page built on the
//! real kurento-jsonrpc + kurento-utils client libraries). Fails when the harness fails
//! or overruns its bound; the harness output is streamed to stderr as it runs.
//!
//! Prerequisites (Debian's `chromium`, `npm ci` in tests/browser): `bash tests/browser/setup.sh`,
//! which `bash tests/run.sh` runs before `cargo test`.

mod common;

use std::time::Duration;

/// The whole browser suite must finish within this (the harness aborts itself at 290 s).
const SUITE_BOUND: Duration = Duration::from_secs(330);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_end_to_end_suite() {
    // A UDP range of its own: a load generator or another roomd on this machine may hold the
    // default 40000-40999 range (the symptom is 303 "Unable to create publisher endpoint").
    let config = roomd::Config {
        rtc_port_min: 47_000,
        rtc_port_max: 47_999,
        ..roomd::Config::default()
    };
    let server = common::start_server_with(config).await;
    let url = format!("http://{}", server.addr);
    // The same page behind TLS (`--tls-cert`): a second roomd with a throw-away certificate, for
    // the `https-two-all-to-all` scenario (Chromium is told to accept the self-signed cert).
    let cert = common::tls::TestCert::new("browser");
    let tls_config = roomd::Config {
        rtc_port_min: 46_000,
        rtc_port_max: 46_999,
        ..cert.config()
    };
    let tls_server = common::start_server_with(tls_config).await;
    let tls_url = format!("https://localhost:{}", tls_server.addr.port());

    common::browser::run_harness(&["--url", &url, "--tls-url", &tls_url], &[], SUITE_BOUND).await;
    drop(server);
    drop(tls_server);
}
