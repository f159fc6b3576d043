//! The media engine v2 under construction: sharded, on the sans-IO `rtc` core, with our own
//! forwarding fast path (see BENCHMARKS.md §4 for why). NOT yet wired into [`crate::MediaRouter`]:
//! the engine in the rest of this crate still serves every call. Each module here is complete
//! and tested on its own; the switch-over (and the removal of the old engine) is the remaining
//! work of the media-engine issue.
//!
//! Modules, each owning one thing:
//! - `wire`: newtypes for wire values (`Ssrc`, `Pt`, `SeqNo`, `Mid`).

pub mod wire;
