//! Old owner, while a move is in flight: the writes of a batch that fall in segments this node
//! gives away, recorded as the batch makes them (range deletes included), per new owner and in
//! order. They go on the stream to the new owner once the batch is on disk (dual writes).

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_proto::cluster::{HashRange, MovingCf, RawWrite};
use chat_ring::transition::Transition;

use crate::store::keys::owner_hash;
use crate::store::Cf;

/// A stretch of one new owner's captured writes: clear `reset` (a range delete), then apply
/// `writes` in order. The new owner applies a stream request the same way.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Chunk {
    pub reset: Vec<HashRange>,
    pub writes: Vec<RawWrite>,
}

/// Captured writes per destination, in write order: what both a move's capture and
/// replication's put on the streams.
#[derive(Default)]
pub(crate) struct Chunks(BTreeMap<String, Vec<Chunk>>);

impl Chunks {
    /// Appends a put (`Some(value)`) or delete of `key` to `dest`'s current chunk.
    pub(crate) fn write(&mut self, dest: &str, cf: MovingCf, key: &[u8], value: Option<&[u8]>) {
        let chunks = self.0.entry(dest.to_string()).or_default();
        if chunks.is_empty() {
            chunks.push(Chunk::default());
        }
        chunks.last_mut().expect("one chunk").writes.push(RawWrite {
            cf: cf as i32,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec).unwrap_or_default(),
            delete: value.is_none(),
        });
    }

    /// Starts a new chunk for `dest` that clears `reset` first.
    pub(crate) fn reset(&mut self, dest: &str, reset: Vec<HashRange>) {
        self.0.entry(dest.to_string()).or_default().push(Chunk {
            reset,
            writes: Vec::new(),
        });
    }

    pub(crate) fn into_map(self) -> BTreeMap<String, Vec<Chunk>> {
        self.0
    }
}

pub(crate) struct Capture {
    pub transition: Arc<Transition>,
    me: String,
    /// Per new owner.
    out: Chunks,
}

impl Capture {
    /// A capture for `t` if this node gives anything away in it.
    pub(crate) fn new(t: &Arc<Transition>, me: &str) -> Option<Capture> {
        t.copies_of(me).next()?;
        Some(Capture {
            transition: t.clone(),
            me: me.to_string(),
            out: Chunks::default(),
        })
    }

    /// A put (`Some(value)`) or delete of `key` in `cf`.
    pub(crate) fn write(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        let Some(wire_cf) = cf.to_wire() else {
            return;
        };
        let Some(h) = owner_hash(key) else { return };
        let Some(s) = self.transition.segment_of(h).filter(|s| s.from == self.me) else {
            return;
        };
        self.out.write(&s.to, wire_cf, key, value);
    }

    /// A delete of every moving key with owner hash in `start..=end`: the parts inside
    /// segments given away start a new chunk for their new owner (a reset comes before the
    /// writes of its request).
    pub(crate) fn delete_range(&mut self, start: u64, end: u64) {
        for s in self.transition.copies_of(&self.me) {
            let (a, z) = (start.max(s.start), end.min(s.end));
            if a > z {
                continue;
            }
            self.out.reset(&s.to, vec![HashRange { start: a, end: z }]);
        }
    }

    /// The captured chunks per new owner (none: the batch wrote nothing that moves).
    pub(crate) fn into_chunks(self) -> BTreeMap<String, Vec<Chunk>> {
        self.out.into_map()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::inbox_key;
    use chat_proto::cluster::MovingCf;
    use chat_ring::Ring;

    /// n1 gives part of its ranges to n2 in a move from {n1} to {n1, n2}.
    fn growing() -> Arc<Transition> {
        let from = Ring::equal(1, &["n1"], 16).unwrap();
        let to = Ring::equal(2, &["n1", "n2"], 16).unwrap();
        Arc::new(Transition::new(from, to).unwrap())
    }

    fn user_moving(t: &Transition, yes: bool) -> String {
        (0..10_000)
            .map(|i| format!("user{i}"))
            .find(|u| t.segment_of(chat_ring::key_hash(u)).is_some() == yes)
            .expect("a user")
    }

    #[test]
    fn only_writes_in_given_segments_of_moving_families_are_captured_in_order() {
        let t = growing();
        let mut c = Capture::new(&t, "n1").expect("n1 gives");
        assert!(Capture::new(&t, "n2").is_none(), "n2 gives nothing");
        let (mover, stayer) = (user_moving(&t, true), user_moving(&t, false));
        c.write(Cf::Inbox, &inbox_key(&mover, 1), Some(b"a"));
        c.write(Cf::Inbox, &inbox_key(&stayer, 1), Some(b"b"));
        c.write(Cf::Outbox, &inbox_key(&mover, 2), Some(b"c"));
        c.write(Cf::Meta, &inbox_key(&mover, 3), None);
        let out = c.into_chunks();
        let chunks = &out["n2"];
        assert_eq!(chunks.len(), 1);
        let w = &chunks[0].writes;
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].cf(), w[0].delete), (MovingCf::Inbox, false));
        assert_eq!((w[1].cf(), w[1].delete), (MovingCf::Meta, true));
    }

    #[test]
    fn a_range_delete_is_captured_clipped_to_the_given_segments_after_earlier_writes() {
        let t = growing();
        let mut c = Capture::new(&t, "n1").unwrap();
        let mover = user_moving(&t, true);
        c.write(Cf::Inbox, &inbox_key(&mover, 1), Some(b"a"));
        c.delete_range(0, u64::MAX);
        c.write(Cf::Inbox, &inbox_key(&mover, 2), Some(b"b"));
        let out = c.into_chunks();
        let chunks = &out["n2"];
        let given: Vec<_> = t.copies_of("n1").map(|s| (s.start, s.end)).collect();
        assert_eq!(chunks.len(), 1 + given.len());
        assert_eq!(chunks[0].writes.len(), 1);
        let resets: Vec<_> = chunks[1..]
            .iter()
            .map(|c| (c.reset[0].start, c.reset[0].end))
            .collect();
        assert_eq!(resets, given, "exactly the given segments are cleared");
        assert_eq!(
            chunks.last().unwrap().writes.len(),
            1,
            "the later write follows"
        );
    }
}
