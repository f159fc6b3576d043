//! The forwarding hot path, free of any I/O: [`FanOut`] hands one incoming RTP packet to every
//! subscriber queue of one published track.
//!
//! Owns: the per-track list of subscriber [`Slot`]s, the [`DropReason`] vocabulary and the
//! per-task [`ForwardStats`]. Does not own tasks, peer connections or timers: the publisher task
//! (`publisher.rs`) owns one `FanOut` per incoming track and applies membership changes to it
//! between packets, so no lock is taken per packet.
//!
//! Rules kept here (docs/architecture.md §6): no lock held across packets, no `.await` and no log
//! above `trace` in [`FanOut::forward`]; a packet is shared ([`Packet`] is an `Arc`) until a
//! subscriber's [`PacketSink`] makes its one per-leg copy; a subscriber without room drops the
//! packet for itself only.
//!
//! A [`PacketSink`] is where one subscriber's packets go: in the server, straight into that
//! subscriber's peer connection (`subscriber.rs`, no task or queue of ours in between); in
//! tests and benches, a bounded queue.

use std::sync::Arc;

use bytes::Bytes;
use rtc::rtp;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// One forwarded RTP packet, shared by every subscriber of a track. Cloning it is one
/// reference-count increment; the single per-subscriber copy happens in the subscriber task,
/// because webrtc-rs's `write_rtp` takes the packet by value.
pub type Packet = Arc<rtp::packet::Packet>;

/// Capacity of a queue-backed subscriber sink (tests and benches), in packets: about 1 s of
/// 2 Mbit/s video. Full policy: the publisher task drops the newest packet for that subscriber
/// only, counts [`DropReason::SubscriberQueueFull`] and asks for a keyframe (rate-limited) so the
/// subscriber recovers, exactly as after network loss. The server's direct sinks apply the same
/// policy to webrtc-rs's own per-peer-connection queue (256 events).
pub const SUBSCRIBER_QUEUE_CAPACITY: usize = 256;

/// What a [`PacketSink`] did with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued for someone else to write.
    Queued,
    /// Written to the subscriber's peer connection.
    Written,
    /// No room right now (slow or stalled subscriber): dropped for this subscriber only.
    Full,
    /// The subscriber is gone: its slot is removed.
    Closed,
    /// Dropped for this packet only, for the given reason.
    Dropped(DropReason),
}

/// Where one subscriber's packets go. [`offer`](Self::offer) runs on the forwarding hot path of
/// the publisher's track: it must never wait.
pub trait PacketSink: Send {
    /// Takes `pkt` now or reports why not.
    fn offer(&mut self, pkt: &Packet) -> Offer;
}

/// A bounded queue drained by another task: `try_send`, never waits.
impl PacketSink for mpsc::Sender<Packet> {
    fn offer(&mut self, pkt: &Packet) -> Offer {
        match self.try_send(Arc::clone(pkt)) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(_)) => Offer::Full,
            Err(TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

/// Why a packet did not reach a subscriber. Every early return on the forwarding path names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The subscriber's bounded queue was full (slow or stalled subscriber).
    SubscriberQueueFull,
    /// The subscriber's queue was closed (subscriber released); its slot is removed.
    SubscriberClosed,
    /// The packet's payload type has no equivalent codec on the subscriber's peer connection.
    UnmappedPayloadType,
    /// webrtc-rs refused the write (track not bound, peer connection closing).
    WriteFailed,
    /// A data-channel message could not be queued for a subscriber (queue full or no open
    /// channel on the subscriber side).
    DataChannelDropped,
}

impl DropReason {
    /// Number of variants (size of per-reason counter arrays).
    pub const COUNT: usize = 5;

    /// Every reason, in counter-array order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::SubscriberQueueFull,
        DropReason::SubscriberClosed,
        DropReason::UnmappedPayloadType,
        DropReason::WriteFailed,
        DropReason::DataChannelDropped,
    ];

    /// Position in per-reason counter arrays.
    pub const fn index(self) -> usize {
        match self {
            DropReason::SubscriberQueueFull => 0,
            DropReason::SubscriberClosed => 1,
            DropReason::UnmappedPayloadType => 2,
            DropReason::WriteFailed => 3,
            DropReason::DataChannelDropped => 4,
        }
    }

    /// Stable snake_case name, for metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::SubscriberQueueFull => "subscriber_queue_full",
            DropReason::SubscriberClosed => "subscriber_closed",
            DropReason::UnmappedPayloadType => "unmapped_payload_type",
            DropReason::WriteFailed => "write_failed",
            DropReason::DataChannelDropped => "data_channel_dropped",
        }
    }
}

/// Counters kept by one forwarding task and flushed to the shared stats now and then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Packets a subscriber sink took (one per subscriber per packet).
    pub forwarded: u64,
    /// Of those, packets written straight to a subscriber's peer connection.
    pub written: u64,
    /// Drops, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::COUNT],
}

impl ForwardStats {
    /// Counts one drop.
    #[inline]
    pub fn drop_one(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.forwarded == 0 && self.written == 0 && self.dropped.iter().all(|d| *d == 0)
    }
}

/// Identifies one subscription slot within a [`FanOut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub u64);

/// One subscriber of a track: its sink.
pub struct Slot {
    id: SlotId,
    sink: Box<dyn PacketSink>,
    /// Set when a packet was dropped for lack of room; cleared on the next successful
    /// hand-off. The false→true transition is what triggers a keyframe request.
    needs_keyframe: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("id", &self.id)
            .field("needs_keyframe", &self.needs_keyframe)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// A slot feeding the bounded queue `tx`.
    pub fn new(id: SlotId, tx: mpsc::Sender<Packet>) -> Self {
        Self::with_sink(id, tx)
    }

    /// A slot feeding `sink`.
    pub fn with_sink(id: SlotId, sink: impl PacketSink + 'static) -> Self {
        Self {
            id,
            sink: Box::new(sink),
            needs_keyframe: false,
        }
    }

    /// This slot's id.
    pub fn id(&self) -> SlotId {
        self.id
    }
}

/// The subscriber list of one published track, owned by that track's task.
#[derive(Debug, Default)]
pub struct FanOut {
    slots: Vec<Slot>,
    stats: ForwardStats,
}

impl FanOut {
    /// An empty fan-out.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber; a slot with the same id is replaced.
    pub fn add(&mut self, slot: Slot) {
        self.slots.retain(|s| s.id != slot.id);
        self.slots.push(slot);
    }

    /// Removes a subscriber; returns whether it was present.
    pub fn remove(&mut self, id: SlotId) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.id != id);
        before != self.slots.len()
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is no subscriber.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counters since the last [`take_stats`](Self::take_stats).
    pub fn stats(&self) -> &ForwardStats {
        &self.stats
    }

    /// Returns and resets the counters.
    pub fn take_stats(&mut self) -> ForwardStats {
        std::mem::take(&mut self.stats)
    }

    /// HOT PATH: offers `pkt` to every subscriber's sink; no `.await`. A sink without room
    /// drops the packet for that subscriber only; a closed sink removes its slot. Returns `true`
    /// when at least one subscriber just started dropping, i.e. when a keyframe should be
    /// requested for it.
    pub fn forward(&mut self, pkt: &Packet) -> bool {
        let stats = &mut self.stats;
        let mut keyframe_needed = false;
        self.slots.retain_mut(|slot| match slot.sink.offer(pkt) {
            offer @ (Offer::Queued | Offer::Written) => {
                stats.forwarded += 1;
                if offer == Offer::Written {
                    stats.written += 1;
                }
                slot.needs_keyframe = false;
                true
            }
            Offer::Full => {
                stats.drop_one(DropReason::SubscriberQueueFull);
                if !slot.needs_keyframe {
                    slot.needs_keyframe = true;
                    keyframe_needed = true;
                }
                true
            }
            Offer::Closed => {
                stats.drop_one(DropReason::SubscriberClosed);
                false
            }
            Offer::Dropped(reason) => {
                stats.drop_one(reason);
                true
            }
        });
        keyframe_needed
    }
}

/// Builds a synthetic VP8-shaped RTP packet (for benches and tests): version 2, the given
/// sequence number, timestamp `seq * 3000`, SSRC and payload type, and `payload_len` bytes of
/// payload: a VP8 key-frame start (`10 00`), then `seq` big-endian (a marker the receiver can
/// check), then 0xA5.
pub fn synthetic_packet(
    seq: u16,
    ssrc: u32,
    payload_type: u8,
    payload_len: usize,
) -> rtp::packet::Packet {
    let mut payload = vec![0xA5u8; payload_len.max(4)];
    // A VP8 payload descriptor starting partition 0 (0x10) and a key-frame payload header
    // (bit 0 clear): engines that hold video back until a keyframe forward every packet.
    payload[..2].copy_from_slice(&[0x10, 0x00]);
    payload[2..4].copy_from_slice(&seq.to_be_bytes());
    rtp::packet::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type,
            sequence_number: seq,
            timestamp: u32::from(seq).wrapping_mul(3000),
            ssrc,
            marker: true,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u64, cap: usize) -> (Slot, mpsc::Receiver<Packet>) {
        let (tx, rx) = mpsc::channel(cap);
        (Slot::new(SlotId(id), tx), rx)
    }

    #[test]
    fn forward_shares_one_packet_with_every_slot() {
        let mut fan = FanOut::new();
        let (a, mut ra) = slot(1, 4);
        let (b, mut rb) = slot(2, 4);
        fan.add(a);
        fan.add(b);
        let pkt: Packet = Arc::new(synthetic_packet(7, 1, 96, 100));
        assert!(!fan.forward(&pkt));
        let pa = ra.try_recv().expect("slot a got the packet");
        let pb = rb.try_recv().expect("slot b got the packet");
        assert!(Arc::ptr_eq(&pa, &pkt) && Arc::ptr_eq(&pb, &pkt));
        assert_eq!(fan.stats().forwarded, 2);
    }

    #[test]
    fn full_queue_drops_for_that_slot_only_and_asks_for_a_keyframe_once() {
        let mut fan = FanOut::new();
        let (slow, _rs) = slot(1, 1);
        let (fast, mut rf) = slot(2, 16);
        fan.add(slow);
        fan.add(fast);
        let mut keyframe_requests = 0;
        for seq in 0..5u16 {
            if fan.forward(&Arc::new(synthetic_packet(seq, 1, 96, 10))) {
                keyframe_requests += 1;
            }
        }
        assert_eq!(keyframe_requests, 1);
        assert_eq!(fan.stats().dropped(DropReason::SubscriberQueueFull), 4);
        let mut got = 0;
        while rf.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 5);
        assert_eq!(fan.len(), 2);
    }

    #[test]
    fn closed_queue_removes_the_slot() {
        let mut fan = FanOut::new();
        let (a, ra) = slot(1, 4);
        fan.add(a);
        drop(ra);
        fan.forward(&Arc::new(synthetic_packet(1, 1, 96, 10)));
        assert!(fan.is_empty());
        assert_eq!(fan.take_stats().dropped(DropReason::SubscriberClosed), 1);
        assert!(fan.stats().is_empty());
    }

    #[test]
    fn remove_and_replace() {
        let mut fan = FanOut::new();
        let (a, _ra) = slot(1, 4);
        let (a2, _ra2) = slot(1, 4);
        fan.add(a);
        fan.add(a2);
        assert_eq!(fan.len(), 1);
        assert!(fan.remove(SlotId(1)));
        assert!(!fan.remove(SlotId(1)));
    }

    /// A sink that answers from a script, for the outcomes a queue cannot produce.
    struct Scripted(Vec<Offer>);

    impl PacketSink for Scripted {
        fn offer(&mut self, _pkt: &Packet) -> Offer {
            self.0.pop().unwrap_or(Offer::Closed)
        }
    }

    #[test]
    fn direct_writes_count_as_sent_and_per_packet_drops_keep_the_slot() {
        let mut fan = FanOut::new();
        // Popped from the end: Dropped, Written, Full, Written, then Closed.
        fan.add(Slot::with_sink(
            SlotId(1),
            Scripted(vec![
                Offer::Written,
                Offer::Full,
                Offer::Written,
                Offer::Dropped(DropReason::UnmappedPayloadType),
            ]),
        ));
        let pkt: Packet = Arc::new(synthetic_packet(1, 1, 96, 10));
        assert!(!fan.forward(&pkt), "a per-packet drop asks for no keyframe");
        assert!(!fan.forward(&pkt));
        assert!(fan.forward(&pkt), "running out of room asks for a keyframe");
        assert!(!fan.forward(&pkt));
        assert_eq!(fan.len(), 1);
        assert!(!fan.forward(&pkt));
        assert!(fan.is_empty(), "a closed sink leaves");
        let s = fan.take_stats();
        assert_eq!((s.forwarded, s.written), (2, 2));
        assert_eq!(s.dropped(DropReason::UnmappedPayloadType), 1);
        assert_eq!(s.dropped(DropReason::SubscriberQueueFull), 1);
        assert_eq!(s.dropped(DropReason::SubscriberClosed), 1);
    }
}
