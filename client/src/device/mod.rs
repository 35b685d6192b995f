//! A reconnecting device: what an app does to keep one user's device in the conversation.
//!
//! A [`Device`] is a task with one connection at a time, through a router or any node (the
//! client follows redirects to the user's home). It
//! - reconnects on any error or close with capped, jittered exponential backoff, and when a
//!   node moves the user (`Redirect`);
//! - resumes after the last seq it processed (`Hello.resume_after`), so nothing is sent twice;
//! - acknowledges every delivery, and re-asserts its ack and read marker on each connection;
//! - writes every message it was given again on each connection, with the same client_msg_id,
//!   until ✓ or a definitive refusal (a retryable refusal is retried on the same connection
//!   after a backoff, never before an earlier refused message of the same conversation), so a
//!   message is stored once with one msg_id however often it is sent;
//! - pings, and drops a connection that delivers nothing for a while (a paused node would
//!   otherwise hold it forever).
//!
//! Everything it does and sees is reported, in order and timestamped, by [`Device::next`]: the
//! caller keeps whatever record it needs (the chaos suite keeps all of it).

mod rules;
mod run;

use std::fmt;
use std::time::{Duration, Instant};

use chat_proto::v1::{Deliver, Redirect, Sent};
use tokio::sync::mpsc;

pub use self::rules::is_definitive;
use crate::{ClientError, ConnectOptions};
use chat_retry::Backoff;

/// How a [`Device`] connects and when it gives up on a connection.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// A router or a node, `ws://host:port`.
    pub url: String,
    pub token: String,
    /// The highest seq this device processed before (0 for a new device).
    pub resume_after: u64,
    /// Timeout, agent, encoding, local address of each connection (its `resume_after` is the
    /// device's).
    pub connect: ConnectOptions,
    /// Between connection attempts, and before retrying a refused message.
    pub backoff: Backoff,
    /// Seeds the backoff's jitter.
    pub jitter_seed: u64,
    /// A ping goes out this often, so a healthy connection is never silent.
    pub ping_every: Duration,
    /// A connection on which nothing arrives for this long is dropped.
    pub silent_limit: Duration,
}

impl DeviceConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> DeviceConfig {
        DeviceConfig {
            url: url.into(),
            token: token.into(),
            resume_after: 0,
            connect: ConnectOptions::default(),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            jitter_seed: 0,
            ping_every: Duration::from_secs(2),
            silent_limit: Duration::from_secs(8),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
pub enum CloseReason {
    /// [`Device::stop`].
    Stopped,
    /// The node sent `Redirect`: the user moved.
    Redirected,
    /// Receiving failed, or the node closed the connection.
    Recv(ClientError),
    /// Nothing arrived, not even a pong, for this long.
    Silent(Duration),
    /// Writing failed.
    WriteFailed,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Stopped => write!(f, "stop"),
            CloseReason::Redirected => write!(f, "redirect"),
            CloseReason::Recv(e) => write!(f, "recv: {e}"),
            CloseReason::Silent(d) => write!(f, "nothing received for {d:?}"),
            CloseReason::WriteFailed => write!(f, "write failed"),
        }
    }
}

/// One thing the device did or saw.
// A few events a second per device, each consumed at once: not worth a box per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DeviceEvent {
    /// A `Welcome` arrived (after any redirects): the connection is usable.
    Connected {
        node: String,
        /// Where the connection ended up.
        url: String,
        cursor: u64,
        inbox_seq: u64,
        resume_after: u64,
    },
    /// A connection attempt failed before `Welcome`; the device tries again after a backoff.
    ConnectFailed { error: ClientError },
    /// The connection ended; unless stopped, the device connects again after a backoff.
    Closed { reason: CloseReason },
    /// A `Send` was written: attempt 1 first, later ones with the same client_msg_id.
    SendAttempt {
        client_msg_id: String,
        to: String,
        body: String,
        attempt: u32,
    },
    /// ✓: the node stored the message.
    Sent(Sent),
    /// The node refused a message. `definitive`: the device gave it up; otherwise it writes it
    /// again after a backoff.
    SendError {
        client_msg_id: String,
        code: i32,
        message: String,
        definitive: bool,
    },
    /// A `Deliver`, exactly as the node sent it. `repeat`: its seq was processed already, so it
    /// is not acknowledged again.
    Deliver { deliver: Deliver, repeat: bool },
    /// An `Ack { up_to }` was written.
    AckWritten { up_to: u64 },
    /// A `Read { up_to }` was written.
    ReadWritten { up_to: u64 },
    /// An `Error` frame that answers no pending message.
    Error(chat_proto::v1::Error),
    /// The node moved the user; a `Closed` follows, then a connection to the new home.
    Redirected(Redirect),
}

/// A [`DeviceEvent`] and when it happened.
#[derive(Debug)]
pub struct Stamped {
    pub at: Instant,
    pub event: DeviceEvent,
}

enum Command {
    Send {
        client_msg_id: String,
        to: String,
        group: bool,
        body: String,
    },
    Read(u64),
    Stop,
}

/// A running device. Dropping it ends its task and connection at once; [`Device::stop`]
/// closes the connection and lets the caller take the last events.
pub struct Device {
    commands: mpsc::UnboundedSender<Command>,
    // Unbounded on purpose: a device that waited for a slow reader would stop reading its
    // connection and take its own silence for a dead node. Readers take events as they come.
    events: mpsc::UnboundedReceiver<Stamped>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Starts connecting (needs a tokio runtime).
    pub fn start(config: DeviceConfig) -> Device {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run::run(config, command_rx, event_tx));
        Device {
            commands,
            events,
            task,
        }
    }

    /// Sends a message until ✓ or a definitive refusal, across reconnections. `client_msg_id`
    /// must be unique for this device: it is how the node recognises a message sent again.
    pub fn send(
        &self,
        client_msg_id: impl Into<String>,
        to: impl Into<String>,
        body: impl Into<String>,
    ) {
        // After a stop the task is gone and there is nobody to send: nothing to do.
        let _ = self.commands.send(Command::Send {
            client_msg_id: client_msg_id.into(),
            to: to.into(),
            group: false,
            body: body.into(),
        });
    }

    /// Sends a message to a group, as [`Device::send`] does to a user.
    pub fn send_group(
        &self,
        client_msg_id: impl Into<String>,
        group: impl Into<String>,
        body: impl Into<String>,
    ) {
        let _ = self.commands.send(Command::Send {
            client_msg_id: client_msg_id.into(),
            to: group.into(),
            group: true,
            body: body.into(),
        });
    }

    /// Marks everything up to `up_to_seq` read (kept, and written again on each connection).
    pub fn read(&self, up_to_seq: u64) {
        let _ = self.commands.send(Command::Read(up_to_seq));
    }

    /// Closes the connection (a `Closed { reason: Stopped }` if one was open) and ends the
    /// device; [`Device::next`] then returns the remaining events and `None`.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// The next event; `None` once the device has stopped and every event was taken.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Stamped> {
        self.events.recv().await
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}
