//! The retransmission store of one publisher track: the last packets it sent us, in the clear,
//! exactly as they arrived, shared by all the track's legs.
//!
//! Owns `capacity` slots (which packet each holds, indexed by sequence number) and one byte
//! arena the packets are written into back to back, circularly. The arena starts at a sixteenth
//! of `capacity × slot_size` and grows, up to that, whenever it is about to overwrite a packet
//! younger than `max_age`: to what `max_age` of the stream takes at the rate of the lap just
//! written, plus an eighth (at least a quarter more than before, at most twice). A low-bitrate track keeps a
//! small arena (audio, screen share, a thumbnail), a 4 Mbit/s one gets what it needs, and a
//! 1.5 Mbit/s one about 220 kB rather than the 384 kB that doubling gave it. Growing is the
//! only allocation after [`NackRing::new`]; it copies the last lap, so no packet younger than
//! `max_age` is lost. Does
//! not own the mapping from a subscriber's sequence numbers to ours: each leg remembers, for
//! every packet it sent, the [`RingId`] of the stored packet it was made from (`leg.rs`).
//!
//! Identity rule: a [`RingId`] names one stored arrival and is never reused, so a leg that asks
//! for `(id, seq)` gets back exactly the bytes it forwarded the first time or nothing. This is
//! what makes a plain retransmission byte-identical to the first transmission (same SRTP index,
//! same plaintext: AES-GCM never sees one nonce with two plaintexts). For the same reason a
//! duplicate arrival never replaces the stored copy ([`NotStored::Duplicate`]).
//!
//! Bounds: by count (slot `seq % capacity`, so at most `capacity` consecutive sequence numbers),
//! by bytes (the arena: a packet whose bytes were written over is gone) and by age (`max_age`
//! since arrival; older packets are useless to a receiver's jitter buffer).

use std::time::{Duration, Instant};

use super::wire::{SeqNo, Ssrc};

/// Names one stored arrival. Ids start at 1 and only grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingId(pub u64);

/// Why [`NackRing::insert`] did not store a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The same SSRC and sequence number is stored already; the first arrival stays.
    Duplicate,
    /// Its slot holds a newer packet of the same SSRC: at least `capacity` packets behind.
    TooOld,
    /// Longer than a slot.
    TooLarge,
}

/// Why [`NackRing::get`] has no packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The slot now holds another arrival (evicted), or never held this one.
    Evicted,
    /// Still stored but older than `max_age`.
    Expired,
}

/// Counters of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Packets stored.
    pub stored: u64,
    /// Arrivals refused as duplicates.
    pub duplicates: u64,
    /// Arrivals refused as too old.
    pub too_old: u64,
    /// Arrivals refused as too large.
    pub too_large: u64,
    /// Times the arena doubled.
    pub grown: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// 0: empty.
    id: u64,
    ssrc: Ssrc,
    seq: SeqNo,
    len: u16,
    /// Where its bytes start in the arena's unwrapped byte stream (see [`NackRing::written`]).
    at: u64,
    arrived: Option<Instant>,
}

const EMPTY: Slot = Slot {
    id: 0,
    ssrc: Ssrc(0),
    seq: SeqNo(0),
    len: 0,
    at: 0,
    arrived: None,
};

/// Default capacity of a video track's ring, in packets (≈ 1.5 s of 2.5 Mbit/s video).
pub const VIDEO_CAPACITY: u16 = 512;
/// Default slot size: a clear RTP packet of a 1500-byte MTU path.
pub const SLOT_SIZE: usize = 1500;
/// Default age limit.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// Bounded store of clear RTP packets, indexed by sequence number.
#[derive(Debug)]
pub struct NackRing {
    /// The arena: byte `v` of the unwrapped stream lives at `(v - base) % data.len()`.
    data: Vec<u8>,
    /// Stream position of the arena's offset 0 when it last grew (the lap it kept starts there).
    base: u64,
    /// The arena's largest size.
    max_bytes: usize,
    /// End of the last write in the unwrapped stream.
    written: u64,
    /// Stream positions before this were lost when the arena grew.
    valid_from: u64,
    /// Arrival of the packet at the arena's offset 0: the first one the next lap writes over.
    lap_first: Option<Instant>,
    slots: Box<[Slot]>,
    slot_size: usize,
    mask: u16,
    last_id: u64,
    max_age: Duration,
    stats: RingStats,
}

impl NackRing {
    /// A ring of `capacity` packets (rounded up to a power of two, 16 ..= 32768) of at most
    /// `slot_size` bytes each, none older than `max_age`; its arena starts at a sixteenth of
    /// `capacity × slot_size` bytes (48 kB for video's defaults: 1 s of 384 kbit/s) and may
    /// grow to that.
    pub fn new(capacity: u16, slot_size: usize, max_age: Duration) -> Self {
        let capacity = capacity.clamp(16, 32_768).next_power_of_two();
        let slot_size = slot_size.min(usize::from(u16::MAX));
        let max_bytes = usize::from(capacity) * slot_size;
        // At least one largest packet.
        let start = (max_bytes / 16).max(slot_size);
        Self {
            data: vec![0; start],
            base: 0,
            max_bytes,
            written: 0,
            valid_from: 0,
            lap_first: None,
            slots: vec![EMPTY; usize::from(capacity)].into_boxed_slice(),
            slot_size,
            mask: capacity - 1,
            last_id: 0,
            max_age,
            stats: RingStats::default(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The arena's current size in bytes.
    pub fn arena_bytes(&self) -> usize {
        self.data.len()
    }

    /// Age limit of [`get`](Self::get).
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Counters.
    pub fn stats(&self) -> &RingStats {
        &self.stats
    }

    fn index(&self, seq: SeqNo) -> usize {
        usize::from(seq.0 & self.mask)
    }

    /// Stores a copy of `packet` (sequence number `seq` of `ssrc`, arrived `now`). No
    /// allocation.
    pub fn insert(
        &mut self,
        ssrc: Ssrc,
        seq: SeqNo,
        packet: &[u8],
        now: Instant,
    ) -> Result<RingId, NotStored> {
        if packet.len() > self.slot_size {
            self.stats.too_large += 1;
            return Err(NotStored::TooLarge);
        }
        let i = self.index(seq);
        let old = self.slots[i];
        if old.id != 0 && old.ssrc == ssrc {
            if old.seq == seq {
                self.stats.duplicates += 1;
                return Err(NotStored::Duplicate);
            }
            if old.seq.since(seq) > 0 {
                self.stats.too_old += 1;
                return Err(NotStored::TooOld);
            }
        }
        let at = self.reserve(packet.len(), now);
        let start = self.offset(at);
        self.data[start..start + packet.len()].copy_from_slice(packet);
        self.written = at + packet.len() as u64;
        self.last_id += 1;
        self.slots[i] = Slot {
            id: self.last_id,
            ssrc,
            seq,
            // slot_size <= u16::MAX, checked above.
            len: packet.len() as u16,
            at,
            arrived: Some(now),
        };
        self.stats.stored += 1;
        Ok(RingId(self.last_id))
    }

    /// Where the next packet of `len` bytes (<= the arena) goes in the unwrapped stream: after
    /// the last one, or at the start of the next lap if it would not fit before the end. A new
    /// lap about to write over a packet younger than `max_age` grows the arena first.
    fn reserve(&mut self, len: usize, now: Instant) -> u64 {
        let size = self.data.len() as u64;
        let mut at = self.written;
        let in_lap = (at - self.base) % size;
        if in_lap + len as u64 > size {
            at += size - in_lap;
        }
        if self.offset(at) == 0 && at > self.base {
            if let Some(first) = self.lap_first {
                let lap = now.saturating_duration_since(first);
                if lap < self.max_age && self.data.len() < self.max_bytes {
                    self.grow(at, lap);
                }
            }
        }
        if self.offset(at) == 0 {
            self.lap_first = Some(now);
        }
        at
    }

    /// Grows the arena at stream position `at` (the end of a lap), after a lap of `lap`: to
    /// what `max_age` takes at that lap's rate plus an eighth, at least a quarter more, at most
    /// twice the size (a burst after a stall makes one lap look fast; several steps, each
    /// measured again, follow the rate instead) and at most `max_bytes`. The lap just written (`at - size .. at`, the whole old arena in order)
    /// moves to the new arena's start, which becomes stream position `at - size`.
    fn grow(&mut self, at: u64, lap: Duration) {
        let old = self.data.len();
        let lap = lap.max(Duration::from_millis(1));
        let want = (old as f64 * self.max_age.as_secs_f64() / lap.as_secs_f64() * 1.125) as usize;
        let new = want.clamp(old + old / 4, 2 * old).min(self.max_bytes);
        let mut data = vec![0; new];
        data[..old].copy_from_slice(&self.data);
        self.data = data;
        self.base = at - old as u64;
        self.valid_from = self.base;
        self.stats.grown += 1;
    }

    fn offset(&self, at: u64) -> usize {
        // The remainder is below the arena's length, a usize.
        ((at - self.base) % self.data.len() as u64) as usize
    }

    /// The newest id not after the last one stored whose low 32 bits are `low`: how a holder of
    /// 4 bytes of a [`RingId`] gets it back. Right for any id younger than 2^32 arrivals, which
    /// every id a slot can still hold is (at most 32,768 arrivals old); a wrong id is only ever
    /// a miss ([`NackRing::get`] checks the slot's id), never another packet.
    pub fn id_ending_in(&self, low: u32) -> RingId {
        let id = (self.last_id & !u64::from(u32::MAX)) | u64::from(low);
        RingId(if id > self.last_id {
            id.wrapping_sub(1 << 32)
        } else {
            id
        })
    }

    /// The stored bytes of arrival `id` (sequence number `seq`), if still there and not older
    /// than `max_age` at `now`.
    pub fn get(&self, id: RingId, seq: SeqNo, now: Instant) -> Result<&[u8], Miss> {
        let i = self.index(seq);
        let slot = &self.slots[i];
        if slot.id != id.0 || slot.seq != seq {
            return Err(Miss::Evicted);
        }
        // Written over since (a later lap reached its position), or lost when the arena grew.
        if slot.at < self.valid_from || self.written > slot.at + self.data.len() as u64 {
            return Err(Miss::Evicted);
        }
        match slot.arrived {
            Some(at) if now.saturating_duration_since(at) <= self.max_age => {}
            _ => return Err(Miss::Expired),
        }
        let start = self.offset(slot.at);
        Ok(&self.data[start..start + usize::from(slot.len)])
    }

    /// The id of the packet stored for `ssrc`/`seq`, if any (e.g. to answer a NACK by source
    /// sequence number).
    pub fn find(&self, ssrc: Ssrc, seq: SeqNo) -> Option<RingId> {
        let slot = &self.slots[self.index(seq)];
        (slot.id != 0 && slot.ssrc == ssrc && slot.seq == seq).then_some(RingId(slot.id))
    }

    /// Forgets every packet (ids are not reused).
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.valid_from = self.written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[..2].copy_from_slice(&seq.to_be_bytes());
        p
    }

    #[test]
    fn stores_and_returns_the_first_arrival_only() {
        let t0 = Instant::now();
        let mut ring = NackRing::new(16, 100, MAX_AGE);
        let id = ring.insert(Ssrc(1), SeqNo(7), &pkt(7, 20), t0).unwrap();
        assert_eq!(ring.get(id, SeqNo(7), t0).unwrap(), &pkt(7, 20)[..]);
        // A duplicate with other bytes is refused; the stored copy is unchanged.
        let mut dup = pkt(7, 20);
        dup[10] = 0xFF;
        assert_eq!(
            ring.insert(Ssrc(1), SeqNo(7), &dup, t0),
            Err(NotStored::Duplicate)
        );
        assert_eq!(ring.get(id, SeqNo(7), t0).unwrap(), &pkt(7, 20)[..]);
        assert_eq!(ring.find(Ssrc(1), SeqNo(7)), Some(id));
        assert_eq!(ring.find(Ssrc(2), SeqNo(7)), None);
    }

    #[test]
    fn bounded_by_count_by_age_and_by_size() {
        let t0 = Instant::now();
        let mut ring = NackRing::new(16, 100, Duration::from_millis(500));
        assert_eq!(ring.capacity(), 16);
        let first = ring
            .insert(Ssrc(1), SeqNo(65_530), &pkt(1, 10), t0)
            .unwrap();
        // 16 later (across the sequence wrap) takes the same slot: the first is evicted.
        let later = ring
            .insert(Ssrc(1), SeqNo(65_530).wrapping_add(16), &pkt(2, 10), t0)
            .unwrap();
        assert!(later > first);
        assert_eq!(ring.get(first, SeqNo(65_530), t0), Err(Miss::Evicted));
        // The evicted one arriving again now is too old for its slot.
        assert_eq!(
            ring.insert(Ssrc(1), SeqNo(65_530), &pkt(1, 10), t0),
            Err(NotStored::TooOld)
        );
        // Age.
        let at_limit = t0 + Duration::from_millis(500);
        assert!(ring
            .get(later, SeqNo(65_530).wrapping_add(16), at_limit)
            .is_ok());
        assert_eq!(
            ring.get(
                later,
                SeqNo(65_530).wrapping_add(16),
                at_limit + Duration::from_millis(1)
            ),
            Err(Miss::Expired)
        );
        // Size.
        assert_eq!(
            ring.insert(Ssrc(1), SeqNo(3), &pkt(3, 101), t0),
            Err(NotStored::TooLarge)
        );
        let s = ring.stats();
        assert_eq!((s.stored, s.too_old, s.too_large), (2, 1, 1));
    }

    #[test]
    fn the_arena_grows_only_while_it_would_write_over_young_packets() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        // 256 slots of 100 bytes: the arena starts at 1600 bytes and may grow to 25600.
        let mut ring = NackRing::new(256, 100, Duration::from_millis(100));
        assert_eq!(ring.arena_bytes(), 1600);
        // 1 packet of 100 bytes every 10 ms: 16 fit a lap of 1600 bytes, i.e. 160 ms > 100 ms.
        let mut ids = Vec::new();
        for n in 0..40u16 {
            let id = ring
                .insert(Ssrc(1), SeqNo(n), &pkt(n, 100), ms(u64::from(n) * 10))
                .unwrap();
            ids.push(id);
        }
        assert_eq!(ring.arena_bytes(), 1600, "slow enough: no growth");
        let now = ms(390);
        // Every packet younger than the age limit is there; what a lap wrote over was older.
        for n in 30..40u16 {
            assert_eq!(
                ring.get(ids[usize::from(n)], SeqNo(n), now).unwrap(),
                &pkt(n, 100)[..]
            );
        }
        assert_eq!(ring.get(ids[23], SeqNo(23), now), Err(Miss::Evicted));

        // Now 100 bytes every 2 ms (50 kB/s): a lap is 32 ms, every packet of it young: it
        // grows to what the age limit takes at that rate plus an eighth (5,625 bytes: a lap of
        // 112 ms), not to its largest. In three steps: the first lap it measures, 96 ms, was
        // half slow (the least step, a quarter), the next wants more than twice (the most).
        let mut ids = Vec::new();
        for k in 0..200u16 {
            let n = 40 + k;
            let t = ms(400 + u64::from(k) * 2);
            ids.push((n, ring.insert(Ssrc(1), SeqNo(n), &pkt(n, 100), t).unwrap()));
        }
        assert_eq!(ring.arena_bytes(), 5625);
        assert_eq!(ring.stats().grown, 3);
        // Every packet younger than the age limit and within the slots' reach is there.
        let now = ms(400 + 199 * 2);
        for &(n, id) in &ids[200 - 50..] {
            assert_eq!(
                ring.get(id, SeqNo(n), now).unwrap(),
                &pkt(n, 100)[..],
                "packet {n}"
            );
        }

        // Twice as fast again (100 kB/s): a lap of the grown arena (its start no longer at
        // stream position 0) is 56 ms; it grows to about 11,250 bytes (the lap is measured in
        // whole packets) and keeps what it held.
        let mut ids = Vec::new();
        for k in 0..200u16 {
            let n = 240 + k;
            let t = ms(800 + u64::from(k));
            ids.push((n, ring.insert(Ssrc(1), SeqNo(n), &pkt(n, 100), t).unwrap()));
        }
        assert!(
            (11_200..11_300).contains(&ring.arena_bytes()),
            "{}",
            ring.arena_bytes()
        );
        assert_eq!(
            ring.stats().grown,
            5,
            "two steps: a quarter (that lap straddled both rates), then the rest"
        );
        let now = ms(800 + 199);
        for &(n, id) in &ids[200 - 100..] {
            assert_eq!(
                ring.get(id, SeqNo(n), now).unwrap(),
                &pkt(n, 100)[..],
                "packet {n}"
            );
        }
    }

    #[test]
    fn growing_keeps_the_last_lap_and_odd_sizes_skip_the_tail() {
        let t0 = Instant::now();
        let mut ring = NackRing::new(256, 100, Duration::from_secs(1));
        assert_eq!(ring.arena_bytes(), 1600);
        // 70-byte packets: 22 fit a lap (1540 bytes), the 23rd starts the next lap.
        let mut ids = Vec::new();
        for n in 0..23u16 {
            ids.push(ring.insert(Ssrc(1), SeqNo(n), &pkt(n, 70), t0).unwrap());
        }
        assert_eq!(
            ring.arena_bytes(),
            3200,
            "the 23rd would write over packets of no age: twice, the most one step grows"
        );
        for n in 0..23u16 {
            assert_eq!(
                ring.get(ids[usize::from(n)], SeqNo(n), t0).unwrap(),
                &pkt(n, 70)[..],
                "packet {n} survives the growth"
            );
        }
    }

    #[test]
    fn another_source_overwrites_and_ids_are_never_reused() {
        let t0 = Instant::now();
        let mut ring = NackRing::new(16, 100, MAX_AGE);
        let a = ring.insert(Ssrc(1), SeqNo(5), &pkt(5, 10), t0).unwrap();
        let b = ring.insert(Ssrc(2), SeqNo(5), &pkt(6, 10), t0).unwrap();
        assert_eq!(ring.get(a, SeqNo(5), t0), Err(Miss::Evicted));
        assert_eq!(ring.get(b, SeqNo(5), t0).unwrap(), &pkt(6, 10)[..]);
        ring.clear();
        assert_eq!(ring.get(b, SeqNo(5), t0), Err(Miss::Evicted));
        let c = ring.insert(Ssrc(2), SeqNo(5), &pkt(6, 10), t0).unwrap();
        assert!(c > b, "a re-stored packet gets a new id");
        assert_eq!(ring.get(b, SeqNo(5), t0), Err(Miss::Evicted));
    }

    #[test]
    fn four_bytes_of_an_id_give_it_back_across_the_32_bit_wrap() {
        let t0 = Instant::now();
        let mut ring = NackRing::new(16, 100, MAX_AGE);
        let a = ring.insert(Ssrc(1), SeqNo(1), &pkt(1, 10), t0).unwrap();
        assert_eq!(ring.id_ending_in(a.0 as u32), a);
        assert_eq!(
            ring.get(ring.id_ending_in(a.0 as u32), SeqNo(1), t0)
                .unwrap(),
            &pkt(1, 10)[..]
        );
        // As if 2^32 + 4 arrivals had been stored: the next one is 2^32 + 5.
        ring.last_id = (1 << 32) + 4;
        let b = ring.insert(Ssrc(1), SeqNo(2), &pkt(2, 10), t0).unwrap();
        assert_eq!(b, RingId((1 << 32) + 5));
        assert_eq!(ring.id_ending_in(5), b);
        assert_eq!(ring.id_ending_in(3), RingId((1 << 32) + 3));
        assert_eq!(
            ring.id_ending_in(u32::MAX),
            RingId(u64::from(u32::MAX)),
            "before the wrap"
        );
        assert_eq!(
            ring.id_ending_in(6),
            RingId(6),
            "not yet stored: the previous epoch's"
        );
        assert_eq!(
            ring.get(ring.id_ending_in(5), SeqNo(2), t0).unwrap(),
            &pkt(2, 10)[..]
        );
        assert_eq!(
            ring.get(ring.id_ending_in(1), SeqNo(1), t0),
            Err(Miss::Evicted),
            "a's id is not 2^32 + 1"
        );
    }
}
