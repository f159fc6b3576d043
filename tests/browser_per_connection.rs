//! The call scenarios of `tests/browser/run.mjs` in headless Chromium on the former media
//! engine (`--media-engine per-connection`: one UDP port and one webrtc-rs peer connection per
//! publication and per subscription), which stays selectable until it is deleted.
//! `tests/browser.rs` runs the whole suite on the default, sharded engine.
//!
//! Prerequisites (Debian's `chromium`, `npm ci` in tests/browser): `bash tests/browser/setup.sh`,
//! which `bash tests/run.sh` runs before `cargo test`.

mod common;

use std::time::Duration;

/// The call scenarios (the long call runs on the default engine only).
const SCENARIOS: &str = "two-all-to-all,four-all-to-all,loopback,leave,unpublish-republish,\
                         re-entry-5x,late-joiner-and-screenshot,kurento-utils-compat";

/// The run must finish within this (the harness aborts itself at 290 s).
const BOUND: Duration = Duration::from_secs(330);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_on_the_per_connection_engine() {
    // A UDP range of its own (see tests/browser.rs).
    let config = roomd::Config {
        media_engine: roomd::MediaEngine::PerConnection,
        rtc_port_min: 45_000,
        rtc_port_max: 45_999,
        ..roomd::Config::default()
    };
    let server = common::start_server_with(config).await;
    let url = format!("http://{}", server.addr);
    let screenshot = std::env::temp_dir().join(format!(
        "roomd-per-connection-call-{}.png",
        std::process::id()
    ));
    let output = common::browser::run_harness(
        &[
            "--url",
            &url,
            "--only",
            SCENARIOS,
            "--screenshot",
            &screenshot.display().to_string(),
        ],
        &[],
        BOUND,
    )
    .await;
    let _ = std::fs::remove_file(&screenshot);
    assert!(
        output.contains("ok   kurento-utils-compat"),
        "the original client libraries did not pass; output:\n{output}"
    );
    drop(server);
}
