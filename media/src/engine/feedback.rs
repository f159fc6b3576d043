//! [`Feedback`]: what a publisher connection tells its client about the media it sends us —
//! NACKs (through `outage.rs`'s filter), transport-wide congestion feedback, receiver reports —
//! produced by rtc's interceptors, in one chain with two feeders.
//!
//! rtc's pipeline holds the chain as the publisher connection's interceptor: it binds each
//! stream when its track opens, feeds it the packets rtc decrypts and the inbound RTCP, drives
//! its timers and sends what it writes over SRTCP. The shard feeds it the packets it opens
//! itself (its SRTP bypass, `shard.rs`), header only; what those come out as on the chain's read
//! side is dropped, the forwarder has the packet already.
//!
//! Owns [`Feedback`] and [`FEEDBACK_SLOT`]. Not here: which RTCP is generated (rtc's interceptors
//! and `NackFilter` decide), nor sending it (rtc does).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use rtc::interceptor::{
    AttributedPacket, BoxedInterceptor, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use rtc::shared::TransportContext;

/// Registry slot of the shared chain in a publisher connection's registry, where it is the only
/// interceptor (the chain inside keeps the default slots' order).
pub(crate) const FEEDBACK_SLOT: usize = 7_000;

/// A publisher connection's receive-side interceptor chain, shared by rtc and the shard. The
/// lock is never contended: both feeders run on the shard's thread; it is there because rtc
/// requires its interceptors to be `Send + Sync`.
#[derive(Clone)]
pub(crate) struct Feedback(Arc<Mutex<BoxedInterceptor>>);

impl Feedback {
    pub(crate) fn new(chain: impl Interceptor + 'static) -> Self {
        Feedback(Arc::new(Mutex::new(Box::new(chain))))
    }

    fn chain(&self) -> MutexGuard<'_, BoxedInterceptor> {
        // A panic inside an interceptor cannot leave it half-updated in a way that matters
        // more than losing the connection's feedback: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds an RTP packet the shard opened itself (its header: what the interceptors read) and
    /// returns the chain's next deadline. rtc drains the chain within each of its own calls, so
    /// whatever the chain passes on now is this packet (or one it released with it), and is
    /// dropped.
    pub(crate) fn observe(
        &self,
        now: Instant,
        transport: TransportContext,
        header: rtc::rtp::header::Header,
    ) -> Option<Instant> {
        let mut chain = self.chain();
        let msg = TaggedPacket {
            now,
            transport,
            message: AttributedPacket::new(Packet::Rtp(rtc::rtp::packet::Packet {
                header,
                payload: Bytes::new(),
            })),
        };
        let _ = chain.handle_read(msg);
        while chain.poll_read().is_some() {}
        chain.poll_timeout()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for Feedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.chain().handle_read(msg)
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.chain().poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.chain().handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.chain().poll_write()
    }

    fn handle_event(&mut self, evt: ()) -> Result<(), Error> {
        self.chain().handle_event(evt)
    }

    fn poll_event(&mut self) -> Option<()> {
        self.chain().poll_event()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.chain().handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.chain().poll_timeout()
    }

    fn close(&mut self) -> Result<(), Error> {
        self.chain().close()
    }
}

impl Interceptor for Feedback {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.chain().bind_local_stream(info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.chain().unbind_local_stream(info);
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.chain().bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.chain().unbind_remote_stream(info);
    }
}
