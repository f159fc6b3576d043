//! The sans-IO shard (`media::engine::shard`) against sans-IO rtc client peer connections.
//!
//! Most tests run without sockets and without sleeping: the clients (full-ICE offerers with a
//! short check interval, as a browser) and the shard exchange datagrams through an in-memory
//! network with a fixed one-way latency, and time is simulated (it jumps to the next datagram
//! delivery or timer). They prove that publishers and subscribers connect (ICE + DTLS) on the
//! shard's single address, that a publisher's RTP arrives as `RtpIn`, that 100 peer connections
//! share one port, that a silent client fails after the ICE timeouts (and a never-seen one after
//! the connect timeout), that an ICE restart works, and that spoofed STUN is dropped.
//!
//! One test runs the same core on a real UDP socket on 127.0.0.1 (a thin std loop), with the
//! announced address equal to the bind address.
//!
//! Figures (join → connected, wall time, memory) are printed; run with `--nocapture` to see
//! them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use media::engine::peer::{MediaKind, PeerId, PeerState};
use media::engine::shard::{FailReason, Shard, ShardAddr, ShardConfig, ShardEvent};
use media::engine::wire::{Pt, Ssrc};
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_VP8;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;

mod common;

use common::engine::{
    add_recv_transceivers, add_send_tracks, addr, apply_answer, certificate, client_pc, deliver,
    ice_restart_offer, local_udp, negotiated_pt, offer_from, opus, out_tracks, rtp_header,
    take_writes, thread_cpu, vp8, write_rtp, Datagram, Kind, Simulated, Wire, LATENCY, SHARD,
};

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        [198, 51, 100, (1 + i / 200) as u8].into(),
        40_000 + (i % 200) as u16,
    )
}

/// A browser-like client: a full-ICE offerer on its own address.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    kind: Kind,
    video: Option<(RTCRtpSenderId, u32)>,
    connected: Option<Instant>,
    ice_connected: bool,
    failed: bool,
    /// RTP received (subscriber).
    rtp: Vec<rtc::rtp::packet::Packet>,
    /// Stop sending (a client that went away silently).
    silent: bool,
    seq: u16,
}

impl Client {
    fn new(
        kind: Kind,
        addr: SocketAddr,
        cert: &RTCCertificate,
        ssrc: u32,
        now: Instant,
    ) -> (Self, String) {
        let mut pc = client_pc(cert, None, now);
        let mut video = None;
        match kind {
            Kind::Publisher => {
                let tracks = [
                    (RtpCodecKind::Audio, opus(), ssrc + 1),
                    (RtpCodecKind::Video, vp8(), ssrc),
                ];
                for (k, sender, s) in add_send_tracks(&mut pc, &format!("stream-{ssrc}"), tracks) {
                    if k == RtpCodecKind::Video {
                        video = Some((sender, s));
                    }
                }
            }
            Kind::Subscriber => {
                add_recv_transceivers(&mut pc);
            }
        }
        let offer = offer_from(&mut pc, addr, now);
        let client = Self {
            pc,
            addr,
            kind,
            video,
            connected: None,
            ice_connected: false,
            failed: false,
            rtp: Vec::new(),
            silent: false,
            seq: 0,
        };
        (client, offer)
    }

    fn set_answer(&mut self, sdp: String, now: Instant) {
        apply_answer(&mut self.pc, sdp, now);
    }

    fn poll(&mut self, now: Instant) {
        while let Some(ev) = self.pc.poll_event() {
            if std::env::var_os("SHARD_SIM_TRACE").is_some() {
                println!("client {} at {:?}: {ev:?}", self.addr, now);
            }
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                    RTCPeerConnectionState::Connected => {
                        self.connected.get_or_insert(now);
                    }
                    RTCPeerConnectionState::Failed => self.failed = true,
                    _ => {}
                },
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(s) => {
                    self.ice_connected = matches!(
                        s,
                        RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                    );
                }
                _ => {}
            }
        }
        while let Some(m) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = m.message {
                self.rtp.push(p);
            }
        }
    }

    fn video_pt(&mut self) -> u8 {
        let (sender, _) = self.video.expect("publisher");
        negotiated_pt(&mut self.pc, sender, MIME_TYPE_VP8)
    }

    /// Writes one video RTP packet (publisher).
    fn send_video(&mut self, now: Instant) -> u16 {
        let pt = self.video_pt();
        let (sender, ssrc) = self.video.expect("publisher");
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let header = rtp_header(pt, seq, u32::from(seq) * 3000, ssrc, true);
        let payload = Bytes::from(vec![0x10, 0, 0, 0x9d, 1, 0x2a, seq as u8]);
        write_rtp(&mut self.pc, sender, now, header, payload);
        seq
    }
}

/// The shard, its clients and an in-memory network with simulated time.
struct Sim {
    now: Instant,
    start: Instant,
    shard: Shard,
    /// The shard's addresses (announced = local).
    shard_addrs: Vec<SocketAddr>,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    wire: Wire,
    events: Vec<(Instant, ShardEvent)>,
    cert: RTCCertificate,
    delivered: u64,
    /// Wall time spent inside the shard's datagram and timer handling.
    shard_busy: Duration,
}

impl Sim {
    fn new() -> Self {
        Self::with_addrs(&[addr(SHARD)])
    }

    fn with_addrs(addrs: &[SocketAddr]) -> Self {
        let now = Instant::now();
        let mut config = ShardConfig::new(addrs[0]);
        config.addrs = addrs
            .iter()
            .map(|a| ShardAddr {
                local: *a,
                announced: *a,
            })
            .collect();
        let shard = Shard::new(config, now).expect("shard");
        Self {
            now,
            start: now,
            shard,
            shard_addrs: addrs.to_vec(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            wire: Wire::default(),
            events: Vec::new(),
            cert: certificate(),
            delivered: 0,
            shard_busy: Duration::ZERO,
        }
    }

    /// A new client: offer, answer by the shard, answer applied. Returns the client index.
    fn join(&mut self, kind: Kind) -> usize {
        self.join_from(kind, client_addr(self.clients.len()))
    }

    /// [`Sim::join`] from a given client address.
    fn join_from(&mut self, kind: Kind, a: SocketAddr) -> usize {
        let i = self.clients.len();
        let (mut c, offer) = Client::new(kind, a, &self.cert, 1000 + 2 * i as u32, self.now);
        let id = PeerId(i as u64);
        let answer = match kind {
            Kind::Publisher => {
                let ans = self
                    .shard
                    .add_publisher(id, &offer, false, self.now)
                    .expect("publisher answer");
                assert_eq!(ans.tracks.len(), 2, "{:?}", ans.tracks);
                ans.sdp
            }
            Kind::Subscriber => {
                let ans = self
                    .shard
                    .add_subscriber(id, &offer, &out_tracks(), self.now)
                    .expect("subscriber answer");
                assert_eq!(ans.tracks.len(), 2, "{:?}", ans.tracks);
                ans.sdp
            }
        };
        assert!(answer.contains("a=ice-lite"), "{answer}");
        assert!(answer.contains("a=setup:passive"), "{answer}");
        assert!(answer.contains(" 192.0.2.1 3478 typ host"), "{answer}");
        c.set_answer(answer, self.now);
        self.by_addr.insert(a, i);
        self.clients.push(c);
        i
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.wire.send(self.now, Datagram { from, to, bytes });
    }

    /// Moves every queued output onto the wire and collects events.
    fn flush(&mut self) {
        while let Some(t) = self.shard.poll_transmit() {
            assert!(self.shard_addrs.contains(&t.local), "{t:?}");
            self.send(t.local, t.dest, t.bytes.to_vec());
        }
        while let Some(e) = self.shard.poll_event() {
            self.events.push((self.now, e));
        }
        for i in 0..self.clients.len() {
            let now = self.now;
            self.clients[i].poll(now);
            // rtc's DTLS client queues its first flight while the event that ICE selected a pair
            // is polled, but reports no deadline for it: the flight would leave at the client's
            // next `handle_timeout` of any kind (~200 ms later here). A browser sends it at once;
            // so does this client, by running its timers after its events.
            let _ = self.clients[i].pc.handle_timeout(now);
            self.clients[i].poll(now);
            let out = take_writes(&mut self.clients[i].pc);
            if self.clients[i].silent {
                continue;
            }
            let from = self.clients[i].addr;
            for (to, b) in out {
                self.send(from, to, b);
            }
        }
    }

    fn connected_at(&self, peer: PeerId) -> Option<Instant> {
        self.events.iter().find_map(|(t, e)| match e {
            ShardEvent::Connected { peer: p } if *p == peer => Some(*t),
            _ => None,
        })
    }

    fn failed(&self, peer: PeerId) -> Option<(Instant, FailReason)> {
        self.events.iter().find_map(|(t, e)| match e {
            ShardEvent::Failed { peer: p, reason } if *p == peer => Some((*t, *reason)),
            _ => None,
        })
    }

    /// Client `client` (the shard's `peer`) goes away without a word: runs until the shard
    /// fails the peer (at most 60 s), checks it said `Disconnected` first and failed it for its
    /// transport; how long after the silence began each came.
    fn silence(&mut self, client: usize, peer: PeerId) -> (Duration, Duration) {
        self.clients[client].silent = true;
        let silent_at = self.now;
        assert!(self.run_until(Duration::from_secs(60), |s| s.failed(peer).is_some()));
        let disc = self
            .events
            .iter()
            .find_map(|(t, e)| {
                matches!(e, ShardEvent::Disconnected { peer: p } if *p == peer).then_some(*t)
            })
            .expect("disconnected first");
        let (failed, reason) = self.failed(peer).expect("failed");
        assert_eq!(reason, FailReason::Transport);
        (disc - silent_at, failed - silent_at)
    }

    fn all_connected(&self) -> bool {
        (0..self.clients.len()).all(|i| {
            self.connected_at(PeerId(i as u64)).is_some() && self.clients[i].connected.is_some()
        })
    }
}

/// Resident set size of this process in kB (Linux).
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

impl Simulated for Sim {
    fn now(&self) -> Instant {
        self.now
    }

    fn step(&mut self) {
        self.flush();
        let deadlines = std::iter::once(self.shard.poll_timeout())
            .chain(self.clients.iter_mut().map(|c| c.pc.poll_timeout()));
        self.now = self.wire.next_time(self.now, deadlines);
        while let Some(d) = self.wire.pop_due(self.now) {
            self.delivered += 1;
            if std::env::var_os("SHARD_SIM_TRACE").is_some() {
                println!(
                    "{:>8.1?} {} -> {} {} bytes, first {}",
                    self.now - self.start,
                    d.from,
                    d.to,
                    d.bytes.len(),
                    d.bytes.first().copied().unwrap_or(0)
                );
            }
            if self.shard_addrs.contains(&d.to) {
                let t = Instant::now();
                self.shard
                    .handle_datagram(self.now, d.to, d.from, &mut d.bytes.clone());
                self.shard_busy += t.elapsed();
            } else if let Some(&i) = self.by_addr.get(&d.to) {
                let c = &mut self.clients[i];
                deliver(&mut c.pc, self.now, c.addr, d.from, &d.bytes);
            }
        }
        let t = Instant::now();
        if self.shard.poll_timeout().is_some_and(|t| t <= self.now) {
            self.shard.handle_timeout(self.now);
        }
        self.shard_busy += t.elapsed();
        for c in &mut self.clients {
            if c.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                let _ = c.pc.handle_timeout(self.now);
            }
        }
        self.flush();
    }
}

#[test]
fn a_publisher_and_a_subscriber_connect_on_one_port_and_rtp_arrives() {
    let wall = Instant::now();
    let mut sim = Sim::new();
    let p = sim.join(Kind::Publisher);
    let s = sim.join(Kind::Subscriber);
    let joined = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(5), Sim::all_connected),
        "not connected: {:?}",
        sim.events
    );
    // The local candidates were reported for trickle, one per peer.
    let cands = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ShardEvent::LocalCandidate { candidate, .. } if candidate.contains(" 192.0.2.1 3478 typ host")))
        .count();
    assert_eq!(cands, 2);
    for i in [p, s] {
        let t = sim.connected_at(PeerId(i as u64)).expect("connected");
        println!(
            "peer {i} ({:?}): join → connected {:?} simulated (one-way latency {LATENCY:?})",
            sim.clients[i].kind,
            t - joined
        );
        assert_eq!(
            sim.shard.state(PeerId(i as u64)),
            Some(PeerState::Connected)
        );
        let path = sim.shard.path(PeerId(i as u64)).expect("path");
        assert_eq!(path.remote, sim.clients[i].addr);
        assert_eq!(path.announced, addr(SHARD));
    }

    // Publisher → shard: RTP written by the client arrives as RtpIn, after a TrackOpen.
    let mut sent = Vec::new();
    for _ in 0..10 {
        let now = sim.now;
        sent.push(sim.clients[p].send_video(now));
        sim.step();
    }
    sim.run_until(Duration::from_millis(200), |_| false);
    let opened: Vec<_> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ShardEvent::TrackOpen {
                peer,
                mid,
                kind,
                ssrc,
                ..
            } => Some((*peer, mid.clone(), *kind, *ssrc)),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
    let (peer, mid, kind, ssrc) = &opened[0];
    assert_eq!(*peer, PeerId(p as u64));
    assert!(mid.is_some());
    assert_eq!(*kind, Some(MediaKind::Video));
    assert_eq!(*ssrc, Ssrc(1000));
    let got: Vec<u16> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ShardEvent::RtpIn { peer, packet } if *peer == PeerId(p as u64) => {
                assert_eq!(packet.header.ssrc, 1000);
                Some(packet.header.sequence_number)
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, sent);

    // Shard → subscriber through rtc's own write path: the subscriber's answer is usable.
    let sub = PeerId(s as u64);
    for seq in 1..=5u16 {
        let pkt = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: u32::from(seq) * 3000,
                ssrc: 0x5eed_0001,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::from_static(&[0x10, 0, 0, 0x9d, 1, 0x2a]),
        };
        let now = sim.now;
        sim.shard.write_rtp(sub, pkt, now).expect("write_rtp");
        sim.step();
    }
    sim.run_until(Duration::from_millis(200), |_| false);
    let rx: Vec<u16> = sim.clients[s]
        .rtp
        .iter()
        .map(|p| p.header.sequence_number)
        .collect();
    assert_eq!(rx, vec![1, 2, 3, 4, 5]);
    assert!(sim.clients[s]
        .rtp
        .iter()
        .all(|p| p.header.ssrc == 0x5eed_0001));

    // Sealed bytes for a peer go to its selected path.
    sim.shard
        .send_raw(sub, BytesMut::from(&[0x80u8, 96, 0, 9][..]))
        .expect("send_raw");
    let t = sim.shard.poll_transmit().expect("transmit");
    assert_eq!(t.dest, sim.clients[s].addr);
    assert_eq!(&t.bytes[..], &[0x80, 96, 0, 9]);

    let st = sim.shard.stats();
    assert_eq!(st.drops.total(), 0, "{st:?}");
    println!(
        "2 peers: {} datagrams delivered, shard stats {st:?}, wall time {:?}",
        sim.delivered,
        wall.elapsed()
    );
}

#[test]
fn a_hundred_peer_connections_share_one_port() {
    const N: usize = 100;
    let mut sim = Sim::new();
    let rss0 = rss_kb();
    let wall = Instant::now();
    // Offers first (client side), so that the shard's own cost can be told apart.
    let mut offers = Vec::new();
    for i in 0..N {
        let kind = if i % 2 == 0 {
            Kind::Publisher
        } else {
            Kind::Subscriber
        };
        let a = client_addr(i);
        let (c, offer) = Client::new(kind, a, &sim.cert, 1000 + 2 * i as u32, sim.now);
        sim.by_addr.insert(a, i);
        sim.clients.push(c);
        offers.push(offer);
    }
    let rss_clients = rss_kb();
    let t_answer = Instant::now();
    let joined = sim.now;
    let mut answers = Vec::new();
    let mut by_kind = [Duration::ZERO; 2];
    for (i, offer) in offers.into_iter().enumerate() {
        let id = PeerId(i as u64);
        let t = Instant::now();
        answers.push(match sim.clients[i].kind {
            Kind::Publisher => {
                sim.shard
                    .add_publisher(id, &offer, false, sim.now)
                    .expect("pub")
                    .sdp
            }
            Kind::Subscriber => {
                sim.shard
                    .add_subscriber(id, &offer, &out_tracks(), sim.now)
                    .expect("sub")
                    .sdp
            }
        });
        by_kind[usize::from(sim.clients[i].kind == Kind::Subscriber)] += t.elapsed();
    }
    let answer_wall = t_answer.elapsed();
    let rss_answered = rss_kb();
    for (i, sdp) in answers.into_iter().enumerate() {
        let now = sim.now;
        sim.clients[i].set_answer(sdp, now);
    }
    let t_connect = Instant::now();
    assert!(
        sim.run_until(Duration::from_secs(10), Sim::all_connected),
        "connected: {} of {N}",
        (0..N)
            .filter(|i| sim.connected_at(PeerId(*i as u64)).is_some())
            .count()
    );
    let connect_wall = t_connect.elapsed();
    let rss_connected = rss_kb();
    let mut times: Vec<Duration> = (0..N)
        .map(|i| sim.connected_at(PeerId(i as u64)).expect("connected") - joined)
        .collect();
    times.sort();
    let st = sim.shard.stats();
    assert_eq!(st.peers, N);
    assert_eq!(st.drops.total(), 0, "{st:?}");
    // Every peer on the one port.
    for i in 0..N {
        let path = sim.shard.path(PeerId(i as u64)).expect("path");
        assert_eq!(path.announced, addr(SHARD));
        assert_eq!(path.remote, sim.clients[i].addr);
    }
    println!(
        "{N} PCs on one port: join → connected (simulated, {LATENCY:?} one way, all answered at once) min {:?} median {:?} max {:?}",
        times[0],
        times[N / 2],
        times[N - 1]
    );
    println!(
        "{N} PCs: wall time {:?} total; shard answers {:?} ({:?}/publisher, {:?}/subscriber); ICE+DTLS of both sides {:?}, of which in the shard {:?} ({:?}/PC); {} datagrams",
        wall.elapsed(),
        answer_wall,
        by_kind[0] / (N / 2) as u32,
        by_kind[1] / (N / 2) as u32,
        connect_wall,
        sim.shard_busy,
        sim.shard_busy / N as u32,
        sim.delivered
    );
    println!(
        "RSS (approximate heap): {N} client PCs +{} kB; shard answers +{} kB ({} kB/PC); after connecting both sides +{} kB ({} kB per client+server PC pair)",
        rss_clients.saturating_sub(rss0),
        rss_answered.saturating_sub(rss_clients),
        rss_answered.saturating_sub(rss_clients) / N as u64,
        rss_connected.saturating_sub(rss_answered),
        rss_connected.saturating_sub(rss_answered) / N as u64,
    );
    // Idle cost: 10 s of connected peers with no media, only consent checks and rtc's timers.
    let before = sim.shard.stats().peer_timeouts;
    let t_idle = Instant::now();
    let busy_before = sim.shard_busy;
    sim.run_until(Duration::from_secs(10), |_| false);
    let wakeups = sim.shard.stats().peer_timeouts - before;
    println!(
        "{N} idle connected PCs for 10 s (simulated): {:.1} timer wake-ups per PC per second, shard busy {:?} ({:?} wall for the whole simulation)",
        wakeups as f64 / N as f64 / 10.0,
        sim.shard_busy - busy_before,
        t_idle.elapsed()
    );
    assert!(
        (0..N).all(|i| sim.shard.state(PeerId(i as u64)) == Some(PeerState::Connected)),
        "consent keeps every peer up"
    );
    // Publishers get rtc's 200 ms tick (5 a second); subscribers without data channels one a
    // second (the shard's quiet tick): about 3 on average, 5 without the quiet tick.
    let per_pc = wakeups as f64 / N as f64 / 10.0;
    assert!(per_pc < 3.5, "{per_pc:.1} timer wake-ups per PC per second");
    // Removal frees the port's table: nothing for removed peers is routed any more.
    for i in 0..N {
        sim.shard.remove(PeerId(i as u64));
    }
    assert!(sim.shard.is_empty());
    assert_eq!(sim.shard.poll_timeout(), None);
}

#[test]
fn a_silent_client_fails_after_the_ice_timeouts() {
    let mut sim = Sim::new();
    let p = sim.join(Kind::Publisher);
    assert!(sim.run_until(Duration::from_secs(5), Sim::all_connected));
    // Consent keeps it up for a while.
    sim.run_until(Duration::from_secs(20), |_| false);
    assert_eq!(sim.shard.state(PeerId(0)), Some(PeerState::Connected));
    let (disc, failed) = sim.silence(p, PeerId(0));
    println!(
        "silent client: disconnected after {disc:?}, failed after {failed:?} (ICE timeouts 15 s + 30 s)"
    );
    // Counted from the client's last consent check (it sends one every 2 s).
    assert!(
        (Duration::from_secs(13)..=Duration::from_secs(16)).contains(&disc),
        "disconnected after {disc:?}"
    );
    assert!(
        (Duration::from_secs(43)..=Duration::from_secs(46)).contains(&failed),
        "failed after {failed:?}"
    );
    // Reported once; its timers stop.
    sim.run_until(Duration::from_secs(10), |_| false);
    let n = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ShardEvent::Failed { .. }))
        .count();
    assert_eq!(n, 1);
    assert_eq!(sim.shard.poll_timeout(), None);
}

#[test]
fn a_silent_subscriber_fails_after_the_ice_timeouts_too() {
    // A subscriber without data channels is ticked once a second, not every 200 ms: its
    // liveness verdicts may come up to a second later than a publisher's, no more.
    let mut sim = Sim::new();
    sim.join(Kind::Publisher);
    let s = sim.join(Kind::Subscriber);
    assert!(sim.run_until(Duration::from_secs(5), Sim::all_connected));
    sim.run_until(Duration::from_secs(20), |_| false);
    assert_eq!(sim.shard.state(PeerId(1)), Some(PeerState::Connected));
    let (disc, failed) = sim.silence(s, PeerId(1));
    assert!(
        (Duration::from_secs(13)..=Duration::from_secs(17)).contains(&disc),
        "disconnected after {disc:?}"
    );
    assert!(
        (Duration::from_secs(43)..=Duration::from_secs(47)).contains(&failed),
        "failed after {failed:?}"
    );
    assert_eq!(sim.shard.state(PeerId(0)), Some(PeerState::Connected));
}

#[test]
fn a_client_that_never_shows_up_times_out() {
    let mut sim = Sim::new();
    let p = sim.join(Kind::Subscriber);
    sim.clients[p].silent = true;
    let joined = sim.now;
    assert!(sim.run_until(Duration::from_secs(30), |s| s.failed(PeerId(0)).is_some()));
    let (t, reason) = sim.failed(PeerId(0)).expect("failed");
    assert_eq!(reason, FailReason::ConnectTimeout);
    assert!(t - joined >= Duration::from_secs(20) && t - joined < Duration::from_secs(21));
    assert_eq!(sim.shard.stats().connect_timeouts, 1);
}

#[test]
fn ice_restart_reconnects_and_media_keeps_flowing() {
    let mut sim = Sim::new();
    let p = sim.join(Kind::Publisher);
    assert!(sim.run_until(Duration::from_secs(5), Sim::all_connected));
    let first_answer = sim.shard.path(PeerId(0)).expect("path before restart");

    // The client restarts ICE (new credentials); the shard answers the new offer.
    let now = sim.now;
    let offer = ice_restart_offer(&mut sim.clients[p].pc, now);
    let answer = sim
        .shard
        .renegotiate(PeerId(0), &offer, now)
        .expect("restart answer");
    sim.clients[p].set_answer(answer, now);
    sim.clients[p].ice_connected = false;
    let restarted = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(5), |s| s.clients[0].ice_connected),
        "ICE did not reconnect: {:?}",
        sim.events
    );
    println!(
        "ICE restart: reconnected in {:?} simulated",
        sim.now - restarted
    );
    sim.run_until(Duration::from_millis(100), |_| false);
    assert_eq!(sim.shard.path(PeerId(0)).expect("path"), first_answer);

    let before = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ShardEvent::RtpIn { .. }))
        .count();
    for _ in 0..3 {
        let now = sim.now;
        sim.clients[p].send_video(now);
        sim.step();
    }
    sim.run_until(Duration::from_millis(100), |_| false);
    let after = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, ShardEvent::RtpIn { .. }))
        .count();
    assert_eq!(after - before, 3);
    assert_eq!(sim.shard.state(PeerId(0)), Some(PeerState::Connected));
}

#[test]
fn spoofed_stun_is_dropped_and_cannot_steal_a_connected_peer() {
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST};
    use rtc::stun::textattrs::TextAttribute;

    let mut sim = Sim::new();
    sim.join(Kind::Publisher);
    assert!(sim.run_until(Duration::from_secs(5), Sim::all_connected));
    // Our ufrag as the client sees it: the answer's a=ice-ufrag.
    let ufrag = sim.clients[0]
        .pc
        .remote_description()
        .expect("answer")
        .sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:").map(str::to_owned))
        .expect("ufrag");
    // A request with the right ufrag, no integrity, from another address.
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, format!("{ufrag}:evil"))),
    ];
    m.build(&setters).expect("build");
    let attacker = addr("203.0.113.66:6666");
    let now = sim.now;
    sim.shard
        .handle_datagram(now, addr(SHARD), attacker, &mut m.raw.clone());
    sim.shard.handle_datagram(
        now,
        addr(SHARD),
        attacker,
        &mut [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    assert!(sim.shard.poll_transmit().is_none(), "nothing answered");
    let st = sim.shard.stats();
    assert_eq!(st.drops.total(), 2, "{st:?}");
    assert_eq!(
        sim.shard.path(PeerId(0)).expect("path").remote,
        sim.clients[0].addr
    );
    // A datagram on an address the shard does not have.
    sim.shard
        .handle_datagram(now, addr("192.0.2.99:1"), attacker, &mut m.raw.clone());
    assert_eq!(sim.shard.stats().unknown_local, 1);
}

/// A browser starts DTLS as soon as one of its checks succeeds, which may be before the binding
/// request that nominates the pair; rtc (ICE-lite) selects a pair only on nomination and drops
/// anything else until then. The shard keeps such an early ClientHello and hands it to rtc at
/// the nomination, so it is answered there, not after the browser's DTLS resend timer.
#[test]
fn a_client_hello_before_the_nomination_is_answered_at_the_nomination() {
    use rtc::ice::attributes::control::AttrControlling;
    use rtc::ice::attributes::priority::PriorityAttr;
    use rtc::ice::attributes::use_candidate::UseCandidateAttr;
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST, BINDING_SUCCESS};
    use rtc::stun::textattrs::TextAttribute;
    use rtc::stun::xoraddr::XorMappedAddress;

    let mut sim = Sim::new();
    let i = sim.join(Kind::Subscriber);
    let peer = PeerId(i as u64);
    let client = sim.clients[i].addr;
    let attr = |sdp: &str, key: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_owned))
            .expect("ICE credential in the SDP")
    };
    let answer = sim.clients[i]
        .pc
        .remote_description()
        .expect("answer")
        .sdp
        .clone();
    let offer = sim.clients[i]
        .pc
        .local_description()
        .expect("offer")
        .sdp
        .clone();
    let (ufrag, pwd) = (attr(&answer, "a=ice-ufrag:"), attr(&answer, "a=ice-pwd:"));
    let client_ufrag = attr(&offer, "a=ice-ufrag:");
    let provider = rtc::crypto::default_provider().expect("crypto");
    let check = |nominate: bool| {
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(
                ATTR_USERNAME,
                format!("{ufrag}:{client_ufrag}"),
            )),
            Box::new(AttrControlling(7)),
            Box::new(PriorityAttr(2_130_706_431)),
        ];
        if nominate {
            setters.push(Box::<UseCandidateAttr>::default());
        }
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.clone(),
                provider.crypto(),
            ),
        ));
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).expect("binding request");
        m.raw
    };
    let sent = |sim: &mut Sim| -> Vec<Vec<u8>> {
        std::iter::from_fn(|| sim.shard.poll_transmit())
            .map(|t| t.bytes.to_vec())
            .collect()
    };
    let is_dtls = |b: &Vec<u8>| matches!(b.first(), Some(20..=63));

    // A check that succeeds but does not nominate: answered, and rtc checks the pair back;
    // the client answers that check, as a browser does. No pair is selected yet.
    let now = sim.now;
    sim.shard
        .handle_datagram(now, addr(SHARD), client, &mut check(false));
    let out = sent(&mut sim);
    assert!(!out.is_empty() && !out.iter().any(is_dtls), "{out:?}");
    let client_pwd = attr(&offer, "a=ice-pwd:");
    for b in out.iter().filter(|b| b.get(..2) == Some(&[0, 1][..])) {
        let mut request = Message::new();
        request.raw = b.clone();
        request.decode().expect("the shard's check");
        let mut response = Message::new();
        response
            .build(&[
                Box::new(request.transaction_id),
                Box::new(BINDING_SUCCESS),
                Box::new(XorMappedAddress {
                    ip: addr(SHARD).ip(),
                    port: addr(SHARD).port(),
                }),
                Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                    client_pwd.clone(),
                    provider.crypto(),
                )),
                Box::new(FINGERPRINT),
            ])
            .expect("binding response");
        sim.shard
            .handle_datagram(now, addr(SHARD), client, &mut response.raw.clone());
    }
    sent(&mut sim);
    assert!(
        sim.shard.path(peer).is_err(),
        "no pair before the nomination"
    );

    // The browser's ClientHello right after: nothing to answer yet, but kept.
    let mut dtls =
        rtc::dtls::endpoint::Endpoint::new(client, rtc::shared::TransportProtocol::UDP, None);
    let config = rtc::dtls::config::ConfigBuilder::default()
        .with_crypto_provider(provider.clone())
        .with_insecure_skip_verify(true)
        .build(true, Some(addr(SHARD)))
        .expect("DTLS client config");
    dtls.connect(now, addr(SHARD), std::sync::Arc::new(config), None)
        .expect("ClientHello");
    let hello = dtls.poll_transmit().expect("ClientHello datagram").message;
    assert_eq!(hello[0], 22, "a handshake record");
    sim.shard
        .handle_datagram(now, addr(SHARD), client, &mut hello.clone());
    assert!(sent(&mut sim).iter().all(|b| !is_dtls(b)));
    assert_eq!(sim.shard.stats().early_dtls_held, 1);

    // The nomination: the pair is selected and the kept ClientHello answered at once, with a
    // HelloVerifyRequest (handshake type 3), without the client sending it again.
    sim.shard
        .handle_datagram(now, addr(SHARD), client, &mut check(true));
    let out = sent(&mut sim);
    assert!(sim.shard.path(peer).is_ok(), "nominated");
    assert!(
        out.iter()
            .any(|b| b.first() == Some(&22) && b.get(13) == Some(&3)),
        "HelloVerifyRequest sent at the nomination: {out:?}"
    );
}

/// The same core behind a real UDP socket on 127.0.0.1 (announced address = bind address): a
/// thin single-threaded std loop for the shard and one for the client, in real time.
#[test]
fn the_shard_works_on_a_real_udp_socket() {
    let (server, local) = local_udp();
    let (client_sock, caddr) = local_udp();

    let start = Instant::now();
    let mut shard = Shard::new(ShardConfig::new(local), start).expect("shard");
    let cert = certificate();
    let (mut client, offer) = Client::new(Kind::Publisher, caddr, &cert, 1000, Instant::now());
    let joined = Instant::now();
    let answer = shard
        .add_publisher(PeerId(7), &offer, false, joined)
        .expect("answer");
    assert!(answer
        .sdp
        .contains(&format!(" 127.0.0.1 {} typ host", local.port())));
    client.set_answer(answer.sdp, Instant::now());

    let mut buf = vec![0u8; 2048];
    let mut shard_connected = None;
    let mut rtp_in = 0;
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (shard_connected.is_none() || rtp_in < 5) {
        let now = Instant::now();
        // Shard side.
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            shard.handle_datagram(Instant::now(), local, from, &mut buf[..n]);
        }
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now);
        }
        while let Some(t) = shard.poll_transmit() {
            assert_eq!(t.local, local);
            let _ = server.send_to(&t.bytes, t.dest);
        }
        while let Some(e) = shard.poll_event() {
            match e {
                ShardEvent::Connected { peer } => {
                    assert_eq!(peer, PeerId(7));
                    shard_connected.get_or_insert(Instant::now());
                }
                ShardEvent::RtpIn { packet, .. } => {
                    assert_eq!(packet.header.ssrc, 1000);
                    rtp_in += 1;
                }
                ShardEvent::Failed { reason, .. } => panic!("failed: {reason:?}"),
                _ => {}
            }
        }
        // Client side.
        while let Ok((n, from)) = client_sock.recv_from(&mut buf) {
            deliver(&mut client.pc, Instant::now(), caddr, from, &buf[..n]);
        }
        if client.pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = client.pc.handle_timeout(now);
        }
        client.poll(now);
        if client.connected.is_some() && sent < 5 {
            client.send_video(now);
            sent += 1;
        }
        while let Some(m) = client.pc.poll_write() {
            let _ = client_sock.send_to(&m.message, m.transport.peer_addr);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let connected = shard_connected.expect("shard side connected");
    assert!(client.connected.is_some(), "client side connected");
    assert_eq!(rtp_in, 5);
    println!(
        "real UDP on 127.0.0.1: join → connected {:?} (shard side), {:?} (client side)",
        connected - joined,
        client.connected.expect("client") - joined
    );
    let st = shard.stats();
    assert_eq!(st.drops.total(), 0, "{st:?}");
    shard.remove(PeerId(7));
}

/// An offer shaped like Chrome's (RED, RTX, FEC, CN, DTMF, H.264/VP9/AV1, header extensions,
/// a data channel), built line by line.
fn chrome_like_offer(direction: &str) -> String {
    let mut s = String::from(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS s0\r\n",
    );
    let common = |s: &mut String, mid: u8| {
        s.push_str("c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n");
        s.push_str(
            "a=ice-ufrag:c7Qn\r\na=ice-pwd:2BfWg8eq0v4hP6mA1rTzYk9x\r\na=ice-options:trickle\r\n",
        );
        s.push_str("a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\n");
        s.push_str(&format!("a=setup:actpass\r\na=mid:{mid}\r\n"));
    };
    s.push_str("m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n");
    common(&mut s, 0);
    s.push_str("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n");
    s.push_str(&format!("a={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"));
    s.push_str("a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n");
    s.push_str("a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n");
    let video: &[(u8, &str, &str)] = &[
        (96, "VP8", ""),
        (98, "VP9", "profile-id=0"),
        (100, "VP9", "profile-id=2"),
        (
            102,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        (
            104,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
        ),
        (
            106,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
        (
            108,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        ),
        (
            112,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
        ),
        (
            116,
            "H264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        ),
        (45, "AV1", ""),
    ];
    let mut pts: Vec<String> = Vec::new();
    for (pt, _, _) in video {
        pts.push(pt.to_string());
        pts.push((pt + 1).to_string());
    }
    pts.extend(["118", "119", "120"].map(String::from));
    s.push_str(&format!(
        "m=video 9 UDP/TLS/RTP/SAVPF {}\r\n",
        pts.join(" ")
    ));
    common(&mut s, 1);
    s.push_str("a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\na=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=extmap:13 urn:3gpp:video-orientation\r\na=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\na=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n");
    s.push_str(&format!("a={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"));
    for (pt, name, fmtp) in video {
        s.push_str(&format!("a=rtpmap:{pt} {name}/90000\r\n"));
        for fb in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
            s.push_str(&format!("a=rtcp-fb:{pt} {fb}\r\n"));
        }
        if !fmtp.is_empty() {
            s.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
        }
        s.push_str(&format!(
            "a=rtpmap:{} rtx/90000\r\na=fmtp:{} apt={pt}\r\n",
            pt + 1,
            pt + 1
        ));
    }
    s.push_str("a=rtpmap:118 red/90000\r\na=rtpmap:119 rtx/90000\r\na=fmtp:119 apt=118\r\na=rtpmap:120 ulpfec/90000\r\n");
    s.push_str("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n");
    common(&mut s, 2);
    s.push_str("a=sctp-port:5000\r\na=max-message-size:262144\r\n");
    s
}

fn section<'a>(sdp: &'a str, kind: &str) -> &'a str {
    let start = sdp.find(&format!("m={kind} ")).expect("section");
    let rest = &sdp[start..];
    let end = rest[2..].find("\r\nm=").map_or(rest.len(), |e| e + 4);
    &rest[..end]
}

/// Browser-shaped offers: the answers have the right directions, keep the offer's payload
/// types, leave out RTX/FEC, announce our SSRCs, and are ICE-lite / DTLS passive. Also times
/// the negotiation (rtc's offer parsing grows with the number of payload types).
#[test]
fn chrome_shaped_offers_are_answered_as_roomd_always_did() {
    let now = Instant::now();
    let mut shard = Shard::new(ShardConfig::new(addr(SHARD)), now).expect("shard");
    let t = Instant::now();
    let answer = shard
        .add_publisher(PeerId(1), &chrome_like_offer("sendonly"), false, now)
        .expect("publisher");
    let publish_time = t.elapsed();
    let (audio, video) = (section(&answer.sdp, "audio"), section(&answer.sdp, "video"));
    assert!(
        audio.contains("a=recvonly") && video.contains("a=recvonly"),
        "{}",
        answer.sdp
    );
    assert!(
        video.starts_with("m=video 9 UDP/TLS/RTP/SAVPF 96"),
        "{video}"
    );
    assert!(
        !video.contains("rtx/90000") && !video.contains("ulpfec"),
        "{video}"
    );
    assert!(audio.contains("a=rtpmap:111 opus/48000/2"), "{audio}");
    assert!(answer.sdp.contains("m=application 9"), "{}", answer.sdp);
    assert!(answer.sdp.contains("a=ice-lite") && answer.sdp.contains("a=setup:passive"));
    assert!(answer.sdp.contains("a=end-of-candidates"), "{}", answer.sdp);
    assert_eq!(answer.tracks.len(), 2);
    assert_eq!(answer.tracks[1].kind, MediaKind::Video);
    assert_eq!(answer.tracks[1].codecs[0].pt, Pt(96));
    assert_eq!(answer.tracks[1].codecs[0].mime, "video/VP8");

    for (id, dir) in [(2, "recvonly"), (3, "sendrecv")] {
        let t = Instant::now();
        let sub = shard
            .add_subscriber(PeerId(id), &chrome_like_offer(dir), &out_tracks(), now)
            .expect("subscriber");
        let subscribe_time = t.elapsed();
        let (audio, video) = (section(&sub.sdp, "audio"), section(&sub.sdp, "video"));
        assert!(
            audio.contains("a=sendonly") && video.contains("a=sendonly"),
            "{}",
            sub.sdp
        );
        assert!(
            video.contains(&format!("a=ssrc:{} ", 0x5eed_0001u32)),
            "{video}"
        );
        assert_eq!(sub.tracks.len(), 2);
        let v = sub
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Video)
            .expect("video");
        assert_eq!((v.pt, v.ssrc, v.index), (Pt(96), Ssrc(0x5eed_0001), 1));
        let a = sub
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Audio)
            .expect("audio");
        assert_eq!(a.pt, Pt(111));
        assert!(audio.contains(&format!("a=ssrc:{} ", a.ssrc.0)), "{audio}");
        println!("Chrome-shaped {dir} subscribe answered in {subscribe_time:?}");
    }
    println!("Chrome-shaped publish answered in {publish_time:?} (first call)");
    // Steady state, 50 of each: the median wall time, and this thread's CPU time per call (the
    // machine may be busy; CPU time is what a shard thread would spend).
    let mut times = [Vec::new(), Vec::new()];
    let mut cpu = [Duration::ZERO; 2];
    for i in 0..50u64 {
        let (t, c) = (Instant::now(), thread_cpu());
        shard
            .add_publisher(PeerId(100 + i), &chrome_like_offer("sendonly"), false, now)
            .expect("publisher");
        times[0].push(t.elapsed());
        cpu[0] += thread_cpu().saturating_sub(c);
        let (t, c) = (Instant::now(), thread_cpu());
        shard
            .add_subscriber(
                PeerId(200 + i),
                &chrome_like_offer("recvonly"),
                &out_tracks(),
                now,
            )
            .expect("subscriber");
        times[1].push(t.elapsed());
        cpu[1] += thread_cpu().saturating_sub(c);
    }
    for t in &mut times {
        t.sort();
    }
    println!(
        "Chrome-shaped offers, 50 each: publisher answer median {:?} wall, {:?} CPU; subscriber answer median {:?} wall, {:?} CPU",
        times[0][25],
        cpu[0] / 50,
        times[1][25],
        cpu[1] / 50
    );
    // An offer without ICE credentials or mids is refused with a reason.
    let bad = chrome_like_offer("sendonly").replace("a=ice-ufrag:c7Qn\r\n", "");
    assert!(shard.add_publisher(PeerId(9), &bad, false, now).is_err());
    assert!(shard
        .add_publisher(PeerId(1), &chrome_like_offer("sendonly"), false, now)
        .is_err());
}

/// Loopback: a publisher's send-receive sections are answered sendrecv, each with a track of
/// ours (own SSRC, announced) in the section's preferred codec, sending back that section's
/// media; without loopback, or on send-only sections, the answer only receives.
#[test]
fn loopback_answers_sendrecv_with_a_track_per_section() {
    let now = Instant::now();
    let mut shard = Shard::new(ShardConfig::new(addr(SHARD)), now).expect("shard");
    let answer = shard
        .add_publisher(PeerId(1), &chrome_like_offer("sendrecv"), true, now)
        .expect("loopback publisher");
    let (audio, video) = (section(&answer.sdp, "audio"), section(&answer.sdp, "video"));
    assert!(
        audio.contains("a=sendrecv") && video.contains("a=sendrecv"),
        "{}",
        answer.sdp
    );
    assert_eq!(answer.tracks.len(), 2);
    assert_eq!(answer.loopback.len(), 2, "{:?}", answer.loopback);
    for t in &answer.loopback {
        let published = &answer.tracks[t.index];
        assert_eq!((&t.mid, t.kind), (&published.mid, published.kind));
        assert_eq!(
            t.pt, published.codecs[0].pt,
            "the section's preferred codec"
        );
        let kind = if t.kind == MediaKind::Audio {
            "audio"
        } else {
            "video"
        };
        let s = section(&answer.sdp, kind);
        assert!(s.contains(&format!("a=ssrc:{} ", t.ssrc.0)), "{s}");
    }
    let pts: Vec<Pt> = answer.loopback.iter().map(|t| t.pt).collect();
    assert_eq!(pts, [Pt(111), Pt(96)]);
    assert_ne!(answer.loopback[0].ssrc, answer.loopback[1].ssrc);

    for (id, dir, loopback) in [(2, "sendrecv", false), (3, "sendonly", true)] {
        let answer = shard
            .add_publisher(PeerId(id), &chrome_like_offer(dir), loopback, now)
            .expect("publisher");
        let (audio, video) = (section(&answer.sdp, "audio"), section(&answer.sdp, "video"));
        assert!(
            audio.contains("a=recvonly") && video.contains("a=recvonly"),
            "{dir}, loopback {loopback}: {}",
            answer.sdp
        );
        assert!(answer.loopback.is_empty());
        assert_eq!(answer.tracks.len(), 2);
    }
}

/// Two announced addresses (IPv4 and IPv6) on one shard: the answer carries a candidate for
/// each, and an IPv6 client connects on the IPv6 one while an IPv4 client uses the IPv4 one.
#[test]
fn ipv4_and_ipv6_addresses_on_one_shard() {
    let v6 = addr("[2001:db8::1]:3478");
    let mut sim = Sim::with_addrs(&[addr(SHARD), v6]);
    let a = sim.join(Kind::Publisher);
    let b = sim.join_from(Kind::Subscriber, addr("[2001:db8::100]:40000"));
    let answer = sim.clients[b]
        .pc
        .remote_description()
        .expect("answer")
        .sdp
        .clone();
    assert!(answer.contains(" 2001:db8::1 3478 typ host"), "{answer}");
    sim.flush();
    let cands: Vec<String> = sim
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ShardEvent::LocalCandidate {
                peer, candidate, ..
            } if *peer == PeerId(b as u64) => Some(candidate.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(cands.len(), 2, "{cands:?}");
    assert!(sim.run_until(Duration::from_secs(5), Sim::all_connected));
    let pa = sim.shard.path(PeerId(a as u64)).expect("path");
    let pb = sim.shard.path(PeerId(b as u64)).expect("path");
    assert_eq!(
        (pa.announced, pa.remote),
        (addr(SHARD), sim.clients[a].addr)
    );
    assert_eq!((pb.announced, pb.remote), (v6, sim.clients[b].addr));
    assert_eq!(sim.shard.local_of(pb.announced), v6);
}

/// ICE-TCP in the sans-IO shard: the answer has a passive TCP candidate on the shard's port; a
/// Binding request arriving as a frame of a TCP connection is answered on that connection (a
/// transmit stamped TCP to the client's TCP address) only when its MESSAGE-INTEGRITY verifies,
/// and the connection then belongs to the peer.
#[test]
fn stun_over_an_ice_tcp_connection_is_answered_only_with_valid_integrity() {
    use media::engine::demux::{DropReason, FiveTuple};
    use rtc::shared::TransportProtocol;
    use rtc::stun::attributes::ATTR_USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST, BINDING_SUCCESS};
    use rtc::stun::textattrs::TextAttribute;

    let now = Instant::now();
    let mut config = ShardConfig::new(addr(SHARD));
    config.ice_tcp = true;
    let mut shard = Shard::new(config, now).expect("shard");
    let offer = chrome_like_offer("sendonly");
    let answer = shard
        .add_publisher(PeerId(1), &offer, false, now)
        .expect("publisher")
        .sdp;
    let port = addr(SHARD).port();
    assert!(
        answer.contains(&format!(" {port} typ host tcptype passive")),
        "{answer}"
    );
    let attr = |sdp: &str, name: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(name).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name}"))
    };
    let username = format!(
        "{}:{}",
        attr(&answer, "a=ice-ufrag:"),
        attr(&offer, "a=ice-ufrag:")
    );
    let request = |pwd: &str| {
        let crypto = rtc::crypto::default_provider().expect("crypto");
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.clone())),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            )),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).expect("build");
        m.raw
    };
    while shard.poll_transmit().is_some() {}

    let spoofer = FiveTuple::tcp(addr(SHARD), addr("203.0.113.66:50001"));
    assert!(!shard.handle_packet(now, spoofer, &request("not-the-password-at-all")));
    assert!(shard.poll_transmit().is_none(), "bad integrity: no answer");
    assert_eq!(shard.stats().drops.get(DropReason::BadIntegrity), 1);
    assert!(shard.tuples(PeerId(1)).is_empty());

    let client = FiveTuple::tcp(addr(SHARD), addr("198.51.100.7:50002"));
    assert!(shard.handle_packet(now, client, &request(&attr(&answer, "a=ice-pwd:"))));
    let t = shard.poll_transmit().expect("an answer");
    assert_eq!(
        (t.protocol, t.dest),
        (TransportProtocol::TCP, client.remote),
        "answered on the connection"
    );
    let mut m = Message::new();
    m.unmarshal_binary(&t.bytes).expect("STUN");
    assert_eq!(m.typ, BINDING_SUCCESS);
    assert_eq!(shard.tuples(PeerId(1)), &[client]);
    // A closed connection is forgotten: nothing more is routed from it.
    shard.forget_tuple(&client);
    assert!(shard.tuples(PeerId(1)).is_empty());
    assert!(!shard.handle_packet(now, client, &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]));
}
