//! A shard thread: one UDP socket, one [`Shard`] and its [`Forwarder`], driven by a plain std
//! loop; signaling talks to it through a bounded command queue and hears from it through a
//! bounded event queue.
//!
//! ```text
//!  ShardRuntime (any thread) ──try_send──▶ [commands, bounded] ──▶ shard thread ──▶ UDP socket
//!        ▲ oneshot replies ◀──────────────────────────────────────────┘   │
//!  owner ◀── [events, bounded] ◀── Connected / Disconnected / Failed / TrackOpen / LocalCandidate
//! ```
//!
//! The loop: take every queued command; block in `recv_from` with a read timeout set to the
//! earlier of the shard's and the forwarder's next timer, capped at
//! [`RuntimeConfig::max_wait`] (which is also the worst-case latency of a command: std has no
//! way to wake a thread blocked on a socket other than a datagram, so the loop wakes up at
//! least that often — 100 wake-ups a second at the default 10 ms); feed the datagram; run due
//! timers; route events through the forwarder; send what the shard and the forwarder queued.
//! One datagram per `recv_from` and one per `send_to`: batching with `recvmmsg`/`sendmmsg`
//! (and GSO) needs `libc`/`nix` and unsafe code, which this crate does not take on yet — it is
//! the next step for the kernel share of the per-packet cost. Nor can std enlarge the socket's
//! buffers (`SO_RCVBUF`/`SO_SNDBUF`): with the kernel default (~200 kB, some 90 datagrams of
//! video), a shard thread descheduled for ~20 ms at 5 000 packets/s in drops input (seen at
//! 0–5 % on this shared 2-core machine in `engine_e2e`); `socket2` (safe) would fix that.
//!
//! Measured (release, loopback, 1 → 9, 1100-byte VP8, GCM): ~3.5–4.5 µs of shard-thread CPU
//! per datagram sent, syscalls included; without syscalls ~0.9 µs (of which the forwarder
//! ~0.6 µs per leg and rtc's read path ~3–4 µs per publisher datagram, shared by the legs).
//!
//! Queue policies:
//! - commands: [`ShardRuntime`]'s methods never block; when the queue is full they fail at once
//!   with [`RuntimeError::Busy`] (the caller answers "try again" to its client), and with
//!   [`RuntimeError::Stopped`] once the thread has ended.
//! - events: when the owner does not keep up and the queue is full, events are dropped and
//!   counted ([`RuntimeStats::events_dropped`]). Nothing is lost for good by that: a `Failed`
//!   peer is removed by the runtime itself before the event is reported, and states can be
//!   read again through [`ShardRuntime::stats`].
//!
//! Owns [`ShardRuntime`], [`RuntimeConfig`], [`RuntimeError`], [`RuntimeStats`],
//! [`RuntimeEvent`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::forward::{ForwardConfig, ForwardStats, Forwarder, Source};
use super::peer::{IceTimeouts, OutTrack, PeerId, PublisherAnswer, SubscriberAnswer};
use super::shard::{Shard, ShardAddr, ShardConfig, ShardError, ShardEvent, ShardStats};

/// What the runtime reports: the shard's events other than media (`Connected`,
/// `Disconnected`, `Failed`, `TrackOpen`, `LocalCandidate`; RTP and RTCP stay inside).
pub type RuntimeEvent = ShardEvent;

/// How often the shard thread publishes its counters for [`ShardRuntime::snapshot`] (a store
/// under an uncontended lock per interval, not per packet).
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// How to start a [`ShardRuntime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Address to bind the UDP socket to.
    pub bind: SocketAddr,
    /// Address announced in candidates (`None`: the bound address; required when binding a
    /// wildcard address). Port 0 announces this IP with the bound port.
    pub announced: Option<SocketAddr>,
    /// Capacity of the command queue.
    pub commands: usize,
    /// Capacity of the event queue.
    pub events: usize,
    /// Longest the loop blocks in `recv_from` (command latency bound).
    pub max_wait: Duration,
    pub ice: IceTimeouts,
    pub connect_timeout: Duration,
    pub forward: ForwardConfig,
}

impl RuntimeConfig {
    /// Bind `bind`, announce it as is; queues of 256 commands and 1024 events, 10 ms wait.
    pub fn new(bind: SocketAddr) -> Self {
        let shard = ShardConfig::new(bind);
        Self {
            bind,
            announced: None,
            commands: 256,
            events: 1024,
            max_wait: Duration::from_millis(10),
            ice: shard.ice,
            connect_timeout: shard.connect_timeout,
            forward: ForwardConfig::default(),
        }
    }
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
    pub datagrams_sent: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub events_dropped: u64,
    pub commands: u64,
    /// Loop iterations (wake-ups).
    pub wakeups: u64,
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Publish {
        id: PeerId,
        offer: String,
        loopback: bool,
        reply: Reply<Result<PublisherAnswer, ShardError>>,
    },
    Subscribe {
        id: PeerId,
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
    Stats {
        reply: Reply<RuntimeStats>,
    },
}

/// The handle of a shard thread. Dropping it stops the thread (within `max_wait`) and joins it.
pub struct ShardRuntime {
    commands: SyncSender<Command>,
    local: SocketAddr,
    announced: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    snapshot: Arc<Mutex<RuntimeStats>>,
}

impl ShardRuntime {
    /// Binds the socket and starts the thread; returns the handle and the event queue.
    pub fn spawn(config: RuntimeConfig) -> io::Result<(ShardRuntime, Receiver<RuntimeEvent>)> {
        let socket = UdpSocket::bind(config.bind)?;
        let local = socket.local_addr()?;
        let announced = match config.announced {
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), local.port()),
            Some(a) => a,
            None => local,
        };
        let mut shard_config = ShardConfig::new(local);
        shard_config.addrs = vec![ShardAddr { local, announced }];
        shard_config.ice = config.ice;
        shard_config.connect_timeout = config.connect_timeout;
        let mut shard = Shard::new(shard_config, Instant::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let forwarder = Forwarder::new(config.forward.clone());
        shard.set_crypto_hook(forwarder.crypto_hook());
        let (commands, command_rx) = mpsc::sync_channel(config.commands.max(1));
        let (event_tx, events) = mpsc::sync_channel(config.events.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(Mutex::new(RuntimeStats::default()));
        let mut state = State {
            snapshot: Arc::clone(&snapshot),
            published: Instant::now(),
            socket,
            local,
            shard,
            forwarder,
            events: event_tx,
            stats: RuntimeStats::default(),
            max_wait: config.max_wait.max(Duration::from_millis(1)),
            timeout_set: None,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard {local}"))
            .spawn(move || state.run(&command_rx, &stop2))?;
        Ok((
            ShardRuntime {
                commands,
                local,
                announced,
                stop,
                thread: Some(thread),
                snapshot,
            },
            events,
        ))
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The announced address.
    pub fn announced_addr(&self) -> SocketAddr {
        self.announced
    }

    fn send<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        match self.commands.try_send(make(tx)) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(RuntimeError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(RuntimeError::Stopped),
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
        self.send(|reply| Command::Publish {
            id,
            offer,
            loopback,
            reply,
        })
    }

    /// A subscriber from its offer, sending `tracks`; `sources[i]` feeds `tracks[i]`.
    pub fn subscribe(
        &self,
        id: PeerId,
        offer: String,
        tracks: Vec<OutTrack>,
        sources: Vec<Source>,
    ) -> Result<oneshot::Receiver<Result<SubscriberAnswer, ShardError>>, RuntimeError> {
        self.send(|reply| Command::Subscribe {
            id,
            offer,
            tracks,
            sources,
            reply,
        })
    }

    /// A trickled remote candidate.
    pub fn add_candidate(
        &self,
        id: PeerId,
        candidate: String,
    ) -> Result<oneshot::Receiver<Result<(), ShardError>>, RuntimeError> {
        self.send(|reply| Command::Candidate {
            id,
            candidate,
            reply,
        })
    }

    /// Removes a peer (publisher: its tracks and every leg on them).
    pub fn remove(&self, id: PeerId) -> Result<oneshot::Receiver<()>, RuntimeError> {
        self.send(|reply| Command::Remove { id, reply })
    }

    /// The counters as the shard thread last published them (at most [`SNAPSHOT_INTERVAL`]
    /// old); unlike [`ShardRuntime::stats`] it does not wait for the thread.
    pub fn snapshot(&self) -> RuntimeStats {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters.
    pub fn stats(&self) -> Result<oneshot::Receiver<RuntimeStats>, RuntimeError> {
        self.send(|reply| Command::Stats { reply })
    }
}

impl Drop for ShardRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    snapshot: Arc<Mutex<RuntimeStats>>,
    /// When `snapshot` was last written.
    published: Instant,
    socket: UdpSocket,
    local: SocketAddr,
    shard: Shard,
    forwarder: Forwarder,
    events: SyncSender<RuntimeEvent>,
    stats: RuntimeStats,
    max_wait: Duration,
    /// The read timeout last set on the socket (changed only when it must be).
    timeout_set: Option<Duration>,
}

impl State {
    fn run(&mut self, commands: &Receiver<Command>, stop: &AtomicBool) {
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            self.stats.wakeups += 1;
            while let Ok(cmd) = commands.try_recv() {
                self.command(cmd);
            }
            self.pump(Instant::now());
            self.arm_timeout(Instant::now());
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let now = Instant::now();
                    self.shard.handle_datagram(now, self.local, from, &buf[..n]);
                    self.pump(now);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => self.stats.recv_errors += 1,
            }
            let now = Instant::now();
            if self.shard.poll_timeout().is_some_and(|t| t <= now) {
                self.shard.handle_timeout(now);
            }
            if self.forwarder.poll_timeout().is_some_and(|t| t <= now) {
                self.forwarder.handle_timeout(&mut self.shard, now);
            }
            self.pump(now);
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
            ..self.stats
        };
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = current;
    }

    /// Sets the socket's read timeout to the next timer (capped), in whole milliseconds, only
    /// when it has to wake earlier than the current setting or the setting is far too early.
    fn arm_timeout(&mut self, now: Instant) {
        let next = [self.shard.poll_timeout(), self.forwarder.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let wait = next
            .map_or(self.max_wait, |t| t.saturating_duration_since(now))
            .min(self.max_wait);
        let wait = Duration::from_millis(wait.as_millis().max(1) as u64);
        let change = match self.timeout_set {
            None => true,
            Some(cur) => wait < cur || wait > cur + Duration::from_millis(5),
        };
        if change && self.socket.set_read_timeout(Some(wait)).is_ok() {
            self.timeout_set = Some(wait);
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
                let _ = reply.send(r);
            }
            Command::Subscribe {
                id,
                offer,
                tracks,
                sources,
                reply,
            } => {
                let r = self.shard.add_subscriber(id, &offer, &tracks, now);
                match &r {
                    Ok(answer) => self.forwarder.add_subscriber(id, answer, &sources),
                    // Whatever the crypto hook created for it.
                    Err(_) => self.forwarder.remove(id, now),
                }
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
                self.shard.remove(id);
                let _ = reply.send(());
            }
            Command::Stats { reply } => {
                let _ = reply.send(RuntimeStats {
                    shard: self.shard.stats(),
                    forward: self.forwarder.stats(),
                    ..self.stats
                });
            }
        }
        self.pump(now);
    }

    /// Routes events through the forwarder and sends everything queued, until quiet.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.shard.poll_event() {
                progressed = true;
                let Some(ev) = self.forwarder.handle_event(&mut self.shard, ev, now) else {
                    continue;
                };
                if let ShardEvent::Failed { peer, .. } = ev {
                    self.forwarder.remove(peer, now);
                    self.shard.remove(peer);
                }
                if let Err(TrySendError::Full(_)) = self.events.try_send(ev) {
                    self.stats.events_dropped += 1;
                }
            }
            while let Some(t) = self.shard.poll_transmit() {
                progressed = true;
                self.send_to(&t.bytes, t.dest);
            }
            while let Some(d) = self.forwarder.peek_transmit() {
                progressed = true;
                let ok = self.socket.send_to(d.bytes, d.dest).is_ok();
                self.forwarder.pop_transmit();
                self.count_send(ok);
            }
            if !progressed {
                break;
            }
        }
    }

    fn send_to(&mut self, bytes: &[u8], dest: SocketAddr) {
        let ok = self.socket.send_to(bytes, dest).is_ok();
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
