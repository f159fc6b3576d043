//! The node registry: each node's record (`node:<id>`, JSON, lasting one TTL and rewritten every
//! third of it) and the choice of a node for a new room.
//!
//! A node is alive exactly while its record exists; the `nodes` set only lists ids to look at
//! and readers prune the ids whose record is gone.

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::claims::BOOT_PRELUDE;
use super::{ClusterError, Keys};

/// Whether a node takes new rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new rooms.
    Serving,
    /// Shutting down: keeps its rooms, takes no new ones.
    Draining,
    /// Owns no rooms (`--cluster-relay-only`): relays its clients to the rooms' nodes.
    #[serde(rename = "relay-only")]
    RelayOnly,
}

/// One node's registry record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id (`--cluster-node-id`).
    pub id: String,
    /// Base URL other nodes reach this node's HTTP port at (`--cluster-internal-url`).
    pub internal_url: String,
    /// The addresses its media answers announce.
    pub media_addresses: Vec<IpAddr>,
    /// Serving or draining.
    pub state: NodeState,
    /// Rooms it owns.
    pub rooms: u64,
    /// Participants in those rooms: the load placement compares.
    pub participants: u64,
    /// Its rooms that have participants, as of the record (for the cluster-wide
    /// `/getAllRooms`).
    #[serde(default)]
    pub room_names: Vec<String>,
}

/// KEYS[1] = node record, KEYS[2] = boot, KEYS[3] = quarantine, KEYS[4] = nodes set;
/// ARGV[1] = record, ARGV[2] = ttl ms, ARGV[3] = id.
const PUBLISH: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return 1
";

/// The registry as seen by one node.
#[derive(Clone)]
pub struct Registry {
    redis: ConnectionManager,
    keys: Keys,
    ttl: Duration,
    publish: std::sync::Arc<Script>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry whose records last `ttl`.
    pub fn new(redis: ConnectionManager, keys: Keys, ttl: Duration) -> Self {
        Self {
            redis,
            keys,
            ttl,
            publish: std::sync::Arc::new(Script::new(&format!("{BOOT_PRELUDE}{PUBLISH}"))),
        }
    }

    /// How often a node rewrites its record.
    pub fn refresh_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// Writes (or refreshes) `info`. On an empty Redis this also starts the quarantine of
    /// `claims.rs`, so that a cluster's first rooms wait from its first node's start on.
    pub async fn publish(&self, info: &NodeInfo) -> Result<(), ClusterError> {
        let record = serde_json::to_string(info).map_err(|e| ClusterError::Malformed {
            key: self.keys.node(&info.id),
            detail: e.to_string(),
        })?;
        let mut redis = self.redis.clone();
        let _: i64 = self
            .publish
            .key(self.keys.node(&info.id))
            .key(self.keys.boot())
            .key(self.keys.quarantine())
            .key(self.keys.nodes())
            .arg(record)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(&info.id)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Removes node `id`'s record (a clean stop).
    pub async fn unpublish(&self, id: &str) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        redis::pipe()
            .del(self.keys.node(id))
            .srem(self.keys.nodes(), id)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// Node `id`'s record, if it is alive.
    pub async fn node(&self, id: &str) -> Result<Option<NodeInfo>, ClusterError> {
        super::get_json(&self.redis, self.keys.node(id)).await
    }

    /// Every live node's record, in id order. Ids without a record are pruned from the set;
    /// an unreadable record is skipped (logged), it never hides the others.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut redis = self.redis.clone();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.nodes())
            .query_async(&mut redis)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| self.keys.node(id)).collect();
        let records: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut redis)
            .await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in ids.into_iter().zip(records) {
            match record.map(|r| serde_json::from_str::<NodeInfo>(&r)) {
                None => gone.push(id),
                Some(Ok(info)) => nodes.push(info),
                Some(Err(e)) => tracing::warn!(node = id, "cluster: unreadable node record: {e}"),
            }
        }
        if !gone.is_empty() {
            let _: Result<i64, _> = redis::cmd("SREM")
                .arg(self.keys.nodes())
                .arg(&gone)
                .query_async(&mut redis)
                .await;
        }
        Ok(nodes)
    }

    /// The serving node with the fewest participants (then rooms); `prefer` wins ties, so a
    /// node keeps rooms it can take as well as any other.
    pub async fn least_loaded(&self, prefer: &str) -> Result<Option<NodeInfo>, ClusterError> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.state == NodeState::Serving)
            .min_by_key(|n| (n.participants, n.rooms, n.id != prefer)))
    }
}
