//! Proof in a real browser: starts roomd in-process on 127.0.0.1:0 and runs the headless-Chromium
//! suite of `tests/browser/run.mjs` against it (the built-in demo page at `/`, the same page
//! over HTTPS/`wss://` from a second roomd with a throw-away certificate, and a page built on the
//! real kurento-jsonrpc + kurento-utils client libraries). Fails when the harness fails
//! or overruns its bound; the harness output is streamed to stderr as it runs.
//!
//! Prerequisites (Debian's `chromium`, `npm ci` in tests/browser): `bash tests/browser/setup.sh`,
//! which `bash tests/run.sh` runs before `cargo test`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

/// The whole browser suite must finish within this (the harness aborts itself at 290 s).
const SUITE_BOUND: Duration = Duration::from_secs(330);

/// Copies `from` line by line to this process's stderr (bypassing libtest's capture, so the
/// scenario results show up even when the test passes) and into `log`.
fn pump(from: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = writeln!(std::io::stderr(), "browser| {line}");
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&(line + "\n"));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_end_to_end_suite() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists(),
        "browser test prerequisites missing ({chromium}, tests/browser/node_modules): \
         run `bash tests/browser/setup.sh` (or `bash tests/run.sh`)"
    );

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

    let mut child = Command::new("node")
        .arg("run.mjs")
        .arg("--url")
        .arg(&url)
        .arg("--tls-url")
        .arg(&tls_url)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node (is Node.js installed?)");
    let log = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let pumps = [
        pump(
            std::fs::File::from(stdout.into_owned_fd().expect("stdout pipe")),
            Arc::clone(&log),
        ),
        pump(
            std::fs::File::from(stderr.into_owned_fd().expect("stderr pipe")),
            Arc::clone(&log),
        ),
    ];

    // Bounded wait for the harness to exit; the server keeps running on this runtime's workers
    // meanwhile.
    let status = match tokio::time::timeout(SUITE_BOUND, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the harness")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    for p in pumps {
        let _ = p.join();
    }
    drop(server);
    drop(tls_server);

    let output = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match status {
        None => panic!(
            "browser suite exceeded {} s and was killed; output:\n{output}",
            SUITE_BOUND.as_secs()
        ),
        Some(s) if !s.success() => panic!("browser suite failed ({s}); output:\n{output}"),
        Some(_) => {}
    }
    assert!(
        output.contains(" passed, 0 failed"),
        "browser suite reported no result line; output:\n{output}"
    );
}
