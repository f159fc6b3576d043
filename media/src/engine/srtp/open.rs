//! [`SrtpOpener`]: in-place SRTP decryption of a publisher's RTP (the remote SRTP context of one
//! peer connection), RFC 7714 (AES-GCM) and RFC 3711 (AES-CM + HMAC-SHA1): the sealer's
//! counterpart, so that a publisher's media need not cross rtc's read pipeline.
//!
//! Per SSRC: the rollover counter estimated as RFC 3711 §3.3.1 / Appendix A says, and a replay
//! window of the last [`REPLAY_WINDOW`] indices. State changes only after a packet
//! authenticated, so forged or corrupted datagrams cannot move it.

use rtc::crypto::{CryptoError, RTCCrypto};

use super::cipher::{cm_iv, gcm_iv, Cipher};
use super::seal::rtp_header_len;
use super::{packet_index, MasterKey, SealerError, SrtpProfile};

/// Indices behind an SSRC's newest one that are still accepted (once each). Wider than
/// rtc-srtp's optional 64: a retransmission the NACK generator asked for arrives a round trip
/// after the loss, by then hundreds of video packets later on a long path.
pub const REPLAY_WINDOW: u64 = 512;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why a datagram was not opened. The opener's state is unchanged after an error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not an RTP packet (or shorter than its header and the tag).
    #[error("not an SRTP packet")]
    NotRtp,
    /// The tag did not verify: forged, corrupted, or not under this key.
    #[error("SRTP authentication failed")]
    Auth,
    /// This packet index was opened already.
    #[error("replayed SRTP packet")]
    Replayed,
    /// More than [`REPLAY_WINDOW`] indices behind the newest one of its SSRC.
    #[error("SRTP packet too old")]
    TooOld,
    /// The crypto provider failed.
    #[error("crypto provider: {0}")]
    Crypto(#[from] CryptoError),
}

/// Receive state of one SSRC.
struct SsrcState {
    ssrc: u32,
    /// Highest packet index opened (ROC << 16 | SEQ).
    highest: u64,
    /// Bit `i % REPLAY_WINDOW` set: index `i` (within the window of `highest`) was opened.
    seen: [u64; WORDS],
}

impl SsrcState {
    /// The index of `seq` (RFC 3711's estimate from the newest index); past the last rollover
    /// counter there is none to open.
    fn estimate(&self, seq: u16) -> Result<u64, OpenError> {
        packet_index(self.highest, seq).ok_or(OpenError::TooOld)
    }

    fn check(&self, index: u64) -> Result<(), OpenError> {
        if index > self.highest {
            return Ok(());
        }
        if self.highest - index >= REPLAY_WINDOW {
            return Err(OpenError::TooOld);
        }
        let (w, b) = bit(index);
        if self.seen[w] & b != 0 {
            return Err(OpenError::Replayed);
        }
        Ok(())
    }

    fn commit(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            if ahead >= REPLAY_WINDOW {
                self.seen = [0; WORDS];
            } else {
                for i in self.highest + 1..index {
                    let (w, b) = bit(i);
                    self.seen[w] &= !b;
                }
            }
            self.highest = index;
        }
        let (w, b) = bit(index);
        self.seen[w] |= b;
    }
}

fn bit(index: u64) -> (usize, u64) {
    let i = index % REPLAY_WINDOW;
    ((i / 64) as usize, 1u64 << (i % 64))
}

/// The inbound SRTP context of one peer connection: opens its RTP packets in place.
///
/// Built from the connection's remote [`MasterKey`]. Per SSRC (added on its first packet that
/// authenticates, the only allocation): the rollover counter and the replay window. No
/// allocation per packet. SRTCP stays with rtc.
pub struct SrtpOpener {
    profile: SrtpProfile,
    cipher: Cipher,
    ssrcs: Vec<SsrcState>,
}

impl SrtpOpener {
    /// An opener for `profile` with `master` (the [`super::SrtpKeys::remote`] of the peer
    /// connection); `crypto` as for [`super::SrtpSealer::new`].
    pub fn new(
        profile: SrtpProfile,
        master: &MasterKey,
        crypto: &dyn RTCCrypto,
    ) -> Result<SrtpOpener, SealerError> {
        let cipher = Cipher::new(profile, master, crypto)?;
        Ok(SrtpOpener {
            profile,
            cipher,
            ssrcs: Vec::new(),
        })
    }

    /// The profile this opener decrypts.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Authenticates and decrypts the SRTP packet `buf` in place; returns the clear RTP
    /// packet's length (`buf.len()` less the tag). On error nothing is committed, and `buf` may
    /// hold garbage (never forward it). An SSRC's first packet here is taken to have rollover
    /// counter 0, as the sender starts.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<usize, OpenError> {
        self.open_with(buf, None)
    }

    /// [`open`](Self::open) for a stream another context opened first: `before` names the
    /// newest sequence number that context opened on the packet's SSRC (with rollover counter
    /// 0). Read on the SSRC's first packet here: the rollover counter is estimated from it, as
    /// if this opener had opened it (a stream that started just before its sequence number
    /// wraps is then read right).
    pub fn open_after(&mut self, buf: &mut [u8], before: u16) -> Result<usize, OpenError> {
        self.open_with(buf, Some(before))
    }

    fn open_with(&mut self, buf: &mut [u8], before: Option<u16>) -> Result<usize, OpenError> {
        let tag_len = self.profile.overhead();
        if buf.len() < 12 + tag_len {
            return Err(OpenError::NotRtp);
        }
        let len = buf.len() - tag_len;
        let header_len = rtp_header_len(&buf[..len]).map_err(|_| OpenError::NotRtp)?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let slot = self.ssrcs.iter().position(|s| s.ssrc == ssrc);
        let mut fresh = None;
        let index = match slot {
            Some(i) => {
                let state = &self.ssrcs[i];
                let index = state.estimate(seq)?;
                state.check(index)?;
                index
            }
            None => {
                let state = match before {
                    Some(opened) => {
                        let mut s = SsrcState {
                            ssrc,
                            highest: u64::from(opened),
                            seen: [0; WORDS],
                        };
                        s.commit(u64::from(opened));
                        s
                    }
                    // As the sender starts: ROC 0 on an SSRC's first packet.
                    None => SsrcState {
                        ssrc,
                        highest: u64::from(seq),
                        seen: [0; WORDS],
                    },
                };
                let index = state.estimate(seq)?;
                state.check(index)?;
                fresh = Some(state);
                index
            }
        };
        self.decrypt(buf, len, header_len, ssrc, index)?;
        if let Some(i) = slot {
            self.ssrcs[i].commit(index);
        } else if let Some(mut s) = fresh {
            s.commit(index);
            self.ssrcs.push(s);
        }
        Ok(len)
    }

    fn decrypt(
        &mut self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<(), OpenError> {
        let tag_len = self.profile.overhead();
        let roc = (index >> 16) as u32;
        let seq = index as u16;
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(header_len);
                let (payload, tail) = rest.split_at_mut(len - header_len);
                aead.open_in_place(&iv, header, payload, &tail[..tag_len])
                    .map_err(|_| OpenError::Auth)?;
            }
            Cipher::Cm { ctr, mac, salt } => {
                // RFC 3711 §4.2: authenticate first (packet || ROC), then decrypt.
                let mut full = [0u8; 20];
                mac.sign(&[&buf[..len], &roc.to_be_bytes()], &mut full)?;
                let diff = full[..tag_len]
                    .iter()
                    .zip(&buf[len..len + tag_len])
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b));
                if diff != 0 {
                    return Err(OpenError::Auth);
                }
                let iv = cm_iv(salt, ssrc, roc, seq);
                ctr.apply_keystream(&iv, &mut buf[header_len..len])?;
            }
        }
        Ok(())
    }
}
