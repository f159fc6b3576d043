//! The media scenarios of `ws_media.rs` on the sharded engine (`--media-engine sharded`):
//! webrtc-rs client peers speaking the Kurento protocol over a real WebSocket, DTLS-SRTP over
//! UDP on 127.0.0.1, every peer connection of a room on one shard's port.

/// The engine `ws_media.rs`'s `start_server` runs its scenarios on in this binary.
const ENGINE: roomd::MediaEngine = roomd::MediaEngine::Sharded;

#[path = "ws_media.rs"]
mod scenarios;
