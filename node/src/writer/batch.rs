//! One batch: its typed writes (captured for new owners and followers as they are made) and what
//! it will make visible once on disk.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chat_proto::cluster::{ForwardEntry, ForwardStatus};
use chat_proto::store::{DeviceState, InboxEntry};
use chat_proto::v1::Sent;
use chat_ring::Ring;

use super::command::{Attached, Outboxed, Reply};
use super::groups::GroupDone;
use crate::error::ChatError;
use crate::rebalance::capture::Capture;
use crate::replication::capture::ReplicaCapture;
use crate::store::engine::{EngineBatch, StorageError};
use crate::store::{hash_range_bounds, Cf, Store};

/// Who a batch's writes are captured for, as they are made.
#[derive(Default)]
pub(crate) struct Captures {
    /// New owners, while this node gives segments away in a move.
    pub moving: Option<Capture>,
    /// The followers of this node's keys (a replicated ring).
    pub replica: Option<ReplicaCapture>,
}

impl Captures {
    fn write(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        if let Some(c) = &mut self.moving {
            c.write(cf, key, value);
        }
        if let Some(c) = &mut self.replica {
            c.write(cf, key, value);
        }
    }
}

/// The writes of one batch, by column family. While this node gives segments away, or its keys
/// have followers, every write to them is captured for the other holders at the moment it is
/// made: there is no write that a call site could forget to mirror.
pub(crate) struct Writes {
    wb: Box<dyn EngineBatch>,
    capture: Captures,
    /// A write that must survive a crash once answered (all but `delete_relaxed`).
    durable: bool,
}

impl Writes {
    pub(crate) fn new(store: Arc<Store>, capture: Captures) -> Writes {
        Writes {
            wb: store.batch(),
            capture,
            durable: false,
        }
    }

    pub(crate) fn put(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.durable = true;
        self.wb.put(cf, key, value);
        self.capture.write(cf, key, Some(value));
    }

    /// A write that may be lost in a crash (a coarse last seen): captured for new owners like
    /// any other, but a batch of only these is written without an fsync.
    pub(crate) fn put_relaxed(&mut self, cf: Cf, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.wb.put(cf, key, value);
        self.capture.write(cf, key, Some(value));
    }

    pub(crate) fn delete(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.durable = true;
        self.wb.delete(cf, key);
        self.capture.write(cf, key, None);
    }

    /// A delete that may be lost in a crash (a delivered outbox entry: sent again after a
    /// restart, and the receiver deduplicates it). A batch of only these is written without an
    /// fsync, so the forwarder's clean-up costs the disk nothing extra.
    pub(crate) fn delete_relaxed(&mut self, cf: Cf, key: impl AsRef<[u8]>) {
        debug_assert!(!cf.moves(), "a moving key is never written without capture");
        self.wb.delete(cf, key.as_ref());
    }

    /// Deletes every key whose owner hash lies in `start..=end` from the column families that
    /// move with their owners.
    pub(crate) fn delete_hash_range(&mut self, start: u64, end: u64) {
        self.durable = true;
        let (from, to) = hash_range_bounds(start, end);
        for cf in Cf::MOVING {
            self.wb.delete_range(cf, &from, &to);
        }
        if let Some(c) = &mut self.capture.moving {
            c.delete_range(start, end);
        }
        if let Some(c) = &mut self.capture.replica {
            c.delete_range(start, end);
        }
    }

    pub(crate) fn size_in_bytes(&self) -> usize {
        self.wb.size_in_bytes()
    }

    /// The batch, whether it needs an fsync, and what was captured.
    pub(crate) fn into_parts(self) -> (Box<dyn EngineBatch>, bool, Captures) {
        (self.wb, self.durable, self.capture)
    }
}

/// Why a batch did not commit. Nothing of it is stored.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BatchError {
    /// A command failed after adding writes to the batch (the batch is not half-applied).
    #[error("{0}")]
    Aborted(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BatchError {
    /// The error each command of the failed batch answers with: STORAGE_FULL when the disk is
    /// full, else INTERNAL.
    pub(crate) fn answer(&self) -> ChatError {
        match self {
            BatchError::Storage(StorageError::Full(m)) => ChatError::StorageFull(m.clone()),
            other => ChatError::Internal(format!("commit failed: {other}")),
        }
    }

    /// The `reason` label of `chat_commit_failures_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BatchError::Storage(StorageError::Full(_)) => "storage_full",
            _ => "error",
        }
    }
}

/// An answer given once the batch is on disk and visible (or failed with the batch).
pub(crate) enum Answer {
    Sent(Reply<Sent>, Sent),
    Attached(Reply<Attached>, Attached),
    Applied(Reply<Vec<ForwardStatus>>, Vec<ForwardStatus>),
    Done(Reply<()>),
    Group(Reply<GroupDone>, GroupDone),
}

impl Answer {
    pub(crate) fn ok(self) {
        // A caller that stopped waiting (a closed session) no longer needs its answer.
        let _ = match self {
            Answer::Sent(tx, s) => tx.send(Ok(s)).map_err(drop),
            Answer::Attached(tx, a) => tx.send(Ok(a)).map_err(drop),
            Answer::Applied(tx, st) => tx.send(Ok(st)).map_err(drop),
            Answer::Done(tx) => tx.send(Ok(())).map_err(drop),
            Answer::Group(tx, g) => tx.send(Ok(g)).map_err(drop),
        };
    }

    pub(crate) fn fail(self, err: ChatError) {
        let _ = match self {
            Answer::Sent(tx, _) => tx.send(Err(err)).map_err(drop),
            Answer::Attached(tx, _) => tx.send(Err(err)).map_err(drop),
            Answer::Applied(tx, _) => tx.send(Err(err)).map_err(drop),
            Answer::Done(tx) => tx.send(Err(err)).map_err(drop),
            Answer::Group(tx, _) => tx.send(Err(err)).map_err(drop),
        };
    }
}

/// The work of one batch, applied to storage only if the whole batch commits.
pub(crate) struct Batch {
    pub writes: Writes,
    /// The ring this batch routes by (taken once per batch).
    pub ring: Option<Arc<Ring>>,
    /// The time of every entry and record the batch makes (taken once per batch).
    pub now_ms: i64,
    pub dirty_users: HashSet<String>,
    /// Dedup records and device states written in this batch, read back before storage
    /// (`None`: the device was deleted in this batch).
    pub sent: HashMap<Vec<u8>, Sent>,
    pub devices: HashMap<Vec<u8>, Option<DeviceState>>,
    /// Devices registered in this batch, per user (not yet visible to `Store::devices`).
    pub new_devices: HashMap<String, usize>,
    /// (user, seq, stored ts, entry) appended in this batch.
    pub appended: Vec<(String, u64, i64, Arc<InboxEntry>)>,
    pub answers: Vec<Answer>,
    /// Answered as soon as the batch is on disk, before it is visible (a follower's
    /// acknowledgement of an owner's stream).
    pub on_disk: Vec<super::command::Reply<()>>,
    pub outboxed: Outboxed,
    /// Recipients of the entries this batch put in the outbox.
    pub outboxed_to: HashSet<String>,
    /// Forward dedup keys written in this batch.
    pub forwarded: HashSet<Vec<u8>>,
    /// A command failed after adding writes to the batch: nothing of the batch may commit.
    pub abort: Option<BatchError>,
    /// Raw writes applied (a move's stream, range drops): the caches no longer match storage.
    pub clear_caches: bool,
    /// Outbox entries this batch removes (delivered or given up): seq and recipient.
    pub unoutboxed: Vec<(u64, String)>,
    /// Blocks set (true) or lifted (false) in this batch: (user, blocked user).
    pub blocks: HashMap<(String, String), bool>,
    /// Users whose read mark advanced: (user, read up to, by device), told to their devices.
    pub read_states: Vec<(String, u64, String)>,
    /// Settings written in this batch, read back before storage.
    pub settings: HashMap<String, chat_proto::store::UserSettings>,
}

impl Batch {
    pub(crate) fn new(writes: Writes, ring: Option<Arc<Ring>>, now_ms: i64) -> Batch {
        Batch {
            writes,
            ring,
            now_ms,
            dirty_users: HashSet::new(),
            sent: HashMap::new(),
            devices: HashMap::new(),
            new_devices: HashMap::new(),
            appended: Vec::new(),
            answers: Vec::new(),
            on_disk: Vec::new(),
            outboxed: Vec::new(),
            outboxed_to: HashSet::new(),
            forwarded: HashSet::new(),
            abort: None,
            clear_caches: false,
            unoutboxed: Vec::new(),
            blocks: HashMap::new(),
            read_states: Vec::new(),
            settings: HashMap::new(),
        }
    }

    pub(crate) fn mark_dirty(&mut self, user: &str) {
        if !self.dirty_users.contains(user) {
            self.dirty_users.insert(user.to_string());
        }
    }

    /// Notes an outbox entry written in this batch.
    pub(crate) fn note_outboxed(&mut self, seq: u64, entry: Arc<ForwardEntry>) {
        self.outboxed_to.insert(entry.to.clone());
        self.outboxed.push((seq, entry));
    }
}
