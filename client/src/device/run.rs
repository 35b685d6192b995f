//! The device's task: connect, run a session, back off, again; until stopped.

use std::future::Future;
use std::time::Instant;

use chat_proto::v1::{client_frame, Ping};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::rules::{Output, Rules};
use super::{CloseReason, Command, DeviceConfig, DeviceEvent, Stamped};
use crate::{Client, ConnectOptions};
use chat_retry::Jitter;

/// The task's ends: the caller's commands in, events out.
struct Io {
    commands: UnboundedReceiver<Command>,
    events: UnboundedSender<Stamped>,
}

impl Io {
    fn report(&self, event: DeviceEvent) {
        // The receiver goes only with the `Device`, which aborts this task.
        let _ = self.events.send(Stamped {
            at: Instant::now(),
            event,
        });
    }

    /// Applies a caller's command (online, the rules write at once; offline, they keep it for
    /// the next connection). `false` for a stop.
    fn apply(rules: &mut Rules, c: Option<Command>) -> bool {
        match c {
            None | Some(Command::Stop) => false,
            Some(Command::Send {
                client_msg_id,
                to,
                group,
                body,
            }) => {
                rules.send_to(client_msg_id, to, group, body);
                true
            }
            Some(Command::Read(up_to)) => {
                rules.read(up_to);
                true
            }
        }
    }

    /// Awaits `fut` while taking commands; `None` if the caller stopped the device.
    async fn meanwhile<T>(&mut self, rules: &mut Rules, fut: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return Some(r),
                c = self.commands.recv() => {
                    if !Self::apply(rules, c) {
                        return None;
                    }
                }
            }
        }
    }
}

pub(super) async fn run(
    cfg: DeviceConfig,
    commands: UnboundedReceiver<Command>,
    events: UnboundedSender<Stamped>,
) {
    let mut io = Io { commands, events };
    let mut rules = Rules::new(cfg.resume_after, cfg.backoff);
    let mut jitter = Jitter::new(cfg.jitter_seed);
    // Connection attempts in a row that did not reach `Welcome`.
    let mut failures = 0u32;
    loop {
        let opts = ConnectOptions {
            resume_after: rules.last_seq(),
            ..cfg.connect.clone()
        };
        let connect = Client::connect_with(&cfg.url, &cfg.token, &opts);
        let Some(connected) = io.meanwhile(&mut rules, connect).await else {
            return;
        };
        match connected {
            Ok(c) => {
                failures = 0;
                io.report(DeviceEvent::Connected {
                    node: c.welcome.node.clone(),
                    url: c.url.clone(),
                    cursor: c.welcome.cursor,
                    inbox_seq: c.welcome.inbox_seq,
                    resume_after: opts.resume_after,
                });
                let reason = session(&cfg, c, &mut rules, &mut io).await;
                let stopped = matches!(reason, CloseReason::Stopped);
                io.report(DeviceEvent::Closed { reason });
                if stopped {
                    return;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                io.report(DeviceEvent::ConnectFailed { error });
            }
        }
        let pause = tokio::time::sleep(jitter.apply(cfg.backoff.delay(failures)));
        if io.meanwhile(&mut rules, pause).await.is_none() {
            return;
        }
    }
}

/// Writes and reports what the rules decided, in order.
fn flush(rules: &mut Rules, writes: &UnboundedSender<client_frame::Frame>, io: &Io) {
    for o in rules.take() {
        match o {
            // A failed write shows as the writer task's end.
            Output::Write(f) => {
                let _ = writes.send(f);
            }
            Output::Report(e) => io.report(e),
        }
    }
}

/// One connection, until it ends; why it ended.
async fn session(cfg: &DeviceConfig, c: Client, rules: &mut Rules, io: &mut Io) -> CloseReason {
    let (mut tx, mut rx) = c.into_split();
    // Writes go through a task so that a node that stops reading (its socket buffer full)
    // cannot block this loop's reads and timers.
    let (writes, mut to_write) = tokio::sync::mpsc::unbounded_channel::<client_frame::Frame>();
    let writer = tokio::spawn(async move {
        while let Some(f) = to_write.recv().await {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    rules.connected();
    flush(rules, &writes, io);
    let (mut last_rx, mut last_ping, mut nonce) = (Instant::now(), Instant::now(), 0u64);
    let reason = loop {
        let mut wake = (last_rx + cfg.silent_limit).min(last_ping + cfg.ping_every);
        if let Some(t) = rules.next_retry() {
            wake = wake.min(t);
        }
        let end = tokio::select! {
            c = io.commands.recv() => (!Io::apply(rules, c)).then_some(CloseReason::Stopped),
            f = rx.recv() => match f {
                Ok(f) => {
                    last_rx = Instant::now();
                    rules.on_frame(f, last_rx)
                }
                Err(e) => Some(CloseReason::Recv(e)),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if now.duration_since(last_rx) >= cfg.silent_limit {
                    Some(CloseReason::Silent(cfg.silent_limit))
                } else {
                    if now.duration_since(last_ping) >= cfg.ping_every {
                        nonce += 1;
                        last_ping = now;
                        let _ = writes.send(client_frame::Frame::Ping(Ping { nonce }));
                    }
                    rules.retry_due(now);
                    None
                }
            }
        };
        flush(rules, &writes, io);
        if let Some(end) = end {
            break end;
        }
        if writer.is_finished() {
            break CloseReason::WriteFailed;
        }
    };
    rules.disconnected();
    writer.abort();
    reason
}
