//! Browser-like WebRTC peers (webrtc-rs, from `media::testing`) that publish and subscribe
//! through roomd with the Kurento protocol, the way KurentoRoom.js does: the client offers,
//! trickles its candidates with `onIceCandidate`, and applies the server's `iceCandidate`
//! events. Candidates are stripped from both SDPs so that the trickle path alone must work.

use std::sync::Arc;
use std::time::Duration;

use media::testing::{self, Kind, Numbering, Seen, CHROME};
use serde_json::{json, Value};
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::RTCIceCandidateInit;

use super::{Client, WAIT};

pub const VIDEO_SSRC: u32 = testing::VIDEO_SSRC;
pub const AUDIO_SSRC: u32 = testing::AUDIO_SSRC;

/// A publishing peer.
pub struct Publication {
    pub peer: testing::Client,
    pub video: Arc<TrackLocalStaticRTP>,
    pub audio: Arc<TrackLocalStaticRTP>,
    pub offer: String,
    pub answer: String,
    /// From sending publishVideo to the peer connection being connected.
    pub connect_time: Duration,
    /// The data channel the publisher opened, when asked for one.
    pub channel: Option<Arc<dyn testing::Channel>>,
}

/// A subscribing peer with readers on both incoming tracks.
pub struct Subscription {
    pub peer: testing::Client,
    pub answer: String,
    pub connect_time: Duration,
    /// Readers in arrival order of the tracks (audio and video, whichever comes first).
    pub readers: Vec<watch::Receiver<Seen>>,
}

/// Removes `a=candidate` / `a=end-of-candidates` lines: candidates must travel by trickle.
pub fn strip_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// `publishVideo` with a sendonly (sendrecv for loopback) audio+video offer, trickle both ways.
pub async fn publish(ws: &mut Client, me: &str, loopback: bool, data: bool) -> Publication {
    publish_with(ws, me, loopback, data, CHROME).await
}

pub async fn publish_with(
    ws: &mut Client,
    me: &str,
    loopback: bool,
    data: bool,
    numbering: Numbering,
) -> Publication {
    let mut peer = testing::Client::new(numbering).await;
    let audio = peer.add_send_track(Kind::Audio, AUDIO_SSRC, loopback).await;
    let video = peer.add_send_track(Kind::Video, VIDEO_SSRC, loopback).await;
    let channel = if data {
        Some(
            peer.pc
                .create_data_channel("chat", None)
                .await
                .expect("client data channel"),
        )
    } else {
        None
    };
    let offer = strip_candidates(&peer.offer(false).await);
    let started = std::time::Instant::now();
    let r = ws
        .call(
            "publishVideo",
            json!({"sdpOffer": offer, "doLoopback": loopback}),
        )
        .await;
    let answer = r["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("publishVideo answered {r}"))
        .to_owned();
    peer.apply_answer(strip_candidates(&answer)).await;
    trickle(ws, &mut peer, me, me).await;
    let connect_time = started.elapsed().max(peer.connected().await);
    Publication {
        peer,
        video,
        audio,
        offer,
        answer,
        connect_time,
        channel,
    }
}

/// `receiveVideoFrom <sender>_webcam` with a recvonly audio+video offer, trickle both ways.
pub async fn subscribe(ws: &mut Client, sender: &str) -> Subscription {
    let mut peer = testing::Client::new(CHROME).await;
    peer.add_recv(Kind::Audio).await;
    peer.add_recv(Kind::Video).await;
    let offer = strip_candidates(&peer.offer(false).await);
    let started = std::time::Instant::now();
    let r = ws
        .call(
            "receiveVideoFrom",
            json!({"sender": format!("{sender}_webcam"), "sdpOffer": offer}),
        )
        .await;
    let answer = r["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("receiveVideoFrom answered {r}"))
        .to_owned();
    peer.apply_answer(strip_candidates(&answer)).await;
    trickle(ws, &mut peer, sender, sender).await;
    peer.connected().await;
    let connect_time = started.elapsed();
    Subscription {
        peer,
        answer,
        connect_time,
        readers: Vec::new(),
    }
}

impl Subscription {
    /// Starts readers on the two incoming tracks (they appear with the first packets).
    pub async fn read_both_tracks(&mut self) {
        self.read_tracks(2).await;
    }

    /// Starts readers on the first `n` incoming tracks.
    pub async fn read_tracks(&mut self, n: usize) {
        for _ in 0..n {
            let track = self.peer.next_track().await;
            self.readers.push(testing::read_track(track));
        }
    }

    /// Waits until the readers together saw `n` packets; returns the total and corrupt count.
    pub async fn wait_total(&mut self, n: u64) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (total, corrupt) = self.readers.iter().fold((0, 0), |(t, c), r| {
                let s = r.borrow();
                (t + s.packets, c + s.corrupt)
            });
            if total >= n || tokio::time::Instant::now() >= deadline {
                return (total, corrupt);
            }
            let mut changed: Vec<_> = self
                .readers
                .iter_mut()
                .map(|r| Box::pin(r.changed()))
                .collect();
            let next = futures_util::future::select_all(changed.iter_mut());
            let _ = tokio::time::timeout_at(deadline, next).await;
        }
    }
}

/// Exchanges candidates: all of the peer's gathered candidates go to the server as
/// `onIceCandidate` (endpointName = `endpoint_name`), and `iceCandidate` events for
/// `endpoint_name` are applied until the peer is connected.
async fn trickle(ws: &mut Client, peer: &mut testing::Client, endpoint_name: &str, _sender: &str) {
    // Our candidates: the first one arrives within WAIT; the rest (loopback has one
    // interface) are already queued then.
    let first = tokio::time::timeout(WAIT, peer.candidates.recv())
        .await
        .expect("the client gathers a candidate in time")
        .expect("candidate channel open");
    let mut mine = vec![first];
    while let Ok(c) = peer.candidates.try_recv() {
        mine.push(c);
    }
    for c in mine {
        let r = ws
            .call(
                "onIceCandidate",
                json!({"endpointName": endpoint_name, "candidate": c.candidate,
                       "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index}),
            )
            .await;
        assert!(r.get("result").is_some(), "onIceCandidate refused: {r}");
    }
    // The server's: its iceCandidate events for this endpoint, applied until a UDP one was
    // (the server trickles UDP first, then ICE-TCP; these clients only do UDP, and an endpoint
    // republished under the same name may still have the former one's TCP candidate pending).
    loop {
        let ev = ws
            .notification_where("iceCandidate", |p| p["endpointName"] == endpoint_name)
            .await;
        apply_candidate(peer, &ev["params"]).await;
        if ev["params"]["candidate"]
            .as_str()
            .is_some_and(|c| c.contains(" udp "))
        {
            break;
        }
    }
}

pub async fn apply_candidate(peer: &testing::Client, params: &Value) {
    let init = RTCIceCandidateInit {
        candidate: params["candidate"].as_str().expect("candidate").to_owned(),
        sdp_mid: params["sdpMid"].as_str().map(str::to_owned),
        sdp_mline_index: params["sdpMLineIndex"].as_u64().map(|i| i as u16),
        username_fragment: None,
        url: None,
    };
    peer.pc
        .add_ice_candidate(init)
        .await
        .expect("server candidate applies");
}

/// Sends `n` synthetic packets (400-byte payload, sequence-checked) on a published track.
pub async fn send(track: &TrackLocalStaticRTP, ssrc: u32, pt: u8, n: u16) {
    testing::send_packets(track, ssrc, pt, 0, n, Duration::from_millis(2)).await;
}

/// The `a=mid:` values of an SDP, in order.
pub fn mids(sdp: &str) -> Vec<String> {
    sdp.split("\r\n")
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .map(str::to_owned)
        .collect()
}

/// The direction attribute of each m-section, in order.
pub fn directions(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    for section in sdp.split("\r\nm=").skip(1) {
        let dir = ["sendrecv", "sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| {
                section.contains(&format!("a={d}\r\n")) || section.ends_with(&format!("a={d}"))
            })
            .unwrap_or("sendrecv");
        out.push(dir.to_owned());
    }
    out
}
