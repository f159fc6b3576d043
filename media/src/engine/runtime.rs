//! A shard thread: one UDP socket, the ICE-TCP listener on the same port number and its
//! connections (`tcp.rs`), one [`Shard`], its [`Forwarder`] and its [`DataRelay`], driven by a
//! plain std loop; signaling talks to it through a bounded command queue and hears from it
//! through a bounded event queue.
//!
//! ```text
//!  ShardRuntime (any thread) ──try_send──▶ [commands, bounded] ──▶ shard thread ──▶ UDP socket
//!        ▲ oneshot replies ◀──────────────────────────────────────────┘   │
//!  owner ◀── [events, bounded] ◀── Connected / Disconnected / Failed / TrackOpen / LocalCandidate
//! ```
//!
//! The loop: take every queued command; wait in `poll(2)` on the UDP socket, the TCP listener,
//! every TCP connection and an eventfd that queuing a command writes (so a command is taken at
//! once, not at the next packet or timer), with a timeout set to the earliest of the shard's,
//! the forwarder's and the TCP connections' next timer, capped at [`RuntimeConfig::max_wait`]
//! (100 wake-ups a second at the default 10 ms keep the snapshot and the stop flag fresh); read up to [`BATCH`] datagrams in one non-blocking
//! `recvmmsg`, accept TCP connections and read their RFC 4571 frames; feed the datagrams and
//! frames; run due timers; route events through the forwarder, then the data relay; send what
//! the shard queued (`send_to`: handshakes and RTCP, few) and the forwarder's datagrams in
//! windows of up to [`WINDOW`] through the [`UdpSender`] (`sendmmsg`, runs to one client as
//! one GSO message; nix's safe wrappers; this crate has no unsafe code). Each turn of the loop
//! (from `poll`'s return to the next `poll`) is timed into the published [`ShardLoad`]: the
//! latency the shard adds and the share of a core it uses, for `/metrics`;
//! a packet whose path is an ICE-TCP connection goes into that connection's bounded write
//! buffer instead (full: dropped and counted, see `tcp.rs`). The socket's
//! kernel buffers are enlarged ([`RuntimeConfig::socket_buffer`]): with the default (~200 kB,
//! some 90 datagrams of video) a shard thread descheduled for ~20 ms at 5,000 packets/s in
//! dropped input (0–5 % on this shared 2-core machine in `engine_e2e`).
//!
//! Measured (release, loopback, 1 → 9, 1100-byte VP8, GCM): ~3.5–4.5 µs of shard-thread CPU
//! per datagram sent, syscalls included; without syscalls ~0.9 µs (of which the forwarder
//! ~0.6 µs per leg and rtc's read path ~3–4 µs per publisher datagram, shared by the legs).
//!
//! Queue policies (data-channel messages: see `data.rs`, bounded per subscriber channel):
//! - commands: [`ShardRuntime::reserve`] waits for room (backpressure on the caller; the thread
//!   takes every queued command at each wake-up, and each command wakes it); [`ShardRuntime`]'s other methods never block and fail at
//!   once with [`RuntimeError::Busy`] when the queue is full. Both fail with
//!   [`RuntimeError::Stopped`] once the thread has ended.
//! - events: when the owner does not keep up and the queue is full, events are dropped and
//!   counted ([`RuntimeStats::events_dropped`]). Nothing is lost for good by that: a `Failed`
//!   peer is removed by the runtime itself before the event is reported, and states can be
//!   read again through [`ShardRuntime::stats`].
//!
//! Owns [`ShardRuntime`], [`CommandSlot`], [`RuntimeConfig`], [`RuntimeError`], [`RuntimeStats`],
//! [`RuntimeEvent`].

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::sync::oneshot;

use super::data::{DataRelay, DataStats, DEFAULT_MAX_BACKLOG};
use super::forward::{ForwardConfig, ForwardStats, Forwarder, Source};
use super::peer::{IceTimeouts, OutTrack, PeerId, PublisherAnswer, SubscriberAnswer};
use super::shard::{Input, Shard, ShardAddr, ShardConfig, ShardError, ShardEvent, ShardStats};
use super::tcp::{TcpStats, TcpToken, TcpTransport};
use super::udp_send::{gso_supported, UdpSender, WINDOW};
use crate::stats::ShardLoad;
use rtc::shared::TransportProtocol;

/// What the runtime reports: the shard's events other than media and data (`Connected`,
/// `Disconnected`, `Failed`, `TrackOpen`, `LocalCandidate`; RTP, RTCP and data-channel events
/// stay inside).
pub type RuntimeEvent = ShardEvent;

/// How often the shard thread publishes its counters for [`ShardRuntime::snapshot`] (a store
/// under an uncontended lock per interval, not per packet).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// How to start a [`ShardRuntime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Address to bind the UDP socket to.
    pub bind: SocketAddr,
    /// Addresses announced in candidates, one host candidate each (empty: the bound address;
    /// required when binding a
    /// wildcard address). Port 0 announces this IP with the bound port.
    pub announced: Vec<SocketAddr>,
    /// Capacity of the command queue.
    pub commands: usize,
    /// Capacity of the event queue.
    pub events: usize,
    /// Longest the loop blocks in `poll` when nothing happens (commands wake it at once).
    pub max_wait: Duration,
    pub ice: IceTimeouts,
    pub connect_timeout: Duration,
    pub forward: ForwardConfig,
    /// Kernel receive and send buffer asked for the socket (`SO_RCVBUF`/`SO_SNDBUF`; Linux caps
    /// it at `net.core.rmem_max`/`wmem_max`): what absorbs a burst while the thread is busy
    /// (a DTLS handshake, a descheduling) instead of dropping datagrams.
    pub socket_buffer: usize,
    /// Bound of each subscriber data channel's unacknowledged bytes (see `data.rs`).
    pub data_backlog: usize,
    /// ICE-TCP: listen on TCP on the UDP socket's address and port and announce a passive TCP
    /// candidate there too.
    pub ice_tcp: bool,
    /// Send runs of datagrams to one client as one message with UDP segmentation offload
    /// when the kernel has it (`udp_send.rs`).
    pub udp_gso: bool,
}

/// The default [`RuntimeConfig::socket_buffer`]: 4 MiB, some 3,500 datagrams of 1,200 bytes
/// (~90 ms of a shard forwarding 40,000 packets a second).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Whether a socket bound to `addr` is dual-stack: the IPv6 wildcard `::` also takes IPv4
/// (as v4-mapped addresses, which the loop turns back into IPv4 ones and back).
pub(crate) fn dual_stack(addr: SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(v6) if v6.ip().is_unspecified())
}

/// The announced addresses of a shard bound to `local`: `wanted` with port 0 replaced by the
/// bound port, or `local` itself when none is wanted. An address of a family the socket cannot
/// serve is refused (IPv6 needs a socket bound to `::` or an IPv6 address; IPv4 with IPv6 needs
/// `::`, which is dual-stack).
fn announced_addrs(wanted: &[SocketAddr], local: SocketAddr) -> io::Result<Vec<SocketAddr>> {
    if wanted.is_empty() {
        return Ok(vec![local]);
    }
    wanted
        .iter()
        .map(|a| {
            let a = if a.port() == 0 {
                SocketAddr::new(a.ip(), local.port())
            } else {
                *a
            };
            if a.is_ipv4() == local.is_ipv4() || dual_stack(local) {
                Ok(a)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cannot announce {} on a socket bound to {local}: bind the media IP `::` \
                         to serve IPv4 and IPv6",
                        a.ip()
                    ),
                ))
            }
        })
        .collect()
}

/// An address as the socket's family wants it: IPv4 becomes v4-mapped IPv6 on an IPv6 socket.
fn wire_addr(socket: SocketAddr, addr: SocketAddr) -> SocketAddr {
    match (socket, addr) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => addr,
    }
}

/// Binds the shard's UDP socket with the buffers asked for (kept at the kernel's size when it
/// refuses: a smaller buffer only costs drops under bursts); `::` is bound dual-stack.
fn bind(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack(addr))?;
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::warn!(error = %e, "shard socket: SO_RCVBUF not set");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::warn!(error = %e, "shard socket: SO_SNDBUF not set");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl RuntimeConfig {
    /// Bind `bind`, announce it as is; queues of 256 commands and 1024 events, 10 ms wait.
    pub fn new(bind: SocketAddr) -> Self {
        let shard = ShardConfig::new(bind);
        Self {
            bind,
            announced: Vec::new(),
            commands: 256,
            events: 1024,
            max_wait: Duration::from_millis(10),
            ice: shard.ice,
            connect_timeout: shard.connect_timeout,
            forward: ForwardConfig::default(),
            socket_buffer: SOCKET_BUFFER,
            data_backlog: DEFAULT_MAX_BACKLOG,
            ice_tcp: true,
            udp_gso: true,
        }
    }
}

/// Tries with a system-chosen port before giving up on an ICE-TCP listener on the UDP port's
/// number (port 0: the number the system gave the UDP socket may be taken on TCP).
const TCP_PORT_ATTEMPTS: usize = 16;

/// Binds the UDP socket and, with `ice_tcp`, the TCP listener on the same address and port.
fn bind_both(config: &RuntimeConfig) -> io::Result<(UdpSocket, Option<TcpTransport>)> {
    let mut last = None;
    for _ in 0..TCP_PORT_ATTEMPTS {
        let socket = bind(config.bind, config.socket_buffer)?;
        if !config.ice_tcp {
            return Ok((socket, None));
        }
        match TcpTransport::bind(socket.local_addr()?) {
            Ok(tcp) => return Ok((socket, Some(tcp))),
            // A fixed port: nothing to retry.
            Err(e) if config.bind.port() != 0 => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("ICE-TCP listener on {}: {e}", config.bind),
                ))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port for ICE-TCP")))
}

/// Why a command was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("shard busy: command queue full")]
    Busy,
    #[error("shard stopped")]
    Stopped,
}

/// Counters of a runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    pub shard: ShardStats,
    pub forward: ForwardStats,
    pub data: DataStats,
    pub datagrams_sent: u64,
    /// Messages of several datagrams to one client sent with UDP segmentation offload, and the
    /// datagrams in them (`udp_send.rs`).
    pub gso_messages: u64,
    pub gso_datagrams: u64,
    /// ICE-TCP connections (all zero without ICE-TCP).
    pub tcp: TcpStats,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub events_dropped: u64,
    pub commands: u64,
    /// Times queued commands were left for the next turn, the socket read first.
    pub command_budget_spent: u64,
    /// Loop iterations (wake-ups).
    pub wakeups: u64,
    /// The loop's turns (work between two waits) and its busy time.
    pub load: ShardLoad,
}

type Reply<T> = oneshot::Sender<T>;

/// A request to the shard thread (see [`CommandSlot`]).
enum Command {
    Publish {
        id: PeerId,
        offer: String,
        loopback: bool,
        reply: Reply<Result<PublisherAnswer, ShardError>>,
    },
    Subscribe {
        id: PeerId,
        publisher: PeerId,
        offer: String,
        tracks: Vec<OutTrack>,
        sources: Vec<Source>,
        reply: Reply<Result<SubscriberAnswer, ShardError>>,
    },
    Candidate {
        id: PeerId,
        candidate: String,
        reply: Reply<Result<(), ShardError>>,
    },
    Remove {
        id: PeerId,
        reply: Reply<()>,
    },
    ExpectSubscriber {
        publisher: PeerId,
        reply: Reply<()>,
    },
    Stats {
        reply: Reply<RuntimeStats>,
    },
}

/// The handle of a shard thread. Dropping it stops the thread (woken at once) and joins it.
pub struct ShardRuntime {
    commands: tokio::sync::mpsc::Sender<Command>,
    /// Written after each command is queued: the thread's `poll` returns at once.
    wake: Arc<EventFd>,
    local: SocketAddr,
    announced: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    snapshot: Arc<Mutex<RuntimeStats>>,
    /// The UDP socket's inode, to find its kernel drop count (`None`: not known).
    socket_inode: Option<u64>,
}

impl ShardRuntime {
    /// Binds the socket and starts the thread; returns the handle and the event queue.
    pub fn spawn(config: RuntimeConfig) -> io::Result<(ShardRuntime, Receiver<RuntimeEvent>)> {
        let (socket, tcp) = bind_both(&config)?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let socket_inode = socket_inode(&socket);
        let announced = announced_addrs(&config.announced, local)?;
        let mut shard_config = ShardConfig::new(local);
        shard_config.addrs = announced
            .iter()
            .map(|&announced| ShardAddr { local, announced })
            .collect();
        shard_config.ice = config.ice;
        shard_config.connect_timeout = config.connect_timeout;
        shard_config.ice_tcp = tcp.is_some();
        let mut shard = Shard::new(shard_config, Instant::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let forwarder = Forwarder::new(config.forward.clone());
        shard.set_crypto_hook(forwarder.crypto_hook());
        let (commands, command_rx) = tokio::sync::mpsc::channel(config.commands.max(1));
        let wake = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        let (event_tx, events) = mpsc::sync_channel(config.events.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(RuntimeStats::default()));
        let gso = config.udp_gso && gso_supported(&socket);
        let mut state = State {
            gso,
            snapshot: Arc::clone(&snapshot),
            published: Instant::now(),
            socket,
            tcp,
            local,
            shard,
            forwarder,
            data: DataRelay::new(config.data_backlog),
            events: event_tx,
            stats: RuntimeStats::default(),
            max_wait: config.max_wait.max(Duration::from_millis(1)),
            tcp_ready: Vec::new(),
            wake: Arc::clone(&wake),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard {local}"))
            .spawn(move || state.run(command_rx, &stop2))?;
        Ok((
            ShardRuntime {
                commands,
                wake,
                local,
                announced,
                stop,
                thread: Some(thread),
                snapshot,
                socket_inode,
            },
            events,
        ))
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The first announced address.
    pub fn announced_addr(&self) -> SocketAddr {
        self.announced[0]
    }

    /// Every announced address.
    pub fn announced_addrs(&self) -> &[SocketAddr] {
        &self.announced
    }

    /// Room for one command, waiting while the queue is full (backpressure: the shard drains
    /// the whole queue at every wake-up, and queuing a command wakes it).
    pub async fn reserve(&self) -> Result<CommandSlot<'_>, RuntimeError> {
        self.commands
            .reserve()
            .await
            .map(|permit| CommandSlot(permit, &self.wake))
            .map_err(|_| RuntimeError::Stopped)
    }

    /// Room for one command, or [`RuntimeError::Busy`] at once when the queue is full.
    pub fn try_reserve(&self) -> Result<CommandSlot<'_>, RuntimeError> {
        match self.commands.try_reserve() {
            Ok(permit) => Ok(CommandSlot(permit, &self.wake)),
            Err(tokio::sync::mpsc::error::TrySendError::Full(())) => Err(RuntimeError::Busy),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => Err(RuntimeError::Stopped),
        }
    }

    /// A publisher from its offer (with `loopback`: sent its own media back); the reply
    /// carries the answer.
    pub fn publish(
        &self,
        id: PeerId,
        offer: String,
        loopback: bool,
    ) -> Result<oneshot::Receiver<Result<PublisherAnswer, ShardError>>, RuntimeError> {
        Ok(self.try_reserve()?.publish(id, offer, loopback))
    }

    /// A subscriber of `publisher` from its offer, sending `tracks`; `sources[i]` feeds
    /// `tracks[i]`. If its answer accepts a data-channel section, the publisher's data-channel
    /// messages are relayed to the channels its client opens.
    pub fn subscribe(
        &self,
        id: PeerId,
        publisher: PeerId,
        offer: String,
        tracks: Vec<OutTrack>,
        sources: Vec<Source>,
    ) -> Result<oneshot::Receiver<Result<SubscriberAnswer, ShardError>>, RuntimeError> {
        Ok(self
            .try_reserve()?
            .subscribe(id, publisher, offer, tracks, sources))
    }

    /// A trickled remote candidate.
    pub fn add_candidate(
        &self,
        id: PeerId,
        candidate: String,
    ) -> Result<oneshot::Receiver<Result<(), ShardError>>, RuntimeError> {
        Ok(self.try_reserve()?.add_candidate(id, candidate))
    }

    /// A subscriber of publisher `publisher` is expected: its tracks are primed (see
    /// [`super::forward::Forwarder::expect_subscriber`]).
    pub fn expect_subscriber(
        &self,
        publisher: PeerId,
    ) -> Result<oneshot::Receiver<()>, RuntimeError> {
        Ok(self.try_reserve()?.expect_subscriber(publisher))
    }

    /// Removes a peer (publisher: its tracks and every leg on them).
    pub fn remove(&self, id: PeerId) -> Result<oneshot::Receiver<()>, RuntimeError> {
        Ok(self.try_reserve()?.remove(id))
    }

    /// The counters as the shard thread last published them (at most [`SNAPSHOT_INTERVAL`]
    /// old); unlike [`ShardRuntime::stats`] it does not wait for the thread.
    pub fn snapshot(&self) -> RuntimeStats {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode of the shard's UDP socket (Linux), which names it in `/proc/net/udp*`.
    pub fn socket_inode(&self) -> Option<u64> {
        self.socket_inode
    }

    /// Counters.
    pub fn stats(&self) -> Result<oneshot::Receiver<RuntimeStats>, RuntimeError> {
        Ok(self.try_reserve()?.stats())
    }
}

/// Room for one command in a shard's queue ([`ShardRuntime::reserve`]); each method uses it up
/// and returns the receiver of the reply.
pub struct CommandSlot<'a>(tokio::sync::mpsc::Permit<'a, Command>, &'a EventFd);

impl CommandSlot<'_> {
    fn send<T>(self, make: impl FnOnce(Reply<T>) -> Command) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.0.send(make(tx));
        // Adds 1 to the eventfd's counter (never near its 2^64 - 2 limit: the thread reads it
        // to 0 at each wake-up); if it failed anyway, the command waits for `max_wait`.
        let _ = self.1.write(1);
        rx
    }

    /// See [`ShardRuntime::publish`].
    pub fn publish(
        self,
        id: PeerId,
        offer: String,
        loopback: bool,
    ) -> oneshot::Receiver<Result<PublisherAnswer, ShardError>> {
        self.send(|reply| Command::Publish {
            id,
            offer,
            loopback,
            reply,
        })
    }

    /// See [`ShardRuntime::subscribe`].
    pub fn subscribe(
        self,
        id: PeerId,
        publisher: PeerId,
        offer: String,
        tracks: Vec<OutTrack>,
        sources: Vec<Source>,
    ) -> oneshot::Receiver<Result<SubscriberAnswer, ShardError>> {
        self.send(|reply| Command::Subscribe {
            id,
            publisher,
            offer,
            tracks,
            sources,
            reply,
        })
    }

    /// See [`ShardRuntime::add_candidate`].
    pub fn add_candidate(
        self,
        id: PeerId,
        candidate: String,
    ) -> oneshot::Receiver<Result<(), ShardError>> {
        self.send(|reply| Command::Candidate {
            id,
            candidate,
            reply,
        })
    }

    /// See [`ShardRuntime::expect_subscriber`].
    pub fn expect_subscriber(self, publisher: PeerId) -> oneshot::Receiver<()> {
        self.send(|reply| Command::ExpectSubscriber { publisher, reply })
    }

    /// See [`ShardRuntime::remove`].
    pub fn remove(self, id: PeerId) -> oneshot::Receiver<()> {
        self.send(|reply| Command::Remove { id, reply })
    }

    /// See [`ShardRuntime::stats`].
    pub fn stats(self) -> oneshot::Receiver<RuntimeStats> {
        self.send(|reply| Command::Stats { reply })
    }
}

impl Drop for ShardRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Datagrams per `recvmmsg` / `sendmmsg`.
const BATCH: usize = 32;
/// Time the shard thread spends on queued commands before it reads its socket again.
const COMMAND_BUDGET: Duration = Duration::from_millis(2);
/// Largest datagram read; a longer one is truncated (and refused by rtc).
const MAX_DATAGRAM: usize = 2048;

/// The shard thread's batched-I/O buffers, allocated once.
struct BatchIo {
    recv_headers: MultiHeaders<SockaddrStorage>,
    recv_bufs: Vec<[u8; MAX_DATAGRAM]>,
    /// (length, sender) of each datagram of the last `recvmmsg`.
    received: [(usize, Option<SocketAddr>); BATCH],
    sender: UdpSender,
}

impl BatchIo {
    fn new(gso: bool) -> Self {
        Self {
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            recv_bufs: vec![[0; MAX_DATAGRAM]; BATCH],
            received: [(0, None); BATCH],
            sender: UdpSender::new(gso),
        }
    }
}

/// The inode of `socket` (Linux: `stat` of its `/proc/self/fd` entry), `None` elsewhere.
fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

/// The datagrams the kernel dropped at the UDP sockets `inodes` (receive buffer full), summed,
/// from Linux's `/proc/self/net/udp` and `udp6`; `None` when none of them is listed there (not
/// Linux, or no `/proc`). Read at scrape time, never by a shard thread.
pub(crate) fn udp_receive_drops(inodes: &[u64]) -> Option<u64> {
    let tables: Vec<String> = ["/proc/self/net/udp", "/proc/self/net/udp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    let (found, drops) = tables
        .iter()
        .map(|t| drops_in_table(t, inodes))
        .fold((0, 0), |(f, d), (f2, d2)| (f + f2, d + d2));
    (found > 0).then_some(drops)
}

/// In one `/proc/net/udp*` table: how many of the sockets `inodes` it lists, and the sum of
/// their `drops` column. Lines it cannot read are skipped.
fn drops_in_table(table: &str, inodes: &[u64]) -> (usize, u64) {
    // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops.
    const INODE: usize = 9;
    const DROPS: usize = 12;
    let mut found = 0;
    let mut drops = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(inode), Some(n)) = (
            fields.get(INODE).and_then(|f| f.parse::<u64>().ok()),
            fields.get(DROPS).and_then(|f| f.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if inodes.contains(&inode) {
            found += 1;
            drops += n;
        }
    }
    (found, drops)
}

/// A socket address as std's type (IPv4 or IPv6; a v4-mapped IPv6 address, as a dual-stack
/// socket reports IPv4 senders, as IPv4; other families: `None`).
fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
        .map(canonical)
}

/// A v4-mapped IPv6 socket address as the IPv4 one it stands for.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

struct State {
    /// Whether the send path starts with UDP segmentation offload.
    gso: bool,
    snapshot: Arc<Mutex<RuntimeStats>>,
    /// When `snapshot` was last written.
    published: Instant,
    socket: UdpSocket,
    /// The ICE-TCP listener and connections (`None`: ICE-TCP off).
    tcp: Option<TcpTransport>,
    local: SocketAddr,
    shard: Shard,
    forwarder: Forwarder,
    data: DataRelay,
    events: SyncSender<RuntimeEvent>,
    stats: RuntimeStats,
    max_wait: Duration,
    /// TCP entries `poll` found ready (reused).
    tcp_ready: Vec<(TcpToken, PollFlags)>,
    /// Readable when a command was queued since the last wake-up.
    wake: Arc<EventFd>,
}

impl State {
    fn run(&mut self, mut commands: tokio::sync::mpsc::Receiver<Command>, stop: &AtomicBool) {
        // Not in `State`: nix's headers hold raw pointers (not `Send`); built on this thread.
        let mut io = BatchIo::new(self.gso);
        // When the current turn began: the last return from `wait`.
        let mut turn_began: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            self.stats.wakeups += 1;
            // A negotiation costs the thread a millisecond or more: a join storm's commands are
            // taken a budget at a time, the socket read between budgets, or the kernel buffer
            // overflows while they run and drops datagrams (DTLS flights among them, which a
            // webrtc-rs client never resends: its connection then never comes up).
            let started = Instant::now();
            let mut more_commands = false;
            while let Ok(cmd) = commands.try_recv() {
                self.command(cmd);
                if started.elapsed() >= COMMAND_BUDGET {
                    more_commands = true;
                    self.stats.command_budget_spent += 1;
                    break;
                }
            }
            self.pump(Instant::now());
            self.flush(&mut io.sender);
            let now = Instant::now();
            if let Some(began) = turn_began {
                self.stats.load.record(now.saturating_duration_since(began));
            }
            let udp_ready = self.wait(now, more_commands);
            turn_began = Some(Instant::now());
            self.serve_tcp(&mut io);
            let n = if udp_ready {
                self.recv_batch(&mut io)
            } else {
                0
            };
            if n > 0 {
                let now = Instant::now();
                // Consecutive RTP datagrams of one publisher, opened in place, forwarded
                // together (each leg takes a run of them: `Track::on_rtp_burst`): (index,
                // clear length) in the batch.
                let mut run = [(0usize, 0usize); BATCH];
                let mut run_len = 0;
                let mut run_peer = None;
                for i in 0..n {
                    match io.received[i] {
                        (len, Some(from)) => {
                            let bytes = &mut io.recv_bufs[i][..len];
                            match self.shard.handle_datagram(now, self.local, from, bytes) {
                                Input::Rtp { peer, len } => {
                                    if run_peer != Some(peer) {
                                        self.forward_run(run_peer, &run[..run_len], &mut io, now);
                                        run_len = 0;
                                        run_peer = Some(peer);
                                    }
                                    run[run_len] = (i, len);
                                    run_len += 1;
                                }
                                Input::Done => {
                                    // In arrival order: the RTP before it, then its events.
                                    self.forward_run(run_peer, &run[..run_len], &mut io, now);
                                    run_len = 0;
                                    run_peer = None;
                                    self.pump(now);
                                    if self.forwarder.queued() >= WINDOW {
                                        self.flush(&mut io.sender);
                                    }
                                }
                            }
                        }
                        (_, None) => self.stats.recv_errors += 1,
                    }
                }
                self.forward_run(run_peer, &run[..run_len], &mut io, now);
            }
            let now = Instant::now();
            if self.shard.poll_timeout().is_some_and(|t| t <= now) {
                self.shard.handle_timeout(now);
            }
            if self.forwarder.poll_timeout().is_some_and(|t| t <= now) {
                self.forwarder.handle_timeout(&mut self.shard, now);
            }
            if let Some(tcp) = self.tcp.as_mut() {
                if tcp.poll_timeout().is_some_and(|t| t <= now) {
                    tcp.handle_timeout(now);
                }
            }
            self.forget_closed_tcp();
            self.pump(now);
            self.flush(&mut io.sender);
            if now.duration_since(self.published) >= SNAPSHOT_INTERVAL {
                self.publish_snapshot(now);
            }
        }
        self.publish_snapshot(Instant::now());
    }

    fn publish_snapshot(&mut self, now: Instant) {
        self.published = now;
        let current = RuntimeStats {
            shard: self.shard.stats(),
            forward: self.forwarder.stats(),
            data: self.data.stats(),
            tcp: self.tcp_stats(),
            ..self.stats
        };
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = current;
    }

    fn tcp_stats(&self) -> TcpStats {
        self.tcp
            .as_ref()
            .map(TcpTransport::stats)
            .unwrap_or_default()
    }

    /// Waits in `poll(2)` until the UDP socket or a TCP descriptor is ready or the next timer
    /// (capped at `max_wait`, in whole milliseconds, at least 1) is due. Returns whether the
    /// UDP socket is readable; the ready TCP entries are left in `tcp_ready`.
    /// With `no_block` (commands are still queued) it only looks.
    fn wait(&mut self, now: Instant, no_block: bool) -> bool {
        let next = [
            self.shard.poll_timeout(),
            self.forwarder.poll_timeout(),
            self.tcp.as_ref().and_then(TcpTransport::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min();
        let wait = next
            .map_or(self.max_wait, |t| t.saturating_duration_since(now))
            .min(self.max_wait);
        let millis = if no_block {
            0
        } else {
            u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX)
        };
        self.tcp_ready.clear();
        // One small allocation per wake-up (not per packet): the set borrows the descriptors.
        let mut fds = vec![
            PollFd::new(self.socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        let mut tokens = Vec::new();
        if let Some(tcp) = self.tcp.as_ref() {
            tcp.poll_fds(&mut fds, &mut tokens);
        }
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => false,
            Ok(_) => {
                let ready = |fd: &PollFd<'_>| fd.revents().unwrap_or(PollFlags::empty());
                if !ready(&fds[1]).is_empty() {
                    // Back to 0; the commands themselves are taken at the loop's top.
                    let _ = self.wake.read();
                }
                for (fd, token) in fds[2..].iter().zip(&tokens) {
                    let r = ready(fd);
                    if !r.is_empty() {
                        self.tcp_ready.push((*token, r));
                    }
                }
                !ready(&fds[0]).is_empty()
            }
            Err(_) => false,
        }
    }

    /// Accepts, reads and writes the TCP entries `wait` found ready; each frame read goes to
    /// the shard as a packet of its connection's 5-tuple.
    fn serve_tcp(&mut self, io: &mut BatchIo) {
        if self.tcp_ready.is_empty() {
            return;
        }
        let ready = std::mem::take(&mut self.tcp_ready);
        for &(token, flags) in &ready {
            let now = Instant::now();
            let Some(tcp) = self.tcp.as_mut() else {
                break;
            };
            match token {
                TcpToken::Listener => tcp.accept(now),
                TcpToken::Conn(id) => {
                    if flags.contains(PollFlags::POLLOUT) {
                        tcp.flush(Some(id));
                    }
                    if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                    {
                        let shard = &mut self.shard;
                        tcp.read(id, |tuple, frame| shard.handle_packet(now, tuple, frame));
                        self.pump(now);
                        if self.forwarder.queued() >= WINDOW {
                            self.flush(&mut io.sender);
                        }
                    }
                }
            }
        }
        self.tcp_ready = ready;
        self.forget_closed_tcp();
    }

    /// Tells the address table about ICE-TCP connections that closed.
    fn forget_closed_tcp(&mut self) {
        if let Some(tcp) = self.tcp.as_mut() {
            for tuple in tcp.take_closed() {
                self.shard.forget_tuple(&tuple);
            }
        }
    }

    /// Closes a removed peer's ICE-TCP connections (after what is queued on them, e.g. its
    /// DTLS close alert, is written).
    fn close_tcp_of(&mut self, peer: PeerId) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        for t in self.shard.tuples(peer) {
            if t.protocol == TransportProtocol::TCP {
                tcp.close(t.local, t.remote);
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        self.stats.commands += 1;
        let now = Instant::now();
        match cmd {
            Command::Publish {
                id,
                offer,
                loopback,
                reply,
            } => {
                let r = self.shard.add_publisher(id, &offer, loopback, now);
                match &r {
                    Ok(answer) => self.forwarder.add_publisher(id, answer),
                    // Whatever the crypto hook created for it (loopback).
                    Err(_) => self.forwarder.remove(id, now),
                }
                // The counters of a new peer count before the caller hears of it.
                self.publish_snapshot(now);
                let _ = reply.send(r);
            }
            Command::Subscribe {
                id,
                publisher,
                offer,
                tracks,
                sources,
                reply,
            } => {
                let r = self.shard.add_subscriber(id, &offer, &tracks, now);
                match &r {
                    Ok(answer) => {
                        self.forwarder.add_subscriber(id, answer, &sources, now);
                        if answer.data {
                            self.data.add_subscriber(id, publisher);
                        }
                    }
                    // Whatever the crypto hook created for it.
                    Err(_) => self.forwarder.remove(id, now),
                }
                self.publish_snapshot(now);
                let _ = reply.send(r);
            }
            Command::Candidate {
                id,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.shard.add_remote_candidate(id, &candidate, now));
            }
            Command::Remove { id, reply } => {
                self.forwarder.remove(id, now);
                self.data.remove(id);
                self.close_tcp_of(id);
                self.shard.remove(id);
                // A released peer is gone from the counters when `release` returns.
                self.publish_snapshot(now);
                let _ = reply.send(());
            }
            Command::ExpectSubscriber { publisher, reply } => {
                self.forwarder.expect_subscriber(publisher, now);
                let _ = reply.send(());
            }
            Command::Stats { reply } => {
                let _ = reply.send(RuntimeStats {
                    shard: self.shard.stats(),
                    forward: self.forwarder.stats(),
                    data: self.data.stats(),
                    tcp: self.tcp_stats(),
                    ..self.stats
                });
            }
        }
        self.pump(now);
    }

    /// Reads what the socket holds, up to [`BATCH`] datagrams in one `recvmmsg`, waiting (up to
    /// the socket's read timeout) for the first; returns how many `io.received` describes.
    fn recv_batch(&mut self, io: &mut BatchIo) -> usize {
        let mut bufs = io.recv_bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                bufs.next().map_or(&mut [][..], |b| &mut b[..]),
            )]
        });
        let fd = self.socket.as_raw_fd();
        match recvmmsg(
            fd,
            &mut io.recv_headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(msgs) => {
                let mut n = 0;
                for (slot, m) in io.received.iter_mut().zip(msgs) {
                    *slot = (m.bytes, m.address.and_then(|a| std_addr(&a)));
                    n += 1;
                }
                n
            }
            Err(Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EINTR) => 0,
            Err(_) => {
                self.stats.recv_errors += 1;
                0
            }
        }
    }

    /// Forwards a run of clear RTP datagrams of `peer` (their index in the batch and clear
    /// length), as many at a time as the forwarder takes, routing events and sending what is
    /// queued in between: sent as soon as a window is full, the forwarder's buffer pool grows
    /// to the deepest queue, which this keeps near one window plus one call's burst budget.
    fn forward_run(
        &mut self,
        peer: Option<PeerId>,
        run: &[(usize, usize)],
        io: &mut BatchIo,
        now: Instant,
    ) {
        let Some(peer) = peer else {
            return;
        };
        let mut packets: [&[u8]; BATCH] = [&[]; BATCH];
        for (slot, &(i, len)) in packets.iter_mut().zip(run) {
            *slot = &io.recv_bufs[i][..len];
        }
        let packets = &packets[..run.len()];
        let mut done = 0;
        while done < packets.len() {
            done += self
                .forwarder
                .on_clear_rtp_run(&mut self.shard, peer, &packets[done..], now)
                .max(1);
            self.pump(now);
            if self.forwarder.queued() >= WINDOW {
                self.flush(&mut io.sender);
            }
        }
    }

    /// Sends the forwarder's queue, windows of up to [`WINDOW`] datagrams handed to the
    /// [`UdpSender`] (runs to one client as one GSO message; a datagram the kernel refuses is
    /// dropped and counted, never retried: `udp_send.rs`). Packets on ICE-TCP paths go to
    /// their connections' write buffers, which are then written.
    fn flush(&mut self, sender: &mut UdpSender) {
        let fd = self.socket.as_raw_fd();
        while self.forwarder.queued() > 0 {
            if let Some(d) = self
                .forwarder
                .peek_transmit()
                .filter(|d| d.protocol == TransportProtocol::TCP)
            {
                match self.tcp.as_mut() {
                    Some(tcp) => tcp.send(d.local, d.dest, d.bytes),
                    None => self.stats.send_errors += 1,
                }
                self.forwarder.pop_transmit();
                continue;
            }
            let mut window: [(SocketAddr, &[u8]); WINDOW] =
                [(SocketAddr::from(([0, 0, 0, 0], 0)), &[]); WINDOW];
            let mut n = 0;
            let udp = self
                .forwarder
                .transmits()
                .take_while(|d| d.protocol == TransportProtocol::UDP);
            for (slot, d) in window.iter_mut().zip(udp) {
                *slot = (wire_addr(self.local, d.dest), d.bytes);
                n += 1;
            }
            sender.send(fd, &window[..n]);
            self.forwarder.pop_transmits(n);
            let sent = sender.take_stats();
            self.stats.datagrams_sent += sent.datagrams_sent;
            self.stats.send_errors += sent.send_errors;
            self.stats.gso_messages += sent.gso_messages;
            self.stats.gso_datagrams += sent.gso_datagrams;
        }
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.flush(None);
        }
    }

    /// Routes events through the forwarder and sends what the shard queued, until quiet (the
    /// forwarder's datagrams go out in batches: [`State::flush`]).
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.shard.poll_event() {
                progressed = true;
                let Some(ev) = self.forwarder.handle_event(&mut self.shard, ev, now) else {
                    continue;
                };
                let Some(ev) = self.data.handle_event(&mut self.shard, ev, now) else {
                    continue;
                };
                if let ShardEvent::Failed { peer, .. } = ev {
                    self.forwarder.remove(peer, now);
                    self.data.remove(peer);
                    self.close_tcp_of(peer);
                    self.shard.remove(peer);
                }
                if let Err(TrySendError::Full(_)) = self.events.try_send(ev) {
                    self.stats.events_dropped += 1;
                }
            }
            while let Some(t) = self.shard.poll_transmit() {
                progressed = true;
                if t.protocol == TransportProtocol::TCP {
                    match self.tcp.as_mut() {
                        Some(tcp) => tcp.send(t.local, t.dest, &t.bytes),
                        None => self.stats.send_errors += 1,
                    }
                } else {
                    self.send_to(&t.bytes, t.dest);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn send_to(&mut self, bytes: &[u8], dest: SocketAddr) {
        let ok = self
            .socket
            .send_to(bytes, wire_addr(self.local, dest))
            .is_ok();
        self.count_send(ok);
    }

    fn count_send(&mut self, ok: bool) {
        if ok {
            self.stats.datagrams_sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_the_drops_of_the_listed_inodes_only() {
        let table = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1081: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
 1082: 0100007F:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5
 1083: 0100007F:9C42 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4444 2 0000000000000000 1000
 garbage line
";
        assert_eq!(drops_in_table(table, &[4242, 4343]), (2, 22));
        assert_eq!(drops_in_table(table, &[9999]), (0, 0));
    }

    /// The kernel's own count, on a real socket that nobody reads: what the shards' metric
    /// reports when a shard falls behind.
    #[test]
    fn an_unread_socket_reports_the_datagrams_the_kernel_dropped() {
        let sink = UdpSocket::bind("127.0.0.1:0").expect("loopback bind always works");
        let inode = socket_inode(&sink).expect("Linux lists a socket under /proc/self/fd");
        assert_eq!(udp_receive_drops(&[inode]), Some(0));
        let to = sink.local_addr().expect("a bound socket has an address");
        let source = UdpSocket::bind("127.0.0.1:0").expect("loopback bind always works");
        // The default receive buffer holds a few hundred small datagrams at most.
        for _ in 0..20_000 {
            let _ = source.send_to(&[0u8; 1000], to);
        }
        let drops = udp_receive_drops(&[inode]).expect("the socket is still open");
        assert!(drops > 0, "no drops counted after 20,000 unread datagrams");
        assert_eq!(udp_receive_drops(&[u64::MAX]), None);
    }
}
