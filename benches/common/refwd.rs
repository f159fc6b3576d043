//! The reference forwarder: the physical minimum of SFU forwarding on this machine, written
//! from scratch for the benchmarks (perf-anchors.md §2.4). Shared by
//! `benches/reference_forwarder.rs` and `benches/loadgen.rs` (which runs it in the same
//! invocation to report roomd as a ratio of it).
//!
//! - A generator thread (pinned to the "generator" core) sends fresh SRTP packets (new sequence
//!   number, fresh encryption, VP8 key-frame payload descriptor, 1200-byte payload) to the
//!   forwarder's socket on 127.0.0.1, paced in bursts of 4 at a fixed offered rate.
//! - The forwarder thread (pinned to the "server" core) does: `recvmmsg` ×32 with
//!   `MSG_WAITFORONE`; one SRTP decrypt per input packet; per subscriber a copy of the clear
//!   packet, an in-place SSRC rewrite, an SRTP encrypt and a `sendto` to that subscriber's
//!   socket. Subscribers are unread sockets on 127.0.0.1 (the kernel drops what overflows).
//! - CPU is the forwarder thread's own (`getrusage(RUSAGE_THREAD)`), over the measured window.

#![allow(dead_code)]

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

#[path = "srtp_ctx.rs"]
mod srtp_ctx;
use srtp_ctx::context;

const KEY_IN: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const KEY_OUT: [u8; 16] = [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
const BATCH: usize = 32;
const BURST: usize = 4;
pub(crate) const PAYLOAD: usize = 1200;

/// Which SRTP suite a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Suite {
    /// AEAD_AES_128_GCM
    Gcm,
    /// AES_CM_128_HMAC_SHA1_80
    Cm,
}

impl Suite {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Suite::Gcm => "gcm",
            Suite::Cm => "cm",
        }
    }
    pub(crate) fn profile(self) -> ProtectionProfile {
        match self {
            Suite::Gcm => ProtectionProfile::AeadAes128Gcm,
            Suite::Cm => ProtectionProfile::Aes128CmHmacSha1_80,
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Vec<Suite>> {
        match s {
            "gcm" => Some(vec![Suite::Gcm]),
            "cm" => Some(vec![Suite::Cm]),
            "both" => Some(vec![Suite::Gcm, Suite::Cm]),
            _ => None,
        }
    }
}

/// Pins the calling thread to `cpu` (ignored when the CPU does not exist).
pub(crate) fn pin_current_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// CPU seconds (user + system) of the calling thread.
pub(crate) fn thread_cpu() -> f64 {
    cpu_of(UsageWho::RUSAGE_THREAD)
}

/// CPU seconds (user + system) of this whole process.
pub(crate) fn process_cpu() -> f64 {
    cpu_of(UsageWho::RUSAGE_SELF)
}

fn cpu_of(who: UsageWho) -> f64 {
    match getrusage(who) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 * 1e-6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// Parameters of one reference run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) suite: Suite,
    pub(crate) fanout: usize,
    /// Offered input packets per second.
    pub(crate) in_pps: u64,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) server_cpu: usize,
    pub(crate) generator_cpu: usize,
}

impl Params {
    /// A paced load that keeps the forwarder well below saturation at any fan-out:
    /// about 150 k out-pps, at most 40 k in-pps.
    pub(crate) fn paced(suite: Suite, fanout: usize, measure: Duration) -> Self {
        Params {
            suite,
            fanout,
            in_pps: (150_000 / fanout as u64).clamp(2_000, 40_000),
            warmup: Duration::from_millis(300),
            measure,
            server_cpu: 1,
            generator_cpu: 0,
        }
    }
}

/// What one reference run measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report {
    pub(crate) params: Params,
    pub(crate) in_packets: u64,
    pub(crate) out_packets: u64,
    /// Forwarder thread CPU seconds over the window.
    pub(crate) cpu: f64,
    pub(crate) wall: f64,
    /// Packets the generator sent in the window.
    pub(crate) offered: u64,
}

impl Report {
    pub(crate) fn out_pps_per_core(&self) -> f64 {
        self.out_packets as f64 / self.cpu.max(1e-9)
    }
    pub(crate) fn us_per_out(&self) -> f64 {
        self.cpu * 1e6 / self.out_packets.max(1) as f64
    }
    pub(crate) fn load(&self) -> f64 {
        self.cpu / self.wall.max(1e-9)
    }
    pub(crate) fn line(&self) -> String {
        format!(
            "reference {:<3} N={:<3} in {:>6.0} pps  out {:>7.0} pps  forwarder CPU {:>5.1} %  {:>5.2} µs/out  => {:>7.0} out-pps per core  (input loss {:.2} %)",
            self.params.suite.name(),
            self.params.fanout,
            self.in_packets as f64 / self.wall,
            self.out_packets as f64 / self.wall,
            self.load() * 100.0,
            self.us_per_out(),
            self.out_pps_per_core(),
            100.0 * (1.0 - self.in_packets as f64 / self.offered.max(1) as f64).max(0.0),
        )
    }
}

/// One clear VP8-shaped RTP packet (key-frame payload descriptor), as bytes.
fn clear_packet(seq: u16, ssrc: u32) -> BytesMut {
    let mut payload = vec![0xA5u8; PAYLOAD];
    payload[0] = 0x10; // VP8 descriptor: S=1, PID=0
    payload[1] = 0x00; // VP8 header: P=0 (key frame)
    rtc::rtp::packet::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq).wrapping_mul(3000),
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
    .marshal()
    .expect("marshal")
}

/// Runs the generator and the forwarder for `warmup + measure` and reports the window.
pub(crate) fn run(p: Params) -> std::io::Result<Report> {
    let fwd_sock = UdpSocket::bind("127.0.0.1:0")?;
    fwd_sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let fwd_addr = fwd_sock.local_addr()?;
    let sinks: Vec<UdpSocket> = (0..p.fanout)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let sink_addrs: Vec<SocketAddr> = sinks
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let out_sock = UdpSocket::bind("127.0.0.1:0")?;

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let sent_in_window = Arc::new(AtomicU64::new(0));

    // Generator.
    let gen = {
        let stop = stop.clone();
        let measuring = measuring.clone();
        let sent_in_window = sent_in_window.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            pin_current_thread(p.generator_cpu);
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let mut ctx = context(p.suite.profile(), &KEY_IN, false);
            let mut clear = clear_packet(0, 0xAAAA_0001);
            let period = Duration::from_secs_f64(BURST as f64 / p.in_pps as f64);
            let mut seq = 0u16;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..BURST {
                    seq = seq.wrapping_add(1);
                    clear[2..4].copy_from_slice(&seq.to_be_bytes());
                    let ts = u32::from(seq).wrapping_mul(3000);
                    clear[4..8].copy_from_slice(&ts.to_be_bytes());
                    let wire = ctx.encrypt_rtp(&clear).expect("encrypt");
                    let _ = sock.send_to(&wire, fwd_addr);
                    if measuring.load(Ordering::Relaxed) {
                        sent_in_window.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(50) {
                    next = now; // fell behind: do not burst to catch up
                }
            }
            Ok(())
        })
    };

    // Forwarder (this thread's CPU is what is measured).
    let fwd = {
        let stop = stop.clone();
        let measuring = measuring.clone();
        std::thread::spawn(move || -> (u64, u64, f64, f64) {
            pin_current_thread(p.server_cpu);
            let mut dec = context(p.suite.profile(), &KEY_IN, true);
            let mut encs: Vec<Context> = (0..p.fanout)
                .map(|_| context(p.suite.profile(), &KEY_OUT, false))
                .collect();
            let mut bufs = vec![[0u8; 1500]; BATCH];
            let mut hdrs = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
            let mut copy: Vec<u8> = Vec::with_capacity(1500);
            let fd = fwd_sock.as_raw_fd();
            let (mut n_in, mut n_out) = (0u64, 0u64);
            let mut started: Option<(Instant, f64)> = None;
            let mut lens = [0usize; BATCH];
            loop {
                if started.is_none() && measuring.load(Ordering::Relaxed) {
                    started = Some((Instant::now(), thread_cpu()));
                    n_in = 0;
                    n_out = 0;
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let got = {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        fd,
                        &mut hdrs,
                        iovs.iter_mut(),
                        MsgFlags::MSG_WAITFORONE,
                        None,
                    ) {
                        Ok(res) => {
                            let mut k = 0;
                            for m in res {
                                lens[k] = m.bytes;
                                k += 1;
                            }
                            k
                        }
                        Err(_) => 0, // timeout (SO_RCVTIMEO): check the stop flag
                    }
                };
                for (buf, &len) in bufs.iter().zip(&lens[..got]) {
                    let wire = &buf[..len];
                    let mut rd = wire;
                    let Ok(header) = rtc::rtp::header::Header::unmarshal(&mut rd) else {
                        continue;
                    };
                    let Ok(clear) = dec.decrypt_rtp_with_header(wire, &header) else {
                        continue;
                    };
                    n_in += 1;
                    for (i, (enc, dst)) in encs.iter_mut().zip(&sink_addrs).enumerate() {
                        copy.clear();
                        copy.extend_from_slice(&clear);
                        copy[8..12].copy_from_slice(&(0xB000_0000u32 + i as u32).to_be_bytes());
                        if let Ok(out) = enc.encrypt_rtp(&copy) {
                            if out_sock.send_to(&out, dst).is_ok() {
                                n_out += 1;
                            }
                        }
                    }
                }
            }
            let (t0, c0) = started.unwrap_or((Instant::now(), thread_cpu()));
            let wall = t0.elapsed().as_secs_f64();
            let cpu = thread_cpu() - c0;
            drop(sinks);
            (n_in, n_out, cpu, wall)
        })
    };

    std::thread::sleep(p.warmup);
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(p.measure);
    stop.store(true, Ordering::Relaxed);
    let _ = gen.join();
    let (in_packets, out_packets, cpu, wall) = fwd.join().expect("forwarder thread");
    Ok(Report {
        params: p,
        in_packets,
        out_packets,
        cpu,
        wall,
        offered: sent_in_window.load(Ordering::Relaxed),
    })
}
