//! Kurento room signaling: the JSON-RPC 2.0 codec with kurento-jsonrpc's habits, typed
//! Kurento room methods and events, error codes, and the sans-IO room state machine.
//!
//! This crate is pure: no tokio, no sockets, no WebRTC, no clock. The composition root
//! (`roomd`) feeds it decoded frames, media reports and time, and executes what it emits.

pub mod error;
pub mod jsonrpc;
pub mod protocol;
pub mod room;

pub use error::RoomError;
