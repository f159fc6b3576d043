//! Network namespaces of a test: created with loopback up, removed — with every process still
//! inside — when dropped (also when the test panics); namespaces left by an earlier run that was
//! killed are removed by [`Netns::create`]. Whatever a test does to networking inside (nftables
//! rules, blocked ports) lives and dies with its namespace and never touches the machine's
//! other traffic. Needs root and iproute2.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Runs a command to completion; its stdout, or a panic naming it.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace named `<prefix><test pid>`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Removes stale namespaces of `prefix` (their test process is gone), then creates this
    /// process's own with loopback up.
    pub fn create(prefix: &str) -> Netns {
        Netns::remove_stale(prefix);
        let name = format!("{prefix}{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Kills the processes inside `name` (only the test's own can be there) and deletes it.
    fn remove(name: &str) {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            if pid.chars().all(|c| c.is_ascii_digit()) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid])
                    .status();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", name])
            .status();
    }

    fn remove_stale(prefix: &str) {
        let list = run("ip", &["netns", "list"]);
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name.strip_prefix(prefix) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                eprintln!("removing stale network namespace {name}");
                Netns::remove(name);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Netns::remove(&self.name);
    }
}

/// Set in the copy of a test that [`rerun_inside`] runs inside a namespace (to its name).
pub const INSIDE: &str = "ROOMD_TEST_NETNS";

/// Whether this process is such a copy, already inside its own namespace.
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Runs test `name` of this test binary again, alone, inside a new namespace `<prefix><pid>`
/// (so that everything it starts — servers, clients, nftables rules — lives there and goes with
/// it), its output streamed to stderr with `echo` as prefix; panics unless it passed within
/// `bound`. The copy sees [`inside`] true.
pub async fn rerun_inside(prefix: &str, name: &str, bound: Duration, echo: &'static str) {
    let ns = Netns::create(prefix);
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, &ns.name);
    // The namespace goes (with whatever the copy left running in it) before the output is
    // judged.
    let (status, output) = super::browser::run_logged(
        cmd,
        "run the test inside the namespace (iproute2 installed?)",
        bound,
        echo,
        Some(ns),
    )
    .await;
    match status {
        None => panic!("{name} exceeded {} s in its namespace", bound.as_secs()),
        Some(s) if !s.success() => panic!("{name} failed in its namespace ({s})"),
        Some(_) => assert!(
            output.contains("test result: ok. 1 passed"),
            "{name} did not run in its namespace; output:\n{output}"
        ),
    }
}
