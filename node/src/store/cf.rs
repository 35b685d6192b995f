//! The column families: one per record kind, named once here.

use chat_proto::cluster::MovingCf;

/// A column family of the node's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Inbox entries, per user and seq (expire with the retention).
    Inbox,
    /// User states, device states, block lists, settings; groups and their members.
    Meta,
    /// Send dedup records, forwarded-entry ids and group message tallies (expire with the
    /// retention).
    Dedup,
    /// Entries waiting to be forwarded to other nodes: this node's own queue.
    Outbox,
    /// Records about this node itself (the move in flight): never moves.
    Node,
}

impl Cf {
    pub const ALL: [Cf; 5] = [Cf::Inbox, Cf::Meta, Cf::Dedup, Cf::Outbox, Cf::Node];
    /// The column families whose keys begin with their owner's hash and move with it.
    pub const MOVING: [Cf; 3] = [Cf::Meta, Cf::Inbox, Cf::Dedup];

    /// The name in RocksDB.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Inbox => "inbox",
            Cf::Meta => "meta",
            Cf::Dedup => "dedup",
            Cf::Outbox => "outbox",
            Cf::Node => "node",
        }
    }

    /// The column families whose records carry a timestamp and expire with the retention.
    pub const EXPIRING: [Cf; 2] = [Cf::Inbox, Cf::Dedup];

    pub fn expires(self) -> bool {
        Cf::EXPIRING.contains(&self)
    }

    pub fn moves(self) -> bool {
        Cf::MOVING.contains(&self)
    }

    /// How a move's stream names this column family (`RawWrite.cf`); `None` for one that does
    /// not move.
    pub fn to_wire(self) -> Option<MovingCf> {
        match self {
            Cf::Meta => Some(MovingCf::Meta),
            Cf::Inbox => Some(MovingCf::Inbox),
            Cf::Dedup => Some(MovingCf::Dedup),
            Cf::Outbox | Cf::Node => None,
        }
    }

    /// The moving column family a stream's write names (`RawWrite.cf`, a raw enum value from
    /// the wire); `None` for anything else.
    pub fn from_wire(cf: i32) -> Option<Cf> {
        match MovingCf::try_from(cf).ok()? {
            MovingCf::Meta => Some(Cf::Meta),
            MovingCf::Inbox => Some(Cf::Inbox),
            MovingCf::Dedup => Some(Cf::Dedup),
            MovingCf::Unspecified => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_only_owner_keyed_families_move() {
        let names: std::collections::HashSet<_> = Cf::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Cf::ALL.len());
        for cf in Cf::ALL {
            let wire = cf.to_wire();
            assert_eq!(wire.is_some(), cf.moves(), "{cf:?}");
            if let Some(w) = wire {
                assert_eq!(Cf::from_wire(w as i32), Some(cf));
            }
        }
        assert_eq!(Cf::from_wire(MovingCf::Unspecified as i32), None);
        assert_eq!(Cf::from_wire(99), None, "from a newer node");
        assert!(!Cf::Outbox.moves() && !Cf::Node.moves());
    }
}
