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

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;

const KEY: [u8; 16] = [
    96, 180, 31, 4, 119, 137, 128, 252, 75, 194, 252, 44, 63, 56, 61, 55,
];
const SALT: [u8; 14] = [247, 26, 49, 94, 99, 29, 79, 94, 5, 111, 252, 216, 62, 195];

/// Replay window the server's decrypt contexts use (webrtc-rs default).
const REPLAY_WINDOW: usize = 64;

fn context(profile: ProtectionProfile, replay: bool) -> Context {
    let provider = rtc::crypto::default_provider().expect("ring provider");
    let salt = &SALT[..profile.salt_len()];
    Context::new(
        &KEY,
        salt,
        profile,
        replay.then(|| srtp_replay_protection(REPLAY_WINDOW)),
        None,
        provider.crypto(),
    )
    .expect("srtp context")
}

fn plain(seq: u16, payload_len: usize) -> BytesMut {
    rtc::rtp::packet::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq).wrapping_mul(3000),
            ssrc: 0x1234_5678,
            marker: true,
            ..Default::default()
        },
        payload: Bytes::from(vec![0xA5u8; payload_len]),
    }
    .marshal()
    .expect("marshal")
}

fn profiles() -> [(&'static str, ProtectionProfile); 2] {
    [
        ("gcm", ProtectionProfile::AeadAes128Gcm),
        ("cm", ProtectionProfile::Aes128CmHmacSha1_80),
    ]
}

fn bench_protect(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp/protect");
    g.throughput(Throughput::Elements(1));
    for (name, profile) in profiles() {
        for len in [160usize, 1200] {
            let mut ctx = context(profile, false);
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
    for (name, profile) in profiles() {
        for len in [160usize, 1200] {
            // A ring of consecutive protected packets; the decrypt context (replay window on,
            // as in the server) is renewed each time the ring is exhausted, outside the timing.
            let mut enc = context(profile, false);
            let ring: Vec<BytesMut> = (0..RING as u16)
                .map(|s| enc.encrypt_rtp(&plain(s, len)).expect("encrypt"))
                .collect();
            let mut dec = context(profile, true);
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        if i == RING {
                            dec = context(profile, true);
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
