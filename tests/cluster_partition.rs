//! A room's owner cut off from Redis while everything else keeps running (a network
//! partition): three roomd node processes, node `a` owning room R with one participant on `a`
//! and one relayed to it through node `b`. An nftables rule drops every packet between `a` and
//! Redis — no RST, no ICMP: packets vanish, as on a real partition — and the test checks the
//! fail-stop promise of `src/cluster/claims.rs`:
//! - both of `a`'s participants get `roomClosed` while `a`'s claim is still in Redis (so before
//!   any other node could claim R), within one TTL of the cut;
//! - joins of R through the other nodes are refused until the claim has expired, then R is
//!   placed on `b` or `c` (never `a`) and media flows there (webrtc-rs peers);
//! - once the rule is gone, `a` registers again and owns new rooms, and R stays where it went;
//! - throughout, a sampler of the claim in Redis and of every node's own room list never sees
//!   two nodes serving R, nor `a` serving R once another node owned it.
//!
//! The rule must touch nothing else on the machine, so the test runs itself again inside a
//! network namespace of its own (loopback only, `common::netns::rerun_inside`), where it starts
//! redis-server (listening on 127.0.0.1, .2 and .3, each node talking to it at its own address,
//! so that the rule can single out `a`'s traffic), the nodes, and the clients. Needs root,
//! iproute2 and nftables (installed by `bash tests/run.sh`).

mod common;

use std::time::Duration;

use common::cluster::{self, candidate_addresses, NodeProcess};
use common::peer;
use common::redis_server::RedisServer;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The claim TTL of the cluster: short for a quick test, long enough that a loaded machine does
/// not miss renewals of the nodes that keep their Redis.
const TTL_MS: u64 = 3000;
const TTL: Duration = Duration::from_millis(TTL_MS);
/// The whole run inside the namespace must end within this (it takes about 15 s).
const BOUND: Duration = Duration::from_secs(90);
/// The nftables table of the partition (inside the test's own namespace).
const TABLE: &str = "roomd_partition";
/// The room of the test.
const R: &str = "R";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_redis_closes_its_room_before_another_node_owns_it() {
    if !common::netns::inside() {
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        assert!(nft, "nft missing: run `bash tests/run.sh`");
        common::netns::rerun_inside(
            "roomd-partition-",
            "an_owner_cut_off_from_redis_closes_its_room_before_another_node_owns_it",
            BOUND,
            "partition",
        )
        .await;
        return;
    }
    partition_scenario().await;
}

/// What the sampler saw at one moment: R's owner in Redis, then which nodes served R.
#[derive(Debug)]
struct Sample {
    at: Instant,
    owner: Option<String>,
    serving: Vec<String>,
}

/// Polls `ready` every 50 ms until it holds, failing at `deadline`: for state other processes
/// publish on their own schedule.
async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    deadline: Instant,
    mut ready: impl FnMut() -> F,
) {
    while !ready().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .expect("write the nft script");
    assert!(
        child.wait().expect("nft ends").success(),
        "nft -f: {script}"
    );
}

fn names(join: &Value) -> Vec<String> {
    let mut names: Vec<String> = join["result"]["value"]
        .as_array()
        .unwrap_or_else(|| panic!("joinRoom lists the room's participants: {join}"))
        .iter()
        .map(|p| p["id"].as_str().expect("participant id").to_owned())
        .collect();
    names.sort();
    names
}

async fn partition_scenario() {
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_millis();
    // Each node reaches Redis at its own address: the rule below drops only a's.
    let redis = RedisServer::start_on(&["127.0.0.1", "127.0.0.2", "127.0.0.3"]).await;
    let a = NodeProcess::start("a", &redis.url_at("127.0.0.1"), "127.0.0.1", TTL_MS, &[]).await;
    let b = NodeProcess::start("b", &redis.url_at("127.0.0.2"), "127.0.0.2", TTL_MS, &[]).await;
    let c = NodeProcess::start("c", &redis.url_at("127.0.0.3"), "127.0.0.3", TTL_MS, &[]).await;
    // The test looks at Redis as b does (b keeps its Redis throughout).
    let mut watch = cluster::redis(&redis.url_at("127.0.0.2")).await;
    cluster::wait_ready(&mut watch, &["a", "b", "c"]).await;

    // R on a (a node places an unowned room on itself when it is as idle as any), with a1
    // on a and b1 relayed to a through b.
    let mut a1 = a.client().await;
    assert!(names(&a1.join(R, "a1").await).is_empty());
    assert_eq!(cluster::owner(&mut watch, R).await.0.as_deref(), Some("a"));
    let mut b1 = b.client().await;
    assert_eq!(names(&b1.join(R, "b1").await), ["a1"]);
    a1.notification("participantJoined").await;
    assert_eq!(a.local_rooms().await, [R]);
    assert!(b.local_rooms().await.is_empty(), "b only relays b1");

    // The sampler: R's claim, then every node's own rooms, every 50 ms (polling: the state is
    // other processes', published on their own schedule) until told to stop.
    let (stop_sampling, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let mut watch = watch.clone();
        let nodes: Vec<(String, std::net::SocketAddr)> = [&a, &b, &c]
            .iter()
            .map(|n| (n.id.clone(), n.addr))
            .collect();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let owner = cluster::owner(&mut watch, R).await.0;
                let mut serving = Vec::new();
                for (id, addr) in &nodes {
                    let (status, body) = common::http_request(
                        *addr,
                        "GET",
                        "/getAllRooms",
                        &[("x-roomd-forwarded", "1")],
                    )
                    .await;
                    assert_eq!(status, 200, "{id}: {body}");
                    let rooms: Vec<String> = serde_json::from_str(&body).expect("room names");
                    if rooms.iter().any(|r| r == R) {
                        serving.push(id.clone());
                    }
                }
                samples.push(Sample {
                    at: Instant::now(),
                    owner,
                    serving,
                });
                tokio::select! {
                    _ = &mut stopped => return samples,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };

    // The partition: a's packets to and from Redis vanish.
    let port = redis.port;
    nft(&format!(
        "table inet {TABLE} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    ip daddr 127.0.0.1 tcp dport {port} counter drop
    ip saddr 127.0.0.1 tcp sport {port} counter drop
  }}
}}
"
    ));
    let cut = Instant::now();

    // Both of a's participants hear roomClosed, each looking at Redis the moment it did: the
    // claim must still be a's, with time left (a stops at 90 % of the TTL after its last
    // renewal, the key lives a TTL after it).
    let ended = |mut client: common::Client, mut watch: ::redis::aio::MultiplexedConnection| async move {
        let ev = client.notification_within("roomClosed", TTL * 2).await;
        let at = Instant::now();
        assert_eq!(ev["params"], json!({"room": R}));
        let claim = cluster::owner(&mut watch, R).await;
        (at, claim, client)
    };
    let ((a1_end, a1_claim, a1), (b1_end, b1_claim, b1)) =
        tokio::join!(ended(a1, watch.clone()), ended(b1, watch.clone()));
    println!(
        "cut at {} ms; roomClosed at a1 (direct) {} ms, at b1 (relayed via b) {} ms; \
         R's claim in Redis then (owner, ms left): {a1_claim:?}, {b1_claim:?}",
        ms(cut),
        ms(a1_end),
        ms(b1_end)
    );
    for (who, claim) in [("a1", &a1_claim), ("b1", &b1_claim)] {
        assert_eq!(
            claim.0.as_deref(),
            Some("a"),
            "{who}: R was closed after a's claim was gone ({claim:?})"
        );
        assert!(claim.1 > 0, "{who}: a's claim had no time left: {claim:?}");
    }
    let end = a1_end.max(b1_end);
    assert!(end - cut < TTL, "a closed R {:?} after the cut", end - cut);
    // a says why (its log is read by a thread, so it may lag a little).
    wait_for("a logging why it closed R", end + common::WAIT, || async {
        a.log()
            .lines()
            .any(|l| l.contains("room claim lost") && l.contains("loss=Deadline"))
    })
    .await;

    // Joins of R through b and c, alternately, each on a new socket (a socket whose join was
    // relayed stays on that link): refused while a's claim lasts, then R is placed anew.
    let mut refusals = Vec::new();
    let (mut g, g_node, joined_at) = loop {
        let k = refusals.len();
        let via = if k % 2 == 0 { &b } else { &c };
        let mut client = via.client().await;
        let r = client
            .call("joinRoom", json!({"user": format!("g{k}"), "room": R}))
            .await;
        if r.get("result").is_some() {
            assert!(names(&r).is_empty(), "a new room R: {r}");
            break (client, via, Instant::now());
        }
        let (code, message) = common::error_of(&r);
        assert_eq!(code, 204, "{message}");
        refusals.push((ms(Instant::now()), via.id.clone(), message));
        assert!(
            Instant::now() - cut < TTL * 3,
            "R never placed again: {refusals:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let g_name = format!("g{}", refusals.len());
    let (new_owner, _) = cluster::owner(&mut watch, R).await;
    let new_owner = new_owner.expect("R is claimed");
    println!(
        "R joined again through {} at {} ms, owner now {new_owner}; refused before (ms, via, \
         why): {refusals:?}",
        g_node.id,
        ms(joined_at),
    );
    assert!(
        !refusals.is_empty(),
        "a join of R was refused at least once while a's claim lasted"
    );
    assert!(end < joined_at);
    assert_ne!(new_owner, "a", "R placed on the node cut off from Redis");
    let x = [&b, &c]
        .into_iter()
        .find(|n| n.id == new_owner)
        .expect("the new owner is b or c");

    // Media on the new owner: g publishes, h (through the other of b and c) receives.
    let other = if g_node.id == "b" { &c } else { &b };
    let mut h = other.client().await;
    assert_eq!(names(&h.join(R, "h").await), [g_name.as_str()]);
    let publication = peer::publish(&mut g, &g_name, false, false).await;
    assert_eq!(
        candidate_addresses(&publication.answer),
        [x.media_ip.as_str()]
    );
    let mut subscription = peer::subscribe(&mut h, &g_name).await;
    assert_eq!(
        candidate_addresses(&subscription.answer),
        [x.media_ip.as_str()]
    );
    let n = 100;
    let (_, _, (got, corrupt)) = tokio::join!(
        peer::send(
            &publication.video,
            peer::VIDEO_SSRC,
            media::testing::CHROME.vp8,
            n
        ),
        peer::send(
            &publication.audio,
            peer::AUDIO_SSRC,
            media::testing::CHROME.opus,
            n
        ),
        async {
            subscription.read_both_tracks().await;
            subscription.wait_total(2 * u64::from(n) * 9 / 10).await
        }
    );
    println!(
        "media on {new_owner}: {got} of {} packets, {corrupt} corrupt",
        2 * n
    );
    assert!(
        got >= 2 * u64::from(n) * 9 / 10,
        "media flows on {new_owner}: {got}"
    );
    assert_eq!(corrupt, 0);

    // Cut off, a drops out of the registry when its record expires (a TTL after its last
    // refresh).
    wait_for("a's record expired", cut + TTL * 2, || async {
        !::redis::cmd("EXISTS")
            .arg("roomd:node:a")
            .query_async::<bool>(&mut watch.clone())
            .await
            .expect("redis-server answers")
    })
    .await;

    // Heal: a's traffic goes through again; a registers again and takes new rooms.
    let table = common::netns::run("nft", &["list", "table", "inet", TABLE]);
    nft(&format!("delete table inet {TABLE}\n"));
    let healed = Instant::now();
    let dropped: u64 = table
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "the rule dropped nothing: {table}");
    wait_for("a registered again", healed + common::WAIT, || async {
        let (registered, listed): (bool, bool) = ::redis::pipe()
            .exists("roomd:node:a")
            .sismember("roomd:nodes", "a")
            .query_async(&mut watch.clone())
            .await
            .expect("redis-server answers");
        registered && listed
    })
    .await;
    let back = Instant::now();
    let mut s1 = a.client().await;
    assert!(names(&s1.join("S", "s1").await).is_empty());
    assert_eq!(
        cluster::owner(&mut watch, "S").await.0.as_deref(),
        Some("a"),
        "a owns new rooms again"
    );
    // R stays on its new owner: a join of R through a is relayed there.
    let mut a2 = a.client().await;
    let mut expected = vec![g_name.clone(), "h".to_owned()];
    expected.sort();
    assert_eq!(names(&a2.join(R, "a2").await), expected);
    assert_eq!(
        cluster::owner(&mut watch, R).await.0.as_deref(),
        Some(new_owner.as_str())
    );
    println!(
        "healed at {} ms ({dropped} packets dropped); a registered again at {} ms and owns S",
        ms(healed),
        ms(back)
    );

    // Keep sampling for a TTL past a's return (three of its renewal rounds; anything it sent
    // before the cut has landed by then): time itself is what is observed here.
    tokio::time::sleep(TTL).await;
    let _ = stop_sampling.send(());
    let samples = sampler.await.expect("the sampler ran to the end");
    let mut last_on_a = None;
    let mut first_elsewhere = None;
    let mut other_owner_seen = false;
    for (i, s) in samples.iter().enumerate() {
        assert!(s.serving.len() <= 1, "two nodes serve R: {s:?}");
        other_owner_seen |= s.owner.as_deref().is_some_and(|o| o != "a");
        if s.serving.iter().any(|n| n == "a") {
            assert!(
                !other_owner_seen,
                "a serves R after another node claimed it: {s:?}"
            );
            last_on_a = Some(i);
        } else if !s.serving.is_empty() {
            first_elsewhere.get_or_insert(i);
        }
        if other_owner_seen {
            assert_ne!(
                s.owner.as_deref(),
                Some("a"),
                "R's claim went back to a: {s:?}"
            );
        }
    }
    let (last_on_a, first_elsewhere) = (
        last_on_a.expect("a served R before the cut"),
        first_elsewhere.expect("R served elsewhere after the cut"),
    );
    assert!(last_on_a < first_elsewhere);
    println!(
        "{} samples: R served by a until {} ms, by {new_owner} from {} ms on, never by two",
        samples.len(),
        ms(samples[last_on_a].at),
        ms(samples[first_elsewhere].at)
    );
    assert!(samples[last_on_a].at < joined_at);
    drop((a1, b1, a2, s1, publication, subscription));
}
