//! One honest device: a [`chat_client::Device`] (reconnects, resumes, re-sends, acknowledges),
//! the traffic it is given (Poisson sends to random users, read markers for some deliveries),
//! and the record of everything it did and saw in its history.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::v1::{deliver, ReceiptKind as WireReceiptKind};
use chat_client::{Device, DeviceConfig, DeviceEvent, Stamped};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use super::{code_name, user_id, Control};
use crate::history::{Clock, DeviceHistory, Event, ReceiptKind};

pub(super) struct Dev {
    pub(super) user: String,
    pub(super) device: String,
    pub(super) users: usize,
    /// The groups the user is a member of, and the share of its messages sent to one.
    pub(super) groups: Vec<String>,
    pub(super) group_share: f64,
    pub(super) per_second: f64,
    pub(super) read_share: f64,
    pub(super) rng: ChaCha8Rng,
    pub(super) history: Arc<Mutex<DeviceHistory>>,
    pub(super) clock: Clock,
    pub(super) control: Arc<Control>,
    /// Which connection (1-based, counted at each `Welcome`).
    pub(super) conn: u32,
    /// The node of the current connection, if one is up.
    pub(super) node: Option<String>,
    pub(super) sent: u64,
}

impl Dev {
    fn rec(&self, at: std::time::Instant, event: Event) {
        self.history
            .lock()
            .expect("history lock")
            .push(self.clock.at(at), self.conn, event);
    }

    pub(super) async fn run(mut self, config: DeviceConfig) {
        let mut stop = self.control.stop.clone();
        if *stop.borrow() {
            return;
        }
        let mut device = Device::start(config);
        // New messages are made only while a connection is up, as a person types only while
        // the app is online.
        let mut next_send = Instant::now();
        loop {
            tokio::select! {
                e = device.next() => match e {
                    Some(e) => {
                        if matches!(e.event, DeviceEvent::Connected { .. }) {
                            next_send = Instant::now() + self.next_send_in();
                        }
                        self.on_event(e, &device);
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next_send), if self.node.is_some() => {
                    next_send = Instant::now() + self.next_send_in();
                    if self.control.sending.load(Ordering::Acquire) {
                        self.new_message(&device);
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // Stopped: the device closes its connection; record what it reports until it ends.
        device.stop();
        while let Some(e) = device.next().await {
            self.on_event(e, &device);
        }
    }

    fn next_send_in(&mut self) -> Duration {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64((-u.ln() / self.per_second.max(1e-6)).min(3600.0))
    }

    fn new_message(&mut self, device: &Device) {
        if self.users < 2 {
            return;
        }
        if !self.groups.is_empty() && self.rng.random_bool(self.group_share) {
            let group = self.groups[self.rng.random_range(0..self.groups.len())].clone();
            self.sent += 1;
            let cmid = format!("m{}", self.sent);
            let body = format!("chaos {}/{} #{cmid} to {group}", self.user, self.device);
            device.send_group(cmid, group, body);
            return;
        }
        let me: usize = self.user[1..].parse().unwrap_or(0);
        let mut to = self.rng.random_range(0..self.users - 1);
        if to >= me {
            to += 1;
        }
        self.sent += 1;
        let to = user_id(to);
        let cmid = format!("m{}", self.sent);
        let body = format!("chaos {}/{} #{cmid} to {to}", self.user, self.device);
        device.send(cmid, to, body);
    }

    /// Records one event of the device, and answers deliveries with read markers.
    fn on_event(&mut self, Stamped { at, event }: Stamped, device: &Device) {
        let event = match event {
            DeviceEvent::Connected {
                node,
                cursor,
                inbox_seq,
                resume_after,
                ..
            } => {
                self.conn += 1;
                self.node = Some(node.clone());
                Event::Connected {
                    node,
                    cursor,
                    inbox_seq,
                    resume_after,
                }
            }
            DeviceEvent::ConnectFailed { error } => Event::ConnectFailed {
                error: error.to_string(),
            },
            DeviceEvent::Closed { reason } => {
                self.node = None;
                Event::Closed {
                    reason: reason.to_string(),
                }
            }
            DeviceEvent::SendAttempt {
                client_msg_id,
                to,
                body,
                attempt,
            } => Event::SendAttempt {
                client_msg_id,
                to,
                attempt,
                body,
            },
            DeviceEvent::Sent(s) => Event::Acked {
                client_msg_id: s.client_msg_id,
                msg_id: s.msg_id,
                node: self.node.clone().unwrap_or_default(),
            },
            DeviceEvent::SendError {
                client_msg_id,
                code,
                message,
                definitive,
            } => Event::SendError {
                client_msg_id,
                code: code_name(code),
                message,
                definitive,
            },
            DeviceEvent::Deliver { deliver, repeat } => {
                self.on_deliver(at, deliver, repeat, device);
                return;
            }
            DeviceEvent::AckWritten { up_to } => Event::AckSent { up_to },
            DeviceEvent::ReadWritten { up_to } => Event::ReadSent { up_to },
            DeviceEvent::Error(e) => Event::ErrorFrame {
                code: code_name(e.code),
                message: e.message,
            },
            DeviceEvent::Redirected(r) => Event::Redirected {
                url: r.url,
                epoch: r.epoch,
            },
        };
        self.rec(at, event);
    }

    fn on_deliver(
        &mut self,
        at: std::time::Instant,
        d: chat_client::v1::Deliver,
        repeat: bool,
        device: &Device,
    ) {
        let seq = d.seq;
        let mut is_message = false;
        let event = match d.entry {
            Some(deliver::Entry::Message(m)) => {
                is_message = true;
                Event::Delivered {
                    seq,
                    msg_id: m.msg_id,
                    from: m.from,
                    from_device: m.from_device,
                    to: m.to,
                    client_msg_id: m.client_msg_id,
                    body: m.body,
                    node: self.node.clone().unwrap_or_default(),
                }
            }
            Some(deliver::Entry::Receipt(r)) => Event::ReceiptSeen {
                seq,
                kind: if r.kind == WireReceiptKind::Read as i32 {
                    ReceiptKind::Read
                } else {
                    ReceiptKind::Delivered
                },
                msg_ids: r.msg_ids,
                by: r.by,
            },
            Some(deliver::Entry::Failed(f)) => Event::FailedSeen {
                seq,
                msg_id: f.msg_id,
                client_msg_id: f.client_msg_id,
                reason: f.reason,
            },
            Some(deliver::Entry::GroupEvent(e)) => Event::GroupEventSeen {
                seq,
                group: e.group,
                event_id: e.event_id,
            },
            None => {
                if repeat {
                    self.rec(at, Event::Suppressed { seq });
                }
                return;
            }
        };
        self.rec(at, event);
        if repeat {
            // The device did not acknowledge it again: it had processed that seq already.
            self.rec(at, Event::Suppressed { seq });
        } else if is_message && self.rng.random_bool(self.read_share) {
            device.read(seq);
        }
    }
}
