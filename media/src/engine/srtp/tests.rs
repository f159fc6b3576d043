//! Tests of the SRTP fast path against rtc-srtp itself and against a real sans-IO rtc client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::crypto::{default_provider, BlockCipherAlgorithm, RTCCryptoProvider};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::srtp::context::Context;

use super::*;
use crate::engine::wire::Ssrc;

fn ring() -> Arc<dyn RTCCryptoProvider> {
    default_provider().expect("ring provider")
}

/// A master key and salt for `profile`, different for each `seed`.
fn master(profile: SrtpProfile, seed: u8) -> MasterKey {
    let key: Vec<u8> = (0..profile.key_len() as u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(seed))
        .collect();
    let salt: Vec<u8> = (0..profile.salt_len() as u8)
        .map(|i| i.wrapping_mul(11) ^ seed.wrapping_mul(3))
        .collect();
    MasterKey::new(&key, &salt).expect("lengths")
}

fn rtc_context(profile: SrtpProfile, key: &MasterKey) -> Context {
    Context::new(
        key.key(),
        key.salt(),
        profile.to_rtc(),
        None,
        None,
        ring().crypto(),
    )
    .expect("rtc-srtp context")
}

/// A clear RTP packet; `shape` varies the header: 0 plain, 1 two CSRCs + marker, 2 a one-byte
/// header extension block (two elements and a padding byte), 3 RTP padding, 4 a two-byte header
/// extension block.
fn rtp(seq: u16, ssrc: u32, pt: u8, payload_len: usize, shape: u8) -> Vec<u8> {
    let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&u32::from(seq).wrapping_mul(3000).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    match shape {
        1 => {
            p[0] |= 2;
            p[1] |= 0x80;
            p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        }
        2 => {
            p[0] |= 0x10;
            p.extend_from_slice(&[0xBE, 0xDE, 0, 2, 0x12, 9, 8, 7, 0x21, 6, 5, 0]);
        }
        4 => {
            p[0] |= 0x10;
            p.extend_from_slice(&[0x10, 0x00, 0, 2, 3, 2, 0xAA, 0xBB, 5, 1, 0xCC, 0]);
        }
        _ => {}
    }
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    if shape == 3 {
        p[0] |= 0x20;
        p.extend_from_slice(&[0, 0, 0, 4]);
    }
    p
}

/// Seals `clear` with `sealer` in a buffer with exactly the tail room it needs.
fn seal(sealer: &mut SrtpSealer, clear: &[u8]) -> Result<Vec<u8>, SealError> {
    seal_in(sealer, clear, MAX_WINDOW)
}

/// [`seal`] with the SSRC's window (read on its first packet).
fn seal_in(sealer: &mut SrtpSealer, clear: &[u8], window: u16) -> Result<Vec<u8>, SealError> {
    let mut buf = clear.to_vec();
    buf.resize(clear.len() + sealer.overhead(), 0);
    let n = sealer.seal(&mut buf, clear.len(), window)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reseals `clear` (a retransmission) with `sealer`.
fn reseal(sealer: &mut SrtpSealer, clear: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut buf = clear.to_vec();
    buf.resize(clear.len() + sealer.overhead(), 0xEE);
    match sealer.reseal(&mut buf, clear.len()) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(e) => {
            assert!(
                buf.iter().all(|&b| b == 0) || !matches!(e, SealError::ResealMismatch { .. }),
                "a mismatching reseal left its output in the buffer"
            );
            Err(e)
        }
    }
}

#[test]
fn key_derivation_matches_rfc3711_appendix_b3() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let master = MasterKey::new(
        &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
        &hex("0EC675AD498AFEEBB6960B3AABE6"),
    )
    .expect("lengths");
    let profile = SrtpProfile::Aes128CmHmacSha1_80;
    let provider = ring();
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    let mut auth = [0u8; 20];
    derive(provider.crypto(), profile, &master, 0, &mut key).expect("derive");
    derive(provider.crypto(), profile, &master, 2, &mut salt).expect("derive");
    derive(provider.crypto(), profile, &master, 1, &mut auth).expect("derive");
    assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    assert_eq!(
        auth.to_vec(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

/// (SSRC, sequence number, payload length) of three interleaved streams of 120 packets, one
/// starting just before its sequence number wraps, of varied sizes.
fn interleaved_streams() -> Vec<(u32, u16, usize)> {
    let starts = [
        (0x1111_1111u32, 65_500u16),
        (0x2222_2222, 0),
        (0x3333_3333, 32_700),
    ];
    let mut order = Vec::new();
    for n in 0..120usize {
        for (s, &(ssrc, start)) in starts.iter().enumerate() {
            order.push((ssrc, start.wrapping_add(n as u16), (n * 7 + s * 13) % 1300));
        }
    }
    order
}

/// Positions of [`interleaved_streams`] swapped with the one 3 later: (65535, 0) of the first
/// SSRC, and a couple elsewhere.
const SWAPS: [usize; 3] = [105, 30 * 3 + 1, 200 * 3 / 2];

#[test]
fn seal_is_byte_identical_to_rtc_srtp_across_rollover_and_ssrcs() {
    // Three SSRCs interleaved, one starting just before the sequence number wraps; varied
    // header shapes and sizes; a few packets swapped (forwarded out of order), one across the
    // wrap.
    for profile in SrtpProfile::ALL {
        let key = master(profile, 7);
        let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
        let mut reference = rtc_context(profile, &key);
        let mut order = interleaved_streams();
        for i in SWAPS {
            order.swap(i, i + 3);
        }
        let mut compared = 0;
        for (i, &(ssrc, seq, len)) in order.iter().enumerate() {
            let clear = rtp(seq, ssrc, 96 + (i % 3) as u8, len, (i % 5) as u8);
            let ours = seal(&mut sealer, &clear).expect("seal");
            let theirs = reference.encrypt_rtp(&clear).expect("rtc-srtp encrypt");
            assert_eq!(
                ours,
                &theirs[..],
                "{profile}: packet {i} (ssrc {ssrc:#x} seq {seq}) differs"
            );
            compared += 1;
        }
        assert_eq!(compared, 360);
        assert_eq!(sealer.roc(Ssrc(0x1111_1111)), Some(1), "{profile}");
        assert_eq!(sealer.roc(Ssrc(0x2222_2222)), Some(0), "{profile}");
        assert_eq!(sealer.roc(Ssrc(0x4444_4444)), None);
    }
}

#[test]
fn rtc_srtp_decrypts_sealed_packets_and_rejects_wrong_keys_and_tampering() {
    for profile in SrtpProfile::ALL {
        let key = master(profile, 1);
        let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
        let mut right = rtc_context(profile, &key);
        let mut wrong_key = rtc_context(profile, &master(profile, 2));
        let mut tampered_rx = rtc_context(profile, &key);
        for seq in 0..20u16 {
            let clear = rtp(seq, 0xABCD_0001, 111, 200, (seq % 5) as u8);
            let sealed = seal(&mut sealer, &clear).expect("seal");
            assert_ne!(sealed[..clear.len()], clear[..], "{profile}: not encrypted");
            assert_eq!(
                &right.decrypt_rtp(&sealed).expect("decrypts")[..],
                &clear[..],
                "{profile}"
            );
            assert!(
                wrong_key.decrypt_rtp(&sealed).is_err(),
                "{profile}: wrong key"
            );
            let mut bad = sealed.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x01;
            assert!(
                tampered_rx.decrypt_rtp(&bad).is_err(),
                "{profile}: tampered"
            );
        }
    }
}

#[test]
fn sealer_refuses_to_reuse_an_index_and_keeps_its_state_on_errors() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let key = master(profile, 3);
    let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
    let mut reference = rtc_context(profile, &key);
    let ssrc = 0x0BAD_CAFE;
    let send = |sealer: &mut SrtpSealer, seq: u16| seal(sealer, &rtp(seq, ssrc, 96, 100, 0));

    for seq in 10..20 {
        send(&mut sealer, seq).expect("in order");
    }
    // Out of order within the window: fine once, never twice.
    assert!(matches!(
        send(&mut sealer, 15),
        Err(SealError::Reused { index: 15, .. })
    ));
    // A packet far ahead, then one more than the window behind it.
    send(&mut sealer, 3000).expect("jump ahead");
    assert!(matches!(
        send(&mut sealer, 1000),
        Err(SealError::TooOld { .. })
    ));
    // A skipped index within the window is still sealable (once).
    send(&mut sealer, 2990).expect("late but unseen");
    assert!(matches!(
        send(&mut sealer, 2990),
        Err(SealError::Reused { .. })
    ));

    // Bad input.
    let clear = rtp(3001, ssrc, 96, 100, 0);
    let mut short = clear.clone();
    short.resize(clear.len() + 15, 0);
    assert_eq!(
        sealer.seal(&mut short, clear.len(), MAX_WINDOW),
        Err(SealError::NoTailRoom {
            needed: 16,
            available: 15
        })
    );
    let mut rtcp = clear.clone();
    rtcp[1] = 200; // SR
    rtcp.resize(clear.len() + 16, 0);
    assert_eq!(
        sealer.seal(&mut rtcp, clear.len(), MAX_WINDOW),
        Err(SealError::NotRtp)
    );
    let mut cut = rtp(3001, ssrc, 96, 0, 2);
    cut.truncate(14);
    cut.resize(14 + 16, 0);
    assert_eq!(
        sealer.seal(&mut cut, 14, MAX_WINDOW),
        Err(SealError::NotRtp)
    );

    // None of the refusals moved the state: 3001 seals exactly as rtc-srtp does after the same
    // accepted packets.
    for seq in (10..20).chain([3000, 2990]) {
        reference
            .encrypt_rtp(&rtp(seq, ssrc, 96, 100, 0))
            .expect("reference");
    }
    assert_eq!(
        send(&mut sealer, 3001).expect("next"),
        &reference.encrypt_rtp(&clear).expect("reference")[..]
    );
}

#[test]
fn each_ssrc_keeps_the_window_of_its_first_packet() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let key = master(profile, 4);
    let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
    let (audio, video) = (0x00A0_D100_u32, 0x00B1_DE00_u32);
    // An audio leg's 16 packets of history: the sealer keeps its minimum, 64.
    for seq in 0..200 {
        seal_in(&mut sealer, &rtp(seq, audio, 111, 0, 0), 16).expect("audio");
    }
    // A video leg's 512; a later packet's window is not read again.
    for seq in 0..200 {
        seal_in(&mut sealer, &rtp(seq, video, 96, 0, 0), 512).expect("video");
    }
    seal_in(&mut sealer, &rtp(1000, video, 96, 0, 0), 16).expect("jump");
    // 199 - 135 = 64 behind the newest audio index: outside its window, too old to tell.
    assert!(matches!(
        reseal(&mut sealer, &rtp(135, audio, 111, 0, 0)),
        Err(SealError::TooOld { .. })
    ));
    assert!(reseal(&mut sealer, &rtp(136, audio, 111, 0, 0)).is_ok());
    // 1000 - 500 = 500 behind the newest video index: inside 512 (not 16), but never sealed.
    assert!(matches!(
        seal_in(&mut sealer, &rtp(199, video, 96, 0, 0), 512),
        Err(SealError::TooOld { .. })
    ));
    assert!(matches!(
        reseal(&mut sealer, &rtp(500, video, 96, 0, 0)),
        Err(SealError::NotSealed { .. })
    ));
    seal_in(&mut sealer, &rtp(500, video, 96, 0, 0), 512).expect("late but unseen");
    assert!(matches!(
        seal_in(&mut sealer, &rtp(500, video, 96, 0, 0), 512),
        Err(SealError::Reused { .. })
    ));
}

#[test]
fn reseal_repeats_the_first_sealing_byte_for_byte_and_refuses_anything_else() {
    for profile in SrtpProfile::ALL {
        let key = master(profile, 5);
        let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
        let mut reference = rtc_context(profile, &key);
        let ssrc = 0x0DD_BA11;
        // 65530 ..= 65535 with ROC 0, then 0 ..= 9 with ROC 1.
        let clear: Vec<Vec<u8>> = (0..16u16)
            .map(|k| rtp(65_530u16.wrapping_add(k), ssrc, 96, 120, (k % 5) as u8))
            .collect();
        let sealed: Vec<Vec<u8>> = clear
            .iter()
            .map(|c| {
                reference.encrypt_rtp(c).expect("reference");
                seal(&mut sealer, c).expect("seal")
            })
            .collect();

        // Retransmissions from before and after the wrap: the first sealing again.
        for k in [2usize, 5, 6, 15, 2] {
            assert_eq!(
                reseal(&mut sealer, &clear[k]).expect("reseal"),
                sealed[k],
                "{profile}: retransmission {k}"
            );
        }
        // Other bytes under a sealed index: a header field (what a rewrite with a fresh
        // transport-wide sequence number would change) or the payload.
        let mut other_header = clear[4].clone();
        other_header[5] ^= 0x40; // timestamp
        let mut other_payload = clear[7].clone();
        *other_payload.last_mut().expect("payload") ^= 1;
        for bad in [other_header, other_payload] {
            assert!(
                matches!(
                    reseal(&mut sealer, &bad),
                    Err(SealError::ResealMismatch {
                        ssrc: 0x0DD_BA11,
                        ..
                    })
                ),
                "{profile}"
            );
        }
        // Indices never sealed: ahead of the newest, another SSRC.
        assert!(matches!(
            reseal(&mut sealer, &rtp(10, ssrc, 96, 120, 0)),
            Err(SealError::NotSealed { index: 65_546, .. })
        ));
        assert!(matches!(
            reseal(&mut sealer, &rtp(3, ssrc ^ 1, 96, 120, 0)),
            Err(SealError::NotSealed { .. })
        ));
        // None of it moved the state: the next packet seals exactly as rtc-srtp's.
        let next = rtp(10, ssrc, 96, 120, 0);
        assert_eq!(
            seal(&mut sealer, &next).expect("seal"),
            &reference.encrypt_rtp(&next).expect("reference")[..],
            "{profile}"
        );
        // Out of the window: too old to tell.
        for seq in 11..1100u16 {
            seal(&mut sealer, &rtp(seq, ssrc, 96, 20, 0)).expect("seal");
        }
        assert!(matches!(
            reseal(&mut sealer, &clear[9]),
            Err(SealError::TooOld { .. })
        ));
    }
}

/// Drives rtc-srtp's own context construction through a capture: the order and content of its
/// key derivation is what `keys` relies on.
#[test]
fn capture_reads_rtc_srtp_key_derivation_and_refuses_anything_else() {
    for profile in SrtpProfile::ALL {
        let capture = SrtpKeyCapture::new(ring());
        assert_eq!(capture.keys(profile), Err(KeyCaptureError::NotYet));
        let (local, remote) = (master(profile, 10), master(profile, 20));
        // As rtc's `update_srtp_contexts`: local context first, then remote.
        for key in [&local, &remote] {
            Context::new(
                key.key(),
                key.salt(),
                profile.to_rtc(),
                None,
                None,
                capture.provider().crypto(),
            )
            .expect("context through the capture");
        }
        let keys = capture.keys(profile).expect("keys");
        assert_eq!(keys.profile, profile);
        assert_eq!(keys.local, local, "{profile}");
        assert_eq!(keys.remote, remote, "{profile}");

        // Read with another profile's schedule: refused, not misread.
        for other in SrtpProfile::ALL {
            let same_schedule = other.rtc_derivation_order() == profile.rtc_derivation_order()
                && other.key_len() == profile.key_len()
                && other.salt_len() == profile.salt_len();
            if !same_schedule {
                assert!(
                    matches!(capture.keys(other), Err(KeyCaptureError::Unrecognised(_))),
                    "{profile} read as {other}"
                );
            }
        }

        // A third derivation (a second handshake, or a sealer built over the capture).
        SrtpSealer::new(profile, &local, capture.provider().crypto()).expect("sealer");
        assert!(matches!(
            capture.keys(profile),
            Err(KeyCaptureError::Unrecognised(_))
        ));
    }

    // A block encryption that is not a key derivation.
    let capture = SrtpKeyCapture::new(ring());
    let mut block = [0x5Au8; 16];
    capture
        .provider()
        .crypto()
        .block_encrypt(BlockCipherAlgorithm::Aes128, &[1u8; 16], &mut block)
        .expect("aes");
    for key in [
        master(SrtpProfile::AeadAes128Gcm, 1),
        master(SrtpProfile::AeadAes128Gcm, 2),
    ] {
        let _ = Context::new(
            key.key(),
            key.salt(),
            SrtpProfile::AeadAes128Gcm.to_rtc(),
            None,
            None,
            capture.provider().crypto(),
        );
    }
    assert!(matches!(
        capture.keys(SrtpProfile::AeadAes128Gcm),
        Err(KeyCaptureError::Unrecognised(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Two sans-IO peer connections wired in memory, simulated time.

const SERVER_SSRC: u32 = 0x5EED_0001;

struct Peer {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    connected: bool,
}

impl Peer {
    fn new(settings: SettingEngineBuilder, addr: SocketAddr, now: Instant) -> Peer {
        let mut media = MediaEngine::default();
        media
            .register_codec(vp8(), RtpCodecKind::Video)
            .expect("codec");
        let pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings.build())
            .with_media_engine(media)
            .build(now)
            .expect("peer connection");
        Peer {
            pc,
            addr,
            connected: false,
        }
    }

    fn add_host_candidate(&mut self) {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: self.addr.ip().to_string(),
                port: self.addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .expect("candidate");
        let init = RTCIceCandidate::from(&candidate).to_json().expect("init");
        self.pc.add_local_candidate(init).expect("local candidate");
    }

    fn receive(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        // Errors (a datagram that fails authentication) are the receiver's business: what the
        // tests look at is what `poll_read` delivers.
        let _ = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: datagram.into(),
        });
    }

    fn poll_events(&mut self) {
        while let Some(event) = self.pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                self.connected = state == RTCPeerConnectionState::Connected;
            }
        }
    }

    /// RTP packets delivered to the application, as (sequence number, SSRC, payload).
    fn rtp_read(&mut self) -> Vec<(u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, packet) = message {
                out.push((
                    packet.header.sequence_number,
                    packet.header.ssrc,
                    packet.payload.to_vec(),
                ));
            }
        }
        out
    }
}

fn vp8() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            ..Default::default()
        },
        payload_type: 96,
    }
}

/// Moves every queued datagram from `a` to `b`; how many.
fn flush(a: &mut Peer, b: &mut Peer, now: Instant) -> usize {
    let mut n = 0;
    while let Some(out) = a.pc.poll_write() {
        assert_eq!(
            out.transport.peer_addr, b.addr,
            "datagram to an unknown address"
        );
        b.receive(a.addr, &out.message, now);
        n += 1;
    }
    n
}

/// Runs both peers until both are connected (or 30 simulated seconds pass).
fn run_until_connected(client: &mut Peer, server: &mut Peer, now: &mut Instant) {
    let deadline = *now + Duration::from_secs(30);
    while *now < deadline {
        let moved = flush(client, server, *now) + flush(server, client, *now);
        client.poll_events();
        server.poll_events();
        let _ = client.rtp_read();
        let _ = server.rtp_read();
        if client.connected && server.connected {
            return;
        }
        if moved == 0 {
            let next = [client.pc.poll_timeout(), server.pc.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(*now + Duration::from_millis(50));
            *now = next.clamp(*now, *now + Duration::from_millis(50));
            client.pc.handle_timeout(*now).expect("client timeout");
            server.pc.handle_timeout(*now).expect("server timeout");
        }
    }
    panic!(
        "not connected after 30 simulated seconds (client {}, server {})",
        client.connected, server.connected
    );
}

/// A browser-like client (offerer, receive-only video) and a server (answerer, one video track
/// with SSRC `SERVER_SSRC` that rtc never writes), connected in memory. The server's provider
/// is `capture`; `profile` is forced on the client's side, `dtls_role` is the server's.
fn connected_pair(
    capture: &Arc<SrtpKeyCapture>,
    profile: SrtpProfile,
    dtls_role: RTCDtlsRole,
    now: &mut Instant,
) -> (Peer, Peer, u8) {
    let client_addr: SocketAddr = "10.0.0.1:50000".parse().expect("addr");
    let server_addr: SocketAddr = "10.0.0.2:40000".parse().expect("addr");
    let mut client = Peer::new(
        SettingEngineBuilder::new().with_srtp_protection_profiles(vec![profile.to_dtls()]),
        client_addr,
        *now,
    );
    let mut server = Peer::new(
        SettingEngineBuilder::new()
            .with_crypto_provider(capture.provider())
            .with_answering_dtls_role(dtls_role),
        server_addr,
        *now,
    );

    client
        .pc
        .add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .expect("recvonly transceiver");
    client.add_host_candidate();
    let offer = client.pc.create_offer(None).expect("offer");
    client
        .pc
        .set_local_description(*now, offer.clone())
        .expect("client local");

    server
        .pc
        .set_remote_description(*now, offer)
        .expect("server remote");
    let sender = server
        .pc
        .add_track(MediaStreamTrack::new(
            "fast-path".to_owned(),
            "forwarded-video".to_owned(),
            "forwarded video".to_owned(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(SERVER_SSRC),
                    ..Default::default()
                },
                codec: vp8().rtp_codec,
                ..Default::default()
            }],
        ))
        .expect("server track");
    server.add_host_candidate();
    let answer = server.pc.create_answer(None).expect("answer");
    assert!(
        answer.sdp.contains(&format!("a=ssrc:{SERVER_SSRC}")),
        "the answer announces the forwarded SSRC:\n{}",
        answer.sdp
    );
    server
        .pc
        .set_local_description(*now, answer.clone())
        .expect("server local");
    client
        .pc
        .set_remote_description(*now, answer)
        .expect("client remote");

    let pt = server
        .pc
        .rtp_sender(sender)
        .expect("sender")
        .get_parameters()
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .expect("negotiated payload type");

    assert_eq!(
        capture.keys_of(&mut server.pc, *now),
        Err(KeyCaptureError::NotYet),
        "keys before the handshake"
    );
    run_until_connected(&mut client, &mut server, now);
    (client, server, pt)
}

fn payload(seq: u16) -> Vec<u8> {
    // A VP8 payload descriptor (S=1, partition 0) and a recognisable body.
    let mut p = vec![0x10, 0x00];
    p.extend((0..300u32).map(|i| (i as u8) ^ (seq as u8) ^ 0x5A));
    p
}

/// Seals `count` packets from `first_seq` with `sealer` and feeds them to `client`; returns
/// what the client application received.
fn send_sealed(
    sealer: &mut SrtpSealer,
    client: &mut Peer,
    server_addr: SocketAddr,
    pt: u8,
    first_seq: u16,
    count: u16,
    now: Instant,
) -> Vec<(u16, u32, Vec<u8>)> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1500];
    for k in 0..count {
        let seq = first_seq.wrapping_add(k);
        let body = payload(seq);
        let clear = rtp(seq, SERVER_SSRC, pt, 0, (k % 3) as u8);
        let len = clear.len() + body.len();
        buf[..clear.len()].copy_from_slice(&clear);
        buf[clear.len()..len].copy_from_slice(&body);
        let n = sealer.seal(&mut buf, len, MAX_WINDOW).expect("seal");
        client.receive(server_addr, &buf[..n], now);
        received.extend(client.rtp_read());
    }
    received
}

fn client_decrypts_the_fast_path(profile: SrtpProfile, dtls_role: RTCDtlsRole) {
    let mut now = Instant::now();
    let capture = SrtpKeyCapture::new(ring());
    let (mut client, mut server, pt) = connected_pair(&capture, profile, dtls_role, &mut now);
    let keys = capture.keys_of(&mut server.pc, now).expect("server keys");
    assert_eq!(keys.profile, profile);
    let stats = server
        .pc
        .get_stats(now, rtc::statistics::StatsSelector::None);
    assert_eq!(stats.transport().map(|t| t.dtls_role), Some(dtls_role));
    let crypto = capture.inner().crypto();

    // Wrong keys first: the remote key (the direction swapped) and an unrelated key. The client
    // must deliver none of them (and they must not disturb what follows).
    let first = 65_500u16;
    for wrong in [keys.remote.clone(), master(profile, 99)] {
        let mut sealer = SrtpSealer::new(profile, &wrong, crypto).expect("sealer");
        let got = send_sealed(&mut sealer, &mut client, server.addr, pt, first, 10, now);
        assert!(
            got.is_empty(),
            "{profile}/{dtls_role:?}: wrongly keyed packets delivered"
        );
    }

    // The right key: every packet, in order, across the sequence number wrap (ROC 0 -> 1).
    let mut sealer = SrtpSealer::new(profile, &keys.local, crypto).expect("sealer");
    let count = 100u16;
    let got = send_sealed(&mut sealer, &mut client, server.addr, pt, first, count, now);
    assert_eq!(sealer.roc(Ssrc(SERVER_SSRC)), Some(1));
    let expected: Vec<(u16, u32, Vec<u8>)> = (0..count)
        .map(|k| {
            let seq = first.wrapping_add(k);
            (seq, SERVER_SSRC, payload(seq))
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{profile}/{dtls_role:?}: delivered {} of {}",
        got.len(),
        expected.len()
    );
    assert!(got == expected, "{profile}/{dtls_role:?}: payloads differ");

    // A plain retransmission: a packet lost on the way is resealed from the same clear bytes
    // and delivered late; the client takes it.
    let lost_seq = first.wrapping_add(count + 2);
    let mut lost = None;
    let mut buf = vec![0u8; 1500];
    for k in 0..5u16 {
        let seq = first.wrapping_add(count + k);
        let mut clear = rtp(seq, SERVER_SSRC, pt, 0, 0);
        clear.extend(payload(seq));
        buf[..clear.len()].copy_from_slice(&clear);
        let n = sealer
            .seal(&mut buf, clear.len(), MAX_WINDOW)
            .expect("seal");
        if seq == lost_seq {
            lost = Some(clear);
        } else {
            client.receive(server.addr, &buf[..n], now);
        }
    }
    let before: Vec<u16> = client.rtp_read().iter().map(|p| p.0).collect();
    assert_eq!(before.len(), 4, "{profile}/{dtls_role:?}");
    assert!(!before.contains(&lost_seq));
    let lost = lost.expect("lost packet");
    buf[..lost.len()].copy_from_slice(&lost);
    let n = sealer.reseal(&mut buf, lost.len()).expect("reseal");
    client.receive(server.addr, &buf[..n], now);
    assert_eq!(
        client.rtp_read(),
        vec![(lost_seq, SERVER_SSRC, payload(lost_seq))],
        "{profile}/{dtls_role:?}: retransmission"
    );

    // And the connection is still fine.
    client.poll_events();
    assert!(client.connected);
}

#[test]
fn client_decrypts_sealed_gcm_with_server_as_dtls_server() {
    client_decrypts_the_fast_path(SrtpProfile::AeadAes128Gcm, RTCDtlsRole::Server);
}

#[test]
fn client_decrypts_sealed_gcm_with_server_as_dtls_client() {
    client_decrypts_the_fast_path(SrtpProfile::AeadAes128Gcm, RTCDtlsRole::Client);
}

#[test]
fn client_decrypts_sealed_aes_cm_sha1_80() {
    client_decrypts_the_fast_path(SrtpProfile::Aes128CmHmacSha1_80, RTCDtlsRole::Server);
}

#[test]
fn client_decrypts_sealed_aes_256_gcm_and_aes_cm_sha1_32() {
    client_decrypts_the_fast_path(SrtpProfile::AeadAes256Gcm, RTCDtlsRole::Client);
    client_decrypts_the_fast_path(SrtpProfile::Aes128CmHmacSha1_32, RTCDtlsRole::Server);
}

/// Opens `sealed` with `opener`; the clear packet.
fn open(opener: &mut SrtpOpener, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let mut buf = sealed.to_vec();
    let n = opener.open(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn opener_reads_what_rtc_srtp_encrypts_across_rollover_reordering_and_ssrcs() {
    // The same traffic shape as the sealer's comparison: three SSRCs, one wrapping its
    // sequence number, swapped packets (one across the wrap), every header shape.
    for profile in SrtpProfile::ALL {
        let key = master(profile, 9);
        let mut opener = SrtpOpener::new(profile, &key, ring().crypto()).expect("opener");
        let mut sender = rtc_context(profile, &key);
        let mut packets: Vec<(Vec<u8>, Vec<u8>)> = interleaved_streams()
            .into_iter()
            .enumerate()
            .map(|(i, (ssrc, seq, len))| {
                let clear = rtp(seq, ssrc, 96 + (i % 3) as u8, len, (i % 5) as u8);
                let sealed = sender
                    .encrypt_rtp(&clear)
                    .expect("rtc-srtp encrypt")
                    .to_vec();
                (clear, sealed)
            })
            .collect();
        for i in SWAPS {
            packets.swap(i, i + 3);
        }
        for (i, (clear, sealed)) in packets.iter().enumerate() {
            assert_eq!(
                open(&mut opener, sealed).unwrap_or_else(|e| panic!("{profile}: packet {i}: {e}")),
                *clear,
                "{profile}: packet {i}"
            );
        }
        // Every index once: each of them again is a replay.
        for (_, sealed) in packets.iter().rev().take(30) {
            assert_eq!(
                open(&mut opener, sealed),
                Err(OpenError::Replayed),
                "{profile}"
            );
        }
    }
}

#[test]
fn opener_refuses_forgeries_replays_and_ancient_packets_without_moving_its_state() {
    for profile in SrtpProfile::ALL {
        let key = master(profile, 3);
        let mut sealer = SrtpSealer::new(profile, &key, ring().crypto()).expect("sealer");
        let mut opener = SrtpOpener::new(profile, &key, ring().crypto()).expect("opener");
        let mut wrong =
            SrtpOpener::new(profile, &master(profile, 4), ring().crypto()).expect("opener");
        let ssrc = 0x5150_0001;
        let first = seal(&mut sealer, &rtp(100, ssrc, 96, 300, 2)).expect("seal");
        assert_eq!(
            wrong.open(&mut first.clone()),
            Err(OpenError::Auth),
            "{profile}"
        );
        let mut tampered = first.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x40;
        assert_eq!(
            opener.open(&mut tampered),
            Err(OpenError::Auth),
            "{profile}"
        );
        // A forged packet far ahead must not move the window: the real one still opens.
        let mut forged = rtp(30_000, ssrc, 96, 300, 0);
        forged.resize(forged.len() + profile.overhead(), 0);
        assert_eq!(opener.open(&mut forged), Err(OpenError::Auth), "{profile}");
        assert!(open(&mut opener, &first).is_ok(), "{profile}");
        assert_eq!(
            open(&mut opener, &first),
            Err(OpenError::Replayed),
            "{profile}"
        );
        // Out of order within the window: fine once; beyond the window: too old.
        let mut held = Vec::new();
        for seq in 101..101 + REPLAY_WINDOW as u16 + 10 {
            let sealed = seal(&mut sealer, &rtp(seq, ssrc, 96, 40, 0)).expect("seal");
            if seq == 105 || seq == 106 {
                held.push(sealed);
                continue;
            }
            open(&mut opener, &sealed).expect("in order");
            if seq == 300 {
                // 195 packets late: a retransmission on a long path, opened once.
                assert!(open(&mut opener, &held[0]).is_ok(), "{profile}");
                assert_eq!(open(&mut opener, &held[0]), Err(OpenError::Replayed));
            }
        }
        assert_eq!(
            open(&mut opener, &held[1]),
            Err(OpenError::TooOld),
            "{profile}"
        );
        assert!(matches!(opener.open(&mut [0u8; 8]), Err(OpenError::NotRtp)));
        let mut rtcp = first.clone();
        rtcp[1] = 200;
        assert_eq!(opener.open(&mut rtcp), Err(OpenError::NotRtp), "{profile}");
    }
}

#[test]
fn opener_takes_over_a_stream_across_its_wrap_from_the_context_that_opened_it_first() {
    // rtc opens a stream's first packet (it opens the track) and the opener the rest: when
    // that first packet is the last before the sequence number wraps, the opener must start
    // from it, or it would read the next ones with rollover counter 0 and refuse them all.
    for profile in SrtpProfile::ALL {
        let key = master(profile, 5);
        let mut sender = rtc_context(profile, &key);
        let ssrc = 0x0BAD_CAFE;
        let first = sender
            .encrypt_rtp(&rtp(65_535, ssrc, 96, 100, 0))
            .expect("encrypt");
        let mut rtc = rtc_context(profile, &key);
        rtc.decrypt_rtp(&first).expect("rtc opens the first");
        let next: Vec<(Vec<u8>, Vec<u8>)> = (0..3u16)
            .map(|seq| {
                let clear = rtp(seq, ssrc, 96, 100, 0);
                let sealed = sender.encrypt_rtp(&clear).expect("encrypt").to_vec();
                (clear, sealed)
            })
            .collect();
        let mut naive = SrtpOpener::new(profile, &key, ring().crypto()).expect("opener");
        assert_eq!(
            naive.open(&mut next[0].1.clone()),
            Err(OpenError::Auth),
            "{profile}"
        );
        let mut opener = SrtpOpener::new(profile, &key, ring().crypto()).expect("opener");
        for (i, (clear, sealed)) in next.iter().enumerate() {
            let mut buf = sealed.clone();
            let n = opener
                .open_after(&mut buf, 65_535)
                .unwrap_or_else(|e| panic!("{profile}: packet {i}: {e}"));
            assert_eq!(&buf[..n], &clear[..], "{profile}: packet {i}");
        }
        // What rtc opened counts as opened: the same packet again is a replay.
        assert_eq!(
            open(&mut opener, &first),
            Err(OpenError::Replayed),
            "{profile}"
        );
    }
}
