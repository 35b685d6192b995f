//! One handler per client frame kind of an authenticated connection.

use chat_proto::cluster::{signal, Signal};
use chat_proto::v1::{
    block_request, client_frame, server_frame, BlockList, BlockRequest, HistoryPage,
    HistoryRequest, Ping, Pong, Send as SendMessage, ServerFrame, Typing, TypingNotice,
    TypingState,
};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::conn::{Gone, Inbound};
use super::session::{Live, Session};
use super::{to_deliver, End};
use crate::admin;
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::overload::Level;
use crate::rate::Limit;
use crate::validate::{check_body, check_id, IdKind};

impl Session {
    pub(super) async fn on_message(&mut self, live: &mut Live, msg: WsMessage) -> Result<(), End> {
        let frame = match self.conn.decode(msg) {
            Inbound::Frame(f) => f,
            Inbound::Control => return Ok(()),
            Inbound::Closed => return Err(End::PeerClosed),
            Inbound::Bad(e) => return Ok(self.conn.refuse(&e, "").await?),
        };
        // User activity moves presence: the flag, or what only a person does.
        let active = frame.active
            || matches!(
                frame.frame,
                Some(
                    client_frame::Frame::Send(_)
                        | client_frame::Frame::Typing(_)
                        | client_frame::Frame::Read(_)
                )
            );
        if active {
            self.ctx.presence.active(&live.who.user);
        }
        let Some(frame) = frame.frame else {
            return Ok(());
        };
        // The requests whose handling awaits storage or another node are boxed: a future is as
        // large as its largest await, and this one is part of every connection's idle state, so
        // inline they would cost each idle connection kilobytes. Sends, acks, typing and pings
        // (the per-message path) stay inline.
        let done = match frame {
            client_frame::Frame::Hello(_) => {
                self.conn.refuse(&ChatError::AlreadyAuthenticated, "").await
            }
            client_frame::Frame::Send(s) if !s.group.is_empty() => {
                Box::pin(self.group_send(live, s)).await
            }
            client_frame::Frame::Send(s) => self.send(live, s).await,
            client_frame::Frame::Group(r) => Box::pin(self.group(live, r)).await,
            client_frame::Frame::Ack(a) => self.ack(live, a.up_to_seq, false).await,
            client_frame::Frame::Read(r) => self.ack(live, r.up_to_seq, true).await,
            client_frame::Frame::History(h) => Box::pin(self.history(live, h)).await,
            client_frame::Frame::Ping(p) => self.ping(p).await,
            client_frame::Frame::Typing(t) => self.typing(live, t).await,
            client_frame::Frame::Block(r) => Box::pin(self.block(live, r)).await,
            client_frame::Frame::Presence(r) => Box::pin(self.presence(live, r)).await,
            client_frame::Frame::Media(r) => Box::pin(self.media(live, r)).await,
        };
        Ok(done?)
    }

    /// Checks a message and queues it; its ✓ is sent when the writer answers (in order).
    async fn send(&mut self, live: &mut Live, mut s: SendMessage) -> Result<(), Gone> {
        let lim = &self.ctx.cfg.limits;
        let checked = (|| {
            check_id(
                IdKind::ClientMsgId,
                &s.client_msg_id,
                lim.max_id_bytes as usize,
            )?;
            if !s.from.is_empty() && s.from != live.who.user {
                return Err(ChatError::PermissionDenied(format!(
                    "authenticated as {:?}, cannot send as {:?}",
                    live.who.user, s.from
                )));
            }
            check_id(IdKind::Recipient, &s.to, lim.max_id_bytes as usize)?;
            let max_body = lim.max_body_bytes as usize;
            check_body(&s.body, max_body, s.attachment.is_some())?;
            // Last, so that a malformed send never costs the user a token.
            self.ctx.user_limits.check(&live.who.user, Limit::Messages)
        })();
        let checked = match checked {
            Ok(()) => self.checked_attachment(&live.who.user, &mut s).await,
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            return self.conn.refuse(&e, &s.client_msg_id).await;
        }
        let cmid = s.client_msg_id.clone();
        // Past every shedding level the writer's queue stays full: a send waits a bounded time
        // for room, then is refused with a retry hint (nothing was queued: the wait is
        // cancel-safe).
        let wait = Duration::from_millis(self.ctx.cfg.overload.send_wait_ms);
        let queue = self.ctx.writer.send(
            live.who.clone(),
            s.client_msg_id,
            s.to,
            s.body,
            s.attachment,
        );
        let queued = match tokio::time::timeout(wait, queue).await {
            Ok(q) => q,
            Err(_) => {
                metrics::counter!(admin::SENDS_REFUSED).increment(1);
                Err(ChatError::Overloaded(
                    "the node is overloaded: nothing was stored; retry".into(),
                ))
            }
        };
        match queued {
            Ok(pending) => {
                live.inflight
                    .push_back(Box::pin(async move { (cmid, pending.await) }));
                Ok(())
            }
            Err(e) => self.conn.refuse(&e, &cmid).await,
        }
    }

    /// Replaces a send's attachment with the checked one (its slot's type, size and hash), once
    /// its bytes are known to be in the store and right. A retry of a send already stored
    /// passes too: its file is still there.
    pub(super) async fn checked_attachment(
        &self,
        user: &str,
        s: &mut SendMessage,
    ) -> Result<(), ChatError> {
        if let Some(a) = s.attachment.take() {
            let now = chat_proto::now_ms();
            // Boxed: checking a file (reading it back from S3) is a large future, and this one
            // is part of every idle connection's state (see `on_message`).
            let checked = Box::pin(self.ctx.media.attachment(user, a, now)).await;
            crate::media::count("attachment", &checked);
            s.attachment = Some(checked?);
        }
        Ok(())
    }

    /// Forwards a typing event to the recipient's connected devices; nothing is stored.
    async fn typing(&mut self, live: &mut Live, t: Typing) -> Result<(), Gone> {
        let max_id = self.ctx.cfg.limits.max_id_bytes as usize;
        let checked = (|| {
            if !t.group.is_empty() {
                // To the group's home node, which shows it to the members online.
                check_id(IdKind::Group, &t.group, max_id)?;
                if !t.to.is_empty() {
                    return Err(ChatError::InvalidArgument(
                        "typing in a group names the group, not a recipient".into(),
                    ));
                }
            } else {
                check_id(IdKind::Recipient, &t.to, max_id)?;
            }
            if t.to == live.who.user {
                return Err(ChatError::InvalidArgument(
                    "typing to oneself is not forwarded".into(),
                ));
            }
            let state = match TypingState::try_from(t.state) {
                Ok(s @ (TypingState::Typing | TypingState::Stopped)) => s,
                _ => {
                    return Err(ChatError::InvalidArgument(format!(
                        "typing state {} is not TYPING or STOPPED",
                        t.state
                    )))
                }
            };
            self.ctx.user_limits.check(&live.who.user, Limit::Typing)?;
            if t.group.is_empty() && self.ctx.store.is_blocked(&live.who.user, &t.to)? {
                return Err(ChatError::Blocked(format!(
                    "you have blocked {}: unblock to type to them",
                    t.to
                )));
            }
            Ok(state)
        })();
        let state = match checked {
            Ok(s) => s,
            Err(e) => return self.conn.refuse(&e, "").await,
        };
        let to = if t.group.is_empty() {
            t.to
        } else {
            t.group.clone()
        };
        self.ctx.ephemeral.send(Signal {
            to,
            item: Some(signal::Item::Typing(TypingNotice {
                from: live.who.user.clone(),
                from_device: live.who.device.clone(),
                state: state as i32,
                expires_in_ms: self.ctx.ephemeral.typing_expiry_ms(),
                group: t.group,
            })),
        });
        Ok(())
    }

    /// Blocks or unblocks a user (through the writer: it is stored), then answers with the list.
    async fn block(&mut self, live: &mut Live, r: BlockRequest) -> Result<(), Gone> {
        let change = match r.op {
            Some(block_request::Op::Block(u)) => Some((u, true)),
            Some(block_request::Op::Unblock(u)) => Some((u, false)),
            Some(block_request::Op::List(_)) => None,
            None => {
                let e = ChatError::InvalidArgument("say block, unblock or list".into());
                return self.conn.refuse(&e, &r.request_id).await;
            }
        };
        if let Some((other, block)) = change {
            let max_id = self.ctx.cfg.limits.max_id_bytes as usize;
            let max = self.ctx.cfg.limits.max_blocked;
            let done = match check_id(IdKind::User, &other, max_id) {
                Ok(()) => {
                    self.ctx
                        .writer
                        .block(live.who.clone(), other, block, max)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                return self.conn.refuse(&e, &r.request_id).await;
            }
        }
        let (store, user) = (self.ctx.store.clone(), live.who.user.clone());
        let users = tokio::task::spawn_blocking(move || store.blocked(&user))
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))
            .and_then(|r| r.map_err(ChatError::from));
        match users {
            Ok(users) => {
                let answer = ServerFrame {
                    frame: Some(server_frame::Frame::Blocked(BlockList {
                        request_id: r.request_id,
                        users,
                    })),
                };
                self.conn.send(&answer).await
            }
            Err(e) => self.conn.refuse(&e, &r.request_id).await,
        }
    }

    async fn ack(&mut self, live: &mut Live, up_to: u64, read: bool) -> Result<(), Gone> {
        // A device can acknowledge only what it was sent; an ack that advances nothing costs
        // the writer nothing.
        let up_to = up_to.min(live.cursor.last_sent());
        let advances = up_to > live.acked || (read && up_to > live.read);
        if up_to == 0 || !advances {
            return Ok(());
        }
        live.acked = live.acked.max(up_to);
        if read {
            live.read = live.read.max(up_to);
        }
        // Under overload acks and reads are held back and merged (they are cumulative: the
        // latest covers the earlier ones), so a session never waits on them.
        let d = &mut live.deferred;
        if read {
            d.read = d.read.max(up_to);
        } else {
            d.ack = d.ack.max(up_to);
        }
        match self.flush_acks(live) {
            Ok(()) => Ok(()),
            Err(e) => self.conn.refuse(&e, "").await,
        }
    }

    /// Hands the held-back acks and reads to the writer unless the node sheds them now.
    pub(super) fn flush_acks(&mut self, live: &mut Live) -> Result<(), ChatError> {
        if live.deferred.is_empty() {
            return Ok(());
        }
        if self.ctx.load.level() >= Level::DeferReceipts {
            metrics::counter!(admin::ACKS_DEFERRED).increment(1);
            return Ok(());
        }
        let d = &mut live.deferred;
        // The read first: it acknowledges up to its seq too; an ack beyond it follows.
        if d.read > 0 {
            if !self.ctx.writer.try_ack(live.who.clone(), d.read, true)? {
                metrics::counter!(admin::ACKS_DEFERRED).increment(1);
                return Ok(());
            }
            d.ack = if d.ack > d.read { d.ack } else { 0 };
            d.read = 0;
        }
        if d.ack > 0 {
            if !self.ctx.writer.try_ack(live.who.clone(), d.ack, false)? {
                metrics::counter!(admin::ACKS_DEFERRED).increment(1);
                return Ok(());
            }
            d.ack = 0;
        }
        Ok(())
    }

    async fn history(&mut self, live: &mut Live, h: HistoryRequest) -> Result<(), Gone> {
        match history_page(&self.ctx, &live.who.user, h.before_seq, h.limit).await {
            Ok(mut page) => {
                page.request_id = h.request_id;
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::History(page)),
                };
                self.conn.send(&frame).await
            }
            Err(e) => self.conn.refuse(&e, &h.request_id).await,
        }
    }

    async fn ping(&mut self, p: Ping) -> Result<(), Gone> {
        let pong = ServerFrame {
            frame: Some(server_frame::Frame::Pong(Pong {
                nonce: p.nonce,
                server_time_ms: chat_proto::now_ms(),
            })),
        };
        self.conn.send(&pong).await
    }
}

/// A page of `user`'s inbox, newest first, before `before_seq` (0: the newest), at most `limit`
/// entries (0: the node's maximum); for the WebSocket and the HTTP API.
pub(crate) async fn history_page(
    ctx: &NodeContext,
    user: &str,
    before_seq: u64,
    limit: u32,
) -> Result<HistoryPage, ChatError> {
    let max = ctx.cfg.limits.max_history_page;
    if limit > max {
        return Err(ChatError::InvalidArgument(format!(
            "history limit {limit} is over {max}"
        )));
    }
    let limit = if limit == 0 { max } else { limit } as usize;
    let (store, user) = (ctx.store.clone(), user.to_string());
    let now = chat_proto::now_ms();
    let (entries, more, window) = tokio::task::spawn_blocking(move || {
        let (entries, more) = store.inbox_before(&user, before_seq, limit)?;
        Ok::<_, crate::store::engine::StorageError>((
            entries,
            more,
            store.history_window(&user, now)?,
        ))
    })
    .await
    .map_err(|e| ChatError::Internal(e.to_string()))??;
    // Newest first: past the first entry the user's setting no longer keeps, none is kept.
    let kept = |e: &&crate::store::StoredEntry| {
        window.is_none_or(|(upto, floor)| e.seq > upto || e.ts_ms >= floor)
    };
    let shown: Vec<_> = entries.iter().take_while(kept).collect();
    let more = more && shown.len() == entries.len();
    Ok(HistoryPage {
        request_id: String::new(),
        entries: shown.iter().map(|e| to_deliver(e.seq, &e.entry)).collect(),
        more,
    })
}
