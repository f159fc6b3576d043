//! Cluster mode's room directory and node registry against a real `redis-server`
//! (`src/cluster/`): one owner per room under races, renewals only by the owner, expiry, the
//! fail-stop deadline, and a Redis restart that loses every key.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use roomd::cluster::claims::{Claim, Claims, Keeper, Loss, Renewal};
use roomd::cluster::registry::{NodeInfo, NodeState, Registry};
use roomd::cluster::{connect, Keys};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Short enough for quick tests, long enough for a loaded 2-core machine.
const TTL: Duration = Duration::from_millis(1500);

fn claims(redis: &RedisServer, node: &str) -> Claims {
    let conn = connect(&redis.url(), TTL / 4).expect("valid Redis URL");
    Claims::new(conn, Keys::new("t:"), node, TTL)
}

/// Claims `room`, waiting out the quarantine of a fresh Redis as a joining client would.
async fn claim_settled(c: &Claims, room: &str) -> Claim {
    loop {
        match c.claim(room).await.expect("Redis answers") {
            Claim::Recovering(wait) => tokio::time::sleep(wait).await,
            other => return other,
        }
    }
}

/// A keeper whose losses arrive on the returned channel (at most 64 in these tests; more are
/// dropped and the test's counts would fail).
fn keeper(c: Claims) -> (Keeper, mpsc::Receiver<(String, Loss)>, CancellationToken) {
    let (tx, rx) = mpsc::channel(64);
    let keeper = Keeper::new(
        c,
        Arc::new(move |room: &str, loss| {
            let _ = tx.try_send((room.to_owned(), loss));
        }),
        Arc::new(|_: &str| true),
    );
    let stop = CancellationToken::new();
    tokio::spawn(keeper.clone().run(stop.clone()));
    (keeper, rx, stop)
}

#[tokio::test]
async fn racing_claimers_get_exactly_one_owner() {
    let redis = RedisServer::start().await;
    let nodes: Vec<Claims> = (0..12).map(|i| claims(&redis, &format!("n{i}"))).collect();
    claim_settled(&nodes[0], "warm-up").await;
    let results = futures_util::future::join_all(nodes.iter().map(|c| c.claim("R"))).await;
    let winners: Vec<&str> = nodes
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, Ok(Claim::Mine { .. })))
        .map(|(c, _)| c.node())
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        match r {
            Ok(Claim::Mine { .. }) => {}
            Ok(Claim::Other(owner)) => assert_eq!(owner, winners[0]),
            other => panic!("unexpected claim result {other:?}"),
        }
    }
    assert_eq!(
        nodes[5].owner("R").await.expect("Redis answers").as_deref(),
        Some(winners[0])
    );
}

#[tokio::test]
async fn only_the_owner_renews_or_releases() {
    let redis = RedisServer::start().await;
    let (a, b) = (claims(&redis, "a"), claims(&redis, "b"));
    assert!(matches!(claim_settled(&a, "R").await, Claim::Mine { .. }));
    assert_eq!(
        b.renew("R").await.expect("Redis answers"),
        Renewal::Taken("a".into())
    );
    assert!(!b.release("R").await.expect("Redis answers"));
    assert_eq!(b.owner("R").await.expect("answers").as_deref(), Some("a"));
    assert!(matches!(
        a.renew("R").await.expect("answers"),
        Renewal::Renewed { .. }
    ));
    assert!(a.release("R").await.expect("answers"), "the owner releases");
    assert_eq!(b.owner("R").await.expect("answers"), None);
    assert!(matches!(claim_settled(&b, "R").await, Claim::Mine { .. }));
}

#[tokio::test]
async fn an_unrenewed_claim_expires_after_its_ttl_and_its_deadline_comes_first() {
    let redis = RedisServer::start().await;
    let (a, b) = (claims(&redis, "a"), claims(&redis, "b"));
    claim_settled(&a, "warm-up").await;
    let sent = Instant::now();
    let Claim::Mine { deadline } = a.claim("R").await.expect("Redis answers") else {
        panic!("a fresh room is claimed by its first claimer");
    };
    assert!(
        deadline < Instant::now() + TTL,
        "the owner's deadline precedes the key's expiry"
    );
    assert_eq!(
        b.claim("R").await.expect("answers"),
        Claim::Other("a".into())
    );
    // The key's own expiry is the event awaited: Redis drops it one TTL after the claim.
    tokio::time::sleep_until(sent + TTL + TTL / 5).await;
    assert_eq!(b.owner("R").await.expect("answers"), None, "expired");
    assert!(matches!(
        b.claim("R").await.expect("answers"),
        Claim::Mine { .. }
    ));
}

#[tokio::test]
async fn a_keeper_holds_its_rooms_and_stops_them_by_its_deadline_when_redis_is_gone() {
    let mut redis = RedisServer::start().await;
    let b = claims(&redis, "b");
    let (keeper, mut losses, _stop) = keeper(claims(&redis, "a"));
    loop {
        match keeper.claim("R").await.expect("Redis answers") {
            Claim::Recovering(wait) => tokio::time::sleep(wait).await,
            claim => {
                assert!(matches!(claim, Claim::Mine { .. }));
                break;
            }
        }
    }
    // Three TTLs later the room is still a's: the keeper renewed it.
    tokio::time::sleep(TTL * 3).await;
    assert!(losses.try_recv().is_err(), "no loss while Redis answers");
    assert_eq!(b.owner("R").await.expect("answers").as_deref(), Some("a"));

    let killed = Instant::now();
    redis.kill().await;
    let (room, loss) = tokio::time::timeout(TTL * 2, losses.recv())
        .await
        .expect("the room is given up within a TTL of Redis going away")
        .expect("keeper alive");
    assert_eq!((room.as_str(), loss), ("R", Loss::Deadline));
    assert!(
        killed.elapsed() < TTL,
        "stopped before the key could have expired ({:?})",
        killed.elapsed()
    );
    assert!(!keeper.owns("R"));
}

#[tokio::test]
async fn a_redis_restart_keeps_running_rooms_and_never_gives_them_a_second_owner() {
    let mut redis = RedisServer::start().await;
    let b = claims(&redis, "b");
    let (keeper, mut losses, _stop) = keeper(claims(&redis, "a"));
    loop {
        match keeper.claim("R").await.expect("Redis answers") {
            Claim::Recovering(wait) => tokio::time::sleep(wait).await,
            claim => {
                assert!(matches!(claim, Claim::Mine { .. }));
                break;
            }
        }
    }
    redis.restart().await;
    // b comes first on the empty Redis: the key is gone, but b may not take the room.
    let wait = match b.claim("R").await.expect("the new Redis answers") {
        Claim::Recovering(wait) => wait,
        Claim::Other(owner) => {
            // a's renewal was quicker than b; the same rule, seen from the other side.
            assert_eq!(owner, "a");
            Duration::ZERO
        }
        Claim::Mine { .. } => panic!("a second owner of R after the restart"),
    };
    assert!(wait <= TTL);
    tokio::time::sleep(wait).await;
    assert_eq!(
        b.claim("R").await.expect("answers"),
        Claim::Other("a".into()),
        "a recreated its claim during the quarantine"
    );
    assert!(keeper.owns("R"));
    assert!(losses.try_recv().is_err(), "the room was never stopped");
    assert!(
        matches!(b.claim("S").await.expect("answers"), Claim::Mine { .. }),
        "new rooms are placed again after the quarantine"
    );
}

fn node(id: &str, participants: u64, state: NodeState) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        internal_url: format!("http://{id}.internal:8080"),
        media_addresses: vec!["127.0.0.2".parse().expect("an IP")],
        state,
        rooms: 1,
        participants,
        room_names: vec![format!("room-of-{id}")],
    }
}

#[tokio::test]
async fn the_registry_lists_live_nodes_and_places_on_the_least_loaded_serving_one() {
    let redis = RedisServer::start().await;
    let conn = connect(&redis.url(), TTL / 4).expect("valid URL");
    let registry = Registry::new(conn, Keys::new("t:"), TTL);
    registry
        .publish(&node("a", 9, NodeState::Serving))
        .await
        .expect("published");
    registry
        .publish(&node("b", 2, NodeState::Serving))
        .await
        .expect("published");
    registry
        .publish(&node("c", 0, NodeState::Draining))
        .await
        .expect("published");
    let nodes = registry.nodes().await.expect("listed");
    assert_eq!(
        nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(
        nodes[1],
        node("b", 2, NodeState::Serving),
        "records round-trip"
    );
    let pick = registry.least_loaded("a").await.expect("answers");
    assert_eq!(
        pick.map(|n| n.id).as_deref(),
        Some("b"),
        "draining c takes no rooms"
    );
    registry
        .publish(&node("a", 2, NodeState::Serving))
        .await
        .expect("published");
    let pick = registry.least_loaded("a").await.expect("answers");
    assert_eq!(
        pick.map(|n| n.id).as_deref(),
        Some("a"),
        "a tie stays on the asking node"
    );
    registry.unpublish("a").await.expect("removed");
    let ids: Vec<String> = registry
        .nodes()
        .await
        .expect("listed")
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["b", "c"]);
    // Records not refreshed vanish after their TTL.
    tokio::time::sleep(TTL + TTL / 5).await;
    assert!(registry.nodes().await.expect("listed").is_empty());
}
