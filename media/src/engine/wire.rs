//! Newtypes for the values that travel on the wire, so that a function's signature says which
//! number it takes (an SSRC is not a sequence number). One word per concept across the engine:
//! `Ssrc`, `Pt` (payload type), `SeqNo` (RTP sequence number), `Mid` (SDP media id).

use std::fmt;

/// RTP synchronisation source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// RTP payload type (7 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pt(pub u8);

/// RTP sequence number; arithmetic wraps at 2^16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// The number `n` after this one, wrapping.
    pub fn wrapping_add(self, n: u16) -> SeqNo {
        SeqNo(self.0.wrapping_add(n))
    }

    /// Signed distance from `earlier` to `self` in the wrapped space (positive: `self` is newer).
    pub fn since(self, earlier: SeqNo) -> i16 {
        // Reinterpreting the wrapped difference as signed is the RFC 3550 comparison.
        self.0.wrapping_sub(earlier.0) as i16
    }
}

/// SDP media id (`a=mid:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mid(pub String);

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        assert_eq!(SeqNo(2).since(SeqNo(65_535)), 3);
        assert_eq!(SeqNo(65_535).since(SeqNo(2)), -3);
        assert_eq!(SeqNo(65_535).wrapping_add(2), SeqNo(1));
    }
}
