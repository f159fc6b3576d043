//! Network namespaces of a test: created with loopback up, removed — with every process still
//! inside — when dropped (also when the test panics); namespaces left by an earlier run that was
//! killed are removed by [`Netns::create`]. Whatever a test does to networking inside (nftables
//! rules, blocked ports) lives and dies with its namespace and never touches the machine's
//! other traffic. Needs root and iproute2.

use std::path::Path;
use std::process::Stdio;

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
