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
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// The harness run must end within this (join ≈ 5 s, outage 3 s, observation 4 s, Chromium
/// start-up; the scenario aborts itself at 60 s).
const BOUND: Duration = Duration::from_secs(120);
const NETNS_PREFIX: &str = "roomd-outage-";

/// Copies `from` line by line to stderr (past libtest's capture) and into `log`, until every
/// writer has closed it.
fn pump(
    from: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(std::io::stderr(), "outage| {line}");
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    })
}

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
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "node", "run.mjs", "--bin"])
        .arg(env!("CARGO_BIN_EXE_roomd"))
        .args(["--only", "media-outage", "--netns"])
        // roomd logs every send the cut refuses; the rest of its errors stay visible.
        .env("RUST_LOG", "error,webrtc::peer_connection::driver=off")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start `ip netns exec … node` (are iproute2 and Node.js installed?)");
    let log = Arc::new(Mutex::new(String::new()));
    let pumps = [
        pump(child.stdout.take().expect("piped stdout"), Arc::clone(&log)),
        pump(child.stderr.take().expect("piped stderr"), Arc::clone(&log)),
    ];

    let status = match tokio::time::timeout(BOUND, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the harness")),
        Err(_) => None,
    };
    // Whatever happened, nothing of this run survives it; the pipes close with the last
    // process holding them (roomd inherits the harness's), which ends the pumps.
    drop(child);
    drop(ns);
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    let output = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = writeln!(
        std::io::stderr(),
        "media outage test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match status {
        None => panic!(
            "the outage scenario exceeded {} s; output:\n{output}",
            BOUND.as_secs()
        ),
        Some(s) if !s.success() => panic!("the outage scenario failed ({s}); output:\n{output}"),
        Some(_) => {}
    }
    assert!(
        output.contains("ok   media-outage") && output.contains("1 passed, 0 failed"),
        "the outage scenario reported no success; output:\n{output}"
    );
}
