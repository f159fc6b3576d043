//! Cluster mode wired into one server: this node's registration, its claims (kept by a
//! [`Keeper`] whose losses close the room), and the placement of a join — here, or relayed to
//! the node that owns (or should own) the room. Built only with `--redis-url`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use signaling::room::Input;

use super::claims::{Claim, Claims, Keeper, Loss};
use super::registry::{NodeInfo, NodeState, Registry};
use super::sessions::SessionDirectory;
use super::{connect, ClusterError, ClusterStats, Keys};
use crate::drain::Lifecycle;
use crate::rooms::Directory;
use crate::sessions::Sessions;
use crate::Config;

/// Where a join goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// This node serves the room.
    Local,
    /// Relay the client to this node's relay URL.
    Remote { node: String, relay_url: String },
    /// No node can take it now; the text says why.
    Unavailable(String),
}

/// Where a client's join or reconnection goes, with the link already open when it goes to
/// another node.
pub(crate) enum Directed {
    /// This node serves it.
    Here,
    /// Relayed over `link` to the node serving `room`.
    There {
        link: Box<super::relay::Link>,
        room: String,
    },
    /// Nowhere now; the text says why.
    Refused(String),
}

/// This node's part of the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    keeper: Keeper,
    registry: Registry,
    session_directory: SessionDirectory,
    me: NodeInfo,
    secret: String,
    directory: Arc<Directory>,
    sessions: Arc<Sessions>,
    lifecycle: Arc<Lifecycle>,
    /// `--cluster-relay-only`: never owns a room.
    relay_only: bool,
    stats: Arc<ClusterStats>,
}

/// The header carrying the cluster secret on the relay link.
pub(crate) const SECRET_HEADER: &str = "x-roomd-cluster-secret";
/// The header carrying the relayed client's own address (for logs and per-IP limits).
pub(crate) const CLIENT_HEADER: &str = "x-roomd-client";
/// The header carrying the session id the relaying node gave the client (the owner uses it).
pub(crate) const SESSION_HEADER: &str = "x-roomd-session";
/// The relay endpoint every node serves in cluster mode.
pub(crate) const RELAY_PATH: &str = "/cluster/relay";

impl Cluster {
    /// Starts cluster mode if `--redis-url` is set: connects (lazily) to Redis, registers this
    /// node every third of the TTL, keeps its claims, until `lifecycle.stop`.
    pub(crate) fn start(
        config: &Config,
        http: SocketAddr,
        directory: Arc<Directory>,
        sessions: Arc<Sessions>,
        lifecycle: Arc<Lifecycle>,
    ) -> Result<Option<Arc<Self>>, ClusterError> {
        let Some(url) = &config.redis_url else {
            return Ok(None);
        };
        Self::validate(config)?;
        let secret = config.cluster_secret.clone().unwrap_or_default();
        let ttl = Duration::from_millis(config.cluster_claim_ttl_ms);
        let redis = connect(url, ttl / 4)?;
        let keys = Keys::new(config.cluster_key_prefix.clone());
        let id = config
            .cluster_node_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let internal_url = config.cluster_internal_url.clone().unwrap_or_else(|| {
            let host = SocketAddr::new(config.media_ip, http.port());
            format!("http://{host}")
        });
        let me = NodeInfo {
            id: id.clone(),
            internal_url,
            media_addresses: if config.public_ips.is_empty() {
                vec![config.media_ip]
            } else {
                config.public_ips.clone()
            },
            state: NodeState::Serving,
            rooms: 0,
            participants: 0,
            room_names: Vec::new(),
        };
        let claims = Claims::new(redis.clone(), keys.clone(), id, ttl);
        let closer = Arc::clone(&directory);
        let on_loss = Arc::new(move |room: &str, loss: Loss| {
            tracing::warn!(
                room,
                ?loss,
                "cluster: closing a room this node may no longer own"
            );
            if let Some(handle) = closer.get(room) {
                tokio::spawn(async move {
                    let _ = handle.tx.send(Input::Close).await;
                });
            }
        });
        let live = Arc::clone(&directory);
        let is_live = Arc::new(move |room: &str| live.get(room).is_some_and(|h| !h.is_closed()));
        let stats = Arc::new(ClusterStats::default());
        let keeper = Keeper::new(claims, on_loss, is_live).counting(Arc::clone(&stats));
        let cluster = Arc::new(Self {
            keeper: keeper.clone(),
            registry: Registry::new(redis.clone(), keys.clone(), ttl),
            session_directory: SessionDirectory::new(redis, keys, ttl),
            me,
            secret,
            directory,
            sessions,
            lifecycle: Arc::clone(&lifecycle),
            relay_only: config.cluster_relay_only,
            stats,
        });
        tracing::info!(node = %cluster.me.id, internal_url = %cluster.me.internal_url, "cluster mode");
        tokio::spawn(keeper.run(lifecycle.stop.clone()));
        tokio::spawn(Arc::clone(&cluster).register(lifecycle));
        Ok(Some(cluster))
    }

    /// Refuses a cluster configuration that cannot work, before anything is started.
    pub(crate) fn validate(config: &Config) -> Result<(), ClusterError> {
        if config.redis_url.is_none() {
            return Ok(());
        }
        if config
            .cluster_secret
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        {
            // Without it any process reaching the port could pose as a node on /cluster/relay.
            return Err(ClusterError::Config(
                "--redis-url needs a non-empty --cluster-secret".into(),
            ));
        }
        Ok(())
    }

    /// The secret a relay link must present.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// This node's cluster counters.
    pub(crate) fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// How many rooms this node holds claims of now.
    pub(crate) fn rooms_owned(&self) -> usize {
        self.keeper.rooms().len()
    }

    /// Writes this node's record every third of the TTL (draining once the drain began) and
    /// removes it when the process stops.
    async fn register(self: Arc<Self>, lifecycle: Arc<Lifecycle>) {
        let stop = lifecycle.stop.clone();
        loop {
            let mut info = self.me.clone();
            info.rooms = self.keeper.rooms().len() as u64;
            info.participants = self.directory.participants() as u64;
            info.room_names = self.directory.names();
            if lifecycle.is_draining() {
                info.state = NodeState::Draining;
            } else if self.relay_only {
                info.state = NodeState::RelayOnly;
            }
            if let Err(e) = self.registry.publish(&info).await {
                self.stats.failed(&e);
                tracing::warn!("cluster: cannot register this node: {e}");
            }
            let held: Vec<(String, String)> = self
                .sessions
                .in_rooms()
                .into_iter()
                .map(|(id, room)| (id.0, room))
                .collect();
            if let Err(e) = self.session_directory.publish(&self.me.id, &held).await {
                self.stats.failed(&e);
                tracing::warn!("cluster: cannot publish this node's sessions: {e}");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.registry.refresh_interval()) => {}
            }
        }
        let _ = self.registry.unpublish(&self.me.id).await;
    }

    /// A session joined `room` here: published at once, so that a reconnection through another
    /// node finds it before the next periodic refresh.
    pub(crate) fn session_joined(self: &Arc<Self>, session: &str, room: &str) {
        let me = Arc::clone(self);
        let held = vec![(session.to_owned(), room.to_owned())];
        tokio::spawn(async move {
            if let Err(e) = me.session_directory.publish(&me.me.id, &held).await {
                me.stats.failed(&e);
                tracing::warn!("cluster: cannot publish a session: {e}");
            }
        });
    }

    /// Whether this node serves `room` right now (live here and claimed): a join needs no
    /// directory look-up.
    pub(crate) fn serves(&self, room: &str) -> bool {
        self.directory.get(room).is_some_and(|h| !h.is_closed()) && self.keeper.owns(room)
    }

    /// Where a join of `room` goes ([`Cluster::place`]), with the link to the room's node
    /// opened when that is another node. `client` and `session` are the client's address and
    /// the session id this node gave it (the owner adopts it). Takes as long as the directory
    /// and the other node take: run it beside the client's frame loop, never inside it.
    pub(crate) async fn direct_join(
        &self,
        room: &str,
        relayed: bool,
        client: Option<SocketAddr>,
        session: Option<&str>,
    ) -> Directed {
        let directed = match self.place(room, relayed).await {
            Placement::Local => Directed::Here,
            Placement::Unavailable(why) => Directed::Refused(why),
            Placement::Remote { node, relay_url } => {
                match super::relay::connect(&relay_url, &self.secret, client, session).await {
                    Ok(link) => {
                        tracing::info!(room, %node, ?client, "join relayed");
                        Directed::There {
                            link: Box::new(link),
                            room: room.to_owned(),
                        }
                    }
                    Err(why) => Directed::Refused(why),
                }
            }
        };
        if !relayed {
            // Counted where the client is: a join over a relay link was counted by its node.
            ClusterStats::bump(match &directed {
                Directed::Here => &self.stats.placed_local,
                Directed::There { .. } => &self.stats.placed_relayed,
                Directed::Refused(_) => &self.stats.placed_refused,
            });
        }
        directed
    }

    /// Where a `connect` with session id `session`, unknown to this node, goes: relayed to the
    /// node holding it, or [`Directed::Here`] (unknown anywhere: answered here) or refused.
    pub(crate) async fn direct_reconnect(
        &self,
        session: &str,
        client: Option<SocketAddr>,
    ) -> Directed {
        let Some((url, room)) = self.session_home(session).await else {
            return Directed::Here;
        };
        match super::relay::connect(&url, &self.secret, client, None).await {
            Ok(link) => {
                tracing::info!(%room, ?client, "reconnection relayed to the session's node");
                Directed::There {
                    link: Box::new(link),
                    room,
                }
            }
            Err(why) => {
                tracing::warn!(%why, "reconnection refused: the session's node is unreachable");
                Directed::Refused(why)
            }
        }
    }

    /// Where a `connect` for a session this node does not know goes: the relay URL of the node
    /// holding it and its room, or `None` (unknown anywhere, or held here).
    pub(crate) async fn session_home(&self, session: &str) -> Option<(String, String)> {
        let record = match self.session_directory.lookup(session).await {
            Ok(Some(record)) if record.node != self.me.id => record,
            Ok(_) => return None,
            Err(e) => {
                self.stats.failed(&e);
                tracing::warn!("cluster: session directory unavailable: {e}");
                return None;
            }
        };
        match self.registry.node(&record.node).await {
            Ok(Some(node)) => match Self::remote(node) {
                Placement::Remote { relay_url, .. } => Some((relay_url, record.room)),
                _ => None,
            },
            Ok(None) => None,
            Err(e) => {
                self.stats.failed(&e);
                None
            }
        }
    }

    /// The internal URL of the node owning `room` when that is another node (admin actions
    /// are forwarded there); `None` when it is this node, nobody, or unknown.
    pub(crate) async fn owner_elsewhere(&self, room: &str) -> Option<String> {
        let owner = self
            .keeper
            .claims()
            .owner(room)
            .await
            .inspect_err(|e| self.stats.failed(e))
            .ok()??;
        if owner == self.me.id {
            return None;
        }
        let node = self.registry.node(&owner).await;
        Some(
            node.inspect_err(|e| self.stats.failed(e))
                .ok()??
                .internal_url,
        )
    }

    /// Every node's rooms with participants (`/getAllRooms`): this node's as they are, every
    /// other live node's as it answers now (its own `/getAllRooms`, asked in parallel), or as
    /// of its last record (at most a third of the TTL old) when it does not answer in time.
    /// If Redis cannot be asked, this node's alone.
    pub(crate) async fn all_rooms(&self) -> Vec<String> {
        let mut names = self.directory.names();
        let nodes = match self.registry.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                self.stats.failed(&e);
                tracing::warn!("cluster: /getAllRooms lists this node's rooms only: {e}");
                Vec::new()
            }
        };
        let timeout = self.keeper.claims().ttl() / 4;
        let asked = nodes
            .into_iter()
            .filter(|n| n.id != self.me.id)
            .map(|n| async move {
                let live = super::forward::get(&n.internal_url, "/getAllRooms", timeout).await;
                match live.map(|(status, body)| (status, serde_json::from_slice(&body))) {
                    Ok((200, Ok(rooms))) => rooms,
                    _ => n.room_names,
                }
            });
        for rooms in futures_util::future::join_all(asked).await {
            names.extend::<Vec<String>>(rooms);
        }
        names.sort();
        names.dedup();
        names
    }

    /// Where a join of `room` goes. `relayed`: the join came over a relay link from another
    /// node, which already chose this one; it is served here or refused, never relayed again.
    pub(crate) async fn place(&self, room: &str, relayed: bool) -> Placement {
        let live_here = self.directory.get(room).is_some_and(|h| !h.is_closed());
        if live_here && self.keeper.owns(room) {
            return Placement::Local;
        }
        if relayed {
            return match self.claim_here(room).await {
                Ok(None) => Placement::Local,
                Ok(Some(owner)) => Placement::Unavailable(format!(
                    "room '{room}' moved to node {owner} meanwhile; join again"
                )),
                Err(e) => {
                    self.stats.failed(&e);
                    Placement::Unavailable(e.to_string())
                }
            };
        }
        match self.choose(room).await {
            Ok(placement) => placement,
            Err(e) => {
                self.stats.failed(&e);
                Placement::Unavailable(e.to_string())
            }
        }
    }

    async fn choose(&self, room: &str) -> Result<Placement, ClusterError> {
        let owner = match self.keeper.claims().owner(room).await? {
            Some(owner) => Some(owner),
            None if self.lifecycle.is_draining() || self.relay_only => {
                // Draining: new rooms go elsewhere at once, before this node's record says so.
                // Relay-only: they always do.
                let others = self
                    .registry
                    .nodes()
                    .await?
                    .into_iter()
                    .filter(|n| n.id != self.me.id && n.state == NodeState::Serving);
                return Ok(match others.min_by_key(|n| (n.participants, n.rooms)) {
                    Some(node) => Self::remote(node),
                    None => Placement::Unavailable("no serving node for a new room".into()),
                });
            }
            None => match self.registry.least_loaded(&self.me.id).await? {
                Some(node) if node.id != self.me.id => {
                    return Ok(Self::remote(node));
                }
                _ => None,
            },
        };
        let owner = match owner {
            Some(owner) if owner != self.me.id => owner,
            _ => match self.claim_here(room).await? {
                None => return Ok(Placement::Local),
                Some(owner) => owner,
            },
        };
        match self.registry.node(&owner).await? {
            Some(node) => Ok(Self::remote(node)),
            None => Ok(Placement::Unavailable(format!(
                "node {owner} holding room '{room}' is not registered (stopping?); join again"
            ))),
        }
    }

    /// Claims `room` for this node: `None` when it is ours, else its owner. Waits out the
    /// quarantine after Redis lost its data (at most one TTL) once.
    async fn claim_here(&self, room: &str) -> Result<Option<String>, ClusterError> {
        for _ in 0..2 {
            match self.keeper.claim(room).await? {
                Claim::Mine { .. } => return Ok(None),
                Claim::Other(owner) => return Ok(Some(owner)),
                Claim::Recovering(wait) => {
                    tracing::info!(room, ?wait, "cluster: Redis recovering; the join waits");
                    tokio::time::sleep(wait.min(self.keeper.claims().ttl())).await;
                }
            }
        }
        Err(ClusterError::Malformed {
            key: room.to_owned(),
            detail: "still recovering after one claim TTL".into(),
        })
    }

    fn remote(node: NodeInfo) -> Placement {
        let base = node.internal_url.trim_end_matches('/');
        let relay_url = match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}{RELAY_PATH}"),
            Some((_, rest)) => format!("ws://{rest}{RELAY_PATH}"),
            None => format!("ws://{base}{RELAY_PATH}"),
        };
        Placement::Remote {
            node: node.id,
            relay_url,
        }
    }
}
