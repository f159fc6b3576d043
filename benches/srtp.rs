//! SRTP micro-benchmarks with the crypto roomd really uses: webrtc-rs's `rtc-srtp` 0.21.1
//! contexts over the ring provider (the `webrtc` 0.21 default, `crypto-ring`).
//!
//! Scenarios (criterion ids, throughput in packets):
//! - `srtp/protect/{gcm,cm}/{160,1200}`: encrypt one RTP packet (new sequence number each time);
//! - `srtp/unprotect/{gcm,cm}/{160,1200}`: decrypt one, replay window on as in the server.
//!
//! - `srtp/seal/{rtc_srtp,in_place}-{gcm,cm}/{160,1200}`: the engine's fast path
//!   (`media::engine::srtp::SrtpSealer::seal`: copy the clear packet into a reused buffer, set the
//!   sequence number, encrypt in place, tag into the tail room) against rtc-srtp's
//!   `encrypt_rtp` on the same packets (which copies into a new `BytesMut`).
//!
//! `gcm` = AEAD_AES_128_GCM, `cm` = AES_CM_128_HMAC_SHA1_80. Payload sizes are the RTP payload
//! (12-byte header on top): 160 ≈ Opus audio, 1200 ≈ a full video packet.
//!
//! The binary installs a counting global allocator (`stats_alloc`, as `tests/engine_alloc.rs`) and,
//! after the `srtp/seal` group, prints allocations per packet of both paths in steady state, then
//! both paths timed in alternating batches (thread CPU time; robust to a loaded machine).
//! Every allocation therefore costs a few atomic increments more than with the plain system
//! allocator (rtc-srtp's encrypt and decrypt allocate once per packet).
//!
//! Run: `CARGO_TARGET_DIR=target-bench cargo bench --bench srtp -- --warm-up-time 1 --measurement-time 3`

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use media::engine::srtp::{MasterKey, SrtpProfile, SrtpSealer};
use media::testing::synthetic_packet;
use rtc::shared::marshal::Marshal;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[path = "common/srtp_ctx.rs"]
mod srtp_ctx;
use srtp_ctx::{context, KEY, PROFILES};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn plain(seq: u16, payload_len: usize) -> BytesMut {
    synthetic_packet(seq, 0x1234_5678, 96, payload_len)
        .marshal()
        .expect("marshal")
}

fn bench_protect(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp/protect");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in PROFILES {
        for len in [160usize, 1200] {
            let mut ctx = context(profile, &KEY, false);
            let mut pkt = plain(0, len);
            let mut seq = 0u16;
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    black_box(ctx.encrypt_rtp(black_box(&pkt)).expect("encrypt"))
                })
            });
        }
    }
    g.finish();
}

fn bench_unprotect(c: &mut Criterion) {
    const RING: usize = 4096;
    let mut g = c.benchmark_group("srtp/unprotect");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in PROFILES {
        for len in [160usize, 1200] {
            // A ring of consecutive protected packets; the decrypt context (replay window on,
            // as in the server) is renewed each time the ring is exhausted, outside the timing.
            let mut enc = context(profile, &KEY, false);
            let ring: Vec<BytesMut> = (0..RING as u16)
                .map(|s| enc.encrypt_rtp(&plain(s, len)).expect("encrypt"))
                .collect();
            let mut dec = context(profile, &KEY, true);
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        if i == RING {
                            dec = context(profile, &KEY, true);
                            i = 0;
                        }
                        let n = left.min((RING - i) as u64) as usize;
                        let t = Instant::now();
                        for p in &ring[i..i + n] {
                            black_box(dec.decrypt_rtp(black_box(p)).expect("decrypt"));
                        }
                        total += t.elapsed();
                        i += n;
                        left -= n as u64;
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

/// The fast path's profile for a `PROFILES` entry.
fn fast_profile(name: &str) -> SrtpProfile {
    match name {
        "gcm" => SrtpProfile::AeadAes128Gcm,
        _ => SrtpProfile::Aes128CmHmacSha1_80,
    }
}

fn sealer(profile: SrtpProfile) -> SrtpSealer {
    let master = MasterKey::new(&KEY, &[0x5A; 14][..profile.salt_len()]).expect("key");
    let provider = rtc::crypto::default_provider().expect("ring provider");
    SrtpSealer::new(profile, &master, provider.crypto()).expect("sealer")
}

/// In-place seal vs rtc-srtp's encrypt, then allocations per packet of each.
fn bench_seal(c: &mut Criterion) {
    const COUNTED: u16 = 10_000;
    let mut g = c.benchmark_group("srtp/seal");
    g.throughput(Throughput::Elements(1));
    let mut allocations = Vec::new();
    let mut interleaved = Vec::new();
    for (name, profile) in PROFILES {
        for len in [160usize, 1200] {
            let clear = plain(0, len);
            let n = clear.len();

            let mut ctx = context(profile, &KEY, false);
            let mut pkt = clear.clone();
            let mut seq = 0u16;
            let mut rtc_step = || {
                seq = seq.wrapping_add(1);
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                black_box(ctx.encrypt_rtp(black_box(&pkt)).expect("encrypt"));
            };
            g.bench_function(BenchmarkId::new(format!("rtc_srtp-{name}"), len), |b| {
                b.iter(&mut rtc_step)
            });

            let fast = fast_profile(name);
            let mut sealer = sealer(fast);
            let mut buf = vec![0u8; n + fast.overhead()];
            let mut seq = 0u16;
            let mut fast_step = || {
                seq = seq.wrapping_add(1);
                buf[..n].copy_from_slice(black_box(&clear[..]));
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                black_box(sealer.seal(&mut buf, n, 1024).expect("seal"));
            };
            g.bench_function(BenchmarkId::new(format!("in_place-{name}"), len), |b| {
                b.iter(&mut fast_step)
            });

            // Steady state (both SSRC states exist by now): count allocations.
            let reg = Region::new(GLOBAL);
            for _ in 0..COUNTED {
                rtc_step();
            }
            let rtc_allocs = reg.change().allocations;
            let reg = Region::new(GLOBAL);
            for _ in 0..COUNTED {
                fast_step();
            }
            let fast_allocs = reg.change().allocations;
            allocations.push((name, len, rtc_allocs, fast_allocs));

            // The same two paths in alternating batches, timed in thread CPU time: a loaded
            // machine shifts criterion's sequential figures by tens of percent between runs,
            // while both halves of an alternating pair see the same conditions.
            let mut per_packet = [Vec::new(), Vec::new()];
            for _ in 0..AB_ROUNDS {
                let t = thread_cpu();
                for _ in 0..AB_BATCH {
                    rtc_step();
                }
                per_packet[0].push((thread_cpu() - t).as_nanos() as f64 / AB_BATCH as f64);
                let t = thread_cpu();
                for _ in 0..AB_BATCH {
                    fast_step();
                }
                per_packet[1].push((thread_cpu() - t).as_nanos() as f64 / AB_BATCH as f64);
            }
            interleaved.push((name, len, per_packet.map(quartiles)));
        }
    }
    g.finish();
    println!("allocations per packet (steady state, {COUNTED} packets):");
    for (name, len, rtc_allocs, fast_allocs) in allocations {
        println!(
            "  srtp/seal {name}/{len:<5} rtc_srtp {:>5.2}   in_place {:>5.2}",
            rtc_allocs as f64 / f64::from(COUNTED),
            fast_allocs as f64 / f64::from(COUNTED)
        );
        assert_eq!(fast_allocs, 0, "the in-place seal allocated");
    }
    println!(
        "interleaved A/B, thread CPU ns per packet, quartiles [q1 median q3] of {AB_ROUNDS} \
         alternating batches of {AB_BATCH}:"
    );
    for (name, len, [rtc, fast]) in interleaved {
        println!(
            "  srtp/seal {name}/{len:<5} rtc_srtp [{:.0} {:.0} {:.0}]   in_place [{:.0} {:.0} {:.0}]   \
             in_place/rtc_srtp {:.2}",
            rtc[0],
            rtc[1],
            rtc[2],
            fast[0],
            fast[1],
            fast[2],
            fast[1] / rtc[1]
        );
    }
}

const AB_ROUNDS: usize = 300;
const AB_BATCH: usize = 500;

fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

criterion_group!(benches, bench_protect, bench_unprotect, bench_seal);
criterion_main!(benches);
