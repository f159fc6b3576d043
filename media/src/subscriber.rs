//! Subscriber endpoints: one peer connection per subscription, answering the subscribing
//! client's offer with send-only tracks fed from a publisher's [`TrackHub`]s; also the output
//! side of loopback.
//!
//! Owns: [`Output`] (one outgoing track: the [`TrackWriter`] sink through which the publisher's
//! track task rewrites SSRC and payload type and writes straight into webrtc-rs, and the task
//! that turns the client's PLI/FIR into a keyframe request to the publisher track),
//! [`SubscriberHooks`] (the client's data channels, which receive the publisher's data-channel
//! messages) and [`SubscriberEndpoint`].
//!
//! Data-channel policy: messages from the publisher are relayed to every channel the
//! *subscribing client* opened on its subscriber peer connection (we never create one); while
//! none is open, messages are dropped and counted as `DropReason::DataChannelDropped`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, trace};

use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::rtp_transceiver::RtpSender;

use crate::codecs::{CodecInfo, PtMap};
use crate::fanout::{DropReason, Offer, Packet, PacketSink, Slot, SlotId};
use crate::keyframe::is_keyframe_request;
use crate::publisher::{DataFanOut, DataMsg, TrackCtl, TrackHub};
use crate::session::{close_endpoint, RoleHooks, Session};
use crate::stats::{spawn_counted, Counters, Gauge};
use crate::EndpointKey;

/// Test hook: makes a subscriber's outputs refuse packets as if webrtc-rs's queue were full
/// (a stalled subscriber).
#[derive(Debug, Default)]
pub(crate) struct Pause {
    paused: AtomicBool,
}

impl Pause {
    pub(crate) fn set(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
}

/// The sink of one output, called by the publisher's track task for every packet: the one
/// per-subscriber copy (SSRC and payload type of this leg), then `write_rtp` polled exactly
/// once. webrtc-rs's write is a lock and a bounded channel send (256 events per peer
/// connection) to the connection's driver task; when that channel is full the write is
/// abandoned and the packet dropped for this subscriber ([`Offer::Full`]), so a slow
/// subscriber never holds up the publisher or the other subscribers.
struct TrackWriter {
    out: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt_map: PtMap,
    pause: Arc<Pause>,
    /// Set by [`Output::shutdown`]: the slot leaves at the next packet even if the publisher
    /// track never saw the unsubscribe.
    closed: Arc<AtomicBool>,
}

impl PacketSink for TrackWriter {
    fn offer(&mut self, pkt: &Packet) -> Offer {
        if self.closed.load(Ordering::Relaxed) {
            return Offer::Closed;
        }
        if self.pause.is_paused() {
            return Offer::Full;
        }
        let Some(pt) = self.pt_map.get(pkt.header.payload_type) else {
            return Offer::Dropped(DropReason::UnmappedPayloadType);
        };
        let mut p = (**pkt).clone();
        p.header.ssrc = self.ssrc;
        p.header.payload_type = pt;
        // Polled once and dropped if pending: nothing is written then (dropping webrtc-rs's
        // pending lock or channel send abandons it).
        let mut write = self.out.write_rtp(p);
        match write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Offer::Written,
            // Not bound yet (connection still being set up) or closing.
            Poll::Ready(Err(_)) => Offer::Dropped(DropReason::WriteFailed),
            // The driver's queue is full (or its lock briefly taken by a bind): no room now.
            Poll::Pending => Offer::Full,
        }
    }
}

/// One outgoing track fed by one publisher track.
pub(crate) struct Output {
    slot: SlotId,
    hub_ctl: mpsc::Sender<TrackCtl>,
    closed: Arc<AtomicBool>,
    /// Asks for the starting keyframe, then relays the subscriber's PLI/FIR.
    rtcp: JoinHandle<()>,
}

impl Output {
    /// Leaves the publisher track and stops this output's task.
    pub(crate) async fn shutdown(self) {
        // Best effort: if the control queue is full or the track task is gone, the closed
        // flag removes the slot on the next packet anyway.
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.hub_ctl.try_send(TrackCtl::Unsubscribe(self.slot));
        self.rtcp.abort();
        let _ = self.rtcp.await;
    }
}

/// Wires `out` (already negotiated on its peer connection through `sender`) to `hub`: builds the
/// payload-type map from the codecs negotiated on both legs, spawns the task that asks the
/// publisher for a keyframe once the connection is up and then relays the subscriber's PLI/FIR,
/// and joins the publisher track with a [`TrackWriter`].
#[allow(clippy::too_many_arguments)] // internal wiring function, two call sites
pub(crate) async fn attach_output(
    counters: &Arc<Counters>,
    hub: &TrackHub,
    out: Arc<TrackLocalStaticRTP>,
    sender: &Arc<dyn RtpSender>,
    ssrc: u32,
    slot: SlotId,
    pause: Arc<Pause>,
    mut connected: watch::Receiver<bool>,
) -> Option<Output> {
    let params = match sender.get_parameters().await {
        Ok(p) => p,
        Err(e) => {
            debug!(error = %e, "sender parameters unavailable; track not forwarded");
            return None;
        }
    };
    let leg: Vec<CodecInfo> = params
        .rtp_parameters
        .codecs
        .iter()
        .map(CodecInfo::from_rtc)
        .collect();
    let pt_map = PtMap::build(&hub.codecs, &leg);
    if let Some(primary) = hub.primary_codec() {
        if pt_map.get(primary.payload_type).is_none() {
            debug!(codec = %primary.name, mid = ?hub.mid, "subscriber leg did not negotiate the publisher's codec");
        }
    }

    let closed = Arc::new(AtomicBool::new(false));
    let writer = TrackWriter {
        out: Arc::clone(&out),
        ssrc,
        pt_map,
        pause,
        closed: Arc::clone(&closed),
    };
    let ctl = hub.ctl.clone();
    let c2 = Arc::clone(counters);
    let rtcp = spawn_counted(counters, async move {
        // First the keyframe this subscriber starts from, once its connection is up. Its RTCP
        // cannot arrive before that either (SRTCP needs DTLS), so waiting here delays nothing.
        if connected.wait_for(|up| *up).await.is_ok() {
            trace!("subscriber connected: keyframe request");
            // Full or closed: dropped (requests are idempotent and coalesced).
            let _ = ctl.try_send(TrackCtl::SubscriberConnected);
        }
        while let Some(ev) = out.poll().await {
            if let TrackLocalEvent::OnRtcpPacket(pkts) = ev {
                if pkts.iter().any(|p| is_keyframe_request(p.as_ref())) {
                    trace!("subscriber keyframe request");
                    // Full or closed: dropped (requests are idempotent and coalesced).
                    let _ = ctl.try_send(TrackCtl::RequestKeyframe);
                }
            }
        }
        drop(c2);
    });
    if hub
        .ctl
        .send(TrackCtl::Subscribe(Slot::with_sink(slot, writer)))
        .await
        .is_err()
    {
        debug!("publisher track task gone; output not attached");
    }
    Some(Output {
        slot,
        hub_ctl: hub.ctl.clone(),
        closed,
        rtcp,
    })
}

/// `on_track` / `on_data_channel` behaviour of a subscriber peer connection.
pub(crate) struct SubscriberHooks {
    counters: Arc<Counters>,
    /// Data channels the subscribing client opened.
    channels: Arc<Mutex<Vec<Arc<dyn DataChannel>>>>,
    /// Tasks spawned from handler callbacks; aborted at release.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl SubscriberHooks {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Self {
            counters,
            channels: Arc::default(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    fn push_task(&self, h: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    pub(crate) fn abort_tasks(&self) -> Vec<JoinHandle<()>> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        tasks
    }

    /// Spawns the task relaying the publisher's data messages to this subscriber's channels.
    pub(crate) fn spawn_data_sink(&self, mut rx: mpsc::Receiver<DataMsg>) {
        let channels = Arc::clone(&self.channels);
        let counters = Arc::clone(&self.counters);
        let h = spawn_counted(&self.counters, async move {
            while let Some(msg) = rx.recv().await {
                let targets: Vec<Arc<dyn DataChannel>> =
                    channels.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if targets.is_empty() {
                    counters.drop_one(DropReason::DataChannelDropped);
                    continue;
                }
                for dc in targets {
                    let res = if msg.is_string {
                        match std::str::from_utf8(&msg.data) {
                            Ok(text) => dc.send_text(text).await,
                            Err(_) => dc.send(BytesMut::from(&msg.data[..])).await,
                        }
                    } else {
                        dc.send(BytesMut::from(&msg.data[..])).await
                    };
                    if res.is_err() {
                        counters.drop_one(DropReason::DataChannelDropped);
                    }
                }
            }
        });
        self.push_task(h);
    }
}

#[async_trait::async_trait]
impl RoleHooks for SubscriberHooks {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // The client sends media on a subscriber connection (a sendrecv section we could not
        // match): never forwarded, but drained so webrtc-rs's per-track queue cannot overflow.
        let h = spawn_counted(&self.counters, async move {
            while track.poll().await.is_some() {}
        });
        self.push_task(h);
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&dc));
        let channels = Arc::clone(&self.channels);
        // Drain what the client sends on it (ignored) and forget the channel once it closes.
        let h = spawn_counted(&self.counters, async move {
            while let Some(ev) = dc.poll().await {
                if matches!(ev, DataChannelEvent::OnClose) {
                    break;
                }
            }
            channels
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|c| !Arc::ptr_eq(c, &dc));
        });
        self.push_task(h);
    }
}

/// A live subscriber endpoint.
pub(crate) struct SubscriberEndpoint {
    pub(crate) key: EndpointKey,
    pub(crate) publisher: EndpointKey,
    pub(crate) session: Session,
    pub(crate) hooks: Arc<SubscriberHooks>,
    pub(crate) pause: Arc<Pause>,
    /// Registration in the publisher's data fan-out, if any.
    data: Mutex<Option<(Arc<DataFanOut>, u64)>>,
    outputs: Mutex<Vec<Output>>,
    event_forwarder: Mutex<Option<JoinHandle<()>>>,
    gauge: Mutex<Option<Gauge>>,
}

impl SubscriberEndpoint {
    #[allow(clippy::too_many_arguments)] // private constructor, one call site
    pub(crate) fn new(
        key: EndpointKey,
        publisher: EndpointKey,
        session: Session,
        hooks: Arc<SubscriberHooks>,
        pause: Arc<Pause>,
        outputs: Vec<Output>,
        data: Option<(Arc<DataFanOut>, u64)>,
        event_forwarder: JoinHandle<()>,
        counters: &Arc<Counters>,
    ) -> Self {
        Self {
            key,
            publisher,
            session,
            hooks,
            pause,
            data: Mutex::new(data),
            outputs: Mutex::new(outputs),
            event_forwarder: Mutex::new(Some(event_forwarder)),
            gauge: Mutex::new(Some(Gauge::new(counters, |c| &c.subscribers))),
        }
    }

    /// Leaves the publisher, stops every task, closes the peer connection, returns the port.
    pub(crate) async fn shutdown(&self) {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((fan, id)) = data {
            fan.remove(id);
        }
        let outputs = std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()));
        for o in outputs {
            o.shutdown().await;
        }
        for t in self.hooks.abort_tasks() {
            let _ = t.await;
        }
        close_endpoint(&self.session, &self.event_forwarder, &self.gauge).await;
        debug!(endpoint = self.key.0, "subscriber released");
    }
}
