//! What every participant of a run records, and nothing else: the workload's devices, the
//! hostile clients and the nemesis each append facts with a timestamp; the checker judges them
//! afterwards. Keeping the records plain data (serde, no behaviour) lets a run be saved as JSON
//! and checked again offline with the same pure function.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Microseconds since the start of the run (monotonic clock).
pub type Micros = u64;

/// The run's monotonic clock, shared by every recorder so their timestamps compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    /// Wall-clock time of `start`, to match node log lines (which carry wall-clock times).
    pub start_unix_us: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Clock {
            start: Instant::now(),
            start_unix_us,
        }
    }

    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// `t` on this clock (0 for a time before the start).
    pub fn at(&self, t: Instant) -> Micros {
        t.saturating_duration_since(self.start).as_micros() as Micros
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// One thing a device saw or did. `conn` in [`Record`] says on which of its connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A `Welcome` arrived (after any redirects): the connection is usable.
    Connected {
        node: String,
        cursor: u64,
        inbox_seq: u64,
        resume_after: u64,
    },
    /// A connection attempt failed before `Welcome`.
    ConnectFailed { error: String },
    /// The connection ended (by the node, the network, or the client's liveness check).
    Closed { reason: String },
    /// A `Send` frame was written (attempt 1 is the first; later ones reuse the client_msg_id).
    SendAttempt {
        client_msg_id: String,
        to: String,
        attempt: u32,
        body: String,
    },
    /// ✓: the node answered `Sent`.
    Acked {
        client_msg_id: String,
        msg_id: String,
        node: String,
    },
    /// The node answered a send with `Error`. `definitive`: the client gives the message up.
    SendError {
        client_msg_id: String,
        code: String,
        message: String,
        definitive: bool,
    },
    /// A `Deliver` of a message, exactly as the server sent it (repeats included).
    Delivered {
        seq: u64,
        msg_id: String,
        from: String,
        from_device: String,
        to: String,
        client_msg_id: String,
        body: String,
        node: String,
    },
    /// A `Deliver` of a receipt for messages this user sent.
    ReceiptSeen {
        seq: u64,
        kind: ReceiptKind,
        msg_ids: Vec<String>,
        by: String,
    },
    /// A `Deliver` of a `Failed` report for a message this user sent.
    FailedSeen {
        seq: u64,
        msg_id: String,
        client_msg_id: String,
        reason: String,
    },
    /// The client dropped the delivery at `seq` as already processed (client-side suppression;
    /// the server-side repeat itself is the `Delivered`/`ReceiptSeen` recorded just before).
    Suppressed { seq: u64 },
    /// An `Ack{up_to}` was written.
    AckSent { up_to: u64 },
    /// A `Read{up_to}` was written.
    ReadSent { up_to: u64 },
    /// A `Deliver` of a group event (a change of a group the user is in).
    GroupEventSeen {
        seq: u64,
        group: String,
        event_id: String,
    },
    /// An `Error` frame that answers no send.
    ErrorFrame { code: String, message: String },
    /// A `Redirect` frame on an established connection (the user moved).
    Redirected { url: String, epoch: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub at: Micros,
    /// Which connection of the device (1-based; 0 before the first `Welcome`).
    pub conn: u32,
    pub event: Event,
}

/// Everything one honest device recorded, in its own order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceHistory {
    pub user: String,
    pub device: String,
    pub records: Vec<Record>,
}

impl DeviceHistory {
    pub fn new(user: &str, device: &str) -> DeviceHistory {
        DeviceHistory {
            user: user.into(),
            device: device.into(),
            records: Vec::new(),
        }
    }

    pub fn push(&mut self, at: Micros, conn: u32, event: Event) {
        self.records.push(Record { at, conn, event });
    }

    /// `user/device`, as the report names a device.
    pub fn who(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }
}

/// The hostile behaviours a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HostileCase {
    MalformedProtobuf,
    MalformedJson,
    /// Over `max_frame_bytes`: answered `FRAME_TOO_LARGE`, connection stays.
    OversizeFrame,
    /// Over 4x `max_frame_bytes`: closed with 1009 unread.
    HugeFrame,
    /// A frame header announcing more bytes than ever arrive.
    TruncatedFrame,
    InvalidUtf8Text,
    /// Connects to another user's route with its own token.
    TokenForOtherUser,
    BadSignature,
    ExpiredToken,
    /// `Send` with `from` naming another user.
    ForgedFrom,
    /// `Ack`/`Read` of seqs never delivered.
    AckUnreceived,
    /// Many sends without waiting: expect backpressure or refusals, never a crash.
    Flood,
    /// Stops reading while its inbox is pushed to it: expect to be disconnected.
    StopReading,
    /// A message naming a file this user was never given: refused, never ✓.
    ForeignMedia,
    /// A download URL for a file not in this user's inbox: refused, never granted (`acked`
    /// counts URLs granted).
    StealMedia,
}

/// What one hostile connection observed: facts only; the checker holds the expectations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostileRecord {
    pub at: Micros,
    pub case: HostileCase,
    /// The user the hostile token names.
    pub user: String,
    /// The user a `Welcome` named, if one came.
    pub welcomed_as: Option<String>,
    /// Error codes received, in order (e.g. `BAD_FRAME`).
    pub errors: Vec<String>,
    /// `Sent` answers received (for `StealMedia`, download URLs granted).
    pub acked: u32,
    /// Sends written.
    pub sent: u32,
    /// Entries received that are not this user's: messages to someone else, receipts naming msg
    /// ids it never got ✓ for.
    pub foreign_entries: u32,
    /// How the connection ended: `None` if it was still open when the case finished.
    pub closed: Option<String>,
    /// Could not even connect (cluster unavailable); nothing was tested.
    pub skipped: bool,
    pub detail: String,
}

/// The kinds of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// `kill -9` a node, restart it later.
    Kill,
    /// SIGSTOP, then SIGCONT after longer than the lease TTL.
    Pause,
    /// Drop QUIC (UDP) between two nodes, both directions.
    Partition,
    /// Drop QUIC from one node to another only.
    OneWayPartition,
    /// Drop TCP between a node and its own etcd port.
    EtcdPartition,
    /// `kill -9` etcd, restart it on the same ports and data.
    EtcdKill,
    /// Fill the node's disk until ENOSPC, hold, free.
    DiskFull,
    /// Fill the disk, `kill -9` the node while full, free, restart.
    DiskFullKill,
    /// Start a fresh node and move its share to it.
    AddNode,
    /// Move a node's users away, drain it, stop it.
    RemoveNode,
    /// `kill -9` a node taking part in a move while it runs, restart it.
    KillDuringMove,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::EtcdPartition,
        FaultKind::EtcdKill,
        FaultKind::DiskFull,
        FaultKind::DiskFullKill,
        FaultKind::AddNode,
        FaultKind::RemoveNode,
        FaultKind::KillDuringMove,
    ];

    pub fn is_rebalance(self) -> bool {
        matches!(self, FaultKind::AddNode | FaultKind::RemoveNode)
    }
}

/// One injected fault, as it actually happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Node id(s) or `etcd`; for partitions `a->b` or `a<->b`.
    pub target: String,
    pub start: Micros,
    /// When it was healed; `None` if it never was (a finding in itself).
    pub end: Option<Micros>,
    /// What happened (move committed, node refused to restart, ...).
    pub outcome: String,
    /// The fault ran as planned (a skipped or failed one is still logged).
    pub ok: bool,
}

/// A node process that exited without the nemesis killing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCrash {
    pub node: String,
    pub at: Micros,
    pub status: String,
    pub log_tail: String,
}

/// The nemesis's own record of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NemesisLog {
    pub faults: Vec<FaultRecord>,
    pub crashes: Vec<NodeCrash>,
    /// Misbehaviour that is not a crash: a removed node that never drained, a node that did not
    /// come back after a restart, a SIGTERM that did not exit 0.
    pub findings: Vec<String>,
    /// Nodes that stopped themselves on a storage error while their disk was full (exit
    /// `EXIT_STORAGE_FAILED`, the documented fail-stop), restarted once space returned.
    #[serde(default)]
    pub storage_stops: Vec<NodeCrash>,
}

impl NemesisLog {
    /// Disk-full windows of `node`: (start, end) of each `DiskFull`/`DiskFullKill` on it.
    pub fn disk_full_windows(&self, node: &str) -> Vec<(Micros, Micros)> {
        self.faults
            .iter()
            .filter(|f| matches!(f.kind, FaultKind::DiskFull | FaultKind::DiskFullKill))
            .filter(|f| f.target == node)
            .map(|f| (f.start, f.end.unwrap_or(Micros::MAX)))
            .collect()
    }
}

/// A whole run: the input of the checker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    pub seed: u64,
    pub profile: String,
    pub start_unix_us: u64,
    /// End of the fault phase (sending stops) and of the quiet phase.
    pub fault_phase_end: Micros,
    pub end: Micros,
    pub devices: Vec<DeviceHistory>,
    pub hostile: Vec<HostileRecord>,
    pub nemesis: NemesisLog,
    /// The workload's groups (made before it starts, never changed): id → members.
    #[serde(default)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
}

/// The marker every hostile body carries, so the checker can prove none reached anyone else.
pub const HOSTILE_MARKER: &str = "HOSTILE-c0ffee-MARKER";
