//! Proof in a real browser that a call works when UDP between the browser and roomd is blocked:
//! the `ice-tcp` scenario of `tests/browser/run.mjs` drops every UDP datagram to or from roomd's
//! media ports (an nftables table it creates before the call and deletes after it) and runs a
//! 2-person call in headless Chromium, asserting decoded media both ways and a selected TCP
//! candidate pair, towards roomd's passive ICE-TCP candidate, on every peer connection.
//!
//! The rule must touch nothing else on the machine, so the harness, the roomd binary cargo built
//! and Chromium run inside a network namespace this test creates (loopback only), removed with
//! every process in it when the test ends, passed, failed or panicked.
//!
//! Prerequisites (installed by `bash tests/browser/setup.sh`, which `bash tests/run.sh` runs):
//! root (network namespaces), iproute2, nftables, Debian's chromium and tests/browser's npm
//! packages.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The harness run must end within this (Chromium start-up, two joins, ICE over TCP after the
/// UDP checks fail; the scenario aborts itself at 60 s).
const BOUND: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_call_over_ice_tcp_when_udp_is_blocked() {
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .iter()
        .any(|p| Path::new(p).exists());
    assert!(
        nft,
        "nft missing: run `bash tests/browser/setup.sh` (or `bash tests/run.sh`)"
    );
    let ns = common::netns::Netns::create("roomd-icetcp-");
    let started = Instant::now();
    let output = common::browser::run_harness_in(
        ns,
        &[
            "--bin",
            env!("CARGO_BIN_EXE_roomd"),
            "--only",
            "ice-tcp",
            "--netns",
        ],
        // roomd logs every UDP send the rule refuses; its other errors stay visible.
        &[("RUST_LOG", "error")],
        BOUND,
        "ice-tcp",
    )
    .await;
    let _ = writeln!(
        std::io::stderr(),
        "ICE-TCP browser test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.contains("ok   ice-tcp") && output.contains("1 passed, 0 failed"),
        "the ice-tcp scenario reported no success; output:\n{output}"
    );
}
