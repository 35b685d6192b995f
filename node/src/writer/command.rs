//! What callers ask of the writer, grouped by caller, and the typed handle they ask through.
//!
//! Every method queues its command (waiting while the queue is full: backpressure) and returns a
//! [`Pending`] answer, which resolves once the command's batch is on disk and visible. Queuing
//! and waiting are separate steps so that a session can queue its sends in order and wait for
//! their answers in order while it goes on reading frames.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chat_auth::Identity;
use chat_proto::cluster::{ForwardEntry, ForwardStatus, Mirror};
use chat_proto::v1::Sent;
use chat_ring::transition::Transition;
use tokio::sync::{mpsc, oneshot};

use super::groups::{GroupDone, GroupLimits, GroupOp};
use crate::error::ChatError;
use crate::rebalance::Page;
use crate::store::Cf;

/// What a device learns when it attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The device's durable cursor; its backlog starts after it.
    pub cursor: u64,
    /// The highest seq in the user's inbox.
    pub inbox_seq: u64,
    /// The user has read everything up to this seq.
    pub read_seq: u64,
}

/// Outbox entries written by one batch (outbox seq, entry), handed to the forwarder once on
/// disk.
pub type Outboxed = Vec<(u64, Arc<ForwardEntry>)>;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ChatError>>;

/// A change of a user's settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsChange {
    pub hide_last_seen: Option<bool>,
    /// `Some(None)`: back to the cluster's retention.
    pub history_days: Option<Option<u32>>,
}

/// Commands from client sessions.
pub(crate) enum ClientCmd {
    Send {
        from: Identity,
        client_msg_id: String,
        to: String,
        body: String,
        attachment: Option<chat_proto::v1::Attachment>,
        reply: Reply<Sent>,
    },
    /// An upload slot given to the user: stored so that a message may name it later.
    Upload {
        who: Identity,
        media_id: String,
        record: chat_proto::store::UploadRecord,
        reply: Reply<()>,
    },
    /// A device connects: registers it (within the device limit) and returns its cursor.
    Attach {
        who: Identity,
        max_devices: u32,
        reply: Reply<Attached>,
    },
    /// The device has every entry up to `up_to`; with `read`, the user also read them.
    Ack {
        who: Identity,
        up_to: u64,
        read: bool,
    },
    /// The user went offline at `ts` (its last seen): stored without an fsync, and dropped
    /// rather than queued when the writer is busy (presence never waits for the disk).
    LastSeen { user: String, ts: i64 },
    /// A change of the user's settings, stored like any user record.
    Settings {
        who: Identity,
        change: SettingsChange,
        reply: Reply<()>,
    },
    /// `who` blocks (`block`) or unblocks `other`; at most `max` blocked users.
    Block {
        who: Identity,
        other: String,
        block: bool,
        max: u32,
        reply: Reply<()>,
    },
    /// A group call for a group this node owns, made by `who` here or on another node.
    Group {
        who: Identity,
        op: GroupOp,
        limits: GroupLimits,
        reply: Reply<GroupDone>,
    },
}

/// Commands from other nodes.
pub(crate) enum PeerCmd {
    /// Entries another node forwarded: one status per entry.
    Apply {
        entries: Vec<ForwardEntry>,
        reply: Reply<Vec<ForwardStatus>>,
    },
    /// New owner in a move, or follower: one request of an old owner's or an owner's stream,
    /// applied in stream order.
    Stream {
        from: String,
        req: Mirror,
        reply: Reply<()>,
    },
}

/// Commands from the outbox forwarder.
pub(crate) enum OutboxCmd {
    /// The receivers stored these entries: remove them from the outbox.
    Delivered {
        entries: Vec<(u64, String)>,
        reply: Reply<()>,
    },
    /// These entries are given up: remove them, and tell each message's sender with a `Failed`
    /// entry in its inbox.
    GiveUp {
        entries: Vec<(u64, Arc<ForwardEntry>)>,
        reason: String,
        reply: Reply<()>,
    },
}

/// The next page of one segment in one column family, for one new owner.
pub struct PageRequest {
    pub transition: Arc<Transition>,
    pub cf: Cf,
    /// The segment's key-hash range.
    pub range: (u64, u64),
    /// Most keys and bytes in the page.
    pub max: (usize, usize),
    pub dest: String,
    /// The last key of the previous page (`None`: the start of the range).
    pub after: Option<Vec<u8>>,
}

/// Commands from this node's move driver (`crate::rebalance::driver`).
pub(crate) enum MoveCmd {
    /// Old owner: read the next page of a segment it gives away and put it on the stream to the
    /// new owner, ordered with the dual writes of the batches around it.
    CopyPage {
        page: PageRequest,
        reply: Reply<Page>,
    },
    /// Delete the data of these key-hash ranges (given away and sealed, or received in an
    /// aborted move).
    DropRanges {
        ranges: Vec<(u64, u64)>,
        reply: Reply<()>,
    },
    /// Nothing to do but start a batch, which compares the move in the view with the one the
    /// writer follows.
    Wake,
    /// Old owner: the move to `epoch` committed and its copy is complete: seal the streams.
    Seal { epoch: u64 },
}

/// The next page of what a follower follows here, in one column family.
pub struct ReplicaPage {
    pub dest: String,
    /// The ring of the fill (`crate::replication::Fill::epoch`).
    pub epoch: u64,
    pub cf: Cf,
    /// One of the follower's ranges (`Placement::followers`).
    pub range: (u64, u64),
    /// Most keys and bytes in the page.
    pub max: (usize, usize),
    /// The last key of the previous page (`None`: the start of the range).
    pub after: Option<Vec<u8>>,
}

/// Commands from this node's fills of followers (`crate::replication::fill`). Both are answered
/// at once, not when a batch becomes visible: visibility itself waits for the fills.
pub(crate) enum ReplicaCmd {
    /// Read the next page for a follower and put it on its stream.
    Page {
        req: ReplicaPage,
        reply: Reply<Page>,
    },
    /// The follower `dest` lost its store: clear and fill it again.
    Refill { dest: String, reply: Reply<()> },
}

pub(crate) enum Command {
    Client(ClientCmd),
    Peer(PeerCmd),
    Outbox(OutboxCmd),
    Move(MoveCmd),
    Replica(ReplicaCmd),
}

/// The writer's answer to a queued command, once its batch is on disk and visible.
pub struct Pending<T>(oneshot::Receiver<Result<T, ChatError>>);

impl<T> Future for Pending<T> {
    type Output = Result<T, ChatError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // A dropped reply: the writer stopped (shutdown) before the batch became visible.
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ChatError::ShuttingDown)))
    }
}

/// How the rest of the node talks to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl WriterHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<Pending<T>, ChatError> {
        let (reply, rx) = oneshot::channel();
        self.queue(make(reply)).await?;
        Ok(Pending(rx))
    }

    /// Commands waiting in the queue, and how many it holds.
    pub fn queue_fill(&self) -> (usize, usize) {
        let max = self.tx.max_capacity();
        (max - self.tx.capacity(), max)
    }

    /// Queues an ack unless the queue is full (`Ok(false)`: the caller holds it back and merges
    /// it with the next, as acks are cumulative).
    pub fn try_ack(&self, who: Identity, up_to: u64, read: bool) -> Result<bool, ChatError> {
        use mpsc::error::TrySendError;
        match self
            .tx
            .try_send(Command::Client(ClientCmd::Ack { who, up_to, read }))
        {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Closed(_)) => Err(ChatError::ShuttingDown),
        }
    }

    async fn queue(&self, cmd: Command) -> Result<(), ChatError> {
        self.tx.send(cmd).await.map_err(|_| ChatError::ShuttingDown)
    }

    /// Queues a message; the answer is its ✓ (the stored one for a retry).
    pub async fn send(
        &self,
        from: Identity,
        client_msg_id: String,
        to: String,
        body: String,
        attachment: Option<chat_proto::v1::Attachment>,
    ) -> Result<Pending<Sent>, ChatError> {
        self.ask(|reply| {
            Command::Client(ClientCmd::Send {
                from,
                client_msg_id,
                to,
                body,
                attachment,
                reply,
            })
        })
        .await
    }

    pub async fn attach(&self, who: Identity, max_devices: u32) -> Result<Attached, ChatError> {
        self.ask(|reply| {
            Command::Client(ClientCmd::Attach {
                who,
                max_devices,
                reply,
            })
        })
        .await?
        .await
    }

    /// Blocks or unblocks `other` for `who`'s user; resolves once stored.
    pub async fn block(
        &self,
        who: Identity,
        other: String,
        block: bool,
        max: u32,
    ) -> Result<(), ChatError> {
        self.ask(|reply| {
            Command::Client(ClientCmd::Block {
                who,
                other,
                block,
                max,
                reply,
            })
        })
        .await?
        .await
    }

    /// Records a user's last seen if the writer's queue has room; whether it was queued.
    pub fn try_last_seen(&self, user: String, ts: i64) -> bool {
        self.tx
            .try_send(Command::Client(ClientCmd::LastSeen { user, ts }))
            .is_ok()
    }

    /// Stores an upload slot given to `who`; returns once it is on disk.
    pub async fn upload(
        &self,
        who: Identity,
        media_id: String,
        record: chat_proto::store::UploadRecord,
    ) -> Result<(), ChatError> {
        self.ask(|reply| {
            Command::Client(ClientCmd::Upload {
                who,
                media_id,
                record,
                reply,
            })
        })
        .await?
        .await
    }

    pub async fn settings(&self, who: Identity, change: SettingsChange) -> Result<(), ChatError> {
        self.ask(|reply| Command::Client(ClientCmd::Settings { who, change, reply }))
            .await?
            .await
    }

    /// Queues a group call (for a group this node owns); the answer comes once stored.
    pub async fn group(
        &self,
        who: Identity,
        op: GroupOp,
        limits: GroupLimits,
    ) -> Result<Pending<GroupDone>, ChatError> {
        self.ask(|reply| {
            Command::Client(ClientCmd::Group {
                who,
                op,
                limits,
                reply,
            })
        })
        .await
    }

    /// Queues an ack (nobody waits for its batch).
    pub async fn ack(&self, who: Identity, up_to: u64, read: bool) -> Result<(), ChatError> {
        self.queue(Command::Client(ClientCmd::Ack { who, up_to, read }))
            .await
    }

    pub async fn apply(&self, entries: Vec<ForwardEntry>) -> Result<Vec<ForwardStatus>, ChatError> {
        self.ask(|reply| Command::Peer(PeerCmd::Apply { entries, reply }))
            .await?
            .await
    }

    pub async fn apply_stream(&self, from: String, req: Mirror) -> Result<(), ChatError> {
        self.ask(|reply| Command::Peer(PeerCmd::Stream { from, req, reply }))
            .await?
            .await
    }

    /// Queues the removal of delivered outbox entries: (outbox seq, recipient).
    pub async fn delivered(&self, entries: Vec<(u64, String)>) -> Result<Pending<()>, ChatError> {
        self.ask(|reply| Command::Outbox(OutboxCmd::Delivered { entries, reply }))
            .await
    }

    pub async fn give_up(
        &self,
        entries: Vec<(u64, Arc<ForwardEntry>)>,
        reason: String,
    ) -> Result<(), ChatError> {
        self.ask(|reply| {
            Command::Outbox(OutboxCmd::GiveUp {
                entries,
                reason,
                reply,
            })
        })
        .await?
        .await
    }

    pub async fn copy_page(&self, page: PageRequest) -> Result<Page, ChatError> {
        self.ask(|reply| Command::Move(MoveCmd::CopyPage { page, reply }))
            .await?
            .await
    }

    pub async fn drop_ranges(&self, ranges: Vec<(u64, u64)>) -> Result<(), ChatError> {
        self.ask(|reply| Command::Move(MoveCmd::DropRanges { ranges, reply }))
            .await?
            .await
    }

    pub async fn replica_page(&self, req: ReplicaPage) -> Result<Page, ChatError> {
        self.ask(|reply| Command::Replica(ReplicaCmd::Page { req, reply }))
            .await?
            .await
    }

    pub async fn replica_refill(&self, dest: String) -> Result<(), ChatError> {
        self.ask(|reply| Command::Replica(ReplicaCmd::Refill { dest, reply }))
            .await?
            .await
    }

    /// Makes the writer run a batch (and so look at the move in the view) even if idle.
    pub async fn wake(&self) -> Result<(), ChatError> {
        self.queue(Command::Move(MoveCmd::Wake)).await
    }

    pub async fn seal(&self, epoch: u64) -> Result<(), ChatError> {
        self.queue(Command::Move(MoveCmd::Seal { epoch })).await
    }
}

impl Command {
    /// The users a command touches (those whose writes must wait for a seal: see
    /// `crate::rebalance::hold`).
    pub(crate) fn users(&self) -> Vec<&str> {
        use chat_proto::cluster::forward_entry::Item;
        match self {
            Command::Client(ClientCmd::Send { from, to, .. }) => {
                vec![from.user.as_str(), to.as_str()]
            }
            Command::Client(
                ClientCmd::Attach { who, .. }
                | ClientCmd::Ack { who, .. }
                | ClientCmd::Block { who, .. }
                | ClientCmd::Settings { who, .. }
                | ClientCmd::Upload { who, .. },
            ) => {
                vec![who.user.as_str()]
            }
            Command::Client(ClientCmd::LastSeen { user, .. }) => vec![user.as_str()],
            Command::Client(ClientCmd::Group { who, op, .. }) => {
                let mut users = vec![who.user.as_str()];
                users.extend(op.group());
                users
            }
            Command::Peer(PeerCmd::Apply { entries, .. }) => {
                entries.iter().map(|e| e.to.as_str()).collect()
            }
            Command::Outbox(OutboxCmd::GiveUp { entries, .. }) => entries
                .iter()
                .filter_map(|(_, e)| match &e.item {
                    Some(Item::Message(m)) => Some(m.from.as_str()),
                    _ => None,
                })
                .collect(),
            Command::Peer(PeerCmd::Stream { .. })
            | Command::Outbox(OutboxCmd::Delivered { .. })
            | Command::Move(_)
            | Command::Replica(_) => Vec::new(),
        }
    }
}
