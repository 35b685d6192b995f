//! The column families: one per record kind, named once here.

/// A column family of the node's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Inbox entries, per user and seq (expire with the retention).
    Inbox,
    /// User states and device states.
    Meta,
    /// Send dedup records and forwarded-entry ids (expire with the retention).
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

    /// The name in RocksDB, and on the wire in a move's stream (`RawWrite.cf`).
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Inbox => "inbox",
            Cf::Meta => "meta",
            Cf::Dedup => "dedup",
            Cf::Outbox => "outbox",
            Cf::Node => "node",
        }
    }

    pub fn moves(self) -> bool {
        Cf::MOVING.contains(&self)
    }

    /// The moving column family with this name (a stream's writes name only these).
    pub fn moving(name: &str) -> Option<Cf> {
        Cf::MOVING.into_iter().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_only_owner_keyed_families_move() {
        let names: std::collections::HashSet<_> = Cf::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Cf::ALL.len());
        assert_eq!(Cf::moving("inbox"), Some(Cf::Inbox));
        assert_eq!(Cf::moving("outbox"), None);
        assert_eq!(Cf::moving("node"), None);
        assert!(!Cf::Outbox.moves() && !Cf::Node.moves());
    }
}
