//! The systemd readiness protocol (`sd_notify`, `Type=notify` units): one datagram of
//! `KEY=VALUE` lines to the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). roomd sends `READY=1` once HTTP and media are listening, `STOPPING=1`
//! when the drain starts, and `WATCHDOG=1` every half `WATCHDOG_USEC` when the unit asks for a
//! watchdog. Without `NOTIFY_SOCKET` (not under systemd, tests) every call does nothing.
//!
//! Written here rather than taken from the `sd-notify` crate: the protocol is one datagram send,
//! std's `UnixDatagram` reaches both path and abstract sockets, and a new dependency would be
//! larger than this file. Failures are logged at `debug` and otherwise ignored: readiness
//! reporting must never stop the server.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one.
pub(crate) fn send(state: &str) {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let target = target.to_string_lossy();
        match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), target.as_ref()),
        }
    });
    if let Err(e) = sent {
        tracing::debug!(error = %e, state, "sd_notify not sent");
    }
}

/// How often to send `WATCHDOG=1`: half the interval the unit set (`WatchdogSec=`), if it set
/// one for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    std::env::var_os(NOTIFY_SOCKET)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
