//! The engine's SRTP fast path: the keys rtc negotiated, an in-place seal of forwarded RTP and
//! an in-place open of publishers' RTP.
//!
//! rtc 0.21.1 keeps its SRTP contexts `pub(crate)`, so these pieces replace `write_rtp` for
//! forwarded packets and rtc's read path for publishers' RTP:
//! - [`SrtpKeyCapture`], a crypto provider installed per peer connection with
//!   `SettingEngineBuilder::with_crypto_provider`. It forwards everything to the wrapped provider
//!   (ring by default) and records the AES block encryptions of rtc-srtp's key derivation, which
//!   carry the master key (as the AES key) and the master salt (in the input block). Once DTLS is
//!   up, [`SrtpKeyCapture::keys_of`] returns the [`SrtpKeys`] of that peer connection: the
//!   negotiated [`SrtpProfile`], the local (outbound) and the remote master key and salt. The
//!   record is checked block by block against RFC 3711's key derivation and rtc-srtp's call order;
//!   anything else (another rtc version, a second handshake, a provider shared by two peer
//!   connections) is an error, never a guess.
//! - [`SrtpSealer`], one per outgoing leg: session keys derived once, a rollover counter per SSRC,
//!   and [`SrtpSealer::seal`] encrypting a clear RTP packet in place in the caller's buffer (tag in
//!   the tail room), with no allocation per packet. Output is byte-identical to rtc-srtp's
//!   `Context::encrypt_rtp` for the same packets (tested). It refuses to seal the same packet
//!   index twice on an SSRC (a GCM nonce must never carry two plaintexts); a plain
//!   retransmission goes through [`SrtpSealer::reseal`], which checks that it reproduces the
//!   first sealing's tag before anything can be sent.
//! - [`SrtpOpener`], one per publisher connection (its remote key): the counterpart, opening
//!   the publisher's RTP in place so that it need not cross rtc's read pipeline (`shard.rs`):
//!   RFC 3711's rollover-counter estimate and a replay window per SSRC, state committed only
//!   for packets that authenticate. It reads what rtc-srtp's `encrypt_rtp` writes (tested).
//!
//! Profiles: AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714), AES_CM_128_HMAC_SHA1_80 and _32
//! (RFC 3711): every profile rtc 0.21.1 negotiates. SRTCP stays with rtc.

mod capture;
mod cipher;
mod open;
mod seal;
#[cfg(test)]
mod tests;

use std::fmt;

use rtc::crypto::{BlockCipherAlgorithm, RTCCrypto};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::protection_profile::ProtectionProfile;

pub use capture::{negotiated_profile, KeyCaptureError, SrtpKeyCapture};
pub use open::{OpenError, SrtpOpener, REPLAY_WINDOW};
pub use seal::{SealError, SealerError, SrtpSealer, MAX_WINDOW, MIN_WINDOW};

/// An SRTP protection profile the fast path implements (RFC 5764 §4.1.2, RFC 7714 §14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpProfile {
    /// `SRTP_AEAD_AES_128_GCM`: AES-128-GCM, 16-byte tag, 12-byte salt.
    AeadAes128Gcm,
    /// `SRTP_AEAD_AES_256_GCM`: AES-256-GCM, 16-byte tag, 12-byte salt.
    AeadAes256Gcm,
    /// `SRTP_AES128_CM_HMAC_SHA1_80`: AES-128 counter mode, 10-byte HMAC-SHA1 tag.
    Aes128CmHmacSha1_80,
    /// `SRTP_AES128_CM_HMAC_SHA1_32`: as above with a 4-byte tag.
    Aes128CmHmacSha1_32,
}

impl SrtpProfile {
    /// Every profile, in rtc 0.21.1's default preference order.
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
        SrtpProfile::Aes128CmHmacSha1_80,
        SrtpProfile::Aes128CmHmacSha1_32,
    ];

    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes an SRTP packet has beyond its clear RTP packet (the tag): the tail room
    /// [`SrtpSealer::seal`] needs.
    pub fn overhead(self) -> usize {
        match self {
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 16,
            SrtpProfile::Aes128CmHmacSha1_80 => 10,
            SrtpProfile::Aes128CmHmacSha1_32 => 4,
        }
    }

    /// rtc-srtp's name for the profile.
    pub fn to_rtc(self) -> ProtectionProfile {
        match self {
            SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }

    /// The DTLS `use_srtp` value, for `SettingEngineBuilder::with_srtp_protection_profiles`.
    pub fn to_dtls(self) -> SrtpProtectionProfile {
        match self {
            SrtpProfile::AeadAes128Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProfile::AeadAes256Gcm => SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            SrtpProfile::Aes128CmHmacSha1_80 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            SrtpProfile::Aes128CmHmacSha1_32 => SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
        }
    }

    /// The profile for rtc's `RTCTransportStats::srtp_cipher` name (e.g. `SRTP_AEAD_AES_128_GCM`).
    pub fn from_stats_name(name: &str) -> Option<SrtpProfile> {
        match name {
            "SRTP_AEAD_AES_128_GCM" => Some(SrtpProfile::AeadAes128Gcm),
            "SRTP_AEAD_AES_256_GCM" => Some(SrtpProfile::AeadAes256Gcm),
            "SRTP_AES128_CM_HMAC_SHA1_80" => Some(SrtpProfile::Aes128CmHmacSha1_80),
            "SRTP_AES128_CM_HMAC_SHA1_32" => Some(SrtpProfile::Aes128CmHmacSha1_32),
            _ => None,
        }
    }

    fn is_gcm(self) -> bool {
        matches!(
            self,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm
        )
    }

    /// The AES variant of the key derivation PRF (RFC 7714 §11: AES-256-GCM derives with AES-256).
    fn prf_block_cipher(self) -> BlockCipherAlgorithm {
        match self {
            SrtpProfile::AeadAes256Gcm => BlockCipherAlgorithm::Aes256,
            _ => BlockCipherAlgorithm::Aes128,
        }
    }

    /// Session key lengths (encryption, salt, authentication) for SRTP (RFC 3711 §4.3, RFC 7714).
    fn session_lengths(self) -> (usize, usize, usize) {
        let auth = if self.is_gcm() { 0 } else { 20 };
        (self.key_len(), self.salt_len(), auth)
    }

    /// The PRF blocks rtc-srtp 0.21.1 computes to build one context, in call order, as
    /// `(label, block counter)`: `Context::new` derives the SRTP then the SRTCP encryption key,
    /// the SRTP then the SRTCP salt and, for HMAC profiles, the SRTP then the SRTCP auth key
    /// (rtc-srtp `cipher_aead_aes_gcm.rs`, `cipher_aes_cm_hmac_sha1.rs`). A key of `n` bytes takes
    /// `ceil(n / 16)` blocks.
    fn rtc_derivation_order(self) -> &'static [(u8, u16)] {
        const GCM128: &[(u8, u16)] = &[(0, 0), (3, 0), (2, 0), (5, 0)];
        const GCM256: &[(u8, u16)] = &[(0, 0), (0, 1), (3, 0), (3, 1), (2, 0), (5, 0)];
        const CM128: &[(u8, u16)] = &[
            (0, 0),
            (3, 0),
            (2, 0),
            (5, 0),
            (1, 0),
            (1, 1),
            (4, 0),
            (4, 1),
        ];
        match self {
            SrtpProfile::AeadAes128Gcm => GCM128,
            SrtpProfile::AeadAes256Gcm => GCM256,
            SrtpProfile::Aes128CmHmacSha1_80 | SrtpProfile::Aes128CmHmacSha1_32 => CM128,
        }
    }
}

impl fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SrtpProfile::AeadAes128Gcm => "SRTP_AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "SRTP_AEAD_AES_256_GCM",
            SrtpProfile::Aes128CmHmacSha1_80 => "SRTP_AES128_CM_HMAC_SHA1_80",
            SrtpProfile::Aes128CmHmacSha1_32 => "SRTP_AES128_CM_HMAC_SHA1_32",
        })
    }
}

/// An SRTP master key and master salt (RFC 3711 §4.3). `Debug` never prints them; the bytes are
/// overwritten on drop (best effort: rtc keeps its own copies for the connection's lifetime).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; 32],
    key_len: u8,
    salt: [u8; 14],
    salt_len: u8,
}

impl MasterKey {
    /// A master key of 16 or 32 bytes and a salt of 12 or 14 bytes; `None` for other lengths.
    pub fn new(key: &[u8], salt: &[u8]) -> Option<MasterKey> {
        if !matches!(key.len(), 16 | 32) || !matches!(salt.len(), 12 | 14) {
            return None;
        }
        let mut k = [0u8; 32];
        k[..key.len()].copy_from_slice(key);
        let mut s = [0u8; 14];
        s[..salt.len()].copy_from_slice(salt);
        Some(MasterKey {
            key: k,
            key_len: key.len() as u8,
            salt: s,
            salt_len: salt.len() as u8,
        })
    }

    /// The master key.
    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    /// The master salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt[..usize::from(self.salt_len)]
    }

    fn fits(&self, profile: SrtpProfile) -> bool {
        self.key().len() == profile.key_len() && self.salt().len() == profile.salt_len()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MasterKey {{ key: [{} bytes redacted], salt: [{} bytes redacted] }}",
            self.key_len, self.salt_len
        )
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.key.fill(0);
        self.salt.fill(0);
    }
}

/// The SRTP keys of one peer connection, as rtc derived them once its DTLS handshake completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpKeys {
    /// The negotiated protection profile.
    pub profile: SrtpProfile,
    /// What this side encrypts with: build the leg's [`SrtpSealer`] from it.
    pub local: MasterKey,
    /// What the remote side encrypts with (rtc decrypts its packets).
    pub remote: MasterKey,
}

/// RFC 3711 §3.3.1 / Appendix A: the packet index (ROC << 16 | SEQ) whose rollover counter puts
/// `seq` closest to `highest`, the newest index of its SSRC. A sequence number "before" rollover
/// counter 0 is taken with counter 0; `None` when the counter would pass 2^32 (new keys are
/// due, RFC 3711 §9.2).
fn packet_index(highest: u64, seq: u16) -> Option<u64> {
    let roc = (highest >> 16) as u32;
    let last = highest as u16;
    let v = if last < 0x8000 {
        if seq > last && seq - last > 0x8000 {
            roc.saturating_sub(1)
        } else {
            roc
        }
    } else if seq < last - 0x8000 {
        roc.checked_add(1)?
    } else {
        roc
    };
    Some(u64::from(v) << 16 | u64::from(seq))
}

/// The AES-CM PRF input block for `label` and block counter `i` (RFC 3711 §4.3.1 and §4.3.3,
/// key derivation rate 0): the master salt, left-aligned in 16 bytes, XOR the label at byte 7,
/// XOR `i` in the last two bytes.
fn prf_input(salt: &[u8], label: u8, i: u16) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..salt.len()].copy_from_slice(salt);
    block[7] ^= label;
    let i = i.to_be_bytes();
    block[14] ^= i[0];
    block[15] ^= i[1];
    block
}

/// Derives `out.len()` bytes of session key material for `label` (RFC 3711 §4.3.3).
fn derive(
    crypto: &dyn RTCCrypto,
    profile: SrtpProfile,
    master: &MasterKey,
    label: u8,
    out: &mut [u8],
) -> Result<(), rtc::crypto::CryptoError> {
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = prf_input(master.salt(), label, i as u16);
        crypto.block_encrypt(profile.prf_block_cipher(), master.key(), &mut block)?;
        chunk.copy_from_slice(&block[..chunk.len()]);
        block.fill(0);
    }
    Ok(())
}

/// RFC 3711 §4.3.1 labels.
const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_AUTHENTICATION: u8 = 0x01;
const LABEL_SRTP_SALT: u8 = 0x02;
