//! Negotiation against offers shaped like real browsers' (Chrome and Firefox SDP, with RTX,
//! RED, FEC, header extensions, ssrc-groups): the answers keep the browser's payload types,
//! leave out what we do not forward, and have the right directions. No connection is made.

mod common;

use common::*;
use media::EndpointKey;

const FP: &str = "sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08";

fn chrome_offer(direction: &str, with_ssrc: bool) -> String {
    let ssrc_audio = if with_ssrc {
        "a=msid:stream0 audio0\r\na=ssrc:1001 cname:c0\r\na=ssrc:1001 msid:stream0 audio0\r\n"
    } else {
        ""
    };
    let ssrc_video = if with_ssrc {
        "a=msid:stream0 video0\r\na=ssrc-group:FID 2001 2002\r\na=ssrc:2001 cname:c0\r\na=ssrc:2001 msid:stream0 video0\r\na=ssrc:2002 cname:c0\r\na=ssrc:2002 msid:stream0 video0\r\n"
    } else {
        ""
    };
    format!(
        "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1 2\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Ab1c\r\n\
a=ice-pwd:Zq3kC4m0dWbq0W2mDxKqP0aa\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:{FP}\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a={direction}\r\n\
{ssrc_audio}\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 98 99 45 46 112 113 114\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Ab1c\r\n\
a=ice-pwd:Zq3kC4m0dWbq0W2mDxKqP0aa\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:{FP}\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:13 urn:3gpp:video-orientation\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a={direction}\r\n\
{ssrc_video}\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\n\
a=rtcp-fb:102 goog-remb\r\n\
a=rtcp-fb:102 transport-cc\r\n\
a=rtcp-fb:102 ccm fir\r\n\
a=rtcp-fb:102 nack\r\n\
a=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=rtpmap:98 VP9/90000\r\n\
a=rtcp-fb:98 nack\r\n\
a=rtcp-fb:98 nack pli\r\n\
a=fmtp:98 profile-id=0\r\n\
a=rtpmap:99 rtx/90000\r\n\
a=fmtp:99 apt=98\r\n\
a=rtpmap:45 AV1/90000\r\n\
a=rtcp-fb:45 nack pli\r\n\
a=rtpmap:46 rtx/90000\r\n\
a=fmtp:46 apt=45\r\n\
a=rtpmap:112 red/90000\r\n\
a=rtpmap:113 rtx/90000\r\n\
a=fmtp:113 apt=112\r\n\
a=rtpmap:114 ulpfec/90000\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Ab1c\r\n\
a=ice-pwd:Zq3kC4m0dWbq0W2mDxKqP0aa\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:{FP}\r\n\
a=setup:actpass\r\n\
a=mid:2\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:262144\r\n"
    )
}

fn firefox_offer() -> String {
    format!(
        "v=0\r\n\
o=mozilla...THIS_IS_SDPARTA-99.0 6023530441402046417 0 IN IP4 0.0.0.0\r\n\
s=-\r\n\
t=0 0\r\n\
a=fingerprint:{FP}\r\n\
a=group:BUNDLE 0 1\r\n\
a=ice-options:trickle\r\n\
a=msid-semantic:WMS *\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\n\
c=IN IP4 0.0.0.0\r\n\
a=sendonly\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level\r\n\
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1\r\n\
a=fmtp:101 0-15\r\n\
a=ice-pwd:8a1b3d1e3bd8f6d1c6a3b4e2f9c0d7a1\r\n\
a=ice-ufrag:0c1e9a2b\r\n\
a=mid:0\r\n\
a=msid:{{5f0c}} {{a1b2}}\r\n\
a=rtcp-mux\r\n\
a=rtpmap:109 opus/48000/2\r\n\
a=rtpmap:9 G722/8000/1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=setup:actpass\r\n\
a=ssrc:3090917113 cname:{{9d3b}}\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125 126 127 97 98\r\n\
c=IN IP4 0.0.0.0\r\n\
a=sendonly\r\n\
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:5 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r\n\
a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1\r\n\
a=fmtp:120 max-fs=12288;max-fr=60\r\n\
a=fmtp:124 apt=120\r\n\
a=fmtp:121 max-fs=12288;max-fr=60\r\n\
a=fmtp:125 apt=121\r\n\
a=fmtp:127 apt=126\r\n\
a=fmtp:98 apt=97\r\n\
a=ice-pwd:8a1b3d1e3bd8f6d1c6a3b4e2f9c0d7a1\r\n\
a=ice-ufrag:0c1e9a2b\r\n\
a=mid:1\r\n\
a=msid:{{5f0c}} {{c3d4}}\r\n\
a=rtcp-fb:120 nack\r\n\
a=rtcp-fb:120 nack pli\r\n\
a=rtcp-fb:120 ccm fir\r\n\
a=rtcp-fb:120 goog-remb\r\n\
a=rtcp-fb:120 transport-cc\r\n\
a=rtcp-fb:121 nack\r\n\
a=rtcp-fb:121 nack pli\r\n\
a=rtcp-fb:121 ccm fir\r\n\
a=rtcp-fb:126 nack\r\n\
a=rtcp-fb:126 nack pli\r\n\
a=rtcp-fb:126 ccm fir\r\n\
a=rtcp-fb:97 nack\r\n\
a=rtcp-fb:97 nack pli\r\n\
a=rtcp-fb:97 ccm fir\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:120 VP8/90000\r\n\
a=rtpmap:124 rtx/90000\r\n\
a=rtpmap:121 VP9/90000\r\n\
a=rtpmap:125 rtx/90000\r\n\
a=rtpmap:126 H264/90000\r\n\
a=rtpmap:127 rtx/90000\r\n\
a=rtpmap:97 H264/90000\r\n\
a=rtpmap:98 rtx/90000\r\n\
a=setup:actpass\r\n\
a=ssrc:2944400000 cname:{{9d3b}}\r\n\
a=ssrc:2944400001 cname:{{9d3b}}\r\n\
a=ssrc-group:FID 2944400000 2944400001\r\n"
    )
}

/// The `m=` section of `kind` in `sdp` (text up to the next `m=`).
fn section<'a>(sdp: &'a str, kind: &str) -> &'a str {
    let start = sdp
        .find(&format!("m={kind} "))
        .unwrap_or_else(|| panic!("answer has an m={kind} section:\n{sdp}"));
    let rest = &sdp[start..];
    let end = rest[2..]
        .find("\r\nm=")
        .map(|e| e + 4)
        .unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chrome_publish_and_subscribe_offers() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let answer = router
        .publish(
            EndpointKey(1),
            chrome_offer("sendonly", true),
            false,
            ev_tx.clone(),
        )
        .await
        .expect("Chrome publish offer accepted");
    let video = section(&answer, "video");
    let audio = section(&answer, "audio");
    assert!(
        video.contains("a=recvonly") && audio.contains("a=recvonly"),
        "{answer}"
    );
    assert!(video.contains("a=rtpmap:96 VP8/90000"), "{video}");
    assert!(
        video.starts_with("m=video 9 UDP/TLS/RTP/SAVPF 96"),
        "VP8 stays first: {video}"
    );
    assert!(
        !video.contains("rtx/90000") && !video.contains("ulpfec"),
        "no RTX/FEC: {video}"
    );
    assert!(audio.contains("a=rtpmap:111 opus/48000/2"), "{audio}");
    assert!(
        answer.contains("m=application 9"),
        "data channel accepted: {answer}"
    );
    assert!(
        answer.contains("a=candidate:") && answer.contains("127.0.0.1"),
        "{answer}"
    );
    assert!(
        !answer.contains("a=setup:actpass"),
        "answer picks a DTLS role"
    );

    let answer = router
        .subscribe(
            EndpointKey(2),
            EndpointKey(1),
            chrome_offer("recvonly", false),
            ev_tx.clone(),
        )
        .await
        .expect("Chrome subscribe offer accepted");
    if std::env::var_os("SHOW_SDP").is_some() {
        eprintln!("{answer}");
    }
    let video = section(&answer, "video");
    let audio = section(&answer, "audio");
    assert!(
        video.contains("a=sendonly") && audio.contains("a=sendonly"),
        "{answer}"
    );
    assert!(video.contains("a=ssrc:"), "output SSRC announced: {video}");
    assert!(audio.contains("a=ssrc:"), "output SSRC announced: {audio}");
    assert!(!video.contains("a=ssrc:2001"), "not the publisher's SSRC");
    assert!(video.contains("a=rtpmap:96 VP8/90000"), "{video}");
    // The subscriber's peer connection registers only the publisher's formats: its answer
    // lists VP8 and opus alone, not every codec both sides know (smaller state per leg).
    assert!(
        video.starts_with("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"),
        "only the publisher's VP8: {video}"
    );
    assert!(
        !video.contains("VP9") && !video.contains("H264") && !video.contains("AV1"),
        "{video}"
    );
    assert!(
        audio.starts_with("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
        "only the publisher's opus: {audio}"
    );

    // A sendrecv subscribe offer is still answered send-only.
    let answer = router
        .subscribe(
            EndpointKey(3),
            EndpointKey(1),
            chrome_offer("sendrecv", true),
            ev_tx,
        )
        .await
        .expect("sendrecv subscribe offer accepted");
    let video = section(&answer, "video");
    assert!(video.contains("a=sendonly"), "{video}");
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_publish_offer_keeps_its_payload_types() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let answer = router
        .publish(EndpointKey(1), firefox_offer(), false, ev_tx.clone())
        .await
        .expect("Firefox publish offer accepted");
    let video = section(&answer, "video");
    let audio = section(&answer, "audio");
    assert!(video.contains("a=rtpmap:120 VP8/90000"), "{video}");
    assert!(video.contains("a=recvonly"), "{video}");
    assert!(audio.contains("a=rtpmap:109 opus/48000/2"), "{audio}");

    // A Chrome-numbered subscriber of the Firefox publisher.
    let answer = router
        .subscribe(
            EndpointKey(2),
            EndpointKey(1),
            chrome_offer("recvonly", false),
            ev_tx,
        )
        .await
        .expect("subscribe accepted");
    let video = section(&answer, "video");
    assert!(
        video.contains("a=rtpmap:96 VP8/90000") && video.contains("a=sendonly"),
        "{video}"
    );
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_during_negotiation_leaves_nothing_behind() {
    let router = router();
    let (ev_tx, _ev_rx) = events();
    let r = router.clone();
    let tx = ev_tx.clone();
    let publishing = tokio::spawn(async move {
        r.publish(EndpointKey(1), chrome_offer("sendonly", true), false, tx)
            .await
    });
    router.release(EndpointKey(1)).await;
    let res = publishing.await.expect("publish task");
    // Either the release came first (publish completes) or it hit the negotiation (Released).
    if let Err(e) = &res {
        assert!(matches!(e, media::PublishError::Released), "{e}");
    }
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ip_is_announced_instead_of_bind_ip() {
    let router = router_with(|c| c.public_ips = vec!["203.0.113.7".parse().expect("literal IP")]);
    let (ev_tx, mut ev_rx) = events();
    let answer = router
        .publish(EndpointKey(1), chrome_offer("sendonly", true), false, ev_tx)
        .await
        .expect("publish");
    let candidates: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=candidate"))
        .collect();
    assert!(!candidates.is_empty(), "{answer}");
    assert!(
        candidates.iter().all(|c| c.contains("203.0.113.7")),
        "{candidates:?}"
    );
    match tokio::time::timeout(WAIT, ev_rx.recv()).await {
        Ok(Some(media::MediaEvent::LocalCandidate {
            endpoint,
            candidate,
        })) => {
            assert_eq!(endpoint, EndpointKey(1));
            assert!(candidate.candidate.contains("203.0.113.7"), "{candidate:?}");
            assert!(candidate.candidate.starts_with("candidate:"));
            assert_eq!(candidate.sdp_mid.as_deref(), Some("0"));
            assert_eq!(candidate.sdp_m_line_index, Some(0));
        }
        other => panic!("expected a LocalCandidate event, got {other:?}"),
    }
    router.release(EndpointKey(1)).await;
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_announces_the_one_shard_port() {
    let router = router();
    let port = router.shard_addrs()[0].port();
    let (ev_tx, _ev_rx) = events();
    for key in [1, 2] {
        let answer = router
            .publish(
                EndpointKey(key),
                chrome_offer("sendonly", true),
                false,
                ev_tx.clone(),
            )
            .await
            .expect("publish");
        assert!(
            answer.contains(&format!("127.0.0.1 {port} typ host")),
            "{answer}"
        );
    }
    let answer = router
        .subscribe(
            EndpointKey(3),
            EndpointKey(1),
            chrome_offer("recvonly", true),
            ev_tx,
        )
        .await
        .expect("subscribe");
    assert!(
        answer.contains(&format!("127.0.0.1 {port} typ host")),
        "{answer}"
    );
    for key in [1, 2] {
        router.release(EndpointKey(key)).await;
    }
    assert_idle(&router);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_port_in_use_fails_start() {
    let squatter = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a squatter port");
    let port = squatter.local_addr().expect("bound address").port();
    let err = media::MediaRouter::start(media::MediaConfig {
        shards: 1,
        udp_port: port,
        ..media::MediaConfig::default()
    })
    .expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
}
