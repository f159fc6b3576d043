//! The only module that builds webrtc-rs peer connections.
//!
//! Owns: the per-PC configuration (codecs, interceptors incl. the keyframe-request interceptor,
//! ECDSA-only DTLS suites, no mDNS, UDP on `bind_ip` with a port from the pool, 1:1 NAT
//! address), the [`Session`] wrapper (peer connection + port lease + live gauge, closed exactly
//! once), the event handler shared by publisher and subscriber PCs ([`EndpointHandler`]: never
//! blocks the driver task; events go through a bounded per-endpoint queue to a forwarder task)
//! and offer/answer helpers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::{
    NackGeneratorBuilder, NackResponderBuilder, ReceiverReportBuilder, SenderReportBuilder, Slot,
    TwccReceiverBuilder,
};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, CipherSuiteId, MediaEngine, PeerConnection,
    PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceCandidateType,
    RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, SettingEngineBuilder,
};

use crate::config::MediaConfig;
use crate::keyframe::{
    KeyframeRequestInterceptor, NackFilter, KEYFRAME_INTERCEPTOR_SLOT, NACK_FILTER_SLOT,
};
use crate::ports::{PortLease, PortPool};
use crate::stats::{spawn_counted, Counters, Gauge};
use crate::{EndpointKey, IceCandidate, MediaEvent};

/// Capacity of each endpoint's internal event queue (handler → forwarder task). Full policy:
/// the handler (running on the webrtc-rs driver task, which must never block) drops the event,
/// counts it in `MediaStats::events_dropped` and logs a warning. An endpoint emits a handful of
/// events (one per local candidate plus at most one failure), so 64 is only reached if the
/// caller stops reading its event channel.
pub(crate) const EVENT_QUEUE_CAPACITY: usize = 64;

/// How long publish/subscribe wait for local candidate gathering before returning the answer
/// (candidates then still arrive as [`MediaEvent::LocalCandidate`]). With host candidates on
/// one concrete address gathering takes well under a millisecond.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// How many pool ports one peer-connection build tries before giving up.
const MAX_BIND_ATTEMPTS: usize = 16;

/// Role-specific reactions to remote tracks and data channels. Called on the driver task:
/// implementations must not block (spawn or `try_send` only).
#[async_trait::async_trait]
pub(crate) trait RoleHooks: Send + Sync + 'static {
    async fn on_track(&self, track: Arc<dyn TrackRemote>);
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>);
}

/// Emits one endpoint's events into its bounded queue; never blocks.
pub(crate) struct Reporter {
    endpoint: EndpointKey,
    events: mpsc::Sender<MediaEvent>,
    counters: Arc<Counters>,
    /// `Failed` is reported at most once per endpoint.
    failed: AtomicBool,
}

impl Reporter {
    fn emit(&self, ev: MediaEvent) {
        if let Err(e) = self.events.try_send(ev) {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(endpoint = self.endpoint.0, error = %e, "media event dropped: event queue full or closed");
        }
    }

    fn fail(&self, description: &str) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            info!(endpoint = self.endpoint.0, description, "endpoint failed");
            self.emit(MediaEvent::Failed {
                endpoint: self.endpoint,
                description: description.to_owned(),
            });
        }
    }
}

/// The webrtc-rs event handler of one endpoint.
pub(crate) struct EndpointHandler {
    endpoint: EndpointKey,
    reporter: Arc<Reporter>,
    gathered: watch::Sender<bool>,
    connected: watch::Sender<bool>,
    /// `sdp_mid` put on emitted candidates (the first section's mid; everything is bundled).
    first_mid: Option<String>,
    /// 1:1 NAT address announced instead of the bound one.
    public_ip: Option<IpAddr>,
    hooks: Arc<dyn RoleHooks>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EndpointHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            // Only RTP-component candidates: everything is bundled and rtcp-muxed, and
            // browsers reject (or ignore) component-2 candidates.
            Ok(init) if candidate_component(&init.candidate) != Some(1) => {
                debug!(
                    endpoint = self.endpoint.0,
                    "non-RTP-component local candidate not reported"
                );
            }
            Ok(init) => {
                debug!(endpoint = self.endpoint.0, candidate = %init.candidate, "local candidate");
                self.reporter.emit(MediaEvent::LocalCandidate {
                    endpoint: self.endpoint,
                    candidate: IceCandidate {
                        candidate: announce_candidate(&init.candidate, self.public_ip),
                        sdp_mid: self.first_mid.clone(),
                        sdp_m_line_index: Some(0),
                    },
                });
            }
            Err(e) => {
                debug!(endpoint = self.endpoint.0, error = %e, "unserialisable local candidate")
            }
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(endpoint = self.endpoint.0, %state, "peer connection state");
        match state {
            // Reported once: the first time the connection comes up.
            RTCPeerConnectionState::Connected if !self.connected.send_replace(true) => {
                self.reporter.emit(MediaEvent::Connected {
                    endpoint: self.endpoint,
                });
            }
            RTCPeerConnectionState::Failed => {
                self.reporter.fail("media connection failed (ICE/DTLS)");
            }
            _ => {}
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.hooks.on_track(track).await;
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        self.hooks.on_data_channel(dc).await;
    }
}

/// Spawns the forwarder task moving events from the endpoint's internal bounded queue to the
/// caller's channel (`send().await` there is fine: it is not a driver task). Returns the
/// internal sender and the task handle (aborted at release).
pub(crate) fn spawn_event_forwarder(
    counters: &Arc<Counters>,
    events: mpsc::Sender<MediaEvent>,
) -> (mpsc::Sender<MediaEvent>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<MediaEvent>(EVENT_QUEUE_CAPACITY);
    let handle = spawn_counted(counters, async move {
        while let Some(ev) = rx.recv().await {
            if events.send(ev).await.is_err() {
                break;
            }
        }
    });
    (tx, handle)
}

/// Packets of history kept per sent video stream to answer NACKs (a power of two, as
/// webrtc-rs requires): ≈ 2.3–3.8 s at 1.5–2.5 Mbit/s, longer than any retransmission is still
/// useful for (mediasoup caps it at 2 s). webrtc-rs's default, 1024, preallocates ≈ 115 kB per
/// subscriber video stream, half of it never useful.
const NACK_HISTORY_PACKETS: u16 = 512;

/// SRTP replay-protection window, in packets. Publishers retransmit on the media SSRC (no RTX
/// is negotiated), so the answer to a NACK carries an old sequence number; webrtc-rs's default
/// window, 64 packets (≈ 0.25 s at 2.5 Mbit/s), rejected late answers as replays, and the NACK
/// generator asked again every 100 ms: a loop of retransmissions that, after a network outage,
/// starved the publisher's new frames (tests/browser_outage.rs). 1024 covers the generator's
/// 512-packet log twice over.
const SRTP_REPLAY_WINDOW: usize = 1024;

/// Which way RTP flows on a peer connection; decides its interceptor chain.
///
/// Every interceptor sits on every packet's path in both directions (webrtc-rs walks the whole
/// chain per packet and moves the packet through each stage), so a peer connection only carries
/// the stages its flow uses. The SDP is the same for all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RtpFlow {
    /// A publisher: RTP in. NACK generator (its NACKs shaped by `NackFilter`), TWCC feedback,
    /// receiver reports.
    Receive,
    /// A subscriber: RTP out. NACK responder, sender reports, keyframe-request delivery.
    Send,
    /// A publisher with loopback: both sets.
    Both,
}

impl RtpFlow {
    fn receives(self) -> bool {
        matches!(self, RtpFlow::Receive | RtpFlow::Both)
    }

    fn sends(self) -> bool {
        matches!(self, RtpFlow::Send | RtpFlow::Both)
    }

    /// The interceptors this flow needs, in webrtc-rs's standard slots.
    fn registry(self) -> Registry {
        let mut r = Registry::new();
        if self.receives() {
            r = r
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                .with(NACK_FILTER_SLOT.into(), NackFilter::default())
                .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
        }
        if self.sends() {
            r = r
                .with(
                    Slot::NackResponder,
                    NackResponderBuilder::new()
                        .with_size(NACK_HISTORY_PACKETS)
                        .build(),
                )
                .with(Slot::SenderReport, SenderReportBuilder::new().build())
                .with(
                    KEYFRAME_INTERCEPTOR_SLOT.into(),
                    KeyframeRequestInterceptor::default(),
                );
        }
        r
    }
}

/// Shared context for building sessions.
#[derive(Clone)]
pub(crate) struct SessionFactory {
    pub(crate) config: MediaConfig,
    pub(crate) ports: PortPool,
    pub(crate) counters: Arc<Counters>,
}

/// Why a peer connection could not be built.
#[derive(Debug)]
pub(crate) enum BuildError {
    NoPort,
}

/// A built peer connection with its port and gauge. Close it with [`Session::close`].
pub(crate) struct Session {
    pub(crate) pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    connected: watch::Receiver<bool>,
    reporter: Arc<Reporter>,
    counters: Arc<Counters>,
    /// Reports `Failed` if the connection is not up in time; aborted at close.
    watchdog: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Port lease and live gauge; taken (once) by [`Session::close`].
    resources: std::sync::Mutex<Option<(PortLease, Gauge)>>,
}

impl Session {
    /// Closes the peer connection (driver, sockets) and only then returns the port. Idempotent.
    pub(crate) async fn close(&self) {
        let taken = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(resources) = taken else { return };
        stop_task(&self.watchdog).await;
        if let Err(e) = self.pc.close().await {
            debug!(error = %e, "peer connection close reported an error");
        }
        drop(resources);
    }

    /// Starts the connect watchdog: if the peer connection is not connected within `timeout`,
    /// the endpoint reports [`MediaEvent::Failed`]. (webrtc-rs 0.21.1 keeps a connection whose
    /// DTLS handshake fails in `connecting` forever; ICE failures are reported by the state
    /// change itself.)
    pub(crate) fn start_watchdog(&self, timeout: Duration) {
        let mut connected = self.connected.clone();
        let reporter = Arc::clone(&self.reporter);
        let h = spawn_counted(&self.counters, async move {
            let up = tokio::time::timeout(timeout, connected.wait_for(|c| *c)).await;
            if !matches!(up, Ok(Ok(_))) {
                reporter.fail("media connection timed out");
            }
        });
        let old = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(h);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Follows whether the connection is up (ICE and DTLS done).
    pub(crate) fn connected_watch(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Waits (bounded) until local candidate gathering completed.
    pub(crate) async fn wait_gathered(&self) {
        let mut rx = self.gathered.clone();
        let wait = rx.wait_for(|done| *done);
        if tokio::time::timeout(GATHER_TIMEOUT, wait).await.is_err() {
            debug!("candidate gathering not complete in time; answering without all candidates");
        }
    }
}

impl SessionFactory {
    /// Builds one peer connection bound to `bind_ip:<pool port>`; on failure tries the next
    /// port (up to [`MAX_BIND_ATTEMPTS`]).
    pub(crate) async fn build(
        &self,
        endpoint: EndpointKey,
        events: mpsc::Sender<MediaEvent>,
        first_mid: Option<String>,
        flow: RtpFlow,
        hooks: Arc<dyn RoleHooks>,
    ) -> Result<Session, BuildError> {
        let attempts = self.ports.size().min(MAX_BIND_ATTEMPTS);
        let mut last_err = String::from("no port available");
        for _ in 0..attempts {
            let Some(lease) = self.ports.acquire() else {
                return Err(BuildError::NoPort);
            };
            let (gathered_tx, gathered_rx) = watch::channel(false);
            let (connected_tx, connected_rx) = watch::channel(false);
            let reporter = Arc::new(Reporter {
                endpoint,
                events: events.clone(),
                counters: Arc::clone(&self.counters),
                failed: AtomicBool::new(false),
            });
            let handler = Arc::new(EndpointHandler {
                endpoint,
                reporter: Arc::clone(&reporter),
                gathered: gathered_tx,
                connected: connected_tx,
                first_mid: first_mid.clone(),
                public_ip: self.config.public_ips.first().copied(),
                hooks: Arc::clone(&hooks),
            });
            let addr = SocketAddr::new(self.config.bind_ip, lease.port());
            match self.build_pc(addr, flow, handler).await {
                Ok(pc) => {
                    let gauge = Gauge::new(&self.counters, |c| &c.peer_connections);
                    return Ok(Session {
                        pc,
                        gathered: gathered_rx,
                        connected: connected_rx,
                        reporter,
                        counters: Arc::clone(&self.counters),
                        watchdog: std::sync::Mutex::new(None),
                        resources: std::sync::Mutex::new(Some((lease, gauge))),
                    });
                }
                Err(e) => {
                    debug!(port = lease.port(), error = %e, "peer connection build failed, trying next port");
                    last_err = e.to_string();
                }
            }
        }
        warn!(error = %last_err, "could not bind a peer connection on any tried port");
        Err(BuildError::NoPort)
    }

    async fn build_pc(
        &self,
        addr: SocketAddr,
        flow: RtpFlow,
        handler: Arc<EndpointHandler>,
    ) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
        let mut media_engine = MediaEngine::default();
        crate::codecs::register(&mut media_engine)?;
        // The default set registers its RTCP feedback types and header extensions in the engine,
        // which keeps the SDP identical; its chain is replaced by the flow's own.
        let _all_directions = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let registry = flow.registry();

        let network = if addr.is_ipv4() {
            NetworkType::Udp4
        } else {
            NetworkType::Udp6
        };
        let mut se = SettingEngineBuilder::new()
            .with_network_types(vec![network])
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(addr.ip().is_loopback())
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .with_dtls_cipher_suites(vec![
                CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Gcm_Sha256,
                CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_256_Cbc_Sha,
                CipherSuiteId::Tls_Ecdhe_Ecdsa_With_ChaCha20_Poly1305_Sha256,
            ]);
        if let Some(public) = self.config.public_ips.first().copied() {
            se = se.with_nat_1to1_ips(vec![public.to_string()], RTCIceCandidateType::Host);
        }

        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(se.build())
            .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![addr])
            .build()
            .await?;
        Ok(Arc::new(pc) as Arc<dyn PeerConnection>)
    }
}

/// Whether a remote candidate should be ignored (empty end-of-candidates marker, or an mDNS
/// `.local` address we cannot resolve: mDNS is disabled, the browser's checks then show up as
/// peer-reflexive candidates instead).
pub(crate) fn ignorable_candidate(c: &IceCandidate) -> bool {
    let s = c.candidate.trim();
    if s.is_empty() {
        return true;
    }
    let body = s.strip_prefix("candidate:").unwrap_or(s);
    body.split_whitespace()
        .nth(4)
        .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
}

/// The component id of a `candidate:` attribute value (1 = RTP, 2 = RTCP).
fn candidate_component(c: &str) -> Option<u16> {
    let body = c.trim().strip_prefix("candidate:").unwrap_or(c.trim());
    body.split_whitespace().nth(1)?.parse().ok()
}

/// Applies a remote candidate; errors are logged at debug and otherwise ignored.
pub(crate) async fn apply_candidate(
    pc: &Arc<dyn PeerConnection>,
    endpoint: EndpointKey,
    c: IceCandidate,
) {
    if ignorable_candidate(&c) {
        debug!(endpoint = endpoint.0, "ignoring empty or mDNS candidate");
        return;
    }
    let init = RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: None,
        url: None,
    };
    if let Err(e) = pc.add_ice_candidate(init).await {
        debug!(endpoint = endpoint.0, error = %e, "remote candidate rejected");
    }
}

/// Applies the client's offer as remote description.
pub(crate) async fn set_offer(
    session: &Session,
    offer: RTCSessionDescription,
) -> Result<(), String> {
    session
        .pc
        .set_remote_description(offer)
        .await
        .map_err(|e| short_error("offer rejected", &e))
}

/// Rewrites the address of a host candidate (`candidate:` attribute value, with or without the
/// prefix) to `public_ip`, if set. webrtc-rs 0.21.1 accepts
/// `SettingEngineBuilder::with_nat_1to1_ips` but its gatherer derives host candidates from the
/// socket address only, so the 1:1 NAT mapping is applied here, to what we announce.
pub(crate) fn announce_candidate(c: &str, public_ip: Option<IpAddr>) -> String {
    let Some(public) = public_ip else {
        return c.to_owned();
    };
    let mut tokens: Vec<&str> = c.split(' ').collect();
    let is_host = tokens.windows(2).any(|w| w[0] == "typ" && w[1] == "host");
    let public = public.to_string();
    if is_host && tokens.len() > 4 {
        tokens[4] = &public;
    }
    tokens.join(" ")
}

/// [`announce_candidate`] applied to every `a=candidate:` line of an SDP.
pub(crate) fn announce_sdp(sdp: &str, public_ip: Option<IpAddr>) -> String {
    if public_ip.is_none() {
        return sdp.to_owned();
    }
    sdp.split_inclusive('\n')
        .map(|line| match line.strip_prefix("a=") {
            Some(rest) if rest.starts_with("candidate:") => {
                let body = rest.trim_end_matches(['\r', '\n']);
                let eol = &rest[body.len()..];
                format!("a={}{eol}", announce_candidate(body, public_ip))
            }
            _ => line.to_owned(),
        })
        .collect()
}

/// Creates and applies the answer, waits (bounded) for gathering, returns the answer SDP (with
/// the announced address, see [`announce_sdp`]).
pub(crate) async fn answer(session: &Session, public_ip: Option<IpAddr>) -> Result<String, String> {
    let pc = Arc::clone(&session.pc);
    let answer = pc
        .create_answer(None)
        .await
        .map_err(|e| short_error("cannot create answer", &e))?;
    pc.set_local_description(answer)
        .await
        .map_err(|e| short_error("cannot apply answer", &e))?;
    session.wait_gathered().await;
    pc.local_description()
        .await
        .map(|d| announce_sdp(&d.sdp, public_ip))
        .ok_or_else(|| "no local description".to_owned())
}

/// A short, client-safe error text: `what` plus webrtc-rs's error message cut to one line and
/// a bounded length (webrtc-rs messages name SDP problems, not addresses).
pub(crate) fn short_error(what: &str, e: &dyn std::fmt::Display) -> String {
    let full = e.to_string();
    let line = full.lines().next().unwrap_or("");
    let mut msg: String = line.chars().take(80).collect();
    if msg.is_empty() {
        msg = "unknown error".to_owned();
    }
    format!("{what}: {msg}")
}

/// The last steps of every endpoint's teardown, shared by publishers and subscribers: close
/// the peer connection (returning its port), stop the endpoint's event forwarder, and stop
/// counting the endpoint in the live gauges.
pub(crate) async fn close_endpoint<G>(
    session: &Session,
    event_forwarder: &std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    gauge: &std::sync::Mutex<Option<G>>,
) {
    session.close().await;
    stop_task(event_forwarder).await;
    // Poisoning cannot leave this `Option` half-updated: recover the value.
    gauge.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// Takes the task out of `slot` (if one is there), aborts it and waits until it is gone.
async fn stop_task(slot: &std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>) {
    // Poisoning cannot leave the `Option` half-updated: recover the value.
    let task = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = task {
        t.abort();
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(s: &str) -> IceCandidate {
        IceCandidate {
            candidate: s.into(),
            sdp_mid: None,
            sdp_m_line_index: None,
        }
    }

    fn slot_positions(flow: RtpFlow) -> Vec<usize> {
        flow.registry()
            .slots()
            .into_iter()
            .map(|(slot, _)| usize::from(slot))
            .collect()
    }

    /// A subscriber connection carries only the sending stages, a publisher only the receiving
    /// ones, a loopback publisher both (the NACK responder answers retransmission requests,
    /// the keyframe interceptor lets PLI/FIR reach the application).
    #[test]
    fn interceptor_chain_follows_the_rtp_flow() {
        let send = [
            usize::from(Slot::NackResponder),
            usize::from(Slot::SenderReport),
            KEYFRAME_INTERCEPTOR_SLOT,
        ];
        let receive = [
            usize::from(Slot::NackGenerator),
            NACK_FILTER_SLOT,
            usize::from(Slot::TwccReceiver),
            usize::from(Slot::ReceiverReport),
        ];
        let mut got = slot_positions(RtpFlow::Send);
        got.sort_unstable();
        let mut want = send.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        let mut got = slot_positions(RtpFlow::Receive);
        got.sort_unstable();
        let mut want = receive.to_vec();
        want.sort_unstable();
        assert_eq!(got, want);
        let mut got = slot_positions(RtpFlow::Both);
        got.sort_unstable();
        let mut want = [&send[..], &receive[..]].concat();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn announces_public_address() {
        let public = Some(IpAddr::from([203, 0, 113, 7]));
        assert_eq!(
            announce_candidate(
                "candidate:26 1 udp 2130706431 10.0.0.5 57001 typ host",
                public
            ),
            "candidate:26 1 udp 2130706431 203.0.113.7 57001 typ host"
        );
        assert_eq!(
            announce_candidate(
                "candidate:26 1 udp 2130706431 10.0.0.5 57001 typ host",
                None
            ),
            "candidate:26 1 udp 2130706431 10.0.0.5 57001 typ host"
        );
        let sdp = "v=0\r\na=candidate:1 1 udp 5 10.0.0.5 9 typ host\r\na=mid:0\r\n";
        assert_eq!(
            announce_sdp(sdp, public),
            "v=0\r\na=candidate:1 1 udp 5 203.0.113.7 9 typ host\r\na=mid:0\r\n"
        );
    }

    #[test]
    fn component_of_candidate() {
        assert_eq!(
            candidate_component("candidate:26 2 udp 2130706431 127.0.0.1 57001 typ host"),
            Some(2)
        );
        assert_eq!(
            candidate_component("26 1 udp 1 127.0.0.1 5 typ host"),
            Some(1)
        );
        assert_eq!(candidate_component("garbage"), None);
    }

    #[test]
    fn ignores_empty_and_mdns() {
        assert!(ignorable_candidate(&cand("")));
        assert!(ignorable_candidate(&cand(
            "candidate:1 1 udp 2122260223 0b1c2d3e-aaaa.local 54321 typ host"
        )));
        assert!(!ignorable_candidate(&cand(
            "candidate:1 1 udp 2122260223 127.0.0.1 54321 typ host"
        )));
    }
}
