//! Shared helpers for the media integration tests: routers on ephemeral ports and full
//! publish/subscribe exchanges. The browser-like client itself is `media::testing`.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use media::{EndpointKey, MediaConfig, MediaEvent, MediaRouter};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;

pub use media::testing::*;

pub mod engine;

/// A router on 127.0.0.1: one shard on a port the system chooses (tests in one binary run in
/// parallel, each with its own router).
pub fn router() -> MediaRouter {
    router_with(|_| {})
}

pub fn router_with(f: impl FnOnce(&mut MediaConfig)) -> MediaRouter {
    init_logs();
    let mut cfg = MediaConfig {
        shards: 1,
        udp_port: 0,
        ..MediaConfig::default()
    };
    f(&mut cfg);
    MediaRouter::start(cfg).expect("a shard binds an ephemeral port on 127.0.0.1")
}

/// The router's counters once `ok` holds for them: the shards publish their traffic counters
/// every `engine::runtime::SNAPSHOT_INTERVAL`. Panics with the last snapshot after [`WAIT`].
pub async fn stats_when(
    router: &MediaRouter,
    what: &str,
    ok: impl Fn(&media::MediaStats) -> bool,
) -> media::MediaStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = router.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An events channel whose receiver is drained into a buffer the test can inspect.
pub fn events() -> (mpsc::Sender<MediaEvent>, mpsc::Receiver<MediaEvent>) {
    mpsc::channel(256)
}

/// Test logs: `RUST_LOG=media=debug,webrtc=warn cargo test -p media -- --nocapture`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// Full non-trickle publish of a client with a video (and optionally audio) send track.
pub struct Publisher {
    pub client: Client,
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio: Option<Arc<TrackLocalStaticRTP>>,
    pub answer: String,
    pub connect_time: Duration,
}

pub struct PublishOpts {
    pub numbering: Numbering,
    pub audio: bool,
    pub loopback: bool,
    pub data_channel: bool,
}

impl Default for PublishOpts {
    fn default() -> Self {
        Self {
            numbering: CHROME,
            audio: true,
            loopback: false,
            data_channel: false,
        }
    }
}

pub async fn publish(
    router: &MediaRouter,
    key: EndpointKey,
    opts: PublishOpts,
    events: mpsc::Sender<MediaEvent>,
) -> (Publisher, Option<Arc<dyn DataChannel>>) {
    let client = Client::new(opts.numbering).await;
    let audio = if opts.audio {
        Some(
            client
                .add_send_track(RtpCodecKind::Audio, AUDIO_SSRC, opts.loopback)
                .await,
        )
    } else {
        None
    };
    let video = client
        .add_send_track(RtpCodecKind::Video, VIDEO_SSRC, opts.loopback)
        .await;
    let dc = if opts.data_channel {
        Some(
            client
                .pc
                .create_data_channel("chat", None)
                .await
                .expect("client data channel"),
        )
    } else {
        None
    };
    let offer = client.offer(true).await;
    let answer = router
        .publish(key, offer, opts.loopback, events)
        .await
        .expect("router accepts the publish offer");
    client.apply_answer(answer.clone()).await;
    let connect_time = client.connected().await;
    (
        Publisher {
            client,
            video,
            audio,
            answer,
            connect_time,
        },
        dc,
    )
}

/// Full non-trickle subscribe (recvonly audio+video).
pub async fn subscribe(
    router: &MediaRouter,
    key: EndpointKey,
    publisher: EndpointKey,
    numbering: Numbering,
    data_channel: bool,
    events: mpsc::Sender<MediaEvent>,
) -> (Client, Duration, Option<Arc<dyn DataChannel>>) {
    let client = Client::new(numbering).await;
    client.add_recv(RtpCodecKind::Audio).await;
    client.add_recv(RtpCodecKind::Video).await;
    let dc = if data_channel {
        Some(
            client
                .pc
                .create_data_channel("relay", None)
                .await
                .expect("client data channel"),
        )
    } else {
        None
    };
    let offer = client.offer(true).await;
    let answer = router
        .subscribe(key, publisher, offer, events)
        .await
        .expect("router accepts the subscribe offer");
    client.apply_answer(answer).await;
    let t = client.connected().await;
    (client, t, dc)
}
