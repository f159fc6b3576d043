//! The media engine: shard threads on the sans-IO `rtc` core, each with one UDP socket for all
//! its peer connections, and our own forwarding fast path (BENCHMARKS.md §4 says why).
//! [`crate::MediaRouter`] is a thin handle over [`sharded::ShardedEngine`].
//!
//! Modules, each owning one thing:
//! - `codecs`: the codec set every peer connection registers, SDP media sections, the checks
//!   every client offer passes.
//! - `wire`: newtypes for wire values (`Ssrc`, `Pt`, `SeqNo`, `Mid`).
//! - `demux`: a shard's address table (5-tuple → peer; learns addresses only from STUN requests
//!   with valid MESSAGE-INTEGRITY).
//! - `peer`: one sans-IO peer connection of a shard: build, negotiate (ICE-lite answerer), drain.
//! - `shard`: the sans-IO shard: many peer connections on one port, timer heap, queues; opens
//!   publishers' RTP itself once their keys are known (rtc keeps ICE, DTLS, SRTCP, data).
//! - `srtp`: SRTP keys captured from rtc's crypto provider, in-place seal of forwarded RTP and
//!   in-place open of publishers' RTP.
//! - `feedback`: a publisher connection's receive-side interceptor chain (NACKs, TWCC, receiver
//!   reports), shared by rtc and the shard's SRTP bypass.
//! - `forward`: a shard's forwarding state: tracks and legs from shard events, SRTP sealing,
//!   the queue of sealed datagrams, RTCP (NACK, PLI/FIR, RR, SR) both ways.
//! - `data`: a shard's data-channel relay: publishers' messages to their subscribers' channels,
//!   bounded by each channel's SCTP backlog.
//! - `tcp`: a shard's ICE-TCP listener and connections: RFC 4571 framing, bounded write buffers.
//! - `udp_send`: a shard's batched UDP send: windows of datagrams grouped into `sendmmsg`
//!   messages, runs to one client as one GSO (`UDP_SEGMENT`) message.
//! - `runtime`: a shard thread: one UDP socket and the ICE-TCP listener on its port number, the
//!   shard, its forwarder and its data relay, bounded command and event queues.
//! - `sharded`: the engine behind `MediaRouter`: shard threads, the endpoint table, event
//!   dispatch.
//! - `track`: a publisher track, where publisher and subscribers meet: ring, legs, keyframes, SRs.
//! - `leg`: one subscriber's view of a track: in-place rewrite, own sequence space, gating, NACKs.
//! - `nack_ring`: the clear packets of a track kept for retransmission, shared by its legs.
//! - `keyframe`: keyframe starts in VP8/VP9/H.264 payloads, coalesced keyframe requests.
//! - `outage`: a publisher stream resuming after an outage (detection) and the NACKs sent to
//!   publishers (none for what the outage swallowed, a PLI instead of endless NACKs).
//! - `sender_report`: the publisher's NTP↔RTP mapping in each leg's timestamp space; RTT.

pub(crate) mod codecs;
pub mod data;
pub mod demux;
pub(crate) mod feedback;
pub mod forward;
pub mod keyframe;
pub mod leg;
pub mod nack_ring;
pub(crate) mod outage;
pub mod peer;
pub mod runtime;
pub mod sender_report;
pub mod shard;
pub mod sharded;
pub mod srtp;
pub mod tcp;
pub mod track;
pub mod udp_send;
pub mod wire;
