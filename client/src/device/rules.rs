//! The device's rules, without I/O or clock reads (the caller passes `now`): what to write and
//! what to report for each frame, command and connection change. The session in `run.rs` moves
//! bytes; everything it decides is here, unit tested.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chat_proto::v1::{client_frame, server_frame, Ack, ErrorCode, ReadMarker, Send, ServerFrame};

use super::{CloseReason, DeviceEvent};
use chat_retry::Backoff;

/// Codes after which a message is given up: the request itself is wrong, so sending it again
/// cannot help. Every other refusal (unavailable, overloaded, not the owner during a move...)
/// is retried.
pub fn is_definitive(code: ErrorCode) -> bool {
    use ErrorCode::*;
    matches!(
        code,
        BadFrame
            | UnknownFrame
            | FrameTooLarge
            | PermissionDenied
            | InvalidId
            | BodyEmpty
            | BodyTooLarge
            | InvalidArgument
            | TooManyDevices
            | Blocked
            | LimitReached
    )
}

/// A message not yet answered with ✓ or a definitive refusal.
#[derive(Debug)]
struct Pending {
    client_msg_id: String,
    /// A user, or a group's id when `group`.
    to: String,
    group: bool,
    body: String,
    /// Send frames written so far.
    attempts: u32,
    /// After a retryable refusal: write it again at this time on the same connection.
    retry_at: Option<Instant>,
}

/// What the session must do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    Write(client_frame::Frame),
    Report(DeviceEvent),
}

#[derive(Debug)]
pub(crate) struct Rules {
    backoff: Backoff,
    /// The highest seq processed (acknowledged); a new connection resumes after it.
    last_seq: u64,
    /// The highest read marker asked for.
    max_read: u64,
    /// In send order; all are written again on every new connection.
    pending: VecDeque<Pending>,
    online: bool,
    out: Vec<Output>,
}

impl Rules {
    pub(crate) fn new(resume_after: u64, backoff: Backoff) -> Rules {
        Rules {
            backoff,
            last_seq: resume_after,
            max_read: 0,
            pending: VecDeque::new(),
            online: false,
            out: Vec::new(),
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// What to write and report since the last call.
    pub(crate) fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn write(&mut self, f: client_frame::Frame) {
        self.out.push(Output::Write(f));
    }

    fn report(&mut self, e: DeviceEvent) {
        self.out.push(Output::Report(e));
    }

    /// A new connection was welcomed: re-assert what this device processed and read (an ack
    /// that reached a node just before it went away, or an old owner after a move, may never
    /// have been applied), then write every unanswered message again, oldest first, with its
    /// client_msg_id, so the node answers a message it already stored with the same msg_id.
    pub(crate) fn connected(&mut self) {
        self.online = true;
        if self.last_seq > 0 {
            self.write_ack(self.last_seq);
        }
        if self.max_read > 0 {
            self.write_read(self.max_read);
        }
        for i in 0..self.pending.len() {
            self.pending[i].retry_at = None;
            self.attempt(i);
        }
    }

    pub(crate) fn disconnected(&mut self) {
        self.online = false;
    }

    /// Queues a message; it is written now if a connection is up, else on the next one.
    #[cfg(test)]
    pub(crate) fn send(&mut self, client_msg_id: String, to: String, body: String) {
        self.send_to(client_msg_id, to, false, body)
    }

    /// Queues a message to a user, or to a group (`group`).
    pub(crate) fn send_to(&mut self, client_msg_id: String, to: String, group: bool, body: String) {
        self.pending.push_back(Pending {
            client_msg_id,
            to,
            group,
            body,
            attempts: 0,
            retry_at: None,
        });
        if self.online {
            self.attempt(self.pending.len() - 1);
        }
    }

    /// Marks everything up to `up_to_seq` read (now if online, else on the next connection).
    pub(crate) fn read(&mut self, up_to_seq: u64) {
        if up_to_seq <= self.max_read {
            return;
        }
        self.max_read = up_to_seq;
        if self.online {
            self.write_read(up_to_seq);
        }
    }

    fn write_ack(&mut self, up_to: u64) {
        self.write(client_frame::Frame::Ack(Ack { up_to_seq: up_to }));
        self.report(DeviceEvent::AckWritten { up_to });
    }

    fn write_read(&mut self, up_to: u64) {
        self.write(client_frame::Frame::Read(ReadMarker { up_to_seq: up_to }));
        self.report(DeviceEvent::ReadWritten { up_to });
    }

    /// Writes pending message `i` (once more).
    fn attempt(&mut self, i: usize) {
        let p = &mut self.pending[i];
        p.attempts += 1;
        let (client_msg_id, to, body) = (p.client_msg_id.clone(), p.to.clone(), p.body.clone());
        let group = p.group;
        let attempt = p.attempts;
        self.report(DeviceEvent::SendAttempt {
            client_msg_id: client_msg_id.clone(),
            to: to.clone(),
            body: body.clone(),
            attempt,
        });
        let (to, group) = if group {
            (String::new(), to)
        } else {
            (to, String::new())
        };
        self.write(client_frame::Frame::Send(Send {
            client_msg_id,
            to,
            body,
            from: String::new(),
            group,
            attachment: None,
        }));
    }

    /// When each refused message may be written again, in send order: its own retry time, but
    /// never before an earlier refused message of the same conversation. Retried out of order,
    /// two messages the node had both stored (their answers lost) would get their ✓ in the
    /// retry order, not in the order they are stored in.
    fn retry_times(&self) -> Vec<Option<Instant>> {
        let mut gate: HashMap<&str, Instant> = HashMap::new();
        self.pending
            .iter()
            .map(|p| {
                let own = p.retry_at?;
                let at = gate.get(p.to.as_str()).map_or(own, |&g| g.max(own));
                gate.insert(&p.to, at);
                Some(at)
            })
            .collect()
    }

    /// When the earliest retry of a refused message is due.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.retry_times().into_iter().flatten().min()
    }

    /// Writes again every refused message whose retry is due, in send order.
    pub(crate) fn retry_due(&mut self, now: Instant) {
        for (i, at) in self.retry_times().into_iter().enumerate() {
            if at.is_some_and(|t| t <= now) {
                self.pending[i].retry_at = None;
                self.attempt(i);
            }
        }
    }

    /// Handles one frame; `Some` if the connection is over.
    pub(crate) fn on_frame(&mut self, f: ServerFrame, now: Instant) -> Option<CloseReason> {
        match f.frame? {
            server_frame::Frame::Sent(s) => {
                self.pending.retain(|p| p.client_msg_id != s.client_msg_id);
                self.report(DeviceEvent::Sent(s));
            }
            server_frame::Frame::Error(e) => self.on_error(e, now),
            server_frame::Frame::Deliver(d) => {
                let seq = d.seq;
                let repeat = seq <= self.last_seq;
                self.report(DeviceEvent::Deliver { deliver: d, repeat });
                // A repeat was processed already (the node resends what it has no ack for).
                if !repeat {
                    self.last_seq = seq;
                    self.write_ack(seq);
                }
            }
            server_frame::Frame::Redirect(r) => {
                self.report(DeviceEvent::Redirected(r));
                return Some(CloseReason::Redirected);
            }
            _ => {}
        }
        None
    }

    fn on_error(&mut self, e: chat_proto::v1::Error, now: Instant) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| !e.r#ref.is_empty() && p.client_msg_id == e.r#ref)
        else {
            self.report(DeviceEvent::Error(e));
            return;
        };
        let definitive =
            is_definitive(ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified));
        if definitive {
            self.pending.remove(i);
        } else {
            // The node's hint, when it gives one, but never sooner than the backoff.
            let p = &mut self.pending[i];
            let hint = Duration::from_millis(e.retry_after_ms.into());
            p.retry_at = Some(now + self.backoff.delay(p.attempts).max(hint));
        }
        self.report(DeviceEvent::SendError {
            client_msg_id: e.r#ref,
            code: e.code,
            message: e.message,
            definitive,
        });
    }
}

#[cfg(test)]
mod tests;
