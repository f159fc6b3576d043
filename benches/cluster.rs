//! The cost of the cluster's relay (README "Several nodes"): a `redis-server` and two release
//! roomd nodes started here, A (serving, owns every room) and B (`--cluster-relay-only`: each
//! of its clients is relayed to A). The same client work is measured directly at A and through
//! B, alternately, several rounds in one invocation; the figures are ratios relayed ÷ direct
//! with their spread over the rounds.
//!
//! ```text
//! CARGO_TARGET_DIR=target-bench cargo bench --bench cluster -- [options]
//!   --rounds N     rounds, each measuring direct and relayed (order alternates) (default 5)
//!   --joins N      joins per mode and round for the latencies (default 200)
//!   --clients N    concurrent clients for the throughput (default 32)
//!   --window N     requests each client keeps outstanding (default 4)
//!   --seconds S    measured throughput window per mode and round (default 3; plus 1 s warm-up)
//!   --smoke        1 round, 20 joins, 4 clients for 1 s; exit 1 unless everything answered
//! ```
//!
//! Plain `cargo bench` (no options) runs `--smoke`. `CLUSTER_ROOMD_BIN=<path>` runs another
//! build of roomd for both nodes (an A/B of two commits). The generator runs on CPU 0, the nodes and
//! Redis on CPU 1 (`taskset`), so in the relayed mode A and B share one core: the throughput
//! ratio is then the ratio of CPU spent per request by the server side, and the CPU columns say
//! how much of it is B's.
//!
//! Latency: a client connects (not timed), sends `joinRoom` of a room A already serves (a
//! participant sits in it), and times the answer; then `publishVideo` with a fixed SDP offer
//! (made once by a webrtc-rs peer; the answer is all that is timed, ICE never runs), then
//! `leaveRoom`. A second socket times `joinRoom` of a new room (the claim in Redis included).
//! Throughput: each client is alone in its own room (owned by A) and sends `sendMessage`
//! (answered by the room, plus the notification to the sender) closed-loop with `--window`
//! outstanding; answered requests per second over the window.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use media::testing::{self, Kind, CHROME};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const GEN_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// Claim TTL of the bench cluster: its first rooms wait one TTL after A registered.
const TTL_MS: u64 = 5000;
/// The longest any single answer may take before the run is declared failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Generator CPU above which a throughput figure measured the generator, not the nodes.
const GENERATOR_BOUND: f64 = 0.85;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// `cmd` on the server core when `taskset` exists.
fn pinned(cmd: &str) -> Command {
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if taskset {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(SERVER_CPU.to_string()).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn pin_generator() {
    let mut set = nix::sched::CpuSet::new();
    if set.set(GEN_CPU).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

async fn wait_tcp(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{what} did not listen on port {port}"))
}

async fn start_redis() -> Result<(Proc, u16), String> {
    let port = free_port()?;
    let child = pinned("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start redis-server (apt-get install redis-server): {e}"))?;
    let proc = Proc {
        child,
        name: "redis",
    };
    wait_tcp(port, "redis-server").await?;
    Ok((proc, port))
}

async fn start_node(
    name: &'static str,
    redis: u16,
    relay_only: bool,
) -> Result<(Proc, u16), String> {
    let port = free_port()?;
    // CLUSTER_ROOMD_BIN runs another build of roomd (an A/B of two commits on the same machine).
    let bin = std::env::var("CLUSTER_ROOMD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_roomd").to_owned());
    let mut cmd = pinned(&bin);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--media-ip", "127.0.0.1", "--media-shards", "1"])
        .args(["--rtc-udp-port", "0", "--no-demo"])
        // The generator's clients send far more than a browser would.
        .args([
            "--requests-per-second",
            "1000000",
            "--request-burst",
            "1000000",
        ])
        .args(["--reconnection-grace-ms", "500"])
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis}/0")])
        .args([
            "--cluster-secret",
            "bench-secret",
            "--cluster-node-id",
            name,
        ])
        .args(["--cluster-claim-ttl-ms", &TTL_MS.to_string()])
        .args([
            "--cluster-internal-url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if relay_only {
        cmd.arg("--cluster-relay-only");
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("start roomd {name}: {e}"))?;
    let proc = Proc { child, name };
    wait_tcp(port, name).await?;
    Ok((proc, port))
}

/// A connection to the bench's redis-server on `port`.
async fn redis_connection(port: u16) -> Result<redis::aio::MultiplexedConnection, String> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .map_err(|e| format!("redis client: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis connection: {e}"))
}

/// Until A is registered and a fresh Redis's quarantine of new claims is over.
async fn wait_cluster_ready(redis: u16) -> Result<(), String> {
    let mut conn = redis_connection(redis).await?;
    let deadline = Instant::now() + Duration::from_millis(TTL_MS * 3);
    while Instant::now() < deadline {
        let (registered, quarantined): (bool, bool) = redis::pipe()
            .exists("roomd:node:a")
            .exists("roomd:quarantine")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if registered && !quarantined {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the cluster never became ready".into())
}

/// (utime + stime) seconds of a process, from procfs.
fn cpu_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Seconds the threads of `pid` spent runnable but waiting for a CPU (procfs schedstat): a
/// busy neighbour on the core shows up here.
fn run_queue_wait(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

// ---------------------------------------------------------------------------------------------
// A JSON-RPC client

struct Client {
    ws: Ws,
    next_id: i64,
}

impl Client {
    async fn connect(port: u16) -> Result<Self, String> {
        let url = format!("ws://127.0.0.1:{port}/room");
        let (ws, _) = tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "websocket connect timed out".to_string())?
            .map_err(|e| format!("websocket connect: {e}"))?;
        if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            let _ = tcp.set_nodelay(true);
        }
        Ok(Self { ws, next_id: 1 })
    }

    /// Sends a request and waits for its answer (notifications skipped); the answer must be a
    /// success.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("{method}: send: {e}"))?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            while let Some(frame) = self.ws.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if v.get("method").is_none() && v["id"] == json!(id) {
                    return Ok(v);
                }
            }
            Err(format!("{method}: socket closed before the answer"))
        })
        .await
        .map_err(|_| format!("{method}: no answer in time"))??;
        if answer.get("result").is_none() {
            return Err(format!("{method} failed: {answer}"));
        }
        Ok(answer)
    }

    /// Reads (and drops) everything the server sends, until the socket closes or the sender
    /// returned is used (or dropped): then the socket is closed.
    fn drain(mut self) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                () = async { while let Some(Ok(_)) = self.ws.next().await {} } => {}
                _ = stopped => { let _ = self.ws.close(None).await; }
            }
        });
        stop
    }
}

/// A publisher's SDP offer (audio + video, Chrome numbering), made once by a webrtc-rs peer.
async fn make_offer() -> String {
    let peer = testing::Client::new(CHROME).await;
    peer.add_send_track(Kind::Audio, testing::AUDIO_SSRC, false)
        .await;
    peer.add_send_track(Kind::Video, testing::VIDEO_SSRC, false)
        .await;
    let offer = peer.offer(false).await;
    peer.close().await;
    offer
        .split("\r\n")
        .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Until A has no participants left (the previous phase's sockets are gone).
async fn settle(a: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if scrape(a, "roomd_participants").await == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One series of a node's `/metrics`.
async fn scrape(port: u16, series: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Measurements

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Relayed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Relayed => "relayed",
        }
    }
}

/// Latencies of one mode and round, in ms.
#[derive(Default)]
struct Latencies {
    join: Vec<f64>,
    publish: Vec<f64>,
    join_new: Vec<f64>,
}

fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn latencies(
    port: u16,
    a: u16,
    tag: &str,
    joins: usize,
    offer: &str,
) -> Result<Latencies, String> {
    // The room joined is served by A already (a participant sits in it, connected to A).
    let room = format!("lat-{tag}");
    let mut host = Client::connect(a).await?;
    host.call("joinRoom", json!({"user": "host", "room": room}))
        .await?;
    let _host = host.drain(); // Closed when this function returns.
    let mut out = Latencies::default();
    for i in 0..joins {
        let mut c = Client::connect(port).await?;
        let t = Instant::now();
        c.call("joinRoom", json!({"user": format!("u{i}"), "room": room}))
            .await?;
        out.join.push(ms(t.elapsed()));
        let t = Instant::now();
        let answer = c
            .call(
                "publishVideo",
                json!({"sdpOffer": offer, "doLoopback": false}),
            )
            .await?;
        out.publish.push(ms(t.elapsed()));
        if answer["result"]["sdpAnswer"].as_str().is_none() {
            return Err(format!("publishVideo answered without SDP: {answer}"));
        }
        c.call("leaveRoom", json!({})).await?;

        let mut c = Client::connect(port).await?;
        let t = Instant::now();
        c.call(
            "joinRoom",
            json!({"user": "n", "room": format!("new-{tag}-{i}")}),
        )
        .await?;
        out.join_new.push(ms(t.elapsed()));
        c.call("leaveRoom", json!({})).await?;
    }
    Ok(out)
}

/// The parts a relayed join adds, timed alone from the generator (p50 ms of `n` each): a Redis
/// `GET` round trip (B looks up the room's owner and the owner's record) and a WebSocket
/// connection (TCP and HTTP upgrade) to A (B opens the link).
async fn components(redis: u16, a: u16, n: usize) -> Result<(f64, f64), String> {
    let mut conn = redis_connection(redis).await?;
    let mut gets = Vec::with_capacity(n);
    let mut connects = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _: Option<String> = redis::cmd("GET")
            .arg("roomd:node:a")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        gets.push(ms(t.elapsed()));
        let t = Instant::now();
        let c = Client::connect(a).await?;
        connects.push(ms(t.elapsed()));
        drop(c);
    }
    Ok((pct(&gets, 0.5), pct(&connects, 0.5)))
}

/// One throughput window.
struct Throughput {
    rps: f64,
    /// CPU of A, B and the generator over the window, in cores (1.0 = one core busy).
    cpu_a: f64,
    cpu_b: f64,
    cpu_gen: f64,
    /// Run-queue wait of A and B over the window, in cores.
    wait: f64,
}

async fn throughput(
    port: u16,
    tag: &str,
    clients: usize,
    window: usize,
    seconds: f64,
    pids: (u32, u32),
) -> Result<Throughput, String> {
    let mut sockets = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut s = Client::connect(port).await?;
        s.call(
            "joinRoom",
            json!({"user": format!("u{c}"), "room": format!("tp-{tag}-{c}")}),
        )
        .await?;
        sockets.push(s);
    }
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, s) in sockets.into_iter().enumerate() {
        let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
        let room = format!("tp-{tag}-{c}");
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = s.ws.split();
            let mut id = 1_000_000i64;
            let mut frame = move || {
                id += 1;
                format!(
                    r#"{{"jsonrpc":"2.0","method":"sendMessage","params":{{"message":"m","userMessage":"u{c}","roomMessage":"{room}"}},"id":{id}}}"#
                )
            };
            for _ in 0..window {
                tx.send(Message::text(frame()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut outstanding = window;
            while outstanding > 0 {
                let next = tokio::time::timeout(ANSWER_TIMEOUT, rx.next())
                    .await
                    .map_err(|_| "a sendMessage was not answered in time".to_string())?;
                let Some(Ok(Message::Text(text))) = next else {
                    return Err::<(), String>(format!("socket ended: {next:?}"));
                };
                // roomd writes answers as {"id":..., notifications as {"jsonrpc":...
                if !text.as_str().starts_with("{\"id\":") {
                    continue;
                }
                if !text.as_str().contains("\"result\"") {
                    return Err(format!("sendMessage failed: {}", text.as_str()));
                }
                answered.fetch_add(1, Ordering::Relaxed);
                outstanding -= 1;
                if !stop.load(Ordering::Relaxed) {
                    tx.send(Message::text(frame()))
                        .await
                        .map_err(|e| e.to_string())?;
                    outstanding += 1;
                }
            }
            let _ = tx.close().await;
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let sample = || {
        (
            answered.load(Ordering::Relaxed),
            cpu_of(pids.0),
            cpu_of(pids.1),
            cpu_of(std::process::id()),
            run_queue_wait(pids.0) + run_queue_wait(pids.1),
            Instant::now(),
        )
    };
    let before = sample();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await; // the measured window
    let after = sample();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let wall = after.5.duration_since(before.5).as_secs_f64();
    Ok(Throughput {
        rps: (after.0 - before.0) as f64 / wall,
        cpu_a: (after.1 - before.1) / wall,
        cpu_b: (after.2 - before.2) / wall,
        cpu_gen: (after.3 - before.3) / wall,
        wait: (after.4 - before.4) / wall,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

struct Opts {
    rounds: usize,
    joins: usize,
    clients: usize,
    window: usize,
    seconds: f64,
    smoke: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let explicit = args.iter().any(|a| a.starts_with("--") && a != "--bench");
    let smoke = args.iter().any(|a| a == "--smoke") || !explicit;
    if smoke {
        return Opts {
            rounds: 1,
            joins: 20,
            clients: 4,
            window: 2,
            seconds: 1.0,
            smoke,
        };
    }
    Opts {
        rounds: value("--rounds").map_or(5, |v| v as usize).max(1),
        joins: value("--joins").map_or(200, |v| v as usize).max(1),
        clients: value("--clients").map_or(32, |v| v as usize).max(1),
        window: value("--window").map_or(4, |v| v as usize).max(1),
        seconds: value("--seconds").unwrap_or(3.0).max(0.5),
        smoke,
    }
}

/// Median and (min, max) of a list.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (pct(v, 0.5), min, max)
}

async fn run(o: &Opts) -> Result<(), String> {
    pin_generator();
    let (redis, redis_port) = start_redis().await?;
    let (node_a, a) = start_node("a", redis_port, false).await?;
    let (node_b, b) = start_node("b", redis_port, true).await?;
    let started = Instant::now();
    wait_cluster_ready(redis_port).await?;
    println!(
        "cluster bench: {} on :{redis_port}, A (owner) :{a} pid {}, B (relay-only) :{b} pid {}; ready after {:.1} s (claim TTL {TTL_MS} ms)",
        redis.name,
        node_a.pid(),
        node_b.pid(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "generator on CPU {GEN_CPU}, A, B and Redis on CPU {SERVER_CPU}; {} rounds, {} joins per mode, {} clients x {} outstanding for {:.1} s",
        o.rounds, o.joins, o.clients, o.window, o.seconds
    );
    let offer = make_offer().await;
    let pids = (node_a.pid(), node_b.pid());
    let (get, connect) = components(redis_port, a, o.joins).await?;
    println!(
        "parts of a relayed join, alone from the generator (p50): Redis GET round trip {get:.3} ms, WebSocket connect to A {connect:.3} ms"
    );
    // Per round: ratios relayed ÷ direct.
    let (mut r_join50, mut r_join99, mut r_pub50, mut r_new50, mut r_rps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut d_join50, mut d_rps, mut b_us, mut b_over_a) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    println!();
    println!(
        "round mode     join p50/p99 ms  publish p50/p99 ms  new-room join p50/p99 ms  sendMessage/s  cpu A  cpu B  cpu gen  wait  µs/req A  µs/req B"
    );
    for round in 0..o.rounds {
        let order = if round % 2 == 0 {
            [Mode::Direct, Mode::Relayed]
        } else {
            [Mode::Relayed, Mode::Direct]
        };
        let mut lat = Vec::new();
        let mut tp = Vec::new();
        for mode in order {
            let port = if mode == Mode::Direct { a } else { b };
            let tag = format!("{round}-{}", mode.name());
            settle(a).await;
            let l = latencies(port, a, &tag, o.joins, &offer).await?;
            settle(a).await;
            let t = throughput(port, &tag, o.clients, o.window, o.seconds, pids).await?;
            let bound = if t.cpu_gen > GENERATOR_BOUND {
                "  GENERATOR-BOUND"
            } else {
                ""
            };
            println!(
                "{:>5} {:<8} {:>6.2} / {:>6.2}  {:>7.2} / {:>7.2}  {:>10.2} / {:>7.2}  {:>13.0}  {:>4.0} %  {:>3.0} %  {:>5.0} %  {:>2.0} %  {:>8.1}  {:>8.1}{bound}",
                round + 1,
                mode.name(),
                pct(&l.join, 0.5),
                pct(&l.join, 0.99),
                pct(&l.publish, 0.5),
                pct(&l.publish, 0.99),
                pct(&l.join_new, 0.5),
                pct(&l.join_new, 0.99),
                t.rps,
                t.cpu_a * 100.0,
                t.cpu_b * 100.0,
                t.cpu_gen * 100.0,
                t.wait * 100.0,
                t.cpu_a / t.rps * 1e6,
                t.cpu_b / t.rps * 1e6,
            );
            lat.push((mode, l));
            tp.push((mode, t));
        }
        let pick = |m: Mode| lat.iter().find(|(x, _)| *x == m).map(|(_, l)| l);
        let pick_tp = |m: Mode| tp.iter().find(|(x, _)| *x == m).map(|(_, t)| t);
        if let (Some(d), Some(r), Some(dt), Some(rt)) = (
            pick(Mode::Direct),
            pick(Mode::Relayed),
            pick_tp(Mode::Direct),
            pick_tp(Mode::Relayed),
        ) {
            r_join50.push(pct(&r.join, 0.5) / pct(&d.join, 0.5));
            r_join99.push(pct(&r.join, 0.99) / pct(&d.join, 0.99));
            r_pub50.push(pct(&r.publish, 0.5) / pct(&d.publish, 0.5));
            r_new50.push(pct(&r.join_new, 0.5) / pct(&d.join_new, 0.5));
            r_rps.push(rt.rps / dt.rps);
            d_join50.push(pct(&d.join, 0.5));
            d_rps.push(dt.rps);
            b_us.push(rt.cpu_b / rt.rps * 1e6);
            b_over_a.push(rt.cpu_b / rt.cpu_a);
        }
    }
    println!();
    println!(
        "relayed ÷ direct, median over {} rounds (min – max):",
        o.rounds
    );
    let line = |what: &str, v: &[f64]| {
        let (m, lo, hi) = spread(v);
        println!("  {what:<34} {m:>5.2}   ({lo:.2} – {hi:.2})");
    };
    line("join (room live on A), p50", &r_join50);
    line("join (room live on A), p99", &r_join99);
    line("publishVideo, p50", &r_pub50);
    line("join of a new room, p50", &r_new50);
    line("sendMessage answered per second", &r_rps);
    let (m, lo, hi) = spread(&d_join50);
    println!(
        "noise, direct alone over the rounds: join p50 {m:.2} ms ({lo:.2} – {hi:.2}, ±{:.0} %)",
        (hi - lo) / 2.0 / m * 100.0
    );
    let (m, lo, hi) = spread(&d_rps);
    println!(
        "noise, direct alone over the rounds: sendMessage/s {m:.0} ({lo:.0} – {hi:.0}, ±{:.0} %)",
        (hi - lo) / 2.0 / m * 100.0
    );
    let (m, lo, hi) = spread(&b_us);
    println!(
        "B's CPU per relayed sendMessage: {m:.1} µs ({lo:.1} – {hi:.1}) = {:.0} relayed requests per second per core",
        1e6 / m
    );
    // The absolute µs move with the machine and the load's batching; B against A in the same
    // window does not.
    let (m, lo, hi) = spread(&b_over_a);
    println!(
        "B's CPU ÷ A's CPU in the relayed windows (same requests): {m:.2} ({lo:.2} – {hi:.2})"
    );
    drop((node_b, node_a, redis));
    Ok(())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let o = opts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = rt.block_on(async {
        let bound = Duration::from_secs(60)
            + Duration::from_secs_f64(
                o.rounds as f64 * 2.0 * (o.joins as f64 * 0.1 + o.seconds + 5.0),
            );
        tokio::time::timeout(bound, run(&o))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:.0} s", bound.as_secs_f64())))
    });
    match result {
        Ok(()) if o.smoke => println!("cluster smoke: PASS"),
        Ok(()) => {}
        Err(e) => {
            println!("cluster bench: FAIL: {e}");
            std::process::exit(1);
        }
    }
}
