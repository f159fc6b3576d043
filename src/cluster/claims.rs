//! The room directory of a cluster: which node owns which room, and this node's claims kept
//! alive or given up (fail-stop).
//!
//! A room lives on exactly one node, its owner, named by the key `room:<name>`:
//! - **claim**: `SET room:<name> <node> NX PX <ttl>` (in a script that also notices an empty
//!   Redis, below); whoever finds the key set learns the owner instead;
//! - **renew**: only the owner, every third of the TTL, by a script that extends the key if it
//!   still holds this node's id (compare-and-pexpire);
//! - **release**: when the room empties, by compare-and-delete.
//!
//! **Fail-stop.** The owner sends a renewal at `t` and, when it succeeds, its claim is good
//! until its own *deadline* `t + ttl - ttl/10`. Redis executes the renewal at some `t' ≥ t`, so
//! the key lives until `t' + ttl`, later than the deadline (the tenth absorbs clock-rate
//! differences). An owner that reaches its deadline without a newer successful renewal (Redis
//! down, a partition, a slow answer) stops the room at once ([`Loss::Deadline`]): before any
//! other node can see the key gone. An owner whose renewal finds another node's id stops the
//! room too ([`Loss::Taken`]). So while a node serves a room, no other node can claim it.
//!
//! **Redis losing its data** (restart without persistence, failover to an empty replica,
//! `FLUSHALL`) would break that argument: the keys vanish while their owners are still within
//! their deadlines. Two rules keep one owner per room across it:
//! 1. a renewal that finds its key missing recreates it with the owner's id (`SET NX`), so
//!    running rooms go on ([`Renewal::Recreated`]);
//! 2. the first script to run on an empty Redis writes the `boot` marker and a `quarantine` key
//!    lasting one TTL; while it lasts, no claim may *create* a missing key
//!    ([`Claim::Recovering`]). Every owner from before the loss either renews (recreating its
//!    key) within that TTL or passes its deadline, which lies less than one TTL after its last
//!    renewal and so before the quarantine ends, and stops. Only then may new claims happen,
//!    and they lose against any recreated key.
//!
//! A first start of a cluster on an empty Redis looks the same, so the first rooms wait one
//! TTL after the first node registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, ClusterStats, Keys};

/// Marks an empty Redis (KEYS[2] = boot, KEYS[3] = quarantine, ARGV[2] = ttl ms). Every script
/// that may create a claim or a registration starts with it.
pub(crate) const BOOT_PRELUDE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], '1')
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
end
";

/// KEYS[1] = room; ARGV[1] = node. `{1, owner}` or `{2, quarantine ms left}`. A claim by the
/// owner itself extends the key like a renewal, so that its new deadline holds.
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, owner}
end
if owner then return {1, owner} end
local wait = redis.call('PTTL', KEYS[3])
if wait > 0 then return {2, tostring(wait)} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
";

/// `{1, me}` renewed, `{2, me}` recreated, `{0, other}` taken.
const RENEW: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, owner}
end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ARGV[1]}
end
return {0, owner}
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This node owns the room until `deadline` unless it renews.
    Mine { deadline: Instant },
    /// Another node owns the room.
    Other(String),
    /// Redis lost its data a moment ago; no new claim for this long.
    Recovering(Duration),
}

/// What a renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, now until `deadline`.
    Renewed { deadline: Instant },
    /// The key was gone (Redis lost its data, or it expired without a rival claim); it is ours
    /// again until `deadline`.
    Recreated { deadline: Instant },
    /// Another node holds the room.
    Taken(String),
}

/// Why this node stopped owning a room it did not release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loss {
    /// No successful renewal before the deadline.
    Deadline,
    /// Another node holds the claim.
    Taken(String),
}

/// The room directory operations of one node.
#[derive(Clone)]
pub struct Claims {
    redis: ConnectionManager,
    keys: Keys,
    node: String,
    ttl: Duration,
    claim: Arc<Script>,
    renew: Arc<Script>,
    release: Arc<Script>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Claims {
    /// Claims of node `node` lasting `ttl`.
    pub fn new(
        redis: ConnectionManager,
        keys: Keys,
        node: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            redis,
            keys,
            node: node.into(),
            ttl,
            claim: Arc::new(Script::new(&format!("{BOOT_PRELUDE}{CLAIM}"))),
            renew: Arc::new(Script::new(&format!("{BOOT_PRELUDE}{RENEW}"))),
            release: Arc::new(Script::new(RELEASE)),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The claim TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often an owner renews: three tries before a deadline.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// The deadline of a claim whose successful command was sent at `sent`.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.ttl / 10
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(&self, script: &Script, room: &str) -> Result<(i64, String), ClusterError> {
        let mut redis = self.redis.clone();
        let reply: (i64, String) = script
            .key(self.keys.room(room))
            .key(self.keys.boot())
            .key(self.keys.quarantine())
            .arg(&self.node)
            .arg(self.ttl_ms())
            .invoke_async(&mut redis)
            .await?;
        Ok(reply)
    }

    /// Claims `room` for this node, or names its owner.
    pub async fn claim(&self, room: &str) -> Result<Claim, ClusterError> {
        let sent = Instant::now();
        match self.run(&self.claim, room).await? {
            (1, owner) if owner == self.node => Ok(Claim::Mine {
                deadline: self.deadline(sent),
            }),
            (1, owner) => Ok(Claim::Other(owner)),
            (2, ms) => Ok(Claim::Recovering(Duration::from_millis(
                ms.parse().unwrap_or(1),
            ))),
            (code, value) => Err(self.malformed(room, code, &value)),
        }
    }

    /// Renews this node's claim of `room`.
    pub async fn renew(&self, room: &str) -> Result<Renewal, ClusterError> {
        let sent = Instant::now();
        match self.run(&self.renew, room).await? {
            (1, _) => Ok(Renewal::Renewed {
                deadline: self.deadline(sent),
            }),
            (2, _) => Ok(Renewal::Recreated {
                deadline: self.deadline(sent),
            }),
            (0, owner) => Ok(Renewal::Taken(owner)),
            (code, value) => Err(self.malformed(room, code, &value)),
        }
    }

    /// Deletes the claim of `room` if this node holds it; whether it did.
    pub async fn release(&self, room: &str) -> Result<bool, ClusterError> {
        let mut redis = self.redis.clone();
        let deleted: i64 = self
            .release
            .key(self.keys.room(room))
            .arg(&self.node)
            .invoke_async(&mut redis)
            .await?;
        Ok(deleted == 1)
    }

    /// The owner of `room`, if it has one.
    pub async fn owner(&self, room: &str) -> Result<Option<String>, ClusterError> {
        let mut redis = self.redis.clone();
        let owner: Option<String> = redis::cmd("GET")
            .arg(self.keys.room(room))
            .query_async(&mut redis)
            .await?;
        Ok(owner)
    }

    fn malformed(&self, room: &str, code: i64, value: &str) -> ClusterError {
        ClusterError::Malformed {
            key: self.keys.room(room),
            detail: format!("script answered {code} {value:?}"),
        }
    }
}

/// Called when this node must stop serving a room it owned (`roomClosed` to its members).
pub type OnLoss = Arc<dyn Fn(&str, Loss) + Send + Sync>;
/// Whether this node is serving a room of that name right now.
pub type IsLive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// An owned room: until when, and for how many renewal rounds no room of that name was live.
#[derive(Clone, Copy, Debug)]
struct Owned {
    deadline: Instant,
    idle_rounds: u8,
}

/// Rounds a claimed room may have no live room here before its claim is released: two, so that
/// a claim made just before a round (its room about to be created) is never released.
const IDLE_ROUNDS_TO_RELEASE: u8 = 2;

/// This node's owned rooms and their deadlines, kept alive by [`Keeper::run`].
///
/// Claims are released by the keeper, not when a room empties: a room that empties and is
/// joined again at once must not lose the claim its new incarnation relies on. A room with no
/// live room here for [`IDLE_ROUNDS_TO_RELEASE`] rounds is released; until then joins through
/// other nodes still come here and recreate it. Claims and releases take one lock, so a release
/// never deletes a claim made after its decision.
#[derive(Clone)]
pub struct Keeper {
    claims: Claims,
    owned: Arc<Mutex<HashMap<String, Owned>>>,
    serial: Arc<tokio::sync::Mutex<()>>,
    changed: Arc<Notify>,
    on_loss: OnLoss,
    is_live: IsLive,
    stats: Arc<ClusterStats>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// A keeper of `claims`' rooms, calling `on_loss` for each room it gives up and asking
    /// `is_live` whether a claimed room still runs here.
    pub fn new(claims: Claims, on_loss: OnLoss, is_live: IsLive) -> Self {
        Self {
            claims,
            owned: Arc::default(),
            serial: Arc::default(),
            changed: Arc::default(),
            on_loss,
            is_live,
            stats: Arc::default(),
        }
    }

    /// The same keeper, counting its failed renewals and stopped rooms in `stats`.
    pub fn counting(mut self, stats: Arc<ClusterStats>) -> Self {
        self.stats = stats;
        self
    }

    /// The directory operations underneath.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    fn owned(&self) -> MutexGuard<'_, HashMap<String, Owned>> {
        // The map stays consistent at every step; a panic elsewhere does not invalidate it.
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `room`; when this node wins it is kept alive from now on.
    pub async fn claim(&self, room: &str) -> Result<Claim, ClusterError> {
        let _serial = self.serial.lock().await;
        let claim = self.claims.claim(room).await?;
        if let Claim::Mine { deadline } = claim {
            let owned = Owned {
                deadline,
                idle_rounds: 0,
            };
            self.owned().insert(room.to_owned(), owned);
            self.changed.notify_one();
        }
        Ok(claim)
    }

    /// Whether this node currently keeps `room` alive.
    pub fn owns(&self, room: &str) -> bool {
        self.owned().contains_key(room)
    }

    /// The rooms this node keeps alive.
    pub fn rooms(&self) -> Vec<String> {
        self.owned().keys().cloned().collect()
    }

    /// Stops keeping `room` and deletes its claim at once (the room is known to be gone).
    pub async fn release(&self, room: &str) -> Result<bool, ClusterError> {
        let _serial = self.serial.lock().await;
        self.owned().remove(room);
        self.claims.release(room).await
    }

    fn lose(&self, room: &str, loss: Loss) {
        if self.owned().remove(room).is_none() {
            return;
        }
        tracing::warn!(room, ?loss, "cluster: room claim lost, closing the room");
        ClusterStats::bump(match loss {
            Loss::Deadline => &self.stats.stopped_deadline,
            Loss::Taken(_) => &self.stats.stopped_taken,
        });
        (self.on_loss)(room, loss.clone());
        if loss == Loss::Deadline {
            // Best effort: if Redis answers again, the room is free at once instead of at expiry.
            let claims = self.claims.clone();
            let room = room.to_owned();
            tokio::spawn(async move {
                let _ = claims.release(&room).await;
            });
        }
    }

    /// Renews every owned room every [`Claims::renew_interval`], and stops each room at its
    /// deadline if no renewal succeeded by then, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut next_round = Instant::now() + self.claims.renew_interval();
        loop {
            let earliest = self.owned().values().map(|o| o.deadline).min();
            let wake = earliest.map_or(next_round, |d| d.min(next_round));
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.changed.notified() => continue,
                () = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            let expired: Vec<String> = self
                .owned()
                .iter()
                .filter(|(_, o)| o.deadline <= now)
                .map(|(r, _)| r.clone())
                .collect();
            for room in expired {
                self.lose(&room, Loss::Deadline);
            }
            if now >= next_round {
                next_round = now + self.claims.renew_interval();
                self.release_idle().await;
                self.round().await;
            }
        }
    }

    /// Counts the rounds each owned room had no live room here; releases those idle long
    /// enough.
    async fn release_idle(&self) {
        let _serial = self.serial.lock().await;
        let mut idle = Vec::new();
        for (room, owned) in self.owned().iter_mut() {
            if (self.is_live)(room) {
                owned.idle_rounds = 0;
            } else {
                owned.idle_rounds = owned.idle_rounds.saturating_add(1);
                if owned.idle_rounds >= IDLE_ROUNDS_TO_RELEASE {
                    idle.push(room.clone());
                }
            }
        }
        for room in idle {
            self.owned().remove(&room);
            if let Err(e) = self.claims.release(&room).await {
                tracing::debug!(room, "cluster: release failed (the claim expires): {e}");
            }
        }
    }

    /// One renewal of every owned room, each bounded by its own deadline.
    async fn round(&self) {
        let rooms: Vec<(String, Instant)> = self
            .owned()
            .iter()
            .map(|(r, o)| (r.clone(), o.deadline))
            .collect();
        let renewals = rooms.into_iter().map(|(room, deadline)| async move {
            match tokio::time::timeout_at(deadline, self.claims.renew(&room)).await {
                Err(_elapsed) => {
                    ClusterStats::bump(&self.stats.renew_failures);
                    self.lose(&room, Loss::Deadline);
                }
                Ok(Err(e)) => {
                    ClusterStats::bump(&self.stats.renew_failures);
                    self.stats.failed(&e);
                    tracing::warn!(room, "cluster: renewal failed: {e}");
                }
                Ok(Ok(Renewal::Taken(owner))) => self.lose(&room, Loss::Taken(owner)),
                Ok(Ok(Renewal::Renewed { deadline } | Renewal::Recreated { deadline })) => {
                    let kept = match self.owned().get_mut(&room) {
                        Some(o) => {
                            o.deadline = deadline;
                            true
                        }
                        None => false,
                    };
                    if !kept {
                        // Released or lost while the renewal was under way: undo it.
                        let _ = self.claims.release(&room).await;
                    }
                }
            }
        });
        futures_util::future::join_all(renewals).await;
    }
}
