//! Runs the headless-Chromium harness `tests/browser/run.mjs` (Node.js + playwright-core,
//! Debian's chromium) against servers a test started, streaming its output to stderr as it
//! runs (past libtest's capture) and failing when it fails, overruns its bound or reports no
//! result line.
//!
//! Prerequisites: `bash tests/browser/setup.sh` (run by `bash tests/run.sh`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

/// The harness directory, after checking the prerequisites are installed.
pub fn harness_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists(),
        "browser test prerequisites missing ({chromium}, tests/browser/node_modules): \
         run `bash tests/browser/setup.sh` (or `bash tests/run.sh`)"
    );
    dir
}

/// Copies `from` line by line into `log`, and to this process's stderr with `echo` as prefix
/// when given (past libtest's capture, so results show up even when the test passes).
pub fn pump(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    echo: Option<&'static str>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(prefix) = echo {
                let _ = writeln!(std::io::stderr(), "{prefix}| {line}");
            }
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&(line + "\n"));
        }
    })
}

/// Runs `node run.mjs <args>` with `env` added, waits at most `bound`, and returns its output
/// once it exited successfully with a `N passed, 0 failed` line; panics otherwise.
pub async fn run_harness(args: &[&str], env: &[(&str, &str)], bound: Duration) -> String {
    try_run_harness(args, env, bound)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// [`run_harness`], with what went wrong (and the output) as the error instead of a panic.
pub async fn try_run_harness(
    args: &[&str],
    env: &[(&str, &str)],
    bound: Duration,
) -> Result<String, String> {
    let mut cmd = Command::new("node");
    cmd.arg("run.mjs").args(args);
    run_bounded(cmd, env, bound, "browser", None).await
}

/// [`run_harness`] inside the network namespace `ns` (roomd, when the harness starts it, and
/// Chromium run there too). The namespace, with every process still in it, is removed before
/// the output is judged: roomd inherits the harness's pipes, so only that ends the output.
pub async fn run_harness_in(
    ns: super::netns::Netns,
    args: &[&str],
    env: &[(&str, &str)],
    bound: Duration,
    echo: &'static str,
) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "node", "run.mjs"])
        .args(args);
    run_bounded(cmd, env, bound, echo, Some(ns))
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// Runs the harness command `cmd` in the harness directory with `env` added, its output echoed
/// with `echo` and collected, at most `bound`; then ends `ns` (if any) and judges the run.
async fn run_bounded(
    mut cmd: Command,
    env: &[(&str, &str)],
    bound: Duration,
    echo: &'static str,
    ns: Option<super::netns::Netns>,
) -> Result<String, String> {
    cmd.envs(env.iter().copied()).current_dir(harness_dir());
    let (status, output) = run_logged(
        cmd,
        "start the harness (are Node.js and, for a namespace, iproute2 installed?)",
        bound,
        echo,
        ns,
    )
    .await;
    match status {
        None => Err(format!(
            "browser harness exceeded {} s and was killed; output:\n{output}",
            bound.as_secs()
        )),
        Some(s) if !s.success() => Err(format!("browser harness failed ({s}); output:\n{output}")),
        Some(_) if !output.contains(" passed, 0 failed") => Err(format!(
            "browser harness reported no result line; output:\n{output}"
        )),
        Some(_) => Ok(output),
    }
}

/// Spawns `cmd` (`what`: the panic message if it cannot start) with its stdout and stderr
/// piped, echoes and collects their lines, and waits at most `bound` (`None`: killed then).
/// Then ends `ns` (if any) with every process still in it — which also ends the pipes of
/// whatever inherited them — and returns the exit status and the collected output.
pub async fn run_logged(
    mut cmd: Command,
    what: &str,
    bound: Duration,
    echo: &'static str,
    ns: Option<super::netns::Netns>,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect(what);
    let log = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let pumps = [
        pump(
            std::fs::File::from(stdout.into_owned_fd().expect("stdout pipe")),
            Arc::clone(&log),
            Some(echo),
        ),
        pump(
            std::fs::File::from(stderr.into_owned_fd().expect("stderr pipe")),
            Arc::clone(&log),
            Some(echo),
        ),
    ];
    // Bounded wait; servers of the test keep running on its runtime's workers meanwhile.
    let status = match tokio::time::timeout(bound, child.wait()).await {
        Ok(status) => Some(status.expect("wait for the child")),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    drop(ns);
    for p in pumps {
        let _ = p.join();
    }
    let output = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (status, output)
}
