//! The only place where signaling's words meet the media engine's.
//!
//! Turns [`MediaCommand`]s of a room into calls on [`media::MediaRouter`] and turns what the
//! engine answers or reports into [`MediaReport`] inputs of that room. Each endpoint gets a
//! small task that runs its commands strictly in order (create, then candidates, then
//! release), so a candidate never overtakes the endpoint's creation and a release never
//! overtakes a negotiation still running (which would leak the peer connection).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use media::{EndpointKey, IceCandidate, MediaEvent, MediaRouter, PublishError, SubscribeError};
use signaling::protocol::Candidate;
use signaling::room::{EndpointId, Input, MediaCommand, MediaReport, NegotiationFailure};
use tokio::sync::mpsc;

use crate::lock;

/// Commands queued for one endpoint task. When full, a candidate is dropped (counted in the
/// log; ICE copes with a missing candidate), so is an expected subscriber (the subscription
/// asks for its keyframe itself), and a release is handed to a task that waits, so
/// that a release is never lost.
const ENDPOINT_QUEUE: usize = 64;
/// Events queued from the media engine for one endpoint before they reach the room. The
/// engine decides its own full policy (see `media`); this side waits on the room inbox.
const EVENT_QUEUE: usize = 64;

/// Executes media commands; cheap to share.
#[derive(Debug)]
pub(crate) struct Bridge {
    media: MediaRouter,
    /// Command queues of live endpoint tasks. Held only for insert/lookup/remove.
    endpoints: Mutex<HashMap<EndpointId, mpsc::Sender<MediaCommand>>>,
}

impl Bridge {
    pub(crate) fn new(media: MediaRouter) -> Self {
        Self {
            media,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn media(&self) -> &MediaRouter {
        &self.media
    }

    /// Number of endpoint tasks alive (for metrics and leak tests).
    pub(crate) fn live_endpoints(&self) -> usize {
        lock(&self.endpoints).len()
    }

    /// Releases every endpoint of the room with this serial (after its task died; a live room
    /// releases its endpoints one by one).
    pub(crate) fn release_room(self: &Arc<Self>, serial: u32) {
        let endpoints: Vec<EndpointId> = lock(&self.endpoints)
            .keys()
            .filter(|e| e.0 >> 32 == u64::from(serial))
            .copied()
            .collect();
        for endpoint in endpoints {
            let (tx, _) = mpsc::channel(1);
            self.execute(MediaCommand::Release { endpoint }, &tx);
        }
    }

    /// Executes `cmd` for a room whose inbox is `room`. Never blocks.
    pub(crate) fn execute(self: &Arc<Self>, cmd: MediaCommand, room: &mpsc::Sender<Input>) {
        match cmd {
            MediaCommand::Publish { endpoint, .. } | MediaCommand::Subscribe { endpoint, .. } => {
                let (tx, rx) = mpsc::channel(ENDPOINT_QUEUE);
                lock(&self.endpoints).insert(endpoint, tx);
                tokio::spawn(run_endpoint(
                    Arc::clone(self),
                    endpoint,
                    cmd,
                    rx,
                    room.clone(),
                ));
            }
            MediaCommand::AddCandidate { endpoint, .. }
            | MediaCommand::Release { endpoint }
            | MediaCommand::ExpectSubscriber {
                publisher: endpoint,
            } => {
                let is_release = matches!(cmd, MediaCommand::Release { .. });
                let queue = lock(&self.endpoints).get(&endpoint).cloned();
                let Some(queue) = queue else {
                    // The endpoint task is gone (already released or failed): nothing to do.
                    return;
                };
                match queue.try_send(cmd) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(cmd)) if is_release => {
                        tokio::spawn(async move {
                            let _ = queue.send(cmd).await;
                        });
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // A candidate, or a hint that a subscriber comes (its subscription
                        // asks for the keyframe again).
                        tracing::warn!(endpoint = endpoint.0, "endpoint queue full; dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }
}

/// One endpoint's life: negotiate, then apply candidates until released. The media calls are
/// boxed: this task lives as long as its endpoint, and its allocation is sized by its largest
/// await; inline, the engine's negotiation futures made that ~23 kB per endpoint (heaptrack,
/// BENCHMARKS.md §4.3), boxed they take memory only while they run.
async fn run_endpoint(
    bridge: Arc<Bridge>,
    endpoint: EndpointId,
    create: MediaCommand,
    mut commands: mpsc::Receiver<MediaCommand>,
    room: mpsc::Sender<Input>,
) {
    let key = EndpointKey(endpoint.0);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(forward_events(events_rx, room.clone()));
    let outcome = match create {
        MediaCommand::Publish {
            offer, loopback, ..
        } => Box::pin(bridge.media.publish(key, offer, loopback, events_tx))
            .await
            .map_err(|e| publish_failure(endpoint, e)),
        MediaCommand::Subscribe {
            publisher, offer, ..
        } => Box::pin(
            bridge
                .media
                .subscribe(key, EndpointKey(publisher.0), offer, events_tx),
        )
        .await
        .map_err(|e| subscribe_failure(endpoint, e)),
        MediaCommand::AddCandidate { .. }
        | MediaCommand::Release { .. }
        | MediaCommand::ExpectSubscriber { .. } => {
            // `Bridge::execute` starts a task only for Publish and Subscribe.
            Err(NegotiationFailure::EndpointCreation)
        }
    };
    let negotiated = outcome.is_ok();
    let report = match outcome {
        Ok(answer) => MediaReport::Answered { endpoint, answer },
        Err(failure) => MediaReport::Rejected { endpoint, failure },
    };
    let _ = room.send(Input::Media(report)).await;
    if negotiated {
        while let Some(cmd) = commands.recv().await {
            match cmd {
                MediaCommand::AddCandidate { candidate, .. } => {
                    Box::pin(bridge.media.add_candidate(key, to_media(candidate))).await;
                }
                MediaCommand::ExpectSubscriber { .. } => {
                    Box::pin(bridge.media.expect_subscriber(key)).await;
                }
                MediaCommand::Release { .. } => break,
                MediaCommand::Publish { .. } | MediaCommand::Subscribe { .. } => {}
            }
        }
    }
    lock(&bridge.endpoints).remove(&endpoint);
    Box::pin(bridge.media.release(key)).await;
}

/// Turns engine events into room inputs until the engine drops the endpoint's sender.
async fn forward_events(mut events: mpsc::Receiver<MediaEvent>, room: mpsc::Sender<Input>) {
    while let Some(ev) = events.recv().await {
        let report = match ev {
            MediaEvent::LocalCandidate {
                endpoint,
                candidate,
            } => MediaReport::LocalCandidate {
                endpoint: EndpointId(endpoint.0),
                candidate: Candidate {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_m_line_index: candidate.sdp_m_line_index,
                },
            },
            MediaEvent::Connected { endpoint } => MediaReport::Connected {
                endpoint: EndpointId(endpoint.0),
            },
            MediaEvent::Failed {
                endpoint,
                description,
            } => MediaReport::Failed {
                endpoint: EndpointId(endpoint.0),
                description,
            },
        };
        if room.send(Input::Media(report)).await.is_err() {
            break; // The room is gone; so are its endpoints.
        }
    }
}

fn to_media(c: Candidate) -> IceCandidate {
    IceCandidate {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_m_line_index: c.sdp_m_line_index,
    }
}

fn publish_failure(endpoint: EndpointId, e: PublishError) -> NegotiationFailure {
    tracing::info!(endpoint = endpoint.0, error = %e, "publish failed");
    match e {
        PublishError::Unavailable => NegotiationFailure::Unavailable,
        PublishError::InvalidOffer(_) => NegotiationFailure::OfferRejected(e.to_string()),
        PublishError::AlreadyExists => NegotiationFailure::EndpointCreation,
        // rtc's own text stays in the log (above), not in the client's error.
        PublishError::Negotiation(_) | PublishError::Released => NegotiationFailure::NoAnswer,
    }
}

fn subscribe_failure(endpoint: EndpointId, e: SubscribeError) -> NegotiationFailure {
    tracing::info!(endpoint = endpoint.0, error = %e, "subscribe failed");
    match e {
        SubscribeError::Unavailable => NegotiationFailure::Unavailable,
        SubscribeError::InvalidOffer(_) | SubscribeError::NoCommonCodec => {
            NegotiationFailure::OfferRejected(e.to_string())
        }
        SubscribeError::AlreadyExists => NegotiationFailure::EndpointCreation,
        SubscribeError::PublisherNotFound | SubscribeError::Released => {
            NegotiationFailure::PublisherGone
        }
        SubscribeError::Negotiation(_) => NegotiationFailure::NoAnswer,
    }
}
