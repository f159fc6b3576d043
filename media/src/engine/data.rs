//! The data-channel relay of one shard: which subscribers a publisher's data-channel messages
//! go to, on which of their channels, and what a slow subscriber loses. Sans-IO, like the shard:
//! it consumes the shard's data events and sends through [`Shard::send_data`].
//!
//! ```text
//!  shard.poll_event() ──▶ (Forwarder) ──▶ DataRelay::handle_event ──▶ (other events to the owner)
//!        ChannelOpen / ChannelClose (subscriber) → its open channels
//!        DataIn (publisher)                      → Shard::send_data on every open channel of
//!                                                  every subscriber it feeds
//! ```
//!
//! Semantics (what clients of roomd always saw): a
//! subscriber whose answer accepted a data-channel section ([`SubscriberAnswer::data`]) is fed
//! by its publisher ([`DataRelay::add_subscriber`]); every message the publisher's client sends,
//! on any of its channels whatever their labels, is sent on every channel the subscribing
//! client opened, as a string or binary message as it came (a string message that is not UTF-8
//! goes as binary). What subscribers' clients send is ignored.
//!
//! Full policy: nothing blocks and nothing is queued here; each subscriber channel's SCTP send
//! queue (rtc's, through the shard) is the queue, bounded by [`DataRelay::new`]'s
//! `max_backlog`: a message is not sent on a channel whose unacknowledged bytes
//! ([`Shard::data_backlog`]) would exceed it (a channel with nothing outstanding takes any
//! message rtc accepts). Such a message is dropped for that channel and counted
//! ([`DataStats::dropped`]), as is a message for a subscriber with no open channel and one rtc
//! refuses. The publisher's messages are always drained: one slow subscriber loses messages,
//! it slows down neither the publisher nor the other subscribers.
//!
//! Owns [`DataRelay`], [`DataStats`], [`DEFAULT_MAX_BACKLOG`]. Does not own the channels
//! themselves (rtc's, behind the shard) nor the decision whether a subscriber has a data
//! section (its answer, `peer.rs`).
//!
//! [`SubscriberAnswer::data`]: super::peer::SubscriberAnswer::data

use std::collections::HashMap;
use std::time::Instant;

use super::peer::{ChannelId, PeerId};
use super::shard::{Shard, ShardEvent};

/// Default bound of one subscriber channel's unacknowledged bytes.
pub const DEFAULT_MAX_BACKLOG: usize = 1 << 20;

/// Counters of a relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Messages received from publishers that feed at least one subscriber.
    pub messages_in: u64,
    /// Messages sent on a subscriber's channel (one per channel).
    pub relayed: u64,
    /// Messages not sent to a subscriber: per channel over its backlog bound or refused by
    /// rtc, per subscriber without an open channel.
    pub dropped: u64,
}

/// A subscriber fed by a publisher.
struct Sub {
    publisher: PeerId,
    /// The channels its client opened and did not close, in opening order.
    channels: Vec<ChannelId>,
}

/// The data-channel relay of one shard. See the module documentation.
pub struct DataRelay {
    /// Publisher → the subscribers it feeds, in subscription order (never an empty list).
    feeds: HashMap<PeerId, Vec<PeerId>>,
    subs: HashMap<PeerId, Sub>,
    max_backlog: usize,
    stats: DataStats,
}

impl DataRelay {
    /// A relay bounding each subscriber channel's unacknowledged bytes to `max_backlog`.
    pub fn new(max_backlog: usize) -> Self {
        Self {
            feeds: HashMap::new(),
            subs: HashMap::new(),
            max_backlog,
            stats: DataStats::default(),
        }
    }

    /// `sub` (whose answer accepted a data-channel section) receives `publisher`'s messages on
    /// the channels its client opens from now on. A subscriber has one publisher: adding it
    /// again moves it.
    pub fn add_subscriber(&mut self, sub: PeerId, publisher: PeerId) {
        self.unfeed(sub);
        self.subs.insert(
            sub,
            Sub {
                publisher,
                channels: Vec::new(),
            },
        );
        self.feeds.entry(publisher).or_default().push(sub);
    }

    /// Forgets a peer: as a subscriber, its feed; as a publisher, every subscription it feeds.
    /// Unknown peers are ignored.
    pub fn remove(&mut self, peer: PeerId) {
        self.unfeed(peer);
        if let Some(fed) = self.feeds.remove(&peer) {
            for s in fed {
                self.subs.remove(&s);
            }
        }
    }

    fn unfeed(&mut self, sub: PeerId) {
        let Some(old) = self.subs.remove(&sub) else {
            return;
        };
        if let Some(fed) = self.feeds.get_mut(&old.publisher) {
            fed.retain(|s| *s != sub);
            if fed.is_empty() {
                self.feeds.remove(&old.publisher);
            }
        }
    }

    /// Consumes the data events ([`ShardEvent::ChannelOpen`], [`ShardEvent::ChannelClose`],
    /// [`ShardEvent::DataIn`]), relaying messages through `shard`; returns every other event.
    pub fn handle_event(
        &mut self,
        shard: &mut Shard,
        ev: ShardEvent,
        now: Instant,
    ) -> Option<ShardEvent> {
        match ev {
            ShardEvent::ChannelOpen { peer, channel, .. } => {
                if let Some(sub) = self.subs.get_mut(&peer) {
                    if !sub.channels.contains(&channel) {
                        sub.channels.push(channel);
                    }
                }
                None
            }
            ShardEvent::ChannelClose { peer, channel } => {
                if let Some(sub) = self.subs.get_mut(&peer) {
                    sub.channels.retain(|c| *c != channel);
                }
                None
            }
            ShardEvent::DataIn {
                peer, text, data, ..
            } => {
                self.relay(shard, peer, text, &data, now);
                None
            }
            other => Some(other),
        }
    }

    fn relay(
        &mut self,
        shard: &mut Shard,
        publisher: PeerId,
        text: bool,
        data: &[u8],
        now: Instant,
    ) {
        let Some(fed) = self.feeds.get(&publisher) else {
            return;
        };
        self.stats.messages_in += 1;
        let text = text && std::str::from_utf8(data).is_ok();
        for s in fed {
            let Some(sub) = self.subs.get(s) else {
                continue;
            };
            if sub.channels.is_empty() {
                self.stats.dropped += 1;
                continue;
            }
            for &c in &sub.channels {
                let backlog = shard.data_backlog(*s, c).unwrap_or(0);
                let fits = backlog == 0 || backlog.saturating_add(data.len()) <= self.max_backlog;
                if fits && shard.send_data(*s, c, text, data, now).is_ok() {
                    self.stats.relayed += 1;
                } else {
                    self.stats.dropped += 1;
                }
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> DataStats {
        self.stats
    }
}

impl Default for DataRelay {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BACKLOG)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::super::shard::ShardConfig;
    use super::*;

    fn shard() -> Shard {
        let config = ShardConfig::new("192.0.2.1:3478".parse().expect("address"));
        Shard::new(config, Instant::now()).expect("shard")
    }

    fn data_in(peer: u64) -> ShardEvent {
        ShardEvent::DataIn {
            peer: PeerId(peer),
            channel: ChannelId(0),
            text: true,
            data: BytesMut::from(&b"hi"[..]),
        }
    }

    fn open(peer: u64, channel: usize) -> ShardEvent {
        ShardEvent::ChannelOpen {
            peer: PeerId(peer),
            channel: ChannelId(channel),
            label: "relay".into(),
        }
    }

    #[test]
    fn a_subscriber_without_an_open_channel_loses_the_message_counted() {
        let mut shard = shard();
        let mut relay = DataRelay::default();
        let now = Instant::now();
        relay.add_subscriber(PeerId(2), PeerId(1));
        assert!(relay.handle_event(&mut shard, data_in(1), now).is_none());
        assert_eq!(
            relay.stats(),
            DataStats {
                messages_in: 1,
                relayed: 0,
                dropped: 1
            }
        );
    }

    #[test]
    fn a_channel_rtc_does_not_know_drops_and_a_closed_one_is_forgotten() {
        let mut shard = shard();
        let mut relay = DataRelay::default();
        let now = Instant::now();
        relay.add_subscriber(PeerId(2), PeerId(1));
        relay.handle_event(&mut shard, open(2, 0), now);
        relay.handle_event(&mut shard, open(2, 0), now);
        relay.handle_event(&mut shard, open(2, 1), now);
        // Peer 2 is not in the shard: both sends fail, each is a drop.
        relay.handle_event(&mut shard, data_in(1), now);
        assert_eq!(relay.stats().dropped, 2);
        relay.handle_event(
            &mut shard,
            ShardEvent::ChannelClose {
                peer: PeerId(2),
                channel: ChannelId(0),
            },
            now,
        );
        relay.handle_event(&mut shard, data_in(1), now);
        assert_eq!(relay.stats().dropped, 3);
    }

    #[test]
    fn removal_ends_feeds_and_other_events_pass_through() {
        let mut shard = shard();
        let mut relay = DataRelay::default();
        let now = Instant::now();
        relay.add_subscriber(PeerId(2), PeerId(1));
        relay.add_subscriber(PeerId(3), PeerId(1));
        relay.remove(PeerId(2));
        relay.handle_event(&mut shard, data_in(1), now);
        assert_eq!(relay.stats().dropped, 1, "only subscriber 3 is left");
        relay.remove(PeerId(1));
        relay.handle_event(&mut shard, data_in(1), now);
        assert_eq!(relay.stats().messages_in, 1, "the publisher feeds nobody");
        // A subscriber's own messages are not relayed anywhere.
        relay.add_subscriber(PeerId(3), PeerId(1));
        relay.handle_event(&mut shard, data_in(3), now);
        assert_eq!(relay.stats().messages_in, 1);
        let ev = ShardEvent::Connected { peer: PeerId(1) };
        assert!(matches!(
            relay.handle_event(&mut shard, ev, now),
            Some(ShardEvent::Connected { .. })
        ));
    }
}
