//! Cluster mode (`--redis-url`): several roomd nodes behind one address, coordinated through one
//! Redis. Owns the Redis key layout, the connection to Redis, and the two records kept there:
//! the node registry ([`registry`]) and the room directory with its fail-stop claims
//! ([`claims`]). Without `--redis-url` nothing here is built and no Redis is contacted.
//!
//! Key layout (every key under `--cluster-key-prefix`, `roomd:` by default):
//!
//! | key | value | written by | lifetime |
//! | --- | --- | --- | --- |
//! | `room:<name>` | owner node id | the owner: `SET NX PX`, renewed by a compare-and-pexpire script, released by compare-and-delete | claim TTL |
//! | `node:<id>` | JSON [`registry::NodeInfo`] | that node, every third of the TTL | claim TTL |
//! | `session:<id>` | JSON [`sessions::SessionRecord`] | the node holding a session in a room, every third of the TTL | claim TTL |
//! | `nodes` | set of node ids | nodes on registration; stale ids pruned by readers | none |
//! | `boot` | `1` | the first script that runs on an empty Redis | none (lost with Redis's data) |
//! | `quarantine` | `1` | the same script, at the same moment | claim TTL |
//!
//! `boot` missing means Redis lost its data (a restart without persistence, a failover to an
//! empty replica, a flush): owners of rooms may still be running and will recreate their claims
//! at their next renewal, so for one claim TTL (`quarantine`) no node may create a claim that
//! did not exist; after it every former owner has either recreated its claim or stopped its
//! rooms by its own deadline ([`claims`] explains why this keeps one owner per room).

pub mod claims;
pub mod registry;
pub mod sessions;

pub(crate) mod forward;
pub(crate) mod node;
pub(crate) mod relay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis operation of the cluster that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis refused, timed out or is unreachable.
    #[error("cluster directory unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// Cluster mode is configured unusably.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// A stored record is not what roomd writes (another program or version wrote the key).
    #[error("cluster record {key} is malformed: {detail}")]
    Malformed { key: String, detail: String },
}

/// This node's cluster counters (on `/metrics` in cluster mode only), written by the keeper,
/// the placement and the relay links.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Relay links this node opened to rooms' owners, open now.
    pub(crate) links_out: AtomicU64,
    /// Relay links of other nodes served here, open now.
    pub(crate) links_in: AtomicU64,
    /// Text frames relayed from clients to owners over this node's links.
    pub(crate) frames_to_owner: AtomicU64,
    /// Text frames relayed from owners to clients over this node's links.
    pub(crate) frames_to_client: AtomicU64,
    /// This node's links that broke without a close (owner died or hung).
    pub(crate) links_lost: AtomicU64,
    /// Joins of this node's clients served here.
    pub(crate) placed_local: AtomicU64,
    /// Joins of this node's clients relayed to another node.
    pub(crate) placed_relayed: AtomicU64,
    /// Joins of this node's clients no node could take (`Cannot place the room`).
    pub(crate) placed_refused: AtomicU64,
    /// Claim renewals that failed or did not answer before the claim's deadline.
    pub(crate) renew_failures: AtomicU64,
    /// Rooms this node stopped because no renewal succeeded before the deadline.
    pub(crate) stopped_deadline: AtomicU64,
    /// Rooms this node stopped because another node held their claim.
    pub(crate) stopped_taken: AtomicU64,
    /// Redis commands of this node that failed (unreachable, timed out, refused).
    pub(crate) redis_errors: AtomicU64,
}

impl ClusterStats {
    /// Counts `e` if Redis failed.
    pub(crate) fn failed(&self, e: &ClusterError) {
        if matches!(e, ClusterError::Redis(_)) {
            self.redis_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one open relay link in a gauge of [`ClusterStats`] for as long as it lives.
pub(crate) struct LinkGauge<'a>(&'a AtomicU64);

impl<'a> LinkGauge<'a> {
    pub(crate) fn open(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for LinkGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The JSON record stored at `key`, if the key exists; a record roomd cannot read is
/// [`ClusterError::Malformed`].
async fn get_json<T: serde::de::DeserializeOwned>(
    redis: &ConnectionManager,
    key: String,
) -> Result<Option<T>, ClusterError> {
    let mut redis = redis.clone();
    let record: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
    record
        .map(|r| serde_json::from_str(&r))
        .transpose()
        .map_err(|e| ClusterError::Malformed {
            key,
            detail: e.to_string(),
        })
}

/// The names of roomd's Redis keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (e.g. `roomd:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The claim of room `name`.
    pub fn room(&self, name: &str) -> String {
        format!("{}room:{name}", self.prefix)
    }

    /// The registration of node `id`.
    pub fn node(&self, id: &str) -> String {
        format!("{}node:{id}", self.prefix)
    }

    /// The record of session `id` (which node holds it).
    pub fn session(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    /// The set of registered node ids.
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// Present as long as Redis kept its data since roomd first wrote to it.
    pub fn boot(&self) -> String {
        format!("{}boot", self.prefix)
    }

    /// Present for one claim TTL after Redis was found without its data.
    pub fn quarantine(&self) -> String {
        format!("{}quarantine", self.prefix)
    }
}

/// A connection to the cluster's Redis that reconnects by itself. It connects lazily: a node
/// starts (and serves its single-node duties) while Redis is down. Every command gives up after
/// `timeout`, so that an unreachable Redis is an error and never a wait past a claim deadline.
pub fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, ClusterError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(timeout);
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}
