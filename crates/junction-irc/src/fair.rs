//! The bot's queue of deliveries: one queue per channel, served in turn, each bounded
//! ([`junction_core::queue::KeyedQueues`], one channel at a time).
//!
//! Everything the bot says, in every linked channel, goes out through its one connection
//! at the flood-control pace. With one queue for all channels a busy or flooded channel held
//! every other channel's lines back behind its whole backlog. Here each channel with
//! something waiting gets one delivery per turn, and a channel's queue holds at most
//! [`MAX_QUEUED_PER_CHANNEL`] deliveries: one more is refused (the caller gives it up),
//! counted and logged once per burst. Moderation and the gateway's own words may be queued
//! past the cap: they are few, and losing them would let a flood hide them.

pub use junction_core::queue::Push;

/// Most deliveries one channel may have waiting for the bot (what people said; moderation
/// and the gateway's own words are not refused).
pub const MAX_QUEUED_PER_CHANNEL: usize = 200;

/// The bot's queue: channels served one at a time, in turn.
pub type FairQueue<T> = junction_core::queue::KeyedQueues<T>;

/// An empty bot queue.
pub fn bot_queue<T>() -> FairQueue<T> {
    FairQueue::new(MAX_QUEUED_PER_CHANNEL, 1)
}
