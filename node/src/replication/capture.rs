//! Owner, with followers: a batch's writes to keys this node owns, recorded as the batch makes
//! them, per follower and in order. They go on each follower's stream once the batch is on disk,
//! and the batch becomes visible (✓) once every follower stored them.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_proto::cluster::HashRange;

use super::placement::Placement;
use crate::rebalance::capture::{Chunk, Chunks};
use crate::store::keys::owner_hash;
use crate::store::Cf;

pub(crate) struct ReplicaCapture {
    pub placement: Arc<Placement>,
    /// Per follower.
    out: Chunks,
}

impl ReplicaCapture {
    /// A capture for `placement` if this node's keys have followers in it.
    pub(crate) fn new(placement: &Arc<Placement>) -> Option<ReplicaCapture> {
        if placement.followers().is_empty() {
            return None;
        }
        Some(ReplicaCapture {
            placement: placement.clone(),
            out: Chunks::default(),
        })
    }

    /// A put (`Some(value)`) or delete of `key` in `cf`.
    pub(crate) fn write(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        let Some(wire_cf) = cf.to_wire() else {
            return;
        };
        let Some(h) = owner_hash(key) else { return };
        for f in self.placement.my_followers(h) {
            self.out.write(f, wire_cf, key, value);
        }
    }

    /// A delete of every key with owner hash in `start..=end`: the parts each follower follows
    /// start a new chunk for it.
    pub(crate) fn delete_range(&mut self, start: u64, end: u64) {
        for (f, ranges) in self.placement.followers() {
            let reset: Vec<HashRange> = ranges
                .iter()
                .map(|&(a, z)| (a.max(start), z.min(end)))
                .filter(|(a, z)| a <= z)
                .map(|(start, end)| HashRange { start, end })
                .collect();
            if !reset.is_empty() {
                self.out.reset(f, reset);
            }
        }
    }

    /// The captured chunks per follower (none: the batch wrote nothing with followers).
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

    fn placement(me: &str) -> (Ring, Arc<Placement>) {
        let ring = Ring::equal(1, &["n1", "n2", "n3"], 16)
            .unwrap()
            .with_replication(2)
            .unwrap();
        let p = Arc::new(Placement::new(&ring, me));
        (ring, p)
    }

    fn user(ring: &Ring, owner: &str, follower: &str) -> String {
        (0..)
            .map(|i| format!("u{i}"))
            .find(|u| {
                let r = ring.replicas(u);
                r.owner == owner && r.followers == [follower]
            })
            .unwrap()
    }

    #[test]
    fn writes_to_owned_keys_go_to_their_follower_in_order_and_others_nowhere() {
        let (ring, p) = placement("n1");
        let mut c = ReplicaCapture::new(&p).expect("n1 has followers");
        let (a, b) = (user(&ring, "n1", "n2"), user(&ring, "n1", "n3"));
        let elsewhere = user(&ring, "n2", "n1");
        c.write(Cf::Inbox, &inbox_key(&a, 1), Some(b"1"));
        c.write(Cf::Inbox, &inbox_key(&b, 1), Some(b"2"));
        c.write(Cf::Inbox, &inbox_key(&elsewhere, 1), Some(b"3"));
        c.write(Cf::Outbox, &inbox_key(&a, 2), Some(b"4"));
        c.write(Cf::Meta, &inbox_key(&a, 3), None);
        let out = c.into_chunks();
        assert_eq!(out.len(), 2);
        let to_n2 = &out["n2"][0].writes;
        assert_eq!(to_n2.len(), 2);
        assert_eq!((to_n2[0].cf(), to_n2[0].delete), (MovingCf::Inbox, false));
        assert_eq!((to_n2[1].cf(), to_n2[1].delete), (MovingCf::Meta, true));
        assert_eq!(out["n3"][0].writes[0].value, b"2");
    }

    #[test]
    fn a_range_delete_reaches_each_follower_clipped_to_what_it_follows() {
        let (_, p) = placement("n1");
        let mut c = ReplicaCapture::new(&p).unwrap();
        c.delete_range(0, u64::MAX);
        let out = c.into_chunks();
        for (f, ranges) in p.followers() {
            let reset: Vec<(u64, u64)> = out[f][0].reset.iter().map(|r| (r.start, r.end)).collect();
            assert_eq!(&reset, ranges);
        }
        let one = Arc::new(Placement::new(
            &Ring::equal(1, &["n1", "n2"], 16).unwrap(),
            "n1",
        ));
        assert!(
            ReplicaCapture::new(&one).is_none(),
            "one copy: nothing to capture"
        );
    }
}
