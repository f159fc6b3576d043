//! The session ciphers of one SRTP context, shared by the sealer and the opener: the session
//! keys derived once from a master key (RFC 3711 §4.3), and the per-packet IVs of RFC 7714 §8.1
//! (AES-GCM) and RFC 3711 §4.1.1 (AES-CM).

use rtc::crypto::{
    AeadAlgorithm, AeadCipher, CryptoError, HmacAlgorithm, Mac, RTCCrypto, StreamCipher,
    StreamCipherAlgorithm,
};

use super::{
    derive, MasterKey, SealerError, SrtpProfile, LABEL_SRTP_AUTHENTICATION, LABEL_SRTP_ENCRYPTION,
    LABEL_SRTP_SALT,
};

pub(super) enum Cipher {
    /// RFC 7714: AES-GCM over the payload, the header as AAD, a 16-byte tag.
    Gcm {
        aead: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    /// RFC 3711: AES-CM over the payload, HMAC-SHA1 over header, payload and ROC.
    Cm {
        ctr: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
        salt: [u8; 14],
    },
}

impl Cipher {
    /// The session ciphers of `profile` under `master`; the derived key material is wiped.
    pub(super) fn new(
        profile: SrtpProfile,
        master: &MasterKey,
        crypto: &dyn RTCCrypto,
    ) -> Result<Cipher, SealerError> {
        if !master.fits(profile) {
            return Err(SealerError::KeyLength(profile));
        }
        let (key_len, salt_len, auth_len) = profile.session_lengths();
        let mut key = [0u8; 32];
        let mut salt = [0u8; 14];
        let mut auth = [0u8; 20];
        let built = (|| -> Result<Cipher, CryptoError> {
            derive(
                crypto,
                profile,
                master,
                LABEL_SRTP_ENCRYPTION,
                &mut key[..key_len],
            )?;
            derive(
                crypto,
                profile,
                master,
                LABEL_SRTP_SALT,
                &mut salt[..salt_len],
            )?;
            Ok(match profile {
                SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => {
                    let algorithm = if profile == SrtpProfile::AeadAes128Gcm {
                        AeadAlgorithm::Aes128Gcm
                    } else {
                        AeadAlgorithm::Aes256Gcm
                    };
                    let aead = crypto.new_aead(algorithm, &key[..key_len])?;
                    if aead.tag_len() != profile.overhead() {
                        return Err(CryptoError::InvalidTagLength {
                            expected: profile.overhead(),
                            actual: aead.tag_len(),
                        });
                    }
                    let mut s = [0u8; 12];
                    s.copy_from_slice(&salt[..12]);
                    Cipher::Gcm { aead, salt: s }
                }
                SrtpProfile::Aes128CmHmacSha1_80 | SrtpProfile::Aes128CmHmacSha1_32 => {
                    derive(
                        crypto,
                        profile,
                        master,
                        LABEL_SRTP_AUTHENTICATION,
                        &mut auth,
                    )?;
                    let ctr = crypto
                        .new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &key[..key_len])?;
                    let mac = crypto.new_hmac(HmacAlgorithm::Sha1, &auth[..auth_len])?;
                    Cipher::Cm { ctr, mac, salt }
                }
            })
        })();
        key.fill(0);
        salt.fill(0);
        auth.fill(0);
        Ok(built?)
    }
}

/// RFC 7714 §8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
pub(super) fn gcm_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (v, s) in iv.iter_mut().zip(salt.iter()) {
        *v ^= s;
    }
    iv
}

/// RFC 3711 §4.1.1: IV = (salt << 16) XOR (SSRC << 64) XOR (index << 16).
pub(super) fn cm_iv(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[4..8].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&roc.to_be_bytes());
    iv[12..14].copy_from_slice(&seq.to_be_bytes());
    for (v, s) in iv.iter_mut().zip(salt.iter()) {
        *v ^= s;
    }
    iv
}
