//! The deployment files of `deploy/` are usable as shipped:
//!
//! - `deploy/roomd.service` has the settings an operator relies on (the `ExecStart` line, restart
//!   on failure, SIGTERM with a stop timeout longer than roomd's drain, a raised fd limit, an
//!   unprivileged user, the hardening options, no capability while the port is unprivileged),
//!   read from the file itself; and, where `systemd-analyze` is installed, `systemd-analyze
//!   verify` accepts it without a single warning — as shipped and with its commented options
//!   (own TLS through credentials, a port below 1024) switched on. Without `systemd-analyze` the
//!   verify step is skipped and says so on stderr; the settings are still checked.
//! - `deploy/roomd.toml` is a valid configuration: the real binary started with
//!   `--config deploy/roomd.toml` (address and port overridden by flags) serves `/readyz` and
//!   drains and exits 0 on SIGTERM, and `--print-config` gives back every value the file sets.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{http_request, WAIT};

const UNIT: &str = "deploy/roomd.service";
const CONFIG: &str = "deploy/roomd.toml";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The example configuration as a TOML table.
fn config() -> toml::Table {
    read(CONFIG)
        .parse()
        .unwrap_or_else(|e| panic!("{CONFIG} is not TOML: {e}"))
}

/// `(section, key, value)` of every setting of a unit file, in file order (a key may repeat).
fn unit_settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "no continuation lines: {line}");
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line}"));
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    out
}

/// Every value of `section.key`.
fn values<'a>(settings: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The single value of `section.key`.
fn value<'a>(settings: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    match values(settings, section, key).as_slice() {
        [v] => v,
        other => panic!("{UNIT}: expected one {section}.{key}, found {other:?}"),
    }
}

/// A systemd time span such as `330`, `330s`, `5min 30s` or `1h`, in seconds.
fn seconds(span: &str) -> u64 {
    span.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let n: u64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("time span {span}"));
            match &part[digits.len()..] {
                "" | "s" | "sec" => n,
                "m" | "min" => n * 60,
                "h" => n * 3600,
                unit => panic!("time unit {unit} in {span}"),
            }
        })
        .sum()
}

fn int(table: &toml::Table, section: &str, key: &str) -> i64 {
    table[section][key]
        .as_integer()
        .unwrap_or_else(|| panic!("{CONFIG}: {section}.{key} is a number"))
}

/// The unit as an operator relies on it, and consistent with the example configuration.
#[test]
fn the_unit_has_the_settings_an_operator_relies_on() {
    let unit = unit_settings(&read(UNIT));
    let config = config();
    let service = |key: &str| value(&unit, "Service", key);

    assert_eq!(
        service("ExecStart"),
        "/usr/local/bin/roomd --config /etc/roomd/roomd.toml"
    );
    assert_eq!(service("Restart"), "on-failure");
    assert_eq!(service("KillSignal"), "SIGTERM");
    // roomd speaks sd_notify (READY=1, STOPPING=1, WATCHDOG=1): see the notify test below.
    assert_eq!(service("Type"), "notify");
    assert!(
        seconds(service("WatchdogSec")) >= 10,
        "a watchdog, not a hair trigger"
    );
    // roomd drains on SIGTERM for up to the drain timeout, then flushes for up to 2 × 5 s
    // (src/drain.rs); a shorter stop timeout would SIGKILL calls still in progress.
    let drain = int(&config, "drain", "timeout_secs");
    let stop = seconds(service("TimeoutStopSec"));
    assert!(
        stop > u64::try_from(drain).expect("positive drain timeout") + 10,
        "TimeoutStopSec={stop}s must exceed the drain timeout {drain}s plus the flush bounds"
    );
    // One fd per WebSocket and one UDP socket per media shard (at most 1024 shards).
    let fds: i64 = service("LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    let shards = config["rtc"]
        .get("shards")
        .map_or(1024, |s| s.as_integer().expect("rtc.shards is a number"));
    assert!(fds > int(&config, "limits", "max_connections") + shards);

    let unprivileged =
        service("DynamicUser") == "yes" || !values(&unit, "Service", "User").is_empty();
    assert!(unprivileged, "runs as DynamicUser or a dedicated User");
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(service(key), expected, "{key}");
    }
    // The example listens on an unprivileged port: no capability at all.
    assert!(int(&config, "server", "port") >= 1024);
    assert!(values(&unit, "Service", "AmbientCapabilities").is_empty());
    assert_eq!(values(&unit, "Service", "CapabilityBoundingSet"), [""]);

    assert_eq!(value(&unit, "Install", "WantedBy"), "multi-user.target");
}

/// The shipped unit, and the same with its commented options switched on, with `ExecStart`
/// pointing at the binary just built (verify checks that the command exists).
fn unit_variants() -> Vec<(&'static str, String)> {
    let shipped = read(UNIT).replace(
        "ExecStart=/usr/local/bin/roomd ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_roomd")),
    );
    assert_ne!(shipped, read(UNIT), "ExecStart rewritten");
    let mut options = shipped.replace("\nCapabilityBoundingSet=\n", "\n");
    for commented in [
        "#CapabilityBoundingSet=",
        "#AmbientCapabilities=",
        "#LoadCredential=",
        "#Environment=ROOMD_TLS",
    ] {
        assert!(options.contains(commented), "{UNIT} documents {commented}");
        options = options.replace(commented, &commented[1..]);
    }
    vec![("as shipped", shipped), ("with its options on", options)]
}

/// `systemd-analyze verify` accepts the unit without any warning (skipped, and said so, where
/// systemd-analyze is not installed).
#[test]
fn systemd_analyze_verifies_the_unit() {
    match std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!(
                "systemd-analyze is not installed: `systemd-analyze verify {UNIT}` skipped \
                 (the unit's settings are checked by the_unit_has_the_settings_an_operator_relies_on)"
            );
            return;
        }
    }
    let dir = std::env::temp_dir().join(format!("roomd-deploy-{}", std::process::id()));
    for (what, text) in unit_variants() {
        std::fs::create_dir_all(&dir).expect("temp dir");
        // verify derives the unit name from the file name.
        let path = dir.join("roomd.service");
        std::fs::write(&path, text).expect("write unit");
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("run systemd-analyze verify");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "systemd-analyze verify of {UNIT} ({what}) complained:\n{report}"
        );
        eprintln!("systemd-analyze verify {UNIT} ({what}): ok");
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}

/// The real binary with the example configuration (no `ROOMD_*` variable of the test
/// environment may interfere).
fn roomd(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_roomd"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ROOMD_") {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--config").arg(repo_file(CONFIG)).args(args);
    cmd
}

/// Started with `--config deploy/roomd.toml` (only the addresses and ports overridden: the
/// file's media address is a documentation address this machine does not have), roomd becomes
/// ready, and on SIGTERM it drains and exits 0.
#[tokio::test]
async fn the_example_config_starts_roomd_and_it_becomes_ready() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut child = roomd(&[
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--media-ip",
        "127.0.0.1",
        "--rtc-udp-port",
        "0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("start roomd");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.expect("roomd output");
            panic!(
                "roomd exited ({status}) with {CONFIG}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "roomd never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http_request(addr, "GET", "/readyz", &[]).await,
        (200, "ready".to_owned())
    );

    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("an idle roomd exits promptly on SIGTERM")
        .expect("wait for roomd");
    assert_eq!(status.code(), Some(0));
}

/// The next datagram on the notify socket (bounded wait).
async fn notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("a notification in time")
        .expect("receive a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `Type=notify`: under a service manager (`NOTIFY_SOCKET`, here a datagram socket of the
/// test's) roomd says `READY=1` once HTTP and media listen — `/readyz` answers by then — and
/// `STOPPING=1` when SIGTERM starts the drain; with `WATCHDOG_USEC` it pings `WATCHDOG=1`.
#[tokio::test]
async fn roomd_notifies_systemd_ready_watchdog_and_stopping() {
    let dir = std::env::temp_dir().join(format!(
        "roomd-notify-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Remove(dir.clone());
    let path = dir.join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut child = roomd(&[
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--media-ip",
        "127.0.0.1",
        "--rtc-udp-port",
        "0",
    ])
    .env("NOTIFY_SOCKET", &path)
    // A 2 s watchdog: pings every second.
    .env("WATCHDOG_USEC", "2000000")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("start roomd");
    let next = || notification(&socket);
    // The watchdog may ping before READY: it starts with the server.
    let mut first = next().await;
    while first == "WATCHDOG=1" {
        first = next().await;
    }
    assert_eq!(first, "READY=1");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(
        http_request(addr, "GET", "/readyz", &[]).await,
        (200, "ready".to_owned()),
        "ready means serving"
    );
    assert_eq!(
        next().await,
        "WATCHDOG=1",
        "the watchdog pings while running"
    );
    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let mut after = next().await;
    while after == "WATCHDOG=1" {
        after = next().await;
    }
    assert_eq!(after, "STOPPING=1");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("an idle roomd exits promptly on SIGTERM")
        .expect("wait for roomd");
    assert_eq!(status.code(), Some(0));
}

/// `--print-config` with the example file gives back every value the file sets: no key of the
/// file is ignored or read differently.
#[tokio::test]
async fn print_config_gives_back_every_value_of_the_example() {
    let out = roomd(&["--print-config"])
        .output()
        .await
        .expect("run roomd --print-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8(out.stdout)
        .expect("utf-8")
        .parse()
        .expect("--print-config prints TOML");
    let file = config();
    let mut compared = 0;
    for (section, body) in &file {
        let body = body.as_table().expect("sections only");
        for (key, expected) in body {
            let got = printed
                .get(section)
                .and_then(|s| s.get(key))
                .unwrap_or_else(|| panic!("{section}.{key} missing from --print-config"));
            assert_eq!(got, expected, "{section}.{key}");
            compared += 1;
        }
    }
    assert!(
        compared >= 25,
        "the example sets the documented keys ({compared})"
    );
}
