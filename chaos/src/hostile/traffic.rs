//! The hostile cases that carry traffic: sends with a forged `from`, acknowledgements of seqs
//! never received, a flood of sends, and a reader that stops reading its big inbox.

use std::sync::Arc;
use std::time::Duration;

use chat_client::v1::{client_frame, deliver, server_frame, Send, ServerFrame};
use chat_client::Client;

use super::{error_codes, token, Ctx};
use crate::history::{HostileRecord, HOSTILE_MARKER};
use crate::workload::code_name;

impl Ctx {
    pub(super) async fn forged_from(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let v = &self.cfg.victims;
        let (to, from) = (&v[n as usize % v.len()], &v[(n as usize + 1) % v.len()]);
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let send = Send {
            client_msg_id: format!("forged-{n}"),
            to: to.clone(),
            body: format!("{HOSTILE_MARKER} as {from}"),
            from: from.clone(),
            group: String::new(),
            attachment: None,
        };
        Self::send_one(&mut c, send, r).await?;
        r.detail = format!("to {to} as {from}");
        Ok(())
    }

    /// Writes one send that must be refused, and records its ✓ (if any), errors and how the
    /// connection ended.
    pub(super) async fn send_one(
        c: &mut Client,
        send: Send,
        r: &mut HostileRecord,
    ) -> Result<(), String> {
        let cmid = send.client_msg_id.clone();
        c.send(client_frame::Frame::Send(send))
            .await
            .map_err(|e| e.to_string())?;
        r.sent = 1;
        let (frames, closed) = Self::collect(c, Duration::from_secs(10), |f| match &f.frame {
            Some(server_frame::Frame::Sent(s)) => s.client_msg_id == cmid,
            Some(server_frame::Frame::Error(e)) => e.r#ref == cmid,
            _ => false,
        })
        .await;
        r.acked = frames
            .iter()
            .filter(|f| matches!(f.frame, Some(server_frame::Frame::Sent(_))))
            .count() as u32;
        r.errors = error_codes(&frames);
        r.closed = closed;
        Ok(())
    }

    /// `n` messages from `from` to `to` (pipelined); the msg ids of their ✓.
    pub(super) async fn send_many(
        &self,
        from: &str,
        to: &str,
        n: usize,
        body_len: usize,
    ) -> Result<Vec<String>, String> {
        let mut c = self
            .connect(from, &token(from))
            .await
            .map_err(|e| e.to_string())?;
        let body = format!(
            "{HOSTILE_MARKER}{}",
            "x".repeat(body_len.saturating_sub(HOSTILE_MARKER.len()))
        );
        let mut ids = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut next = 0;
        while ids.len() < n {
            while next < n && next - ids.len() < 64 {
                c.send_message(&format!("b{next}"), to, &body)
                    .await
                    .map_err(|e| e.to_string())?;
                next += 1;
            }
            match c
                .recv_until(deadline)
                .await
                .map_err(|e| e.to_string())?
                .frame
            {
                Some(server_frame::Frame::Sent(s)) => ids.push(s.msg_id),
                Some(server_frame::Frame::Error(e)) => {
                    return Err(format!("refused: {}", code_name(e.code)))
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    pub(super) async fn ack_unreceived(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let sender = format!("h-acksender-{n}");
        let ids = self.send_many(&sender, &r.user, 3, 40).await?;
        r.sent = 3;
        r.acked = ids.len() as u32;
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let (frames, _) = Self::collect(&mut c, Duration::from_secs(3), |_| false).await;
        r.foreign_entries += frames.iter().filter(|f| not_mine(f, &r.user)).count() as u32;
        for f in [
            client_frame::Frame::Ack(chat_client::v1::Ack {
                up_to_seq: 1_000_000,
            }),
            client_frame::Frame::Read(chat_client::v1::ReadMarker {
                up_to_seq: u64::MAX,
            }),
        ] {
            c.send(f).await.map_err(|e| e.to_string())?;
        }
        let (frames, closed) = Self::collect(&mut c, Duration::from_secs(2), |_| false).await;
        r.errors = error_codes(&frames);
        r.closed = closed;
        // The sender may see receipts for its own three messages, nothing else.
        let mut s = self
            .connect(&sender, &token(&sender))
            .await
            .map_err(|e| e.to_string())?;
        let (frames, _) = Self::collect(&mut s, Duration::from_secs(3), |_| false).await;
        let strangers = frames.iter().filter(|f| match &f.frame {
            Some(server_frame::Frame::Deliver(d)) => match &d.entry {
                Some(deliver::Entry::Receipt(rc)) => rc.msg_ids.iter().any(|id| !ids.contains(id)),
                _ => not_mine(f, &sender),
            },
            _ => false,
        });
        r.foreign_entries += strangers.count() as u32;
        r.detail = format!("3 messages from {sender}, then Ack(1000000) and Read(max)");
        Ok(())
    }

    pub(super) async fn flood(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let (mut tx, mut rx) = c.into_split();
        let (sink, total) = (format!("h-sink-{n}"), self.cfg.flood);
        let written = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let w = written.clone();
        let writer = tokio::spawn(async move {
            for i in 0..total {
                let send = Send {
                    client_msg_id: format!("f{i}"),
                    to: sink.clone(),
                    body: format!("{HOSTILE_MARKER} flood {i}"),
                    from: String::new(),
                    group: String::new(),
                    attachment: None,
                };
                if tx.feed(client_frame::Frame::Send(send)).await.is_err() {
                    return;
                }
                w.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                if i % 100 == 99 && tx.flush().await.is_err() {
                    return;
                }
            }
            let _ = tx.flush().await;
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut frames = Vec::new();
        while r.acked + (frames.len() as u32) < total {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(f)) => match f.frame {
                    Some(server_frame::Frame::Sent(_)) => r.acked += 1,
                    _ => frames.push(f),
                },
                Ok(Err(e)) => {
                    r.closed = Some(e.to_string());
                    break;
                }
                Err(_) => break,
            }
        }
        writer.abort();
        r.sent = written.load(std::sync::atomic::Ordering::Relaxed);
        r.errors = error_codes(&frames);
        r.detail = format!(
            "{} sends written, {} ✓, {} other frames",
            r.sent,
            r.acked,
            frames.len()
        );
        Ok(())
    }

    pub(super) async fn stop_reading(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let sender = format!("h-bulk-{n}");
        let ids = self.send_many(&sender, &r.user, 300, 30_000).await?;
        r.sent = ids.len() as u32;
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        // Past the node's write timeout (10 s) without reading a byte.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (frames, closed) = Self::collect(&mut c, Duration::from_secs(10), |_| false).await;
        r.foreign_entries = frames.iter().filter(|f| not_mine(f, &r.user)).count() as u32;
        r.closed = closed;
        r.detail = format!(
            "{} of 300 × 30 kB deliveries read after 20 s of not reading",
            frames.len()
        );
        Ok(())
    }
}

/// A delivered message addressed to someone other than `user`.
pub(super) fn not_mine(f: &ServerFrame, user: &str) -> bool {
    matches!(&f.frame, Some(server_frame::Frame::Deliver(d)) if matches!(&d.entry, Some(deliver::Entry::Message(m)) if m.to != user))
}
