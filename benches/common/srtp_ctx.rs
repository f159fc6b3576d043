//! The SRTP contexts every bench builds, as roomd's `webrtc` 0.21.1 builds them: `rtc-srtp`
//! 0.21.1 over the ring provider, with webrtc-rs's replay window on decrypt contexts.

#![allow(dead_code)] // each bench uses a different subset

use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;

/// A master key for benches that need only one.
pub(crate) const KEY: [u8; 16] = [
    96, 180, 31, 4, 119, 137, 128, 252, 75, 194, 252, 44, 63, 56, 61, 55,
];
const SALT: [u8; 14] = [247, 26, 49, 94, 99, 29, 79, 94, 5, 111, 252, 216, 62, 195];

/// Replay window the server's decrypt contexts use (webrtc-rs default).
const REPLAY_WINDOW: usize = 64;

/// The two suites roomd negotiates, by bench id.
pub(crate) const PROFILES: [(&str, ProtectionProfile); 2] = [
    ("gcm", ProtectionProfile::AeadAes128Gcm),
    ("cm", ProtectionProfile::Aes128CmHmacSha1_80),
];

/// An SRTP context for `profile` and `key`; `replay` turns the replay window on, as for the
/// server's decrypt contexts.
pub(crate) fn context(profile: ProtectionProfile, key: &[u8; 16], replay: bool) -> Context {
    let provider = rtc::crypto::default_provider().expect("ring provider");
    Context::new(
        key,
        &SALT[..profile.salt_len()],
        profile,
        replay.then(|| srtp_replay_protection(REPLAY_WINDOW)),
        None,
        provider.crypto(),
    )
    .expect("srtp context")
}
