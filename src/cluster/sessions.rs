//! The session directory: which node holds each session that is in a room, so that a client
//! reconnecting (`connect` with its `sessionId`) through any node reaches the node that has
//! its session. Records last one claim TTL and the holding node rewrites them every third of
//! it; a record of a session that ended simply expires (a `connect` relayed meanwhile is
//! answered by the holder exactly as it would be answered directly: reconnection error).

use std::time::Duration;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use super::{ClusterError, Keys};

/// Where a session lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The node holding the session (the owner of its room).
    pub node: String,
    /// The session's room.
    pub room: String,
}

/// The session directory as seen by one node.
#[derive(Clone)]
pub struct SessionDirectory {
    redis: ConnectionManager,
    keys: Keys,
    ttl: Duration,
}

impl std::fmt::Debug for SessionDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDirectory")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SessionDirectory {
    /// A directory whose records last `ttl`.
    pub fn new(redis: ConnectionManager, keys: Keys, ttl: Duration) -> Self {
        Self { redis, keys, ttl }
    }

    /// Writes (or refreshes) that `node` holds each `(session id, room)`.
    pub async fn publish(
        &self,
        node: &str,
        sessions: &[(String, String)],
    ) -> Result<(), ClusterError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        for (id, room) in sessions {
            let record = SessionRecord {
                node: node.to_owned(),
                room: room.clone(),
            };
            let record = serde_json::to_string(&record).map_err(|e| ClusterError::Malformed {
                key: self.keys.session(id),
                detail: e.to_string(),
            })?;
            pipe.cmd("SET")
                .arg(self.keys.session(id))
                .arg(record)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }

    /// Where session `id` lives, if any node holds it.
    pub async fn lookup(&self, id: &str) -> Result<Option<SessionRecord>, ClusterError> {
        super::get_json(&self.redis, self.keys.session(id)).await
    }
}
