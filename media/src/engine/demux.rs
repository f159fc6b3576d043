//! The shard's address table: which peer connection a datagram arriving on the shard's socket
//! belongs to.
//!
//! One socket carries every peer connection of a shard, and rtc accepts non-STUN datagrams from
//! any address once a candidate pair is selected, so this table is the only source filter in
//! front of the peer connections. It learns an address only from a STUN Binding request that
//! proves knowledge of the peer's local ICE password:
//!
//! 1. a datagram from a known 5-tuple (local socket, remote address, protocol) goes to the peer
//!    that owns the tuple;
//! 2. otherwise only a STUN Binding request is considered: its USERNAME's local part (before the
//!    `:`) names a peer by local ufrag, and the request is routed to that peer — and its source
//!    recorded for it — **only if MESSAGE-INTEGRITY verifies with that peer's local password**;
//! 3. a Binding request from a known tuple that names *another* peer's ufrag moves the tuple to
//!    that peer under the same integrity rule (a client's port reused by another client);
//! 4. anything else is dropped and counted by [`DropReason`].
//!
//! A peer may own several tuples (path changes, consent from a new address, IPv4 and IPv6); the
//! number is bounded per peer and the least recently authenticated tuple is evicted first.
//!
//! Pure: no I/O, no clock. Owns [`Demux`], [`FiveTuple`], [`DropReason`], [`DropCounts`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rtc::crypto::RTCCryptoProvider;
use rtc::shared::TransportProtocol;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{is_stun_message, Message, BINDING_REQUEST};

use super::peer::{PeerId, PeerMap};

/// Default bound on the tuples one peer may own.
pub const DEFAULT_MAX_ADDRS_PER_PEER: usize = 8;

/// Where a datagram came from and arrived: the shard's local socket address (as the I/O loop
/// knows it, not the announced one), the remote address, and the transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub protocol: TransportProtocol,
}

impl FiveTuple {
    /// A UDP tuple.
    pub fn udp(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            local,
            remote,
            protocol: TransportProtocol::UDP,
        }
    }

    /// An ICE-TCP connection's tuple.
    pub fn tcp(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            local,
            remote,
            protocol: TransportProtocol::TCP,
        }
    }
}

/// Why a datagram was not routed to any peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not STUN, from a tuple no peer owns.
    UnknownAddress,
    /// STUN that does not decode.
    MalformedStun,
    /// STUN from an unknown tuple that is not a Binding request (responses, indications, other
    /// methods).
    NotBindingRequest,
    /// A Binding request without (or with an unreadable) USERNAME.
    NoUsername,
    /// A Binding request whose local ufrag belongs to no peer.
    UnknownUfrag,
    /// A Binding request whose MESSAGE-INTEGRITY is missing or does not verify with the named
    /// peer's password: a spoofed or stale request.
    BadIntegrity,
}

impl DropReason {
    /// Every reason, in [`DropCounts`] order.
    pub const ALL: [DropReason; 6] = [
        DropReason::UnknownAddress,
        DropReason::MalformedStun,
        DropReason::NotBindingRequest,
        DropReason::NoUsername,
        DropReason::UnknownUfrag,
        DropReason::BadIntegrity,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownAddress => "unknown_address",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::NotBindingRequest => "not_binding_request",
            DropReason::NoUsername => "no_username",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::BadIntegrity => "bad_integrity",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dropped datagrams by reason, since the table was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Datagrams dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    pub peer: PeerId,
    /// The tuple was recorded (or moved) for `peer` by this datagram: a new path.
    pub learned: bool,
}

/// Why [`Demux::set_credentials`] refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("ICE ufrag already used by another peer")]
pub struct UfragTaken;

struct Entry {
    ufrag: String,
    pwd: String,
    /// Owned tuples, least recently authenticated first.
    tuples: Vec<FiveTuple>,
}

/// The address table of one shard. See the module documentation for the rules.
pub struct Demux {
    by_tuple: HashMap<FiveTuple, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    peers: PeerMap<Entry>,
    max_tuples_per_peer: usize,
    crypto: Arc<dyn RTCCryptoProvider>,
    drops: DropCounts,
}

impl Demux {
    /// An empty table; `crypto` computes the MESSAGE-INTEGRITY HMACs.
    pub fn new(crypto: Arc<dyn RTCCryptoProvider>, max_tuples_per_peer: usize) -> Self {
        Self {
            by_tuple: HashMap::new(),
            by_ufrag: HashMap::new(),
            peers: PeerMap::default(),
            max_tuples_per_peer: max_tuples_per_peer.max(1),
            crypto,
            drops: DropCounts::default(),
        }
    }

    /// Sets (or, after an ICE restart, replaces) a peer's local ICE credentials. The peer keeps
    /// the tuples it owns.
    pub fn set_credentials(
        &mut self,
        peer: PeerId,
        ufrag: &str,
        pwd: &str,
    ) -> Result<(), UfragTaken> {
        if let Some(&owner) = self.by_ufrag.get(ufrag) {
            if owner != peer {
                return Err(UfragTaken);
            }
        }
        let entry = self.peers.entry(peer).or_insert_with(|| Entry {
            ufrag: String::new(),
            pwd: String::new(),
            tuples: Vec::new(),
        });
        if entry.ufrag != ufrag {
            if self.by_ufrag.get(&entry.ufrag) == Some(&peer) {
                self.by_ufrag.remove(&entry.ufrag);
            }
            entry.ufrag = ufrag.to_owned();
            self.by_ufrag.insert(ufrag.to_owned(), peer);
        }
        entry.pwd = pwd.to_owned();
        Ok(())
    }

    /// Forgets a peer: its tuples and its ufrag.
    pub fn remove(&mut self, peer: PeerId) {
        let Some(entry) = self.peers.remove(&peer) else {
            return;
        };
        for t in &entry.tuples {
            if self.by_tuple.get(t) == Some(&peer) {
                self.by_tuple.remove(t);
            }
        }
        if self.by_ufrag.get(&entry.ufrag) == Some(&peer) {
            self.by_ufrag.remove(&entry.ufrag);
        }
    }

    /// The tuples a peer owns, least recently authenticated first.
    pub fn tuples(&self, peer: PeerId) -> &[FiveTuple] {
        self.peers.get(&peer).map_or(&[], |e| e.tuples.as_slice())
    }

    /// Forgets one tuple (a closed ICE-TCP connection); its owner keeps its other tuples.
    pub fn forget(&mut self, tuple: &FiveTuple) {
        if let Some(peer) = self.by_tuple.remove(tuple) {
            if let Some(e) = self.peers.get_mut(&peer) {
                e.tuples.retain(|t| t != tuple);
            }
        }
    }

    /// The peer owning a tuple.
    pub fn owner(&self, tuple: &FiveTuple) -> Option<PeerId> {
        self.by_tuple.get(tuple).copied()
    }

    /// Dropped datagrams by reason.
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Number of peers with credentials.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is registered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Routes one datagram, recording its tuple when it is an authenticated Binding request.
    pub fn route(&mut self, tuple: FiveTuple, datagram: &[u8]) -> Result<Routed, DropReason> {
        let known = self.by_tuple.get(&tuple).copied();
        let stun = is_stun_message(datagram);
        match (known, stun) {
            (Some(peer), false) => Ok(Routed {
                peer,
                learned: false,
            }),
            (None, false) => Err(self.drop(DropReason::UnknownAddress)),
            (Some(peer), true) => {
                // Normally the owner's own check or a response to one: route it; the peer's ICE
                // agent authenticates it. Only a request naming another peer may move the tuple.
                let Ok(Some((mut msg, ufrag))) = binding_request(datagram) else {
                    return Ok(Routed {
                        peer,
                        learned: false,
                    });
                };
                match self.by_ufrag.get(ufrag.as_str()).copied() {
                    Some(named) if named != peer => {
                        self.authenticate(named, &mut msg)?;
                        self.record(tuple, named);
                        Ok(Routed {
                            peer: named,
                            learned: true,
                        })
                    }
                    _ => {
                        // Consent checks arrive on the path in use: keep it the freshest.
                        self.touch(tuple, peer);
                        Ok(Routed {
                            peer,
                            learned: false,
                        })
                    }
                }
            }
            (None, true) => {
                let (mut msg, ufrag) = match binding_request(datagram) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(self.drop(DropReason::NotBindingRequest)),
                    Err(reason) => return Err(self.drop(reason)),
                };
                let Some(peer) = self.by_ufrag.get(ufrag.as_str()).copied() else {
                    return Err(self.drop(DropReason::UnknownUfrag));
                };
                self.authenticate(peer, &mut msg)?;
                self.record(tuple, peer);
                Ok(Routed {
                    peer,
                    learned: true,
                })
            }
        }
    }

    fn drop(&mut self, reason: DropReason) -> DropReason {
        self.drops.add(reason);
        reason
    }

    fn authenticate(&mut self, peer: PeerId, msg: &mut Message) -> Result<(), DropReason> {
        let Some(entry) = self.peers.get(&peer) else {
            return Err(self.drop(DropReason::UnknownUfrag));
        };
        match MessageIntegrity::check(msg, entry.pwd.as_bytes(), self.crypto.crypto()) {
            Ok(()) => Ok(()),
            Err(_) => Err(self.drop(DropReason::BadIntegrity)),
        }
    }

    /// Records `tuple` as owned by `peer` (moving it from another owner), evicting the peer's
    /// least recently authenticated tuple past the bound.
    fn record(&mut self, tuple: FiveTuple, peer: PeerId) {
        if let Some(prev) = self.by_tuple.insert(tuple, peer) {
            if prev != peer {
                if let Some(e) = self.peers.get_mut(&prev) {
                    e.tuples.retain(|t| *t != tuple);
                }
            }
        }
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        entry.tuples.retain(|t| *t != tuple);
        entry.tuples.push(tuple);
        while entry.tuples.len() > self.max_tuples_per_peer {
            let old = entry.tuples.remove(0);
            if self.by_tuple.get(&old) == Some(&peer) {
                self.by_tuple.remove(&old);
            }
        }
    }

    /// Marks a tuple as the most recently used of its peer (a check on it), so that the path in
    /// use is the last to be evicted.
    fn touch(&mut self, tuple: FiveTuple, peer: PeerId) {
        if let Some(entry) = self.peers.get_mut(&peer) {
            if let Some(i) = entry.tuples.iter().position(|t| *t == tuple) {
                let t = entry.tuples.remove(i);
                entry.tuples.push(t);
            }
        }
    }
}

/// Decodes a STUN message; `Ok(None)` if it is not a Binding request, else the message and the
/// local ufrag of its USERNAME (`<local>:<remote>` from the receiver's point of view).
fn binding_request(datagram: &[u8]) -> Result<Option<(Message, String)>, DropReason> {
    let mut msg = Message::new();
    msg.unmarshal_binary(datagram)
        .map_err(|_| DropReason::MalformedStun)?;
    if msg.typ != BINDING_REQUEST {
        return Ok(None);
    }
    let raw = msg.get(ATTR_USERNAME).map_err(|_| DropReason::NoUsername)?;
    let username = std::str::from_utf8(&raw).map_err(|_| DropReason::NoUsername)?;
    let local = username.split(':').next().unwrap_or("");
    if local.is_empty() {
        return Err(DropReason::NoUsername);
    }
    let local = local.to_owned();
    Ok(Some((msg, local)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::message::{Setter, TransactionId, BINDING_SUCCESS};
    use rtc::stun::textattrs::TextAttribute;

    fn crypto() -> Arc<dyn RTCCryptoProvider> {
        rtc::crypto::default_provider().expect("crypto provider")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn tuple(remote: &str) -> FiveTuple {
        FiveTuple::udp(addr("192.0.2.1:3478"), addr(remote))
    }

    /// A Binding request as a client sends it: USERNAME `<server ufrag>:<client ufrag>`,
    /// MESSAGE-INTEGRITY with `pwd` (unless `None`), FINGERPRINT.
    fn request(username: &str, pwd: Option<&str>) -> Vec<u8> {
        let c = crypto();
        let mut m = Message::new();
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        ];
        if let Some(pwd) = pwd {
            setters.push(Box::new(
                MessageIntegrity::new_short_term_integrity_with_provider(
                    pwd.to_owned(),
                    c.crypto(),
                ),
            ));
        }
        setters.push(Box::new(FINGERPRINT));
        m.build(&setters).expect("build");
        m.raw.clone()
    }

    fn table() -> Demux {
        let mut d = Demux::new(crypto(), 3);
        d.set_credentials(PeerId(1), "ufragA", "passwordAAAAAAAAAAAAAAAA")
            .expect("A");
        d.set_credentials(PeerId(2), "ufragB", "passwordBBBBBBBBBBBBBBBB")
            .expect("B");
        d
    }

    const RTP: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];

    #[test]
    fn a_valid_request_maps_its_address() {
        let mut d = table();
        let from = tuple("198.51.100.7:5000");
        let r = d
            .route(
                from,
                &request("ufragA:client", Some("passwordAAAAAAAAAAAAAAAA")),
            )
            .expect("routed");
        assert_eq!(
            r,
            Routed {
                peer: PeerId(1),
                learned: true
            }
        );
        assert_eq!(d.tuples(PeerId(1)), &[from]);
        // Media from the learned address now goes to the peer.
        assert_eq!(
            d.route(from, &RTP),
            Ok(Routed {
                peer: PeerId(1),
                learned: false
            })
        );
        assert_eq!(d.drops().total(), 0);
    }

    #[test]
    fn a_spoofed_request_cannot_add_or_take_over_an_address() {
        let mut d = table();
        let victim = tuple("198.51.100.7:5000");
        d.route(
            victim,
            &request("ufragA:client", Some("passwordAAAAAAAAAAAAAAAA")),
        )
        .expect("victim's own check");

        // Peer B's ufrag without B's password, from the victim's address: no takeover.
        for bad in [
            request("ufragB:x", None),
            request("ufragB:x", Some("wrong-password-wrong-password")),
            request("ufragB:x", Some("passwordAAAAAAAAAAAAAAAA")),
        ] {
            assert_eq!(d.route(victim, &bad), Err(DropReason::BadIntegrity));
        }
        assert_eq!(d.owner(&victim), Some(PeerId(1)));
        assert!(d.tuples(PeerId(2)).is_empty());

        // The same from a fresh address: nothing is recorded, nothing routed.
        let attacker = tuple("203.0.113.66:6666");
        assert_eq!(
            d.route(attacker, &request("ufragA:x", None)),
            Err(DropReason::BadIntegrity)
        );
        assert_eq!(
            d.route(attacker, &request("ufragA:x", Some("guess"))),
            Err(DropReason::BadIntegrity)
        );
        assert_eq!(d.owner(&attacker), None);
        assert_eq!(d.tuples(PeerId(1)), &[victim]);
        // And its media stays out.
        assert_eq!(d.route(attacker, &RTP), Err(DropReason::UnknownAddress));
        assert_eq!(d.drops().get(DropReason::BadIntegrity), 5);
    }

    #[test]
    fn a_valid_request_naming_another_peer_moves_a_tuple() {
        let mut d = table();
        let t = tuple("198.51.100.7:5000");
        d.route(t, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA")))
            .expect("A");
        let r = d
            .route(t, &request("ufragB:c", Some("passwordBBBBBBBBBBBBBBBB")))
            .expect("B");
        assert_eq!(
            r,
            Routed {
                peer: PeerId(2),
                learned: true
            }
        );
        assert_eq!(d.owner(&t), Some(PeerId(2)));
        assert!(d.tuples(PeerId(1)).is_empty());
    }

    #[test]
    fn unknown_ufrag_and_unknown_non_stun_are_dropped() {
        let mut d = table();
        let t = tuple("198.51.100.7:5000");
        assert_eq!(
            d.route(t, &request("nobody:c", Some("passwordAAAAAAAAAAAAAAAA"))),
            Err(DropReason::UnknownUfrag)
        );
        assert_eq!(d.route(t, &RTP), Err(DropReason::UnknownAddress));
        assert_eq!(
            d.route(t, &[22, 254, 253, 0, 0]),
            Err(DropReason::UnknownAddress)
        );
        let mut resp = Message::new();
        resp.build(&[Box::new(BINDING_SUCCESS), Box::new(TransactionId::new())])
            .expect("response");
        assert_eq!(d.route(t, &resp.raw), Err(DropReason::NotBindingRequest));
        let mut no_user = Message::new();
        no_user
            .build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId::new())])
            .expect("request");
        assert_eq!(d.route(t, &no_user.raw), Err(DropReason::NoUsername));
        let mut garbage = request("ufragA:c", None);
        garbage.truncate(24);
        assert_eq!(d.route(t, &garbage), Err(DropReason::MalformedStun));
        let drops = d.drops();
        for r in DropReason::ALL {
            let want = if r == DropReason::UnknownAddress {
                2
            } else {
                1
            };
            let want = if r == DropReason::BadIntegrity {
                0
            } else {
                want
            };
            assert_eq!(drops.get(r), want, "{r}");
        }
        assert_eq!(d.owner(&t), None);
    }

    #[test]
    fn removal_forgets_addresses_and_ufrag() {
        let mut d = table();
        let t = tuple("198.51.100.7:5000");
        d.route(t, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA")))
            .expect("A");
        d.remove(PeerId(1));
        assert_eq!(d.route(t, &RTP), Err(DropReason::UnknownAddress));
        assert_eq!(
            d.route(t, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA"))),
            Err(DropReason::UnknownUfrag)
        );
        assert_eq!(d.len(), 1);
        // The ufrag is free again.
        d.set_credentials(PeerId(3), "ufragA", "passwordCCCCCCCCCCCCCCCC")
            .expect("reuse");
    }

    #[test]
    fn tuples_per_peer_are_bounded_oldest_first() {
        let mut d = table();
        let ts: Vec<FiveTuple> = (0..5)
            .map(|i| tuple(&format!("198.51.100.7:{}", 5000 + i)))
            .collect();
        for t in &ts {
            d.route(*t, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA")))
                .expect("A");
        }
        assert_eq!(d.tuples(PeerId(1)), &ts[2..]);
        assert_eq!(d.route(ts[0], &RTP), Err(DropReason::UnknownAddress));
        assert_eq!(d.owner(&ts[4]), Some(PeerId(1)));
    }

    #[test]
    fn restart_replaces_credentials_and_keeps_paths() {
        let mut d = table();
        let t = tuple("198.51.100.7:5000");
        d.route(t, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA")))
            .expect("A");
        d.set_credentials(PeerId(1), "ufragA2", "passwordA2A2A2A2A2A2A2A2")
            .expect("restart");
        assert_eq!(d.owner(&t), Some(PeerId(1)));
        let t2 = tuple("198.51.100.7:6000");
        assert_eq!(
            d.route(t2, &request("ufragA:c", Some("passwordAAAAAAAAAAAAAAAA"))),
            Err(DropReason::UnknownUfrag)
        );
        assert!(d
            .route(t2, &request("ufragA2:c", Some("passwordA2A2A2A2A2A2A2A2")))
            .is_ok());
        assert_eq!(
            d.set_credentials(PeerId(2), "ufragA2", "x"),
            Err(UfragTaken)
        );
    }
}
