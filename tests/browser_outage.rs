//! A total media outage in a real browser call: two headless-Chromium participants on the demo
//! page, then every UDP datagram to or from roomd's media ports is dropped for 3 s (an nftables
//! rule; signalling over TCP stays up), and the picture must come back within 2 s of the end of
//! the outage in both directions. The scenario itself is `media-outage` in
//! `tests/browser/run.mjs`, which reports the measured recovery times.
//!
//! Cutting media must not disturb anything else on the machine (other tests use the same
//! loopback), so roomd (the binary cargo built) and Chromium run inside a network namespace this
//! test creates, with loopback as its only interface; the rule lives and dies with the
//! namespace. The namespace, and every process still in it, is removed when the test ends,
//! also when it fails or panics; namespaces left by an earlier run that was killed are removed
//! at the start.
//!
//! Prerequisites (installed by `bash tests/browser/setup.sh`, which `bash tests/run.sh` runs):
//! root (network namespaces), iproute2, nftables, Debian's chromium and tests/browser's npm
//! packages.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The harness run must end within this (join ≈ 5 s, outage 3 s, observation 4 s, Chromium
/// start-up; the scenario aborts itself at 60 s).
const BOUND: Duration = Duration::from_secs(120);
const NETNS_PREFIX: &str = "roomd-outage-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picture_recovers_within_2_s_after_a_3_s_media_outage() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let missing: Vec<&str> = [
        (Path::new(&chromium).exists(), "chromium"),
        (
            dir.join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules",
        ),
        (
            Path::new("/usr/sbin/nft").exists() || Path::new("/sbin/nft").exists(),
            "nft",
        ),
    ]
    .into_iter()
    .filter_map(|(ok, what)| (!ok).then_some(what))
    .collect();
    assert!(
        missing.is_empty(),
        "prerequisites missing ({missing:?}): run `bash tests/browser/setup.sh` (or `bash tests/run.sh`)"
    );

    let ns = common::netns::Netns::create(NETNS_PREFIX);
    let started = Instant::now();
    let output = common::browser::run_harness_in(
        ns,
        &[
            "--bin",
            env!("CARGO_BIN_EXE_roomd"),
            "--only",
            "media-outage",
            "--netns",
        ],
        // roomd logs every send the cut refuses; the rest of its errors stay visible.
        &[("RUST_LOG", "error")],
        BOUND,
        "outage",
    )
    .await;
    let _ = writeln!(
        std::io::stderr(),
        "media outage test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.contains("ok   media-outage") && output.contains("1 passed, 0 failed"),
        "the outage scenario reported no success; output:\n{output}"
    );
}
