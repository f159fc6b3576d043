//! [`SrtpKeyCapture`]: the SRTP master keys of one peer connection, read through rtc's public
//! crypto-provider hook.
//!
//! Facts this relies on, read in rtc 0.21.1 / rtc-srtp 0.21.1 and checked at run time:
//! - rtc-srtp's key derivation (`key_derivation.rs`, `aes_cm_key_derivation` and
//!   `aes_256_cm_key_derivation`) is the only caller of `RTCCrypto::block_encrypt` in the rtc
//!   crates (DTLS, ICE, STUN, SCTP never call it). Each call passes the master key as the AES key
//!   and RFC 3711's PRF input block, which is the master salt XOR the label and block counter.
//! - rtc derives the two contexts once, when the DTLS handshake completes
//!   (`handler/dtls.rs`, `update_srtp_contexts`): the local (outbound) context first, then the
//!   remote one, each in the order of [`SrtpProfile::rtc_derivation_order`].
//!
//! The record is matched block by block against that schedule; any difference (another
//! rtc-srtp, a second handshake, a capture shared by two peer connections, a sealer built over
//! the capture itself) is a [`KeyCaptureError::Unrecognised`], never a guess.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher,
    StreamCipherAlgorithm,
};
use rtc::peer_connection::RTCPeerConnection;
use rtc::statistics::StatsSelector;

use super::{prf_input, MasterKey, SrtpKeys, SrtpProfile};

/// Block encryptions kept: two contexts of the longest schedule (AES-CM-HMAC, 8 blocks each).
const MAX_RECORDED: usize = 16;

/// Why [`SrtpKeyCapture`] has no keys to give.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyCaptureError {
    /// The DTLS handshake has not completed yet: ask again once the connection is up.
    #[error("no SRTP keys yet: the DTLS handshake has not completed")]
    NotYet,
    /// rtc negotiated a profile this module does not implement.
    #[error("negotiated SRTP profile {0:?} is not supported by the fast path")]
    UnknownProfile(String),
    /// What was observed is not rtc-srtp 0.21.1's key derivation: no keys rather than wrong ones.
    #[error("SRTP key capture refused: {0}")]
    Unrecognised(String),
}

/// One `block_encrypt` call.
struct Block {
    algorithm: BlockCipherAlgorithm,
    key: [u8; 32],
    key_len: usize,
    input: [u8; 16],
}

impl Block {
    fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.key.fill(0);
    }
}

#[derive(Default)]
struct Record {
    blocks: Vec<Block>,
    /// More calls than two contexts need, or a call that could not be recorded.
    anomaly: Option<String>,
}

/// A crypto provider for exactly one peer connection that forwards every operation to `inner`
/// and records rtc-srtp's key derivation, so that [`SrtpKeyCapture::keys_of`] can return that
/// connection's SRTP keys once its DTLS handshake completed.
///
/// ```text
/// let capture = SrtpKeyCapture::new(rtc::crypto::default_provider()?);
/// let settings = SettingEngineBuilder::new().with_crypto_provider(capture.provider()).build();
/// // ... build the peer connection with `settings`, drive it until Connected, then:
/// let keys = capture.keys_of(&mut pc, now)?;
/// let sealer = SrtpSealer::new(keys.profile, &keys.local, capture.inner().crypto())?;
/// ```
pub struct SrtpKeyCapture {
    inner: Arc<dyn RTCCryptoProvider>,
    record: Mutex<Record>,
}

impl SrtpKeyCapture {
    /// A capture over `inner` (rtc's default, ring, in roomd). One per peer connection.
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Arc<SrtpKeyCapture> {
        Arc::new(SrtpKeyCapture {
            inner,
            record: Mutex::new(Record::default()),
        })
    }

    /// This capture as the provider to give `SettingEngineBuilder::with_crypto_provider`.
    pub fn provider(self: &Arc<Self>) -> Arc<dyn RTCCryptoProvider> {
        self.clone()
    }

    /// The wrapped provider. Build sealers over this one: key derivation through the capture
    /// itself would be recorded as a third context, and later calls to `keys` would refuse.
    pub fn inner(&self) -> &Arc<dyn RTCCryptoProvider> {
        &self.inner
    }

    /// The keys of the peer connection this capture is installed on, with the profile read from
    /// its transport statistics. [`KeyCaptureError::NotYet`] until its DTLS handshake completed
    /// (which happens inside the `handle_read` that completes it: by the time `poll_event`
    /// reports the DTLS transport or the connection as connected, the keys are here).
    pub fn keys_of(
        &self,
        pc: &mut RTCPeerConnection,
        now: Instant,
    ) -> Result<SrtpKeys, KeyCaptureError> {
        let profile = negotiated_profile(pc, now)?;
        if self.lock().blocks.is_empty() {
            return Err(KeyCaptureError::Unrecognised(format!(
                "DTLS negotiated {profile} but no SRTP key derivation went through this \
                 capture: is it that peer connection's crypto provider?"
            )));
        }
        self.keys(profile)
    }

    /// The keys, given the negotiated profile (what [`negotiated_profile`] returns).
    pub fn keys(&self, profile: SrtpProfile) -> Result<SrtpKeys, KeyCaptureError> {
        let record = self.lock();
        if let Some(anomaly) = &record.anomaly {
            return Err(KeyCaptureError::Unrecognised(anomaly.clone()));
        }
        let blocks = &record.blocks;
        if blocks.is_empty() {
            return Err(KeyCaptureError::NotYet);
        }
        let per_context = profile.rtc_derivation_order().len();
        if blocks.len() != 2 * per_context {
            return Err(KeyCaptureError::Unrecognised(format!(
                "{} AES block encryptions recorded, rtc-srtp derives {profile} contexts in 2 x {}",
                blocks.len(),
                per_context
            )));
        }
        let local = context(profile, &blocks[..per_context], "local")?;
        let remote = context(profile, &blocks[per_context..], "remote")?;
        if local == remote {
            return Err(KeyCaptureError::Unrecognised(
                "local and remote master keys are equal".to_owned(),
            ));
        }
        Ok(SrtpKeys {
            profile,
            local,
            remote,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding the lock cannot leave the record half-written in a way that
        // matters: `keys` re-validates everything.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, algorithm: BlockCipherAlgorithm, key: &[u8], input: Option<[u8; 16]>) {
        let mut record = self.lock();
        if record.anomaly.is_some() {
            return;
        }
        let input = match input {
            Some(input) if record.blocks.len() < MAX_RECORDED && key.len() <= 32 => input,
            _ => {
                record.anomaly = Some(format!(
                    "unexpected AES block encryption #{} (key of {} bytes): a second handshake, \
                     a capture shared by two peer connections, or a derivation rtc-srtp 0.21.1 \
                     does not do",
                    record.blocks.len() + 1,
                    key.len()
                ));
                record.blocks.clear();
                return;
            }
        };
        let mut block = Block {
            algorithm,
            key: [0u8; 32],
            key_len: key.len(),
            input,
        };
        block.key[..key.len()].copy_from_slice(key);
        record.blocks.push(block);
    }
}

/// Checks one context's blocks against rtc-srtp's schedule for `profile` and returns its key.
fn context(
    profile: SrtpProfile,
    blocks: &[Block],
    which: &str,
) -> Result<MasterKey, KeyCaptureError> {
    let refuse = |what: String| KeyCaptureError::Unrecognised(format!("{which} context: {what}"));
    let first = &blocks[0];
    if first.key_len != profile.key_len() {
        return Err(refuse(format!(
            "{}-byte master key, {profile} has {}",
            first.key_len,
            profile.key_len()
        )));
    }
    // The first block is label 0, counter 0: the salt itself, zero-padded.
    let salt = &first.input[..profile.salt_len()];
    for (n, (block, &(label, i))) in blocks
        .iter()
        .zip(profile.rtc_derivation_order())
        .enumerate()
    {
        if block.algorithm != profile.prf_block_cipher() {
            return Err(refuse(format!("block {n} uses {:?}", block.algorithm)));
        }
        if block.key() != first.key() {
            return Err(refuse(format!("block {n} has another AES key")));
        }
        if block.input != prf_input(salt, label, i) {
            return Err(refuse(format!(
                "block {n} is not the PRF input of label {label:#04x}, counter {i}"
            )));
        }
    }
    MasterKey::new(first.key(), salt).ok_or_else(|| refuse("bad key length".to_owned()))
}

/// The SRTP profile `pc` negotiated, from its transport statistics: [`KeyCaptureError::NotYet`]
/// before the DTLS handshake completed.
pub fn negotiated_profile(
    pc: &mut RTCPeerConnection,
    now: Instant,
) -> Result<SrtpProfile, KeyCaptureError> {
    let report = pc.get_stats(now, StatsSelector::None);
    let name = report
        .transport()
        .map(|t| t.srtp_cipher.as_str())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(KeyCaptureError::NotYet);
    }
    SrtpProfile::from_stats_name(name).ok_or_else(|| KeyCaptureError::UnknownProfile(name.into()))
}

impl RTCCryptoProvider for SrtpKeyCapture {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

/// Every operation goes to the wrapped provider; `block_encrypt` is also recorded.
impl RTCCrypto for SrtpKeyCapture {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        // The input block is what carries the salt: keep it before it is encrypted.
        let input: Option<[u8; 16]> = block.try_into().ok();
        self.inner.crypto().block_encrypt(algorithm, key, block)?;
        self.note(algorithm, key, input);
        Ok(())
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}
