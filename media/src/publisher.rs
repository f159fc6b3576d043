//! Publisher endpoints: one peer connection answering a publishing client, one task per
//! incoming track ([`run_track_hub`]) that owns that track's [`FanOut`], and the data-channel
//! relay to subscribers.
//!
//! Owns: [`TrackHub`] (the handle subscribers use to join a track: kind, negotiated codecs and
//! the control queue of the track task), [`PublisherHooks`] (what the driver's `on_track` /
//! `on_data_channel` do for a publisher), [`DataFanOut`] and [`PublisherEndpoint`] (everything
//! released together). A track task exists from publish time on, before the first RTP packet
//! (webrtc-rs fires `on_track` on the first packet), so subscribers can join early; the remote
//! track is attached to it when it arrives.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace};

use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::codecs::{CodecInfo, Kind};
use crate::fanout::{DropReason, FanOut, Packet, Slot, SlotId};
use crate::keyframe::{KeyframeDecision, KeyframeLimiter, OutageDetector};
use crate::session::{close_endpoint, RoleHooks, Session};
use crate::stats::{spawn_counted, Counters, Gauge};
use crate::subscriber::Output;
use crate::EndpointKey;

/// Capacity of each publisher track's control queue. Full policy: membership changes
/// (`Subscribe`/`Unsubscribe`) come from control paths (publish/subscribe/release) and are sent
/// with `send().await`, so they wait; `RequestKeyframe` and `SubscriberConnected` come from
/// subscriber RTCP tasks with `try_send` and are dropped when the queue is full (keyframe
/// requests are idempotent and coalesced anyway).
pub(crate) const TRACK_CTL_CAPACITY: usize = 64;

/// Capacity of each subscriber's data-channel message queue. Full policy: the publisher's
/// relay task drops the message for that subscriber only and counts
/// `DropReason::DataChannelDropped`.
pub(crate) const DATA_QUEUE_CAPACITY: usize = 256;

/// Flush a track task's local counters to the shared stats after this many packets.
const STATS_FLUSH_EVERY: u64 = 64;

/// ... and at least this often while packets flow slower than that.
const STATS_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Control messages to one publisher track task.
#[derive(Debug)]
pub(crate) enum TrackCtl {
    /// Add a subscriber slot.
    Subscribe(Slot),
    /// Remove a subscriber slot.
    Unsubscribe(SlotId),
    /// A subscriber asked for a keyframe (PLI/FIR).
    RequestKeyframe,
    /// A subscriber's connection just came up (ICE and DTLS done): it needs a keyframe to
    /// start decoding. Asked for at join time instead, the keyframe would usually arrive before
    /// the connection is up and be lost, and the limiter would defer the useful request.
    SubscriberConnected,
}

/// A published track as seen by subscribers.
#[derive(Debug)]
pub(crate) struct TrackHub {
    pub(crate) kind: Kind,
    pub(crate) mid: Option<String>,
    /// Codecs negotiated on the publisher's leg (publisher payload types), preference order.
    pub(crate) codecs: Vec<CodecInfo>,
    pub(crate) ctl: mpsc::Sender<TrackCtl>,
}

impl TrackHub {
    /// The codec the publisher sends with (first media codec of our answer's section).
    pub(crate) fn primary_codec(&self) -> Option<&CodecInfo> {
        self.codecs.iter().find(|c| c.is_media())
    }
}

/// One data-channel message relayed from a publisher to its subscribers.
#[derive(Clone, Debug)]
pub(crate) struct DataMsg {
    pub(crate) is_string: bool,
    pub(crate) data: Bytes,
}

/// The subscribers' data queues of one publisher. Locked once per data-channel message (not on
/// the RTP path).
#[derive(Debug, Default)]
pub(crate) struct DataFanOut {
    subs: Mutex<Vec<(u64, mpsc::Sender<DataMsg>)>>,
}

impl DataFanOut {
    pub(crate) fn add(&self, id: u64, tx: mpsc::Sender<DataMsg>) {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, tx));
    }

    pub(crate) fn remove(&self, id: u64) {
        self.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(i, _)| *i != id);
    }

    fn relay(&self, msg: &DataMsg, counters: &Counters) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|(_, tx)| match tx.try_send(msg.clone()) {
            Ok(()) => {
                counters
                    .data_messages_relayed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.drop_one(DropReason::DataChannelDropped);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

/// Where an arriving remote track goes: the not-yet-attached track tasks, in section order.
struct PendingAttach {
    kind: Kind,
    tx: Option<oneshot::Sender<Arc<dyn TrackRemote>>>,
}

/// `on_track` / `on_data_channel` behaviour of a publisher peer connection.
pub(crate) struct PublisherHooks {
    endpoint: EndpointKey,
    counters: Arc<Counters>,
    pending: Mutex<Vec<PendingAttach>>,
    pub(crate) data: Arc<DataFanOut>,
    /// Tasks spawned from handler callbacks (data relays, drains); aborted at release.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PublisherHooks {
    pub(crate) fn new(endpoint: EndpointKey, counters: Arc<Counters>) -> Self {
        Self {
            endpoint,
            counters,
            pending: Mutex::new(Vec::new()),
            data: Arc::new(DataFanOut::default()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn push_task(&self, h: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    pub(crate) fn abort_tasks(&self) -> Vec<JoinHandle<()>> {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        tasks
    }
}

#[async_trait::async_trait]
impl RoleHooks for PublisherHooks {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = match track.kind().await {
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio => Kind::Audio,
            rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video => Kind::Video,
            _ => Kind::Other,
        };
        let tx = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter_mut()
                .find(|p| p.kind == kind && p.tx.is_some())
                .and_then(|p| p.tx.take())
        };
        debug!(
            endpoint = self.endpoint.0,
            kind = kind.as_str(),
            "publisher track arrived"
        );
        let unattached = match tx {
            Some(tx) => tx.send(track).err(),
            None => Some(track),
        };
        if let Some(track) = unattached {
            // No task expects it (more tracks than negotiated sections): drain it so the
            // driver's per-track queue never overflows.
            debug!(
                endpoint = self.endpoint.0,
                "unexpected publisher track; draining"
            );
            let h = spawn_counted(&self.counters, async move {
                while track.poll().await.is_some() {}
            });
            self.push_task(h);
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let data = Arc::clone(&self.data);
        let counters = Arc::clone(&self.counters);
        let endpoint = self.endpoint;
        let h = spawn_counted(&self.counters, async move {
            while let Some(ev) = dc.poll().await {
                match ev {
                    DataChannelEvent::OnMessage(m) => {
                        trace!(
                            endpoint = endpoint.0,
                            len = m.data.len(),
                            "publisher data message"
                        );
                        data.relay(
                            &DataMsg {
                                is_string: m.is_string,
                                data: m.data.freeze(),
                            },
                            &counters,
                        );
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
        self.push_task(h);
    }
}

/// A live publisher endpoint.
pub(crate) struct PublisherEndpoint {
    pub(crate) key: EndpointKey,
    pub(crate) session: Session,
    pub(crate) hubs: Vec<Arc<TrackHub>>,
    pub(crate) hooks: Arc<PublisherHooks>,
    hub_tasks: Mutex<Vec<JoinHandle<()>>>,
    loopback: Mutex<Vec<Output>>,
    event_forwarder: Mutex<Option<JoinHandle<()>>>,
    gauge: Mutex<Option<Gauge>>,
}

impl PublisherEndpoint {
    #[allow(clippy::too_many_arguments)] // private constructor, one call site
    pub(crate) fn new(
        key: EndpointKey,
        session: Session,
        hubs: Vec<Arc<TrackHub>>,
        hub_tasks: Vec<JoinHandle<()>>,
        hooks: Arc<PublisherHooks>,
        event_forwarder: JoinHandle<()>,
        counters: &Arc<Counters>,
    ) -> Self {
        Self {
            key,
            session,
            hubs,
            hooks,
            hub_tasks: Mutex::new(hub_tasks),
            loopback: Mutex::new(Vec::new()),
            event_forwarder: Mutex::new(Some(event_forwarder)),
            gauge: Mutex::new(Some(Gauge::new(counters, |c| &c.publishers))),
        }
    }

    pub(crate) fn set_loopback(&self, outputs: Vec<Output>) {
        *self.loopback.lock().unwrap_or_else(|e| e.into_inner()) = outputs;
    }

    /// Stops every task of this endpoint, closes its peer connection and returns its port.
    pub(crate) async fn shutdown(&self) {
        let loopback =
            std::mem::take(&mut *self.loopback.lock().unwrap_or_else(|e| e.into_inner()));
        for o in loopback {
            o.shutdown().await;
        }
        let hubs = std::mem::take(&mut *self.hub_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for h in &hubs {
            h.abort();
        }
        for h in hubs {
            let _ = h.await;
        }
        for h in self.hooks.abort_tasks() {
            let _ = h.await;
        }
        close_endpoint(&self.session, &self.event_forwarder, &self.gauge).await;
        debug!(endpoint = self.key.0, "publisher released");
    }
}

/// Creates the track task for one negotiated receiving section; the returned hub is what
/// subscribers join. The task waits for the remote track (attached by [`PublisherHooks`]).
pub(crate) fn spawn_track_hub(
    hooks: &PublisherHooks,
    kind: Kind,
    mid: Option<String>,
    codecs: Vec<CodecInfo>,
    keyframe_interval: std::time::Duration,
    counters: &Arc<Counters>,
) -> (Arc<TrackHub>, JoinHandle<()>) {
    let (ctl_tx, ctl_rx) = mpsc::channel(TRACK_CTL_CAPACITY);
    let (attach_tx, attach_rx) = oneshot::channel();
    hooks
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(PendingAttach {
            kind,
            tx: Some(attach_tx),
        });
    let use_fir = codecs
        .iter()
        .find(|c| c.is_media())
        .is_some_and(|c| !c.has_feedback("nack pli") && c.has_feedback("ccm fir"));
    let task = HubTask {
        endpoint: hooks.endpoint,
        kind,
        ctl_rx,
        attach_rx: Some(attach_rx),
        track: None,
        fanout: FanOut::new(),
        limiter: KeyframeLimiter::new(keyframe_interval),
        outage: OutageDetector::default(),
        deadline: None,
        media_ssrc: None,
        use_fir,
        fir_seq: 0,
        counters: Arc::clone(counters),
        received: 0,
    };
    let handle = spawn_counted(counters, run_track_hub(task));
    (
        Arc::new(TrackHub {
            kind,
            mid,
            codecs,
            ctl: ctl_tx,
        }),
        handle,
    )
}

struct HubTask {
    endpoint: EndpointKey,
    kind: Kind,
    ctl_rx: mpsc::Receiver<TrackCtl>,
    attach_rx: Option<oneshot::Receiver<Arc<dyn TrackRemote>>>,
    track: Option<Arc<dyn TrackRemote>>,
    fanout: FanOut,
    limiter: KeyframeLimiter,
    /// Asks for a keyframe when the stream resumes after an outage.
    outage: OutageDetector,
    /// When a deferred (coalesced) keyframe request is due.
    deadline: Option<tokio::time::Instant>,
    media_ssrc: Option<u32>,
    use_fir: bool,
    fir_seq: u8,
    counters: Arc<Counters>,
    /// Packets received since the last flush.
    received: u64,
}

impl Drop for HubTask {
    /// The task may be aborted at release: its last counts are flushed when it is dropped.
    fn drop(&mut self) {
        self.flush();
    }
}

impl HubTask {
    fn flush(&mut self) {
        let s = self.fanout.take_stats();
        self.counters.flush(&s);
        if self.received != 0 {
            self.counters
                .packets_received
                .fetch_add(self.received, std::sync::atomic::Ordering::Relaxed);
            self.received = 0;
        }
    }

    fn request_keyframe(&mut self) -> bool {
        if self.kind != Kind::Video {
            return false;
        }
        match self.limiter.request(Instant::now()) {
            KeyframeDecision::SendNow => true,
            KeyframeDecision::SendAt(at) => {
                self.deadline = Some(tokio::time::Instant::from_std(at));
                false
            }
            KeyframeDecision::AlreadyPending => false,
        }
    }

    async fn send_keyframe_request(&mut self) {
        let (Some(track), Some(media_ssrc)) = (self.track.as_ref(), self.media_ssrc) else {
            // Nothing received yet: the publisher's first frame is a keyframe anyway.
            return;
        };
        let pkt: Box<dyn rtc::rtcp::Packet> = if self.use_fir {
            self.fir_seq = self.fir_seq.wrapping_add(1);
            Box::new(FullIntraRequest {
                sender_ssrc: 0,
                media_ssrc,
                fir: vec![FirEntry {
                    ssrc: media_ssrc,
                    sequence_number: self.fir_seq,
                }],
            })
        } else {
            Box::new(PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            })
        };
        match track.write_rtcp(vec![pkt]).await {
            Ok(()) => {
                self.counters
                    .keyframe_requests_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(
                    endpoint = self.endpoint.0,
                    media_ssrc, "keyframe request sent to publisher"
                );
            }
            Err(e) => debug!(endpoint = self.endpoint.0, error = %e, "keyframe request not sent"),
        }
    }

    /// Applies one control message; returns whether a keyframe request must go out now.
    fn apply(&mut self, ctl: TrackCtl) -> bool {
        match ctl {
            TrackCtl::Subscribe(slot) => {
                debug!(
                    endpoint = self.endpoint.0,
                    kind = self.kind.as_str(),
                    slot = slot.id().0,
                    "subscriber joined track"
                );
                self.fanout.add(slot);
                // Its keyframe is requested at `SubscriberConnected`.
                false
            }
            TrackCtl::Unsubscribe(id) => {
                self.fanout.remove(id);
                false
            }
            TrackCtl::RequestKeyframe => {
                self.counters
                    .keyframe_requests_received
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.request_keyframe()
            }
            TrackCtl::SubscriberConnected => self.request_keyframe(),
        }
    }
}

async fn wait_attach(
    rx: &mut Option<oneshot::Receiver<Arc<dyn TrackRemote>>>,
) -> Option<Arc<dyn TrackRemote>> {
    match rx.as_mut() {
        Some(r) => r.await.ok(),
        None => std::future::pending().await,
    }
}

async fn poll_track(track: &Option<Arc<dyn TrackRemote>>) -> Option<TrackRemoteEvent> {
    match track {
        Some(t) => t.poll().await,
        None => std::future::pending().await,
    }
}

async fn wait_deadline(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The task of one published track: attaches the remote track when it arrives, forwards every
/// RTP packet to the fan-out, applies membership changes between packets and sends
/// rate-limited keyframe requests upstream. Runs until its control queue closes (publisher
/// released) or it is aborted.
async fn run_track_hub(mut t: HubTask) {
    let mut flush_tick = tokio::time::interval(STATS_FLUSH_INTERVAL);
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut send_kf = false;
        tokio::select! {
            biased;
            ctl = t.ctl_rx.recv() => match ctl {
                Some(ctl) => send_kf = t.apply(ctl),
                None => break,
            },
            _ = flush_tick.tick() => t.flush(),
            attached = wait_attach(&mut t.attach_rx), if t.attach_rx.is_some() => {
                t.attach_rx = None;
                if let Some(track) = attached {
                    t.track = Some(track);
                }
            }
            _ = wait_deadline(t.deadline), if t.deadline.is_some() => {
                t.deadline = None;
                t.limiter.sent_pending(Instant::now());
                t.send_keyframe_request().await;
            }
            ev = poll_track(&t.track), if t.track.is_some() => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(mut p)) => {
                    if t.media_ssrc.is_none() {
                        t.media_ssrc = Some(p.header.ssrc);
                    }
                    // Header-extension ids are per leg; egress legs reject ids they did not
                    // negotiate, so extensions are stripped once here.
                    p.header.extension = false;
                    p.header.extension_profile = 0;
                    p.header.extensions.clear();
                    t.received += 1;
                    let pkt: Packet = Arc::new(p);
                    let resumed = t.kind == Kind::Video
                        && t.outage
                            .on_packet(pkt.header.sequence_number, Instant::now())
                            .is_some();
                    if t.fanout.forward(&pkt) || resumed {
                        send_kf = t.request_keyframe();
                    }
                    if t.received >= STATS_FLUSH_EVERY {
                        t.flush();
                    }
                }
                Some(TrackRemoteEvent::OnEnded) | None => {
                    debug!(endpoint = t.endpoint.0, kind = t.kind.as_str(), "publisher track ended");
                    t.track = None;
                }
                Some(_) => {}
            },
        }
        if send_kf {
            t.send_keyframe_request().await;
        }
    }
}
