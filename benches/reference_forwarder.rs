//! The reference forwarder as a bench target: the physical ceiling of SFU forwarding on this
//! machine (recvmmsg ×32, one SRTP decrypt, per subscriber copy + SSRC rewrite + SRTP encrypt +
//! sendto), with its own paced generator and unread subscriber sockets on 127.0.0.1. Prints
//! out-pps per core of forwarder-thread CPU for each suite and fan-out.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo bench --bench reference_forwarder -- \
//!     [--suite gcm|cm|both] [--fanout 1,4,9,24] [--seconds 2] [--in-pps N]
//! ```
//!
//! Defaults: both suites, N = 1, 4, 9, 24, 2 s per point (about 20 s in all). Forwarder on
//! CPU 1, generator on CPU 0. Other arguments (criterion's, `--bench`) are ignored.

#[path = "common/refwd.rs"]
mod refwd;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let suites = arg("--suite")
        .and_then(|s| refwd::Suite::parse(&s))
        .unwrap_or_else(|| vec![refwd::Suite::Gcm, refwd::Suite::Cm]);
    let fanouts: Vec<usize> = arg("--fanout")
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 9, 24]);
    let secs: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let in_pps: Option<u64> = arg("--in-pps").and_then(|s| s.parse().ok());

    println!("reference forwarder: forwarder on CPU 1, generator on CPU 0, {PAYLOAD}-byte payloads, paced bursts of 4, subscribers are unread sockets", PAYLOAD = refwd::PAYLOAD);
    for &suite in &suites {
        for &n in &fanouts {
            let mut p = refwd::Params::paced(suite, n, Duration::from_secs_f64(secs));
            if let Some(r) = in_pps {
                p.in_pps = r;
            }
            match refwd::run(p) {
                Ok(r) => println!("{}", r.line()),
                Err(e) => println!("reference {} N={n}: failed: {e}", suite.name()),
            }
        }
    }
}
