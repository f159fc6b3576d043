//! SRTP micro-benchmarks with the crypto roomd really uses: webrtc-rs's `rtc-srtp` 0.21.1
//! contexts over the ring provider (the `webrtc` 0.21 default, `crypto-ring`).
//!
//! Scenarios (criterion ids, throughput in packets):
//! - `srtp/protect/{gcm,cm}/{160,1200}`: encrypt one RTP packet (new sequence number each time);
//! - `srtp/unprotect/{gcm,cm}/{160,1200}`: decrypt one, replay window on as in the server.
//!
//! `gcm` = AEAD_AES_128_GCM, `cm` = AES_CM_128_HMAC_SHA1_80. Payload sizes are the RTP payload
//! (12-byte header on top): 160 ≈ Opus audio, 1200 ≈ a full video packet.
//!
//! Run: `CARGO_TARGET_DIR=target-bench cargo bench --bench srtp -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use media::fanout::synthetic_packet;
use rtc::shared::marshal::Marshal;

#[path = "common/srtp_ctx.rs"]
mod srtp_ctx;
use srtp_ctx::{context, KEY, PROFILES};

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

criterion_group!(benches, bench_protect, bench_unprotect);
criterion_main!(benches);
