//! A shard's batched UDP send: which queued datagrams leave together, and the `sendmmsg` calls
//! that send them, with UDP generic segmentation offload (GSO, `UDP_SEGMENT`) where the kernel
//! takes it.
//!
//! Owns [`SendPlan`] (the grouping, pure) and [`UdpSender`] (the calls and their failure
//! policy). Does not own the queue (the forwarder's, `forward.rs`), the socket or the loop
//! (`runtime.rs`).
//!
//! Why: on the fan-out path the kernel's work per datagram (a message's syscall share, route
//! lookup, skb allocation, the device's transmit and, on loopback, the receive side) was about
//! half of roomd's CPU per forwarded packet (BENCHMARKS.md §4.3). A subscriber gets each
//! publisher frame as a burst of packets of one size; with GSO the burst is one message and
//! one skb down to the device, which (or the kernel, as late as it can) splits it again. The
//! receiver sees the same datagrams.
//!
//! The kernel's rules, which the plan follows: the segment size G travels in a control
//! message, and nix's `sendmmsg` gives all of a call's messages the same control messages, so
//! a window has one G — its largest datagram; in a message every datagram but the last is
//! exactly G bytes and the last at most G; a lone datagram of at most G bytes goes out as it
//! is; at most [`MAX_SEGMENTS`] datagrams per message; G plus the IP and UDP headers within
//! the route's MTU ([`MAX_SEGMENT`] for a 1,500-byte MTU; a window with a larger datagram is
//! sent without GSO).
//!
//! Order: each destination's datagrams leave in queue order (its messages are cut from that
//! order and sent in that order); datagrams to different destinations may change places,
//! which no receiver can tell.
//!
//! Failure policy: a message the kernel refuses is dropped and its datagrams counted
//! ([`SendStats::send_errors`]), never retried — except when the refusal is the segmentation
//! itself (`EIO`: the device cannot checksum; `EINVAL`: a route's MTU below G): then GSO is
//! switched off for this sender for good (logged once) and the rest of the window goes out
//! datagram by datagram.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tracing::warn;

/// Messages per `sendmmsg` call.
pub(crate) const BATCH: usize = 32;
/// Most datagrams one [`UdpSender::send`] takes (the runtime's flush window).
pub(crate) const WINDOW: usize = 128;
/// Most datagrams in one GSO message (older kernels accept 64).
pub const MAX_SEGMENTS: usize = 32;
/// Largest segment size used: a 1,500-byte MTU less the IPv6 and UDP headers.
pub const MAX_SEGMENT: usize = 1452;

/// Slots of [`SendPlan`]'s destination table: a power of two, twice [`WINDOW`] (at most half
/// full, so probes stay short).
const TABLE_SLOTS: usize = 2 * WINDOW;
/// End of a destination's chain in [`SendPlan::next`].
const NONE: u16 = u16::MAX;

/// How a window of datagrams is grouped into messages. See the module documentation.
#[derive(Debug, Default)]
pub struct SendPlan {
    /// Destinations in order of first appearance: key, first and last datagram.
    groups: Vec<(DestKey, u16, u16)>,
    /// Per datagram: the next datagram to the same destination ([`NONE`]: the last).
    next: Vec<u16>,
    /// Open addressing by destination: group index + 1 (0: empty). Grouping in one pass this
    /// way replaced a sort of the window (≈ 1.3 % of roomd's CPU at 1x25, BENCHMARKS §4.11).
    table: Vec<u16>,
    /// Datagram indices, message after message.
    order: Vec<u16>,
    /// Where each message ends in `order`.
    ends: Vec<u16>,
    /// The segment size, when some message holds more than one datagram.
    segment: Option<u16>,
}

impl SendPlan {
    /// Groups `window` (destination, length), in queue order, into messages: runs to one
    /// destination when `gso`, else one message per datagram. `window` holds at most
    /// [`WINDOW`] datagrams (more are not planned).
    pub fn plan(&mut self, window: &[(SocketAddr, usize)], gso: bool) {
        let window = &window[..window.len().min(WINDOW)];
        self.order.clear();
        self.ends.clear();
        self.segment = None;
        let largest = window.iter().map(|d| d.1).max().unwrap_or(0);
        if !gso || window.len() < 2 || largest > MAX_SEGMENT || largest == 0 {
            self.order.extend((0..window.len()).map(|i| i as u16));
            self.ends.extend((1..=window.len()).map(|i| i as u16));
            return;
        }
        self.group(window);
        let mut longest = 1;
        for g in 0..self.groups.len() {
            // A destination's datagrams in queue order, cut into runs.
            let mut i = self.groups[g].1;
            let mut run = 0usize;
            let mut last = 0usize;
            while i != NONE {
                let len = window[usize::from(i)].1;
                if run > 0 && (last != largest || run == MAX_SEGMENTS) {
                    self.ends.push(self.order.len() as u16);
                    run = 0;
                }
                self.order.push(i);
                run += 1;
                longest = longest.max(run);
                last = len;
                i = self.next[usize::from(i)];
            }
            self.ends.push(self.order.len() as u16);
        }
        if longest > 1 {
            self.segment = Some(largest as u16);
        }
    }

    /// Chains each datagram of `window` (at most [`WINDOW`]) to the next one to its
    /// destination, destinations in order of first appearance.
    fn group(&mut self, window: &[(SocketAddr, usize)]) {
        self.groups.clear();
        self.next.clear();
        self.next.resize(window.len(), NONE);
        self.table.clear();
        self.table.resize(TABLE_SLOTS, 0);
        for (i, d) in window.iter().enumerate() {
            // `window.len()` ≤ WINDOW, so every index and group number fits in a u16.
            let i = i as u16;
            let key = DestKey::of(d.0);
            let mut slot = key.slot();
            loop {
                match self.table[slot] {
                    0 => {
                        self.groups.push((key, i, i));
                        self.table[slot] = self.groups.len() as u16;
                        break;
                    }
                    g if self.groups[usize::from(g - 1)].0 == key => {
                        let group = &mut self.groups[usize::from(g - 1)];
                        self.next[usize::from(group.2)] = i;
                        group.2 = i;
                        break;
                    }
                    _ => slot = (slot + 1) % TABLE_SLOTS,
                }
            }
        }
    }

    /// Number of messages.
    pub fn messages(&self) -> usize {
        self.ends.len()
    }

    /// The datagram indices of message `m`, in send order.
    pub fn message(&self, m: usize) -> &[u16] {
        &self.order[self.start(m)..usize::from(self.ends[m])]
    }

    /// Keeps the datagrams of messages `m..` only, in the same order, one per message and
    /// without a segment size (what is left of a window when GSO is refused).
    pub fn one_each_from(&mut self, m: usize) {
        let start = self.start(m);
        self.order.drain(..start);
        self.ends.clear();
        self.ends.extend((1..=self.order.len()).map(|i| i as u16));
        self.segment = None;
    }

    /// The segment size of every message, when some message holds several datagrams.
    pub fn segment(&self) -> Option<u16> {
        self.segment
    }

    /// Where message `m` starts in the send order.
    fn start(&self, m: usize) -> usize {
        if m == 0 {
            0
        } else {
            usize::from(self.ends[m - 1])
        }
    }
}

/// A destination as integers (IPv4 as its v4-mapped IPv6 address; an IPv6 address's scope
/// kept, its flow label ignored as the kernel's routing does): cheaper to hash and compare than
/// a `SocketAddr`, at 128 datagrams per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DestKey(u128, u16, u32);

impl DestKey {
    /// Its home slot in [`SendPlan::table`]: the top bits of a multiplicative hash of every
    /// field. A window has at most [`WINDOW`] destinations, so the table is never more than
    /// half full; a collision costs a probe, not correctness.
    fn slot(self) -> usize {
        let folded = (self.0 as u64)
            ^ ((self.0 >> 64) as u64).rotate_left(17)
            ^ (u64::from(self.1) << 32)
            ^ u64::from(self.2);
        let h = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - TABLE_SLOTS.trailing_zeros())) as usize
    }

    fn of(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => Self(u128::from(v4.ip().to_ipv6_mapped()), v4.port(), 0),
            SocketAddr::V6(v6) => Self(u128::from(*v6.ip()), v6.port(), v6.scope_id()),
        }
    }
}

/// Counters of a [`UdpSender`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel took.
    pub datagrams_sent: u64,
    /// Datagrams dropped because the kernel refused their message.
    pub send_errors: u64,
    /// Messages of several datagrams sent (GSO).
    pub gso_messages: u64,
    /// Datagrams sent inside them.
    pub gso_datagrams: u64,
}

/// Sends windows of datagrams from one UDP socket. See the module documentation.
pub struct UdpSender {
    plain: MultiHeaders<SockaddrStorage>,
    /// Headers with room for the `UDP_SEGMENT` control message; used only with one.
    segmented: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
    lengths: Vec<(SocketAddr, usize)>,
    plan: SendPlan,
    gso: bool,
    stats: SendStats,
}

impl UdpSender {
    /// A sender; `gso` says whether to try segmentation offload (the caller checks that the
    /// kernel knows `UDP_SEGMENT`: [`gso_supported`]).
    pub fn new(gso: bool) -> Self {
        Self {
            plain: MultiHeaders::preallocate(BATCH, None),
            segmented: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(u16))),
            addrs: Vec::with_capacity(BATCH),
            lengths: Vec::with_capacity(WINDOW),
            plan: SendPlan::default(),
            gso,
            stats: SendStats::default(),
        }
    }

    /// Whether segmentation offload is (still) on.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// The counters since the last call (then zero).
    pub fn take_stats(&mut self) -> SendStats {
        std::mem::take(&mut self.stats)
    }

    /// Sends `window` (wire destination, bytes), at most [`WINDOW`] datagrams, from the UDP
    /// socket `fd`.
    pub fn send(&mut self, fd: RawFd, window: &[(SocketAddr, &[u8])]) {
        let window = &window[..window.len().min(WINDOW)];
        self.lengths.clear();
        self.lengths
            .extend(window.iter().map(|(dest, bytes)| (*dest, bytes.len())));
        self.plan.plan(&self.lengths, self.gso);
        let mut m = 0;
        while m < self.plan.messages() {
            let calls = m..self.plan.messages().min(m + BATCH);
            match self.call(fd, window, calls) {
                Ok(sent) if sent > 0 => {
                    for k in m..m + sent {
                        let n = self.plan.message(k).len() as u64;
                        self.stats.datagrams_sent += n;
                        if n > 1 {
                            self.stats.gso_messages += 1;
                            self.stats.gso_datagrams += n;
                        }
                    }
                    m += sent;
                }
                Err(Errno::EIO | Errno::EINVAL) if self.plan.segment().is_some() => {
                    warn!("UDP segmentation offload refused by the kernel; sending datagram by datagram from now on");
                    self.gso = false;
                    self.plan.one_each_from(m);
                    m = 0;
                }
                _ => {
                    self.stats.send_errors += self.plan.message(m).len() as u64;
                    m += 1;
                }
            }
        }
    }

    /// One `sendmmsg` of the planned messages `messages`; how many the kernel took.
    fn call(
        &mut self,
        fd: RawFd,
        window: &[(SocketAddr, &[u8])],
        messages: Range<usize>,
    ) -> nix::Result<usize> {
        let count = messages.len();
        let mut iov: [IoSlice<'_>; WINDOW] = std::array::from_fn(|_| IoSlice::new(&[]));
        let mut spans = [(0usize, 0usize); BATCH];
        self.addrs.clear();
        let mut k = 0;
        for (span, m) in spans.iter_mut().zip(messages) {
            let datagrams = self.plan.message(m);
            let start = k;
            for &d in datagrams {
                iov[k] = IoSlice::new(window[usize::from(d)].1);
                k += 1;
            }
            *span = (start, k);
            // A planned message is never empty.
            let first = usize::from(datagrams[0]);
            self.addrs
                .push(Some(SockaddrStorage::from(window[first].0)));
        }
        let slices: [&[IoSlice<'_>]; BATCH] = std::array::from_fn(|j| &iov[spans[j].0..spans[j].1]);
        match self.plan.segment() {
            Some(size) => sendmmsg(
                fd,
                &mut self.segmented,
                slices[..count].iter(),
                &self.addrs,
                [ControlMessage::UdpGsoSegments(&size)],
                MsgFlags::empty(),
            )
            .map(Iterator::count),
            None => {
                let none: [ControlMessage<'_>; 0] = [];
                sendmmsg(
                    fd,
                    &mut self.plain,
                    slices[..count].iter(),
                    &self.addrs,
                    none,
                    MsgFlags::empty(),
                )
                .map(Iterator::count)
            }
        }
    }
}

/// Whether the kernel knows `UDP_SEGMENT` on this socket (Linux ≥ 4.18).
pub fn gso_supported(socket: &std::net::UdpSocket) -> bool {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn messages(p: &SendPlan) -> Vec<Vec<u16>> {
        (0..p.messages()).map(|m| p.message(m).to_vec()).collect()
    }

    #[test]
    fn runs_to_one_destination_become_one_message_in_queue_order() {
        let (a, b) = (addr(1), addr(2));
        // A frame of three equal packets to a and b, interleaved as the fan-out queues them.
        let w = [
            (a, 1200),
            (b, 1200),
            (a, 1200),
            (b, 1200),
            (a, 1200),
            (b, 1200),
        ];
        let mut p = SendPlan::default();
        p.plan(&w, true);
        assert_eq!(p.segment(), Some(1200));
        assert_eq!(messages(&p), vec![vec![0, 2, 4], vec![1, 3, 5]]);
    }

    #[test]
    fn a_shorter_datagram_ends_a_run_and_order_is_kept() {
        let a = addr(1);
        // Video 1200, audio 200 in between, video again, the frame's short last packet.
        let w = [
            (a, 1200),
            (a, 200),
            (a, 1200),
            (a, 1200),
            (a, 700),
            (a, 1200),
        ];
        let mut p = SendPlan::default();
        p.plan(&w, true);
        assert_eq!(p.segment(), Some(1200));
        assert_eq!(messages(&p), vec![vec![0, 1], vec![2, 3, 4], vec![5]]);
        let flat: Vec<u16> = messages(&p).concat();
        assert_eq!(flat, vec![0, 1, 2, 3, 4, 5], "one destination: queue order");
    }

    #[test]
    fn what_is_left_after_a_refusal_goes_one_by_one_in_the_same_order() {
        let (a, b) = (addr(1), addr(2));
        let w = [(a, 1200), (b, 1200), (a, 1200), (b, 1200), (a, 900)];
        let mut p = SendPlan::default();
        p.plan(&w, true);
        assert_eq!(messages(&p), vec![vec![0, 2, 4], vec![1, 3]]);
        p.one_each_from(1);
        assert_eq!(messages(&p), vec![vec![1], vec![3]]);
        assert_eq!(p.segment(), None);
    }

    #[test]
    fn only_datagrams_of_the_largest_size_lead_a_run() {
        let a = addr(1);
        let b = addr(2);
        let w = [(a, 1000), (a, 1000), (b, 1200)];
        let mut p = SendPlan::default();
        p.plan(&w, true);
        assert_eq!(messages(&p), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(p.segment(), None, "no run: no control message");
    }

    #[test]
    fn runs_are_capped_and_gso_off_or_oversize_sends_one_by_one() {
        let a = addr(1);
        let w: Vec<_> = (0..MAX_SEGMENTS + 3).map(|_| (a, 1000)).collect();
        let mut p = SendPlan::default();
        p.plan(&w, true);
        assert_eq!(p.messages(), 2);
        assert_eq!(p.message(0).len(), MAX_SEGMENTS);
        p.plan(&w, false);
        assert_eq!(p.messages(), w.len());
        assert_eq!(p.segment(), None);
        let big = [(a, MAX_SEGMENT + 1), (a, MAX_SEGMENT + 1)];
        p.plan(&big, true);
        assert_eq!(messages(&p), vec![vec![0], vec![1]]);
    }

    /// The grouping `plan` did with a sort until 2026-12-02: every destination's datagrams in
    /// queue order, destinations in address order, runs cut where a datagram is not of the
    /// largest size or the run is full.
    fn sorted_plan(window: &[(SocketAddr, usize)]) -> Vec<Vec<u16>> {
        let largest = window.iter().map(|d| d.1).max().unwrap_or(0);
        let mut sorted: Vec<(DestKey, u16)> = window
            .iter()
            .enumerate()
            .map(|(i, d)| (DestKey::of(d.0), i as u16))
            .collect();
        sorted.sort_by_key(|&(k, i)| (k.0, k.1, k.2, i));
        let mut out: Vec<Vec<u16>> = Vec::new();
        let mut open: Option<(DestKey, usize)> = None;
        for (dest, i) in sorted {
            let len = window[usize::from(i)].1;
            let joins = open.is_some_and(|(d, last)| d == dest && last == largest)
                && out.last().is_some_and(|m| m.len() < MAX_SEGMENTS);
            if joins {
                out.last_mut().expect("a run is open").push(i);
            } else {
                out.push(vec![i]);
            }
            open = Some((dest, len));
        }
        out
    }

    #[test]
    fn one_pass_grouping_makes_the_messages_the_sort_made() {
        // Windows of every size up to WINDOW over 1..40 destinations (v4 and v6), lengths
        // mostly the largest (all of them in every other round, so that runs reach
        // MAX_SEGMENTS), from a fixed pseudo-random sequence.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut p = SendPlan::default();
        for round in 0..400 {
            let dests = 1 + rnd(if round % 4 == 0 { 3 } else { 40 }) as u16;
            let mixed = round % 2 == 1;
            let size = 2 + rnd(WINDOW as u64 - 1) as usize;
            let window: Vec<(SocketAddr, usize)> = (0..size)
                .map(|_| {
                    let d = rnd(u64::from(dests)) as u16;
                    let a = if d % 3 == 0 {
                        SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, d], 5000))
                    } else {
                        SocketAddr::from(([10, 0, (d >> 8) as u8, d as u8], 40_000 + d))
                    };
                    let len = if mixed && rnd(5) == 0 {
                        100 + rnd(1000) as usize
                    } else {
                        1200
                    };
                    (a, len)
                })
                .collect();
            p.plan(&window, true);
            let mut got = messages(&p);
            let mut want = sorted_plan(&window);
            // Destinations may come in another order; each message is the same.
            got.sort();
            want.sort();
            assert_eq!(
                got, want,
                "round {round}: {size} datagrams to {dests} destinations"
            );
        }
    }

    fn receive(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set_read_timeout on a bound socket");
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = sock.recv_from(&mut buf).expect("datagram within 5 s");
                buf[..len].to_vec()
            })
            .collect()
    }

    /// Datagram `i` of a test window: its index in every byte, `len` long.
    fn datagram(i: u8, len: usize) -> Vec<u8> {
        vec![i; len]
    }

    #[test]
    fn the_receivers_get_every_datagram_whole_and_in_order_over_loopback() {
        let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let ra = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rb = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (a, b) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
        let lens = [1200, 1200, 1200, 1200, 300, 1200, 900, 1200, 1200, 1200];
        let dests = [a, b, a, b, a, a, a, b, b, a];
        let bytes: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| datagram(i as u8, l))
            .collect();
        let window: Vec<(SocketAddr, &[u8])> = dests
            .iter()
            .zip(&bytes)
            .map(|(d, b)| (*d, &b[..]))
            .collect();
        // The machines this runs on have Linux ≥ 4.18; without GSO this test would prove
        // nothing the next one does not.
        assert!(gso_supported(&out), "the kernel knows UDP_SEGMENT");
        let mut sender = UdpSender::new(true);
        sender.send(out.as_raw_fd(), &window);
        let stats = sender.take_stats();
        assert_eq!(stats.datagrams_sent, 10);
        assert_eq!(stats.send_errors, 0);
        assert!(sender.gso(), "loopback takes GSO");
        // a: [0,2,4] [5,6] [9]; b: [1,3,7,8]
        assert_eq!(stats.gso_messages, 3);
        assert_eq!(stats.gso_datagrams, 9);
        let want = |d: SocketAddr| -> Vec<Vec<u8>> {
            (0..10)
                .filter(|&i| dests[i] == d)
                .map(|i| bytes[i].clone())
                .collect()
        };
        assert_eq!(receive(&ra, 6), want(a));
        assert_eq!(receive(&rb, 4), want(b));
    }

    #[test]
    fn without_gso_the_same_window_arrives_the_same() {
        let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let r = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dest = r.local_addr().unwrap();
        let bytes: Vec<Vec<u8>> = (0..5).map(|i| datagram(i, 1000)).collect();
        let window: Vec<(SocketAddr, &[u8])> = bytes.iter().map(|b| (dest, &b[..])).collect();
        let mut sender = UdpSender::new(false);
        sender.send(out.as_raw_fd(), &window);
        let stats = sender.take_stats();
        assert_eq!((stats.datagrams_sent, stats.gso_messages), (5, 0));
        assert_eq!(receive(&r, 5), bytes);
    }

    #[test]
    fn a_refused_destination_costs_only_its_own_datagrams() {
        let out = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let r = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let good = r.local_addr().unwrap();
        // Port 0 is refused by the kernel (EINVAL) whatever the offload: the message to it is
        // dropped and counted, the others go out.
        let bad = addr(0);
        let bytes: Vec<Vec<u8>> = (0..4).map(|i| datagram(i, 800)).collect();
        let window = [
            (good, &bytes[0][..]),
            (bad, &bytes[1][..]),
            (good, &bytes[2][..]),
            (good, &bytes[3][..]),
        ];
        let mut sender = UdpSender::new(false);
        sender.send(out.as_raw_fd(), &window);
        let stats = sender.take_stats();
        assert_eq!((stats.datagrams_sent, stats.send_errors), (3, 1));
        assert_eq!(
            receive(&r, 3),
            vec![bytes[0].clone(), bytes[2].clone(), bytes[3].clone()]
        );
    }
}
