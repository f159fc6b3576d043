//! A shard's ICE-TCP connections: the passive TCP listener on the shard's port number, the
//! accepted connections, their RFC 4571 framing (each packet preceded by its length as two
//! big-endian bytes) and their bounded write buffers.
//!
//! Owned by the shard thread (`runtime.rs`) and driven from its loop: the listener and every
//! connection are non-blocking and appear in the loop's `poll(2)` set
//! ([`TcpTransport::poll_fds`]); no thread, task or channel of their own.
//!
//! - **Accept**: up to [`MAX_CONNECTIONS`] per shard; past it a new connection is closed at once
//!   and counted (`refused`).
//! - **Read**: bytes are framed into packets, each handed to the caller (the shard's
//!   [`super::shard::Shard::handle_packet`] with the connection's 5-tuple). The address table
//!   gives a connection to a peer only after a STUN Binding request on it passes
//!   MESSAGE-INTEGRITY, as for UDP: a connection whose **first** packet is not routed is closed
//!   (`unauthenticated`), and so is one that stays silent for [`AUTH_TIMEOUT`].
//! - **Write**: [`TcpTransport::send`] appends one frame to the connection's buffer
//!   ([`WRITE_BUFFER`] bytes; **full: the frame is dropped and counted** `dropped_full`, the
//!   shard never waits for a slow client) and [`TcpTransport::flush`] writes what the kernel
//!   takes; the rest waits for `POLLOUT`. A frame for a connection that does not exist (closed
//!   meanwhile) is dropped and counted (`dropped_no_connection`).
//! - **Close**: end of stream, a reset, a read or write error, or [`TcpTransport::close`] (its
//!   peer connection was removed) forgets the connection; [`TcpTransport::take_closed`] tells
//!   the caller which 5-tuples to forget in the address table.
//!
//! Owns [`TcpTransport`], [`TcpStats`], [`MAX_CONNECTIONS`], [`WRITE_BUFFER`], [`AUTH_TIMEOUT`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};

use super::demux::FiveTuple;

/// Connections one shard keeps at once; past it new ones are closed at once (counted).
pub const MAX_CONNECTIONS: usize = 1024;

/// Bytes queued for writing on one connection: 256 KiB, some 200 frames of video (a fifth of a
/// second of a 8 Mbit/s stream). Full: the frame is dropped and counted, never waited for.
pub const WRITE_BUFFER: usize = 256 << 10;

/// A connection must carry an authenticated Binding request within this time of being accepted
/// (else it is closed): an idle connection must not hold a slot.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest RFC 4571 frame: the 2-byte length's range.
const MAX_FRAME: usize = u16::MAX as usize;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 << 10;

/// Counters of a shard's ICE-TCP connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections accepted (and kept).
    pub accepted: u64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
    /// Connections closed, for any reason.
    pub closed: u64,
    /// Connections closed because their first packet was not an authenticated Binding request
    /// or they stayed silent for [`AUTH_TIMEOUT`].
    pub unauthenticated: u64,
    /// Packets read and handed to the shard.
    pub frames_in: u64,
    /// Frames queued for writing.
    pub frames_out: u64,
    /// Frames dropped because the connection's write buffer was full.
    pub dropped_full: u64,
    /// Frames dropped because no connection matches their 5-tuple.
    pub dropped_no_connection: u64,
    /// Connections open now.
    pub open: usize,
}

struct Conn {
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    /// Bytes read and not yet framed.
    rx: Vec<u8>,
    /// Bytes to write; `tx[tx_sent..]` is still pending.
    tx: Vec<u8>,
    tx_sent: usize,
    /// Until its first routed packet: the instant it is closed if none came.
    auth_deadline: Option<Instant>,
    closing: bool,
}

impl Conn {
    fn pending(&self) -> usize {
        self.tx.len() - self.tx_sent
    }

    /// Writes what the kernel takes; `Err` when the connection is broken.
    fn write_pending(&mut self) -> io::Result<()> {
        while self.tx_sent < self.tx.len() {
            match self.stream.write(&self.tx[self.tx_sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tx_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        } else if self.tx_sent > WRITE_BUFFER / 2 {
            self.tx.drain(..self.tx_sent);
            self.tx_sent = 0;
        }
        Ok(())
    }
}

/// What an entry of [`TcpTransport::poll_fds`] stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpToken {
    Listener,
    Conn(u64),
}

/// A shard's ICE-TCP listener and connections. See the module documentation.
pub struct TcpTransport {
    listener: TcpListener,
    local: SocketAddr,
    conns: HashMap<u64, Conn>,
    by_remote: HashMap<(SocketAddr, SocketAddr), u64>,
    next: u64,
    /// Connections with bytes queued since the last flush.
    dirty: Vec<u64>,
    closed: Vec<FiveTuple>,
    stats: TcpStats,
    buf: Vec<u8>,
}

impl TcpTransport {
    /// Listens on `addr` (non-blocking).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            // `::` is dual-stack, as the shard's UDP socket.
            socket.set_only_v6(!super::runtime::dual_stack(addr))?;
        }
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        let listener: TcpListener = socket.into();
        let local = listener.local_addr()?;
        Ok(Self {
            listener,
            local,
            conns: HashMap::new(),
            by_remote: HashMap::new(),
            next: 0,
            dirty: Vec::new(),
            closed: Vec::new(),
            stats: TcpStats::default(),
            buf: vec![0; READ_CHUNK],
        })
    }

    /// The listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Counters.
    pub fn stats(&self) -> TcpStats {
        TcpStats {
            open: self.conns.len(),
            ..self.stats
        }
    }

    /// Appends the listener and every connection to a `poll(2)` set (readable; writable too
    /// while bytes wait), with the token of each entry in `tokens`.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>, tokens: &mut Vec<TcpToken>) {
        fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        tokens.push(TcpToken::Listener);
        for (id, c) in &self.conns {
            let mut flags = PollFlags::POLLIN;
            if c.pending() > 0 {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), flags));
            tokens.push(TcpToken::Conn(*id));
        }
    }

    /// Accepts every waiting connection.
    pub fn accept(&mut self, now: Instant) {
        loop {
            let (stream, remote) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or a connection that died before it was taken (ECONNABORTED),
                // or out of descriptors: try again at the next readiness.
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                self.stats.refused += 1;
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            // The listener's address (as the UDP socket's, possibly a wildcard) names the
            // shard address; the client's is unique per connection. IPv4 clients of a
            // dual-stack listener come as v4-mapped addresses: as IPv4.
            let local = self.local;
            let remote = super::runtime::canonical(remote);
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            // Media: no Nagle delay on small frames.
            let _ = stream.set_nodelay(true);
            let id = self.next;
            self.next += 1;
            self.stats.accepted += 1;
            self.by_remote.insert((local, remote), id);
            self.conns.insert(
                id,
                Conn {
                    stream,
                    local,
                    remote,
                    rx: Vec::new(),
                    tx: Vec::new(),
                    tx_sent: 0,
                    auth_deadline: Some(now + AUTH_TIMEOUT),
                    closing: false,
                },
            );
        }
    }

    /// Reads what a readable connection holds and hands each whole frame to `deliver` (with
    /// the connection's 5-tuple); `deliver` says whether the shard routed it. Closes the
    /// connection at end of stream, on an error, or when its first frame was not routed.
    pub fn read(&mut self, id: u64, mut deliver: impl FnMut(FiveTuple, &[u8]) -> bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let tuple = FiveTuple::tcp(conn.local, conn.remote);
        let mut close = false;
        // Bounded work per wake-up: what is left is read at the next one (level-triggered).
        for _ in 0..8 {
            match conn.stream.read(&mut self.buf) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => {
                    conn.rx.extend_from_slice(&self.buf[..n]);
                    if n < self.buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        let mut at = 0;
        while conn.rx.len() - at >= 2 {
            let len = usize::from(u16::from_be_bytes([conn.rx[at], conn.rx[at + 1]]));
            if conn.rx.len() - at - 2 < len {
                break;
            }
            let frame = &conn.rx[at + 2..at + 2 + len];
            at += 2 + len;
            self.stats.frames_in += 1;
            let routed = deliver(tuple, frame);
            if conn.auth_deadline.is_some() {
                if routed {
                    conn.auth_deadline = None;
                } else {
                    self.stats.unauthenticated += 1;
                    close = true;
                    break;
                }
            }
        }
        // What stays is at most one incomplete frame (2 + MAX_FRAME bytes), unless the
        // connection is being closed anyway.
        conn.rx.drain(..at);
        if close {
            self.remove(id);
        }
    }

    /// Queues one frame for the connection (`local`, `dest`); see the module documentation
    /// for the full and missing cases.
    pub fn send(&mut self, local: SocketAddr, dest: SocketAddr, bytes: &[u8]) {
        // Longer than a frame can say (no datagram of rtc or the forwarder is): dropped.
        if bytes.len() > MAX_FRAME {
            self.stats.dropped_full += 1;
            return;
        }
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        let Some(&id) = self.by_remote.get(&(local, dest)) else {
            self.stats.dropped_no_connection += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            self.stats.dropped_no_connection += 1;
            return;
        };
        if conn.pending() + 2 + bytes.len() > WRITE_BUFFER {
            self.stats.dropped_full += 1;
            return;
        }
        if conn.tx.is_empty() {
            self.dirty.push(id);
        }
        conn.tx.extend_from_slice(&len.to_be_bytes());
        conn.tx.extend_from_slice(bytes);
        self.stats.frames_out += 1;
    }

    /// Writes what was queued since the last flush (and a writable connection's backlog:
    /// `Some(id)`), as far as the kernel takes it; closes broken connections.
    pub fn flush(&mut self, writable: Option<u64>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.extend(writable);
        for id in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            let broken = conn.write_pending().is_err();
            if broken || (conn.closing && conn.pending() == 0) {
                self.remove(id);
            }
        }
        self.dirty = dirty;
    }

    /// Closes the connection (`local`, `remote`) once what is queued on it is written (at
    /// once if nothing is).
    pub fn close(&mut self, local: SocketAddr, remote: SocketAddr) {
        let Some(&id) = self.by_remote.get(&(local, remote)) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.closing = true;
            self.dirty.push(id);
        }
    }

    /// Closes connections that stayed unauthenticated past [`AUTH_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.auth_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.stats.unauthenticated += 1;
            self.remove(id);
        }
    }

    /// The earliest authentication deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.auth_deadline).min()
    }

    /// The 5-tuples of connections closed since the last call (to forget in the address
    /// table).
    pub fn take_closed(&mut self) -> impl Iterator<Item = FiveTuple> + '_ {
        self.closed.drain(..)
    }

    fn remove(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.by_remote.remove(&(conn.local, conn.remote));
        let _ = conn.stream.shutdown(Shutdown::Both);
        self.stats.closed += 1;
        self.closed.push(FiveTuple::tcp(conn.local, conn.remote));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TcpTransport, TcpStream) {
        let mut t = TcpTransport::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let client = TcpStream::connect(t.local_addr()).expect("connect");
        // The accept is non-blocking: wait until the kernel finished the handshake.
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.conns.is_empty() && Instant::now() < deadline {
            t.accept(Instant::now());
        }
        assert_eq!(t.conns.len(), 1, "accepted");
        (t, client)
    }

    fn id(t: &TcpTransport) -> u64 {
        *t.conns.keys().next().expect("one connection")
    }

    /// Reads until `n` frames were delivered (the connection is blocking-readable on the
    /// other side, so this waits for bytes, never sleeps).
    fn read_frames(t: &mut TcpTransport, n: usize, routed: bool) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < deadline && !t.conns.is_empty() {
            let id = id(t);
            t.read(id, |_, f| {
                got.push(f.to_vec());
                routed
            });
        }
        got
    }

    #[test]
    fn frames_are_split_by_their_length_prefix_even_across_reads() {
        let (mut t, mut client) = pair();
        client.write_all(&[0, 3, b'a', b'b']).expect("write");
        client.write_all(&[b'c', 0, 1, b'd', 0]).expect("write");
        client.write_all(&[0]).expect("write");
        let got = read_frames(&mut t, 3, true);
        assert_eq!(got, vec![b"abc".to_vec(), b"d".to_vec(), Vec::new()]);
        assert_eq!(t.stats().frames_in, 3);
    }

    #[test]
    fn the_largest_frame_arrives_whole() {
        let (mut t, mut client) = pair();
        let body: Vec<u8> = (0..MAX_FRAME).map(|i| i as u8).collect();
        let mut framed = u16::try_from(MAX_FRAME)
            .expect("fits")
            .to_be_bytes()
            .to_vec();
        framed.extend_from_slice(&body);
        client.write_all(&framed).expect("write");
        let got = read_frames(&mut t, 1, true);
        assert_eq!(got, vec![body]);
    }

    #[test]
    fn a_connection_whose_first_frame_is_not_routed_is_closed() {
        let (mut t, mut client) = pair();
        client.write_all(&[0, 2, 1, 2]).expect("write");
        let got = read_frames(&mut t, 1, false);
        assert_eq!(got.len(), 1);
        assert!(t.conns.is_empty(), "closed");
        assert_eq!(t.stats().unauthenticated, 1);
        let closed: Vec<_> = t.take_closed().collect();
        assert_eq!(closed.len(), 1);
        let mut rest = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The server side shut the connection down: the client reads end of stream.
        assert_eq!(client.read_to_end(&mut rest).expect("eof"), 0);
    }

    #[test]
    fn sent_frames_carry_their_length_and_a_full_buffer_drops_whole_frames() {
        let (mut t, mut client) = pair();
        let (local, remote) = {
            let c = t.conns.values().next().expect("conn");
            (c.local, c.remote)
        };
        t.send(local, remote, b"hello");
        t.flush(None);
        let mut got = [0u8; 7];
        client.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"\0\x05hello");
        // Nobody reads: fill the kernel's buffers, then ours.
        let frame = vec![7u8; 1200];
        let mut sent = 0;
        while t.stats().dropped_full == 0 && sent < 100_000 {
            t.send(local, remote, &frame);
            t.flush(None);
            sent += 1;
        }
        assert_eq!(
            t.stats().dropped_full,
            1,
            "dropped once full, never blocked"
        );
        let conn = t.conns.values().next().expect("conn");
        assert!(conn.pending() <= WRITE_BUFFER);
        // A frame for an unknown connection is dropped and counted.
        t.send(local, "127.0.0.1:9".parse().expect("addr"), b"x");
        assert_eq!(t.stats().dropped_no_connection, 1);
    }

    #[test]
    fn end_of_stream_closes_the_connection() {
        let (mut t, client) = pair();
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.conns.is_empty() && Instant::now() < deadline {
            let id = id(&t);
            t.read(id, |_, _| true);
        }
        assert!(t.conns.is_empty());
        assert_eq!(t.take_closed().count(), 1);
    }

    #[test]
    fn silent_connections_are_closed_after_the_auth_timeout() {
        let (mut t, _client) = pair();
        t.handle_timeout(Instant::now());
        assert_eq!(t.conns.len(), 1, "not yet");
        t.handle_timeout(Instant::now() + AUTH_TIMEOUT + Duration::from_secs(1));
        assert!(t.conns.is_empty());
        assert_eq!(t.stats().unauthenticated, 1);
    }
}
