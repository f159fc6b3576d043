//! [`SrtpSealer`]: in-place SRTP encryption of outgoing RTP for one leg (one peer connection's
//! local SRTP context), RFC 7714 (AES-GCM) and RFC 3711 (AES-CM + HMAC-SHA1).

use rtc::crypto::{CryptoError, RTCCrypto};

use super::cipher::{cm_iv, gcm_iv, Cipher};
use super::{packet_index, MasterKey, SrtpProfile};
use crate::engine::wire::{SeqNo, Ssrc};

/// How far behind the newest packet index of an SSRC a packet may still be sealed, at most and
/// at least. Sealing the same index twice would reuse a GCM nonce (and a CM keystream), so the
/// sealer remembers which of the last `window` indices of each SSRC it sealed, and with which
/// tag, and refuses anything older. The window is chosen per SSRC on its first packet: the
/// sender's own history (a leg never sends or retransmits further back), so an audio leg's 16
/// packets cost 264 bytes here and a video leg's 512 about 2 kB, not 4.2 kB each.
pub const MAX_WINDOW: u16 = 1024;
/// See [`MAX_WINDOW`]; one word of the bitmap.
pub const MIN_WINDOW: u16 = 64;

/// Why a packet was not sealed. The sealer's state is unchanged after an error.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not an RTP packet: shorter than its header, version not 2, or an RTCP payload type.
    #[error("not an RTP packet")]
    NotRtp,
    /// The buffer has no room for the tag after `len`.
    #[error("no tail room for the SRTP tag: {needed} bytes needed after the packet, {available} available")]
    NoTailRoom {
        /// Tag bytes the profile appends.
        needed: usize,
        /// Bytes after the packet in the buffer.
        available: usize,
    },
    /// This packet index (SSRC, rollover counter, sequence number) was sealed already: sealing
    /// it again would reuse a nonce. A byte-identical retransmission goes through
    /// [`SrtpSealer::reseal`].
    #[error("packet index {index} of SSRC {ssrc:#010x} was sealed already")]
    Reused {
        /// SSRC of the packet.
        ssrc: u32,
        /// 48-bit SRTP packet index (ROC << 16 | SEQ).
        index: u64,
    },
    /// The packet is more than its SSRC's window (at most 1024 packets) behind the newest one
    /// of that SSRC: whether it was sealed already cannot be told.
    #[error("packet index {index} of SSRC {ssrc:#010x} is too old to seal")]
    TooOld {
        /// SSRC of the packet.
        ssrc: u32,
        /// 48-bit SRTP packet index.
        index: u64,
    },
    /// [`SrtpSealer::reseal`] of a packet index that was never sealed (use `seal`).
    #[error("packet index {index} of SSRC {ssrc:#010x} was never sealed")]
    NotSealed {
        /// SSRC of the packet.
        ssrc: u32,
        /// 48-bit SRTP packet index.
        index: u64,
    },
    /// [`SrtpSealer::reseal`] of bytes that differ from the first sealing of that index. The
    /// output (one nonce, two plaintexts) was wiped from the buffer: it must never be sent.
    #[error("packet index {index} of SSRC {ssrc:#010x} resealed with different bytes")]
    ResealMismatch {
        /// SSRC of the packet.
        ssrc: u32,
        /// 48-bit SRTP packet index.
        index: u64,
    },
    /// 2^48 packets on one SSRC: RFC 3711 §9.2 requires new keys.
    #[error("rollover counter exhausted on SSRC {0:#010x}")]
    RocExhausted(u32),
    /// The crypto provider failed.
    #[error("crypto provider: {0}")]
    Crypto(#[from] CryptoError),
}

/// Why a sealer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SealerError {
    /// Master key or salt length does not match the profile.
    #[error("master key/salt lengths do not fit {0}")]
    KeyLength(SrtpProfile),
    /// The crypto provider failed.
    #[error("crypto provider: {0}")]
    Crypto(#[from] CryptoError),
}

/// Rollover state of one SSRC (RFC 3711 §3.3.1), seen from the sender.
struct SsrcState {
    ssrc: u32,
    /// Highest packet index sealed (ROC << 16 | SEQ).
    highest: u64,
    /// A power of two in `MIN_WINDOW..=MAX_WINDOW`.
    window: u64,
    /// Bit `i % window` set: index `i` (within `window` of `highest`) was sealed.
    sealed: Box<[u64]>,
    /// The first 4 bytes of the tag index `i` was sealed with, at `i % window`: what
    /// [`SrtpSealer::reseal`] compares to tell a byte-identical retransmission.
    tags: Box<[u32]>,
}

impl SsrcState {
    fn new(ssrc: u32, window: u16, first: u64, tag: u32) -> SsrcState {
        let window = window.clamp(MIN_WINDOW, MAX_WINDOW).next_power_of_two();
        let mut s = SsrcState {
            ssrc,
            highest: first,
            window: u64::from(window),
            sealed: vec![0; usize::from(window / 64)].into_boxed_slice(),
            tags: vec![0; usize::from(window)].into_boxed_slice(),
        };
        s.mark(first, tag);
        s
    }

    /// The packet index of sequence number `seq` (RFC 3711 Appendix A, the estimate rtc-srtp
    /// also makes: a sequence number more than 2^15 behind the newest belongs to the next
    /// rollover, one more than 2^15 ahead to the previous, never below ROC 0).
    fn index_of(&self, seq: u16) -> Result<u64, SealError> {
        packet_index(self.highest, seq).ok_or(SealError::RocExhausted(self.ssrc))
    }

    fn check(&self, index: u64) -> Result<(), SealError> {
        if index > self.highest {
            return Ok(());
        }
        if self.highest - index >= self.window {
            return Err(SealError::TooOld {
                ssrc: self.ssrc,
                index,
            });
        }
        if self.is_marked(index) {
            return Err(SealError::Reused {
                ssrc: self.ssrc,
                index,
            });
        }
        Ok(())
    }

    /// The tag of `index` if it was sealed and is still within the window.
    fn sealed_tag(&self, index: u64) -> Result<u32, SealError> {
        if index > self.highest || !self.is_marked(index) {
            return Err(SealError::NotSealed {
                ssrc: self.ssrc,
                index,
            });
        }
        if self.highest - index >= self.window {
            return Err(SealError::TooOld {
                ssrc: self.ssrc,
                index,
            });
        }
        Ok(self.tags[(index % self.window) as usize])
    }

    fn commit(&mut self, index: u64, tag: u32) {
        if index > self.highest {
            let ahead = index - self.highest;
            if ahead >= self.window {
                self.sealed.fill(0);
            } else {
                for i in self.highest + 1..index {
                    self.unmark(i);
                }
            }
            self.highest = index;
        }
        self.mark(index, tag);
    }

    fn bit(&self, index: u64) -> (usize, u64) {
        let slot = index % self.window;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }
    fn mark(&mut self, index: u64, tag: u32) {
        let (w, b) = self.bit(index);
        self.sealed[w] |= b;
        self.tags[(index % self.window) as usize] = tag;
    }
    fn unmark(&mut self, index: u64) {
        let (w, b) = self.bit(index);
        self.sealed[w] &= !b;
    }
    fn is_marked(&self, index: u64) -> bool {
        let (w, b) = self.bit(index);
        self.sealed[w] & b != 0
    }
}

/// The outbound SRTP context of one leg: seals clear RTP packets in place.
///
/// Built once per peer connection from its local [`MasterKey`] and kept as long as that
/// connection: a second sealer with the same key would start its rollover counters and its
/// record of sealed indices afresh. Per SSRC (added on its first packet, the only allocation):
/// the rollover counter, starting at 0 as in rtc-srtp, and which of the last `window` indices
/// were sealed with which tag (4 bytes and a bit each, [`MAX_WINDOW`] at most). No allocation
/// per packet.
///
/// Exclusive use: rtc must never send RTP on an SSRC sealed here, or the two contexts would
/// reuse nonces (see the engine notes).
pub struct SrtpSealer {
    profile: SrtpProfile,
    cipher: Cipher,
    ssrcs: Vec<SsrcState>,
}

impl SrtpSealer {
    /// A sealer for `profile` with `master` (the [`super::SrtpKeys::local`] of the leg's peer
    /// connection). `crypto` computes the session keys and then the packets: pass rtc's provider
    /// (e.g. `SrtpKeyCapture::inner().crypto()`), not the capture itself.
    pub fn new(
        profile: SrtpProfile,
        master: &MasterKey,
        crypto: &dyn RTCCrypto,
    ) -> Result<SrtpSealer, SealerError> {
        let cipher = Cipher::new(profile, master, crypto)?;
        Ok(SrtpSealer {
            profile,
            cipher,
            ssrcs: Vec::new(),
        })
    }

    /// The profile this sealer encrypts with.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Tail room [`seal`](Self::seal) needs after the packet (the tag length).
    pub fn overhead(&self) -> usize {
        self.profile.overhead()
    }

    /// The rollover counter of `ssrc` (of its newest sealed packet); `None` before its first.
    pub fn roc(&self, ssrc: Ssrc) -> Option<u32> {
        self.ssrcs
            .iter()
            .find(|s| s.ssrc == ssrc.0)
            .map(|s| (s.highest >> 16) as u32)
    }

    /// Reads (and does nothing with) what sealing `ssrc`'s packet `seq` next will read first:
    /// the SSRC's record of sealed indices at that index. See `Leg::touch`.
    #[inline]
    pub fn touch(&self, ssrc: Ssrc, seq: SeqNo) {
        if let Some(s) = self.ssrcs.iter().find(|s| s.ssrc == ssrc.0) {
            let slot = (u64::from(seq.0) & (s.window - 1)) as usize;
            let word = s.sealed.get(slot / 64).copied();
            let tag = s.tags.get(slot).copied();
            std::hint::black_box((word, tag));
        }
    }

    /// Encrypts the clear RTP packet `buf[..len]` in place and appends its tag; returns the SRTP
    /// packet's length (`len + overhead()`). `buf` must extend at least `overhead()` bytes past
    /// `len`. Refuses a packet index it sealed already ([`SealError::Reused`]). On error the
    /// sealer's state is unchanged and nothing in `buf` is fit to send. `window` is read on the
    /// SSRC's first packet only: how many indices back its packets may be sealed or resealed
    /// (clamped to [`MIN_WINDOW`]`..=`[`MAX_WINDOW`], rounded up to a power of two).
    pub fn seal(&mut self, buf: &mut [u8], len: usize, window: u16) -> Result<usize, SealError> {
        let (header_len, ssrc, seq) = self.parse(buf, len)?;
        let slot = self.ssrcs.iter().position(|s| s.ssrc == ssrc);
        let index = match slot {
            Some(i) => {
                let state = &self.ssrcs[i];
                let index = state.index_of(seq)?;
                state.check(index)?;
                index
            }
            // An SSRC's first packet has ROC 0 (RFC 3711 §3.3.1; rtc-srtp and libsrtp alike).
            None => u64::from(seq),
        };
        let tag = self.encrypt(buf, len, header_len, ssrc, index)?;
        match slot {
            Some(i) => self.ssrcs[i].commit(index, tag),
            None => self.ssrcs.push(SsrcState::new(ssrc, window, index, tag)),
        }
        Ok(len + self.profile.overhead())
    }

    /// Seals again a packet index sealed before, for a plain retransmission: `buf[..len]` must
    /// be byte for byte the clear packet of the first sealing, and the output then is byte for
    /// byte the first SRTP packet (same nonce, same plaintext: nothing new for an observer).
    /// Checked: if the new tag differs from the first one (other header or payload bytes), the
    /// output is wiped and [`SealError::ResealMismatch`] returned. Only within the SSRC's
    /// window (see [`seal`](Self::seal)); the state is never changed.
    pub fn reseal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SealError> {
        let (header_len, ssrc, seq) = self.parse(buf, len)?;
        let Some(state) = self.ssrcs.iter().find(|s| s.ssrc == ssrc) else {
            return Err(SealError::NotSealed {
                ssrc,
                index: u64::from(seq),
            });
        };
        let index = state.index_of(seq)?;
        let first = state.sealed_tag(index)?;
        let tag = self.encrypt(buf, len, header_len, ssrc, index)?;
        let out = len + self.profile.overhead();
        if tag != first {
            buf[..out].fill(0);
            return Err(SealError::ResealMismatch { ssrc, index });
        }
        Ok(out)
    }

    /// Checks `buf[..len]` is an RTP packet with tail room for the tag; its header length,
    /// SSRC and sequence number.
    fn parse(&self, buf: &[u8], len: usize) -> Result<(usize, u32, u16), SealError> {
        if len > buf.len() {
            return Err(SealError::NotRtp);
        }
        let needed = self.profile.overhead();
        let available = buf.len() - len;
        if available < needed {
            return Err(SealError::NoTailRoom { needed, available });
        }
        let header_len = rtp_header_len(&buf[..len])?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        Ok((header_len, ssrc, seq))
    }

    /// Encrypts `buf[header_len..len]` for packet `index` and writes the tag after it; returns
    /// the tag's first 4 bytes.
    fn encrypt(
        &mut self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<u32, CryptoError> {
        let tag_len = self.profile.overhead();
        let roc = (index >> 16) as u32;
        let seq = index as u16;
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (header, rest) = buf.split_at_mut(header_len);
                let (payload, tail) = rest.split_at_mut(len - header_len);
                aead.seal_in_place(&iv, header, payload, &mut tail[..tag_len])?;
            }
            Cipher::Cm { ctr, mac, salt } => {
                let iv = cm_iv(salt, ssrc, roc, seq);
                ctr.apply_keystream(&iv, &mut buf[header_len..len])?;
                // RFC 3711 §4.2: tag = HMAC-SHA1(auth key, packet || ROC), truncated.
                let mut full = [0u8; 20];
                let (packet, tail) = buf.split_at_mut(len);
                mac.sign(&[packet, &roc.to_be_bytes()], &mut full)?;
                tail[..tag_len].copy_from_slice(&full[..tag_len]);
            }
        }
        Ok(u32::from_be_bytes([
            buf[len],
            buf[len + 1],
            buf[len + 2],
            buf[len + 3],
        ]))
    }
}

/// Length of the RTP header of `packet` (fixed part, CSRCs, extension), checked against its
/// length. Payload types 64-95 are refused: on a muxed port they are RTCP (RFC 5761 §4).
pub(super) fn rtp_header_len(packet: &[u8]) -> Result<usize, SealError> {
    if packet.len() < 12 || packet[0] >> 6 != 2 || (64..96).contains(&(packet[1] & 0x7f)) {
        return Err(SealError::NotRtp);
    }
    let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        if packet.len() < len + 4 {
            return Err(SealError::NotRtp);
        }
        let words = u16::from_be_bytes([packet[len + 2], packet[len + 3]]);
        len += 4 + 4 * usize::from(words);
    }
    if len > packet.len() {
        return Err(SealError::NotRtp);
    }
    Ok(len)
}
