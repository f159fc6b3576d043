//! Proof in a real browser on the sharded media engine (`--media-engine sharded`, two shards,
//! every peer connection of a room on one UDP port): headless Chromium runs the call scenarios
//! of `tests/browser/run.mjs` against it, among them a 60-second call (`long-call`) in which
//! every 5-second window must carry video and audio both ways.
//!
//! Prerequisites (Debian's `chromium`, `npm ci` in tests/browser): `bash tests/browser/setup.sh`,
//! which `bash tests/run.sh` runs before `cargo test`.

mod common;

use std::time::Duration;

/// The scenarios on this engine: every call scenario of the suite.
const SCENARIOS: &str = "two-all-to-all,four-all-to-all,leave,unpublish-republish,re-entry-5x,\
                         late-joiner-and-screenshot,kurento-utils-compat,long-call";

/// The run must finish within this (the 60 s call plus the other scenarios; the harness
/// aborts itself at 290 s).
const BOUND: Duration = Duration::from_secs(330);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_calls_on_the_sharded_engine() {
    let config = roomd::Config {
        media_engine: roomd::MediaEngine::Sharded,
        media_shards: Some(2),
        rtc_udp_port: 0,
        ..roomd::Config::default()
    };
    let server = common::start_server_with(config).await;
    let url = format!("http://{}", server.addr);
    let screenshot =
        std::env::temp_dir().join(format!("roomd-sharded-call-{}.png", std::process::id()));
    let output = common::browser::run_harness(
        &[
            "--url",
            &url,
            "--only",
            SCENARIOS,
            "--screenshot",
            &screenshot.display().to_string(),
        ],
        &[("LONG_CALL_SECONDS", "60")],
        BOUND,
    )
    .await;
    let _ = std::fs::remove_file(&screenshot);
    assert!(
        output.contains("ok   long-call"),
        "the 60 s call did not pass; output:\n{output}"
    );
    drop(server);
}
