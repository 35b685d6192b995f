//! How loaded the node is, and what it sheds at each level, with no I/O: the fill of the
//! writer's queue (every stored thing waits there) picks a level, and each level sheds one more
//! kind of traffic, least valuable first. Typing goes first, then presence updates, then acks
//! and reads are held back and merged (cumulative: the latest covers the earlier ones, so a
//! receipt is late, never lost). Sends are never dropped: past all levels, a send that cannot
//! be queued within `overload.send_wait_ms` is refused with OVERLOADED and a retry hint.

use crate::writer::WriterHandle;

/// The node's load as the writer's queue shows it.
#[derive(Clone)]
pub struct Load {
    pub writer: WriterHandle,
    pub thresholds: Thresholds,
}

impl Load {
    pub fn level(&self) -> Level {
        let (used, capacity) = self.writer.queue_fill();
        let level = self.thresholds.level(used, capacity);
        metrics::gauge!(crate::admin::OVERLOAD_LEVEL).set(level as u8 as f64);
        level
    }
}

/// What the node sheds, in order: each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    ShedTyping = 1,
    ShedPresence = 2,
    DeferReceipts = 3,
}

/// Fill of the writer's queue, in percent, at which each level starts.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub typing_pct: u8,
    pub presence_pct: u8,
    pub receipts_pct: u8,
}

impl Thresholds {
    /// The level for a queue holding `used` of `capacity` commands.
    pub fn level(&self, used: usize, capacity: usize) -> Level {
        let pct = (used * 100).checked_div(capacity).unwrap_or(0);
        if pct >= usize::from(self.receipts_pct) {
            Level::DeferReceipts
        } else if pct >= usize::from(self.presence_pct) {
            Level::ShedPresence
        } else if pct >= usize::from(self.typing_pct) {
            Level::ShedTyping
        } else {
            Level::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Thresholds = Thresholds {
        typing_pct: 50,
        presence_pct: 70,
        receipts_pct: 85,
    };

    #[test]
    fn each_level_starts_at_its_threshold() {
        assert_eq!(T.level(0, 100), Level::Normal);
        assert_eq!(T.level(49, 100), Level::Normal);
        assert_eq!(T.level(50, 100), Level::ShedTyping);
        assert_eq!(T.level(70, 100), Level::ShedPresence);
        assert_eq!(T.level(85, 100), Level::DeferReceipts);
        assert_eq!(T.level(100, 100), Level::DeferReceipts);
        assert_eq!(T.level(0, 0), Level::Normal);
    }

    proptest! {
        /// More load never sheds less.
        #[test]
        fn the_level_never_falls_as_the_queue_fills(cap in 1usize..100_000, a in 0usize..100_000, b in 0usize..100_000) {
            let (lo, hi) = (a.min(b).min(cap), a.max(b).min(cap));
            prop_assert!(T.level(lo, cap) <= T.level(hi, cap));
        }
    }
}
