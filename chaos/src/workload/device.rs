//! One honest device: its connection loop, what it sends, and how it treats every frame.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::v1::{
    client_frame, deliver, server_frame, Ack, ErrorCode, Ping, ReadMarker, Send,
};
use chat_client::{Client, ConnectOptions};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{
    code_name, is_definitive, user_id, Control, BACKOFF_MAX, BACKOFF_MIN, PING_EVERY, SILENT_LIMIT,
};
use crate::history::{Clock, DeviceHistory, Event, ReceiptKind};

struct Pending {
    cmid: String,
    to: String,
    body: String,
    attempts: u32,
    /// After a retryable refusal: resend at this time on the same connection.
    retry_at: Option<Instant>,
}

#[derive(Default)]
pub(super) struct State {
    conn: u32,
    node: String,
    last_seq: u64,
    max_read: u64,
    pending: VecDeque<Pending>,
    sent: u64,
}

pub(super) struct Dev {
    pub(super) user: String,
    pub(super) device: String,
    pub(super) token: String,
    pub(super) url: String,
    pub(super) users: usize,
    pub(super) per_second: f64,
    pub(super) read_share: f64,
    pub(super) rng: ChaCha8Rng,
    pub(super) history: Arc<Mutex<DeviceHistory>>,
    pub(super) clock: Clock,
    pub(super) control: Arc<Control>,
    pub(super) st: State,
}

impl Dev {
    fn rec(&self, event: Event) {
        let at = self.clock.now();
        self.history
            .lock()
            .expect("history lock")
            .push(at, self.st.conn, event);
    }

    fn stopping(&self) -> bool {
        *self.control.stop.borrow()
    }

    pub(super) async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut stop = self.control.stop.clone();
        while !self.stopping() {
            let opts = ConnectOptions {
                resume_after: self.st.last_seq,
                timeout: Duration::from_secs(5),
                agent: "chat-chaos".into(),
                ..ConnectOptions::default()
            };
            let connected = tokio::select! {
                r = Client::connect_with(&self.url, &self.token, &opts) => r,
                _ = stop.changed() => break,
            };
            let reason = match connected {
                Ok(c) => {
                    backoff = BACKOFF_MIN;
                    self.st.conn += 1;
                    self.st.node = c.welcome.node.clone();
                    self.rec(Event::Connected {
                        node: c.welcome.node.clone(),
                        cursor: c.welcome.cursor,
                        inbox_seq: c.welcome.inbox_seq,
                        resume_after: self.st.last_seq,
                    });
                    let reason = self.session(c).await;
                    self.rec(Event::Closed {
                        reason: reason.clone(),
                    });
                    reason
                }
                Err(e) => {
                    self.rec(Event::ConnectFailed {
                        error: e.to_string(),
                    });
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    String::new()
                }
            };
            if reason == "stop" {
                break;
            }
            let jitter = self.rng.random_range(0.5..1.5);
            tokio::select! {
                _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                _ = stop.changed() => break,
            }
        }
    }

    fn next_send_in(&mut self) -> Duration {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64((-u.ln() / self.per_second.max(1e-6)).min(3600.0))
    }

    /// One connection, until it ends; why it ended.
    async fn session(&mut self, c: Client) -> String {
        let (mut tx, mut rx) = c.into_split();
        let (wtx, mut wrx) = mpsc::unbounded_channel::<client_frame::Frame>();
        let writer = tokio::spawn(async move {
            while let Some(f) = wrx.recv().await {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
        });
        let write = |f: client_frame::Frame| wtx.send(f).is_ok();
        // Re-assert what this device processed: an ack that reached a node just before it went
        // away (or an old owner after a move) may never have been applied.
        if self.st.last_seq > 0 {
            write(client_frame::Frame::Ack(Ack {
                up_to_seq: self.st.last_seq,
            }));
            self.rec(Event::AckSent {
                up_to: self.st.last_seq,
            });
        }
        if self.st.max_read > 0 {
            write(client_frame::Frame::Read(ReadMarker {
                up_to_seq: self.st.max_read,
            }));
            self.rec(Event::ReadSent {
                up_to: self.st.max_read,
            });
        }
        for i in 0..self.st.pending.len() {
            self.st.pending[i].retry_at = None;
            self.resend(i, &write);
        }
        let mut stop = self.control.stop.clone();
        let mut next_send = Instant::now() + self.next_send_in();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (mut last_rx, mut last_ping, mut nonce) = (Instant::now(), Instant::now(), 0u64);
        let reason = loop {
            tokio::select! {
                _ = stop.changed() => break "stop".to_string(),
                f = rx.recv() => match f {
                    Ok(f) => {
                        last_rx = Instant::now();
                        if let Some(end) = self.on_frame(f, &write) {
                            break end;
                        }
                    }
                    Err(e) => break format!("recv: {e}"),
                },
                _ = tokio::time::sleep_until(next_send) => {
                    next_send = Instant::now() + self.next_send_in();
                    if self.control.sending.load(Ordering::Acquire) {
                        self.new_message(&write);
                    }
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() > SILENT_LIMIT {
                        break format!("nothing received for {SILENT_LIMIT:?}");
                    }
                    if last_ping.elapsed() >= PING_EVERY {
                        nonce += 1;
                        last_ping = Instant::now();
                        write(client_frame::Frame::Ping(Ping { nonce }));
                    }
                    let now = Instant::now();
                    for i in 0..self.st.pending.len() {
                        if self.st.pending[i].retry_at.is_some_and(|t| t <= now) {
                            self.st.pending[i].retry_at = None;
                            self.resend(i, &write);
                        }
                    }
                }
            }
            if writer.is_finished() {
                break "write failed".to_string();
            }
        };
        writer.abort();
        reason
    }

    fn resend(&mut self, i: usize, write: &impl Fn(client_frame::Frame) -> bool) {
        let p = &mut self.st.pending[i];
        p.attempts += 1;
        let (cmid, to, body, attempt) = (p.cmid.clone(), p.to.clone(), p.body.clone(), p.attempts);
        self.rec(Event::SendAttempt {
            client_msg_id: cmid.clone(),
            to: to.clone(),
            attempt,
            body: body.clone(),
        });
        write(client_frame::Frame::Send(Send {
            client_msg_id: cmid,
            to,
            body,
            from: String::new(),
        }));
    }

    fn new_message(&mut self, write: &impl Fn(client_frame::Frame) -> bool) {
        if self.users < 2 {
            return;
        }
        let me: usize = self.user[1..].parse().unwrap_or(0);
        let mut to = self.rng.random_range(0..self.users - 1);
        if to >= me {
            to += 1;
        }
        self.st.sent += 1;
        let to = user_id(to);
        let cmid = format!("m{}", self.st.sent);
        let body = format!("chaos {}/{} #{cmid} to {to}", self.user, self.device);
        self.st.pending.push_back(Pending {
            cmid,
            to,
            body,
            attempts: 0,
            retry_at: None,
        });
        let i = self.st.pending.len() - 1;
        self.resend(i, write);
    }

    /// Handles one frame; `Some(reason)` if the connection is over.
    fn on_frame(
        &mut self,
        f: chat_client::v1::ServerFrame,
        write: &impl Fn(client_frame::Frame) -> bool,
    ) -> Option<String> {
        match f.frame? {
            server_frame::Frame::Sent(s) => {
                self.st.pending.retain(|p| p.cmid != s.client_msg_id);
                let node = self.st.node.clone();
                self.rec(Event::Acked {
                    client_msg_id: s.client_msg_id,
                    msg_id: s.msg_id,
                    node,
                });
            }
            server_frame::Frame::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                let name = code_name(e.code);
                let Some(i) = self
                    .st
                    .pending
                    .iter()
                    .position(|p| !e.r#ref.is_empty() && p.cmid == e.r#ref)
                else {
                    self.rec(Event::ErrorFrame {
                        code: name,
                        message: e.message,
                    });
                    return None;
                };
                let definitive = is_definitive(code);
                self.rec(Event::SendError {
                    client_msg_id: e.r#ref,
                    code: name,
                    message: e.message,
                    definitive,
                });
                if definitive {
                    self.st.pending.remove(i);
                } else {
                    let p = &mut self.st.pending[i];
                    let wait = BACKOFF_MIN * 2u32.saturating_pow(p.attempts.min(6));
                    p.retry_at = Some(Instant::now() + wait.min(BACKOFF_MAX));
                }
            }
            server_frame::Frame::Deliver(d) => self.on_deliver(d, write),
            server_frame::Frame::Redirect(r) => {
                self.rec(Event::Redirected {
                    url: r.url,
                    epoch: r.epoch,
                });
                return Some("redirect".into());
            }
            _ => {}
        }
        None
    }

    fn on_deliver(
        &mut self,
        d: chat_client::v1::Deliver,
        write: &impl Fn(client_frame::Frame) -> bool,
    ) {
        let seq = d.seq;
        let mut is_message = false;
        match d.entry {
            Some(deliver::Entry::Message(m)) => {
                is_message = true;
                self.rec(Event::Delivered {
                    seq,
                    msg_id: m.msg_id,
                    from: m.from,
                    from_device: m.from_device,
                    to: m.to,
                    client_msg_id: m.client_msg_id,
                    body: m.body,
                    node: self.st.node.clone(),
                });
            }
            Some(deliver::Entry::Receipt(r)) => {
                let kind = if r.kind == chat_client::v1::ReceiptKind::Read as i32 {
                    ReceiptKind::Read
                } else {
                    ReceiptKind::Delivered
                };
                self.rec(Event::ReceiptSeen {
                    seq,
                    kind,
                    msg_ids: r.msg_ids,
                    by: r.by,
                });
            }
            Some(deliver::Entry::Failed(f)) => {
                self.rec(Event::FailedSeen {
                    seq,
                    msg_id: f.msg_id,
                    client_msg_id: f.client_msg_id,
                    reason: f.reason,
                });
            }
            None => {}
        }
        if seq <= self.st.last_seq {
            self.rec(Event::Suppressed { seq });
            return;
        }
        self.st.last_seq = seq;
        write(client_frame::Frame::Ack(Ack { up_to_seq: seq }));
        self.rec(Event::AckSent { up_to: seq });
        if is_message && self.rng.random_bool(self.read_share) {
            self.st.max_read = seq;
            write(client_frame::Frame::Read(ReadMarker { up_to_seq: seq }));
            self.rec(Event::ReadSent { up_to: seq });
        }
    }
}
