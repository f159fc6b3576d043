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
    // Media shards on ports the system chooses (`start_server_with`): a load generator or
    // another roomd on this machine may hold the default 40000.
    let server = common::start_server_with(roomd::Config::default()).await;
    let url = format!("http://{}", server.addr);
    // The same page behind TLS (`--tls-cert`): a second roomd with a throw-away certificate, for
    // the `https-two-all-to-all` scenario (Chromium is told to accept the self-signed cert).
    let cert = common::tls::TestCert::new("browser");
    let tls_server = common::start_server_with(cert.config()).await;
    let tls_url = format!("https://localhost:{}", tls_server.addr.port());

    common::browser::run_harness(&["--url", &url, "--tls-url", &tls_url], &[], SUITE_BOUND).await;
    drop(server);
    drop(tls_server);
}
