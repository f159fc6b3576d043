//! The forwarding core without sockets, and RTP header rewriting, with a counting global
//! allocator that reports allocations per forwarded packet.
//!
//! Scenarios (criterion ids):
//! - `rtp/rewrite_in_place`: SSRC, sequence number, timestamp, payload type and the one-byte
//!   header extensions abs-send-time (id remapped, value rewritten) and transport-cc sequence
//!   (id remapped, value rewritten) on a 1200-byte packet held in a byte buffer. Throughput:
//!   packets.
//! - `rtp/rewrite_struct`: what roomd does per subscriber today (`media::subscriber`): clone the
//!   shared `rtp::Packet`, set SSRC and payload type, marshal it for the SRTP context.
//! - `fanout/{gcm,cm}/{1,4,9,24,99}`: roomd's path for one incoming packet: SRTP decrypt once
//!   and parse (`rtp::Packet`), wrap it in the shared `media::fanout::Packet` (`Arc`),
//!   `FanOut::forward` onto N bounded subscriber queues, then per subscriber: dequeue, copy,
//!   rewrite SSRC/PT, marshal, SRTP encrypt. Throughput: **out** packets (N per input packet).
//!
//! After the criterion groups the binary prints `allocations per forwarded packet` for each
//! scenario, counted by `stats_alloc` over a fixed number of packets in steady state.
//!
//! Run: `CARGO_TARGET_DIR=target-bench cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 3`

use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput};
use media::fanout::{synthetic_packet, FanOut, Packet, Slot, SlotId, SUBSCRIBER_QUEUE_CAPACITY};
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::sync::mpsc;

#[path = "common/srtp_ctx.rs"]
mod srtp_ctx;
use srtp_ctx::{context, KEY, PROFILES};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FANOUTS: [usize; 5] = [1, 4, 9, 24, 99];
const PAYLOAD: usize = 1200;
/// Protected input packets prepared per scenario (consecutive sequence numbers).
const RING: usize = 4096;

// ---------------------------------------------------------------------------------------------
// In-place header rewrite on a byte buffer.

const EXT_ABS_SEND_TIME_IN: u8 = 3;
const EXT_TWCC_IN: u8 = 5;

/// Per-subscriber rewrite parameters.
#[derive(Clone, Copy)]
struct Rewrite {
    ssrc: u32,
    pt: u8,
    seq_off: u16,
    ts_off: u32,
    abs_send_time_id: u8,
    twcc_id: u8,
}

/// A 1200-byte-payload RTP packet with a one-byte-form extension block carrying
/// abs-send-time (id 3, 3 bytes) and transport-cc (id 5, 2 bytes).
fn packet_with_extensions(seq: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + 12 + PAYLOAD);
    b.extend_from_slice(&[0x90, 96]); // V=2, X=1; PT 96
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    b.extend_from_slice(&[0xBE, 0xDE, 0, 2]); // two 32-bit words of extensions
    b.extend_from_slice(&[(EXT_ABS_SEND_TIME_IN << 4) | 2, 1, 2, 3]);
    b.extend_from_slice(&[(EXT_TWCC_IN << 4) | 1, 0, 7, 0]); // + 1 byte padding
    b.resize(b.len() + PAYLOAD, 0xA5);
    b
}

/// Rewrites SSRC, sequence number, timestamp, payload type and the two extensions in place.
/// Returns `false` for a malformed packet. No allocation.
#[inline]
fn rewrite_in_place(b: &mut [u8], rw: &Rewrite, abs_send_time: u32, twcc_seq: u16) -> bool {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return false;
    }
    b[1] = (b[1] & 0x80) | (rw.pt & 0x7F);
    let seq = u16::from_be_bytes([b[2], b[3]]).wrapping_add(rw.seq_off);
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]).wrapping_add(rw.ts_off);
    b[4..8].copy_from_slice(&ts.to_be_bytes());
    b[8..12].copy_from_slice(&rw.ssrc.to_be_bytes());
    if b[0] & 0x10 == 0 {
        return true;
    }
    let mut i = 12 + 4 * usize::from(b[0] & 0x0F);
    if b.len() < i + 4 || b[i] != 0xBE || b[i + 1] != 0xDE {
        return b.len() >= i + 4; // two-byte form: left as is in this bench
    }
    let end = i + 4 + 4 * usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
    if b.len() < end {
        return false;
    }
    i += 4;
    while i < end {
        let id = b[i] >> 4;
        let len = usize::from(b[i] & 0x0F) + 1;
        if id == 0 {
            i += 1; // padding
            continue;
        }
        if id == 15 || i + 1 + len > end {
            break;
        }
        match id {
            EXT_ABS_SEND_TIME_IN if len == 3 => {
                b[i] = (rw.abs_send_time_id << 4) | 2;
                b[i + 1..i + 4].copy_from_slice(&abs_send_time.to_be_bytes()[1..]);
            }
            EXT_TWCC_IN if len == 2 => {
                b[i] = (rw.twcc_id << 4) | 1;
                b[i + 1..i + 3].copy_from_slice(&twcc_seq.to_be_bytes());
            }
            _ => {}
        }
        i += 1 + len;
    }
    true
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    let rw = Rewrite {
        ssrc: 0xCAFE_BABE,
        pt: 100,
        seq_off: 1000,
        ts_off: 90_000,
        abs_send_time_id: 2,
        twcc_id: 4,
    };
    let mut buf = packet_with_extensions(1);
    let mut n = 0u32;
    g.bench_function("rewrite_in_place", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            black_box(rewrite_in_place(black_box(&mut buf), &rw, n, n as u16))
        })
    });
    let shared: Packet = Arc::new(synthetic_packet(1, 0x1234_5678, 96, PAYLOAD));
    g.bench_function("rewrite_struct", |b| {
        b.iter(|| {
            let mut p = (*shared).clone();
            p.header.ssrc = rw.ssrc;
            p.header.payload_type = rw.pt;
            black_box(p.marshal().expect("marshal"))
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// The fan-out core.

struct Core {
    ring: Vec<BytesMut>,
    next: usize,
    profile: ProtectionProfile,
    dec: Context,
    fan: FanOut,
    subs: Vec<(mpsc::Receiver<Packet>, Context, u32)>,
}

impl Core {
    fn new(profile: ProtectionProfile, n: usize) -> Self {
        let mut enc = context(profile, &KEY, false);
        let ring = (0..RING as u16)
            .map(|s| {
                let p = synthetic_packet(s, 0x1234_5678, 96, PAYLOAD);
                enc.encrypt_rtp(&p.marshal().expect("marshal"))
                    .expect("encrypt")
            })
            .collect();
        let mut fan = FanOut::new();
        let mut subs = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_CAPACITY);
            fan.add(Slot::new(SlotId(i as u64), tx));
            subs.push((rx, context(profile, &KEY, false), 0x1000_0000 + i as u32));
        }
        Core {
            ring,
            next: 0,
            profile,
            dec: context(profile, &KEY, true),
            fan,
            subs,
        }
    }

    /// Forwards one input packet to every subscriber; returns the out packets produced.
    #[inline]
    fn step(&mut self) -> usize {
        if self.next == RING {
            // Renew the replay window (sequence numbers restart); rare, amortised.
            self.dec = context(self.profile, &KEY, true);
            self.next = 0;
        }
        let wire = &self.ring[self.next];
        self.next += 1;
        let mut plain = self.dec.decrypt_rtp(wire).expect("decrypt");
        let pkt: Packet = Arc::new(rtc::rtp::packet::Packet::unmarshal(&mut plain).expect("parse"));
        self.fan.forward(&pkt);
        drop(pkt);
        let mut out = 0;
        for (rx, ctx, ssrc) in &mut self.subs {
            while let Ok(shared) = rx.try_recv() {
                let mut p = (*shared).clone();
                p.header.ssrc = *ssrc;
                p.header.payload_type = 100;
                let plain = p.marshal().expect("marshal");
                black_box(
                    ctx.encrypt_rtp_with_header(&plain, &p.header)
                        .expect("encrypt"),
                );
                out += 1;
            }
        }
        out
    }
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for (name, profile) in PROFILES {
        for n in FANOUTS {
            let mut core = Core::new(profile, n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        black_box(core.step());
                    }
                    t.elapsed()
                })
            });
        }
    }
    g.finish();
}

/// Allocations per forwarded packet in steady state, counted over a fixed number of packets.
fn report_allocations() {
    const PACKETS: usize = 2000;
    println!("\nallocations per forwarded (out) packet, steady state, {PACKETS} input packets:");
    // rewrite_in_place
    let rw = Rewrite {
        ssrc: 1,
        pt: 100,
        seq_off: 1,
        ts_off: 1,
        abs_send_time_id: 2,
        twcc_id: 4,
    };
    let mut buf = packet_with_extensions(1);
    let reg = Region::new(GLOBAL);
    for i in 0..PACKETS {
        black_box(rewrite_in_place(&mut buf, &rw, i as u32, i as u16));
    }
    let a = reg.change().allocations;
    println!(
        "  rtp/rewrite_in_place        {:>8.2}",
        a as f64 / PACKETS as f64
    );
    let shared: Packet = Arc::new(synthetic_packet(1, 0x1234_5678, 96, PAYLOAD));
    let reg = Region::new(GLOBAL);
    for _ in 0..PACKETS {
        let mut p = (*shared).clone();
        p.header.ssrc = 7;
        black_box(p.marshal().expect("marshal"));
    }
    let a = reg.change().allocations;
    println!(
        "  rtp/rewrite_struct          {:>8.2}",
        a as f64 / PACKETS as f64
    );
    for (name, profile) in PROFILES {
        for n in FANOUTS {
            let mut core = Core::new(profile, n);
            for _ in 0..64 {
                core.step(); // warm: per-SSRC state, queue blocks
            }
            let reg = Region::new(GLOBAL);
            let mut out = 0;
            for _ in 0..PACKETS {
                out += core.step();
            }
            let a = reg.change().allocations;
            println!(
                "  fanout/{name}/{n:<3}              {:>8.2}  ({:.1} per input packet)",
                a as f64 / out as f64,
                a as f64 / PACKETS as f64
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_rewrite(&mut c);
    bench_fanout(&mut c);
    c.final_summary();
    // `cargo bench --no-run` / `--list` runs do not get here with work to do; skip on --list.
    if !std::env::args().any(|a| a == "--list") {
        report_allocations();
    }
}
