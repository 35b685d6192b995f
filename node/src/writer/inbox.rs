//! 1:1 messages: sends (deduplicated by client_msg_id), appends to an inbox here or the outbox
//! for another node, device attach and acks.

use chat_auth::Identity;
use chat_proto::cluster::{forward_entry, ForwardEntry};
use chat_proto::store::{inbox_entry, DeviceState, InboxEntry, SentRecord};
use chat_proto::v1::{Message, ReceiptKind, Sent};
use prost::Message as _;
use std::sync::Arc;

use super::batch::{Answer, Batch};
use super::command::{Attached, ClientCmd};
use super::{moved, Writer};
use crate::error::ChatError;
use crate::store::keys::*;
use crate::store::Cf;

impl Writer {
    pub(super) fn apply_client(&mut self, cmd: ClientCmd, b: &mut Batch) {
        match cmd {
            ClientCmd::Send { from, reply, .. } if !self.owns(&from.user, b) => {
                let _ = reply.send(Err(moved(&from.user)));
            }
            ClientCmd::Send {
                from,
                client_msg_id,
                to,
                body,
                attachment,
                reply,
            } => match self.send(&from, client_msg_id, to, body, attachment, b) {
                Ok(sent) => b.answers.push(Answer::Sent(reply, sent)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            ClientCmd::Attach { who, reply, .. } if !self.owns(&who.user, b) => {
                let _ = reply.send(Err(moved(&who.user)));
            }
            ClientCmd::Attach {
                who,
                max_devices,
                reply,
            } => match self.attach(&who, max_devices, b) {
                Ok(a) => b.answers.push(Answer::Attached(reply, a)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            // A session of a user that just moved away: its acks are made again at the new home.
            ClientCmd::Ack { who, .. } if !self.owns(&who.user, b) => {}
            ClientCmd::Ack { who, up_to, read } => {
                if let Err(e) = self.ack(&who, up_to, read, b) {
                    tracing::warn!(user = %who.user, device = %who.device, error = %e, "ack failed");
                }
            }
            ClientCmd::LastSeen { user, .. } if !self.owns(&user, b) => {}
            ClientCmd::LastSeen { user, ts } => {
                b.writes
                    .put_relaxed(Cf::Meta, last_seen_key(&user), ts.to_be_bytes());
            }
            ClientCmd::Upload { who, reply, .. } if !self.owns(&who.user, b) => {
                let _ = reply.send(Err(moved(&who.user)));
            }
            ClientCmd::Upload {
                who,
                media_id,
                record,
                reply,
            } => {
                let key = upload_key(&who.user, &media_id);
                b.writes.put(Cf::Dedup, key, timed_value(b.now_ms, &record));
                b.answers.push(Answer::Done(reply));
            }
            ClientCmd::Settings { who, reply, .. } if !self.owns(&who.user, b) => {
                let _ = reply.send(Err(moved(&who.user)));
            }
            ClientCmd::Settings { who, change, reply } => {
                match self.change_settings(&who.user, change, b) {
                    Ok(()) => b.answers.push(Answer::Done(reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ClientCmd::Group {
                who,
                op,
                limits,
                reply,
            } => self.apply_group(who, op, limits, reply, b),
            ClientCmd::Block { who, reply, .. } if !self.owns(&who.user, b) => {
                let _ = reply.send(Err(moved(&who.user)));
            }
            ClientCmd::Block {
                who,
                other,
                block,
                max,
                reply,
            } => match self.set_block(&who.user, &other, block, max, b) {
                Ok(()) => b.answers.push(Answer::Done(reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    /// Appends `entry` to `user`'s inbox here if this node owns `user`, or puts it in the outbox
    /// for the owner (deduplicated there by `id`).
    pub(super) fn deliver_to(
        &mut self,
        user: &str,
        ts: i64,
        id: &str,
        entry: InboxEntry,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        // Owned here and nothing older for the user waits in the outbox (after a move brought
        // the user here, earlier entries may still be on their way): append directly. Not for a
        // held user: a command of another user (an ack making receipts) reaches it here, and
        // the old owner's stream may still write the seqs this node would take. Such an entry
        // goes through the outbox, durable in this batch; the forwarder hands it back to this
        // writer (a forwarded entry), which holds it like any command for that user.
        if self.owns(user, b)
            && !self.held(user)
            && !b.outboxed_to.contains(user)
            && !self.outbox.pending(user)
        {
            if let Some(inbox_entry::Entry::Message(m)) = &entry.entry {
                // Blocking is between two users: a group's messages still arrive.
                if m.group.is_empty() && self.blocked(user, &m.from, b)? {
                    tracing::trace!(
                        to = user,
                        id,
                        "sender blocked by the recipient: not delivered"
                    );
                    return Ok(());
                }
            }
            let seq = self.append(user, ts, entry, b)?;
            tracing::trace!(to = user, id, seq, "appended here");
            return Ok(());
        }
        tracing::trace!(to = user, id, "to the outbox");
        let item = match entry.entry {
            Some(inbox_entry::Entry::Message(m)) => forward_entry::Item::Message(m),
            Some(inbox_entry::Entry::Receipt(r)) => forward_entry::Item::Receipt(r),
            Some(inbox_entry::Entry::GroupEvent(e)) => forward_entry::Item::GroupEvent(e),
            // Failed entries are only ever written to the sender's inbox on its own node.
            other => {
                return Err(ChatError::Internal(format!(
                    "entry cannot be forwarded: {other:?}"
                )))
            }
        };
        self.outbox_put(
            ForwardEntry {
                to: user.to_string(),
                id: id.to_string(),
                created_ms: ts,
                item: Some(item),
            },
            b,
        );
        Ok(())
    }

    /// Appends `entry` to `user`'s inbox in this batch and returns its seq.
    pub(super) fn append(
        &mut self,
        user: &str,
        ts: i64,
        entry: InboxEntry,
        b: &mut Batch,
    ) -> Result<u64, ChatError> {
        if let Some(inbox_entry::Entry::GroupEvent(ev)) = &entry.entry {
            self.index_group(user, ev, b);
        }
        let u = self.cache.user(&self.store, user)?;
        let seq = u.state.next_seq;
        u.state.next_seq += 1;
        b.writes
            .put(Cf::Inbox, inbox_key(user, seq), timed_value(ts, &entry));
        b.mark_dirty(user);
        b.appended
            .push((user.to_string(), seq, ts, Arc::new(entry)));
        Ok(seq)
    }

    /// Returns the Sent to answer with once the batch is on disk: the stored one for a retry,
    /// a new one otherwise.
    fn send(
        &mut self,
        from: &Identity,
        client_msg_id: String,
        to: String,
        body: String,
        attachment: Option<chat_proto::v1::Attachment>,
        b: &mut Batch,
    ) -> Result<Sent, ChatError> {
        let dkey = dedup_key(&from.user, &from.device, &client_msg_id);
        if let Some(s) = b.sent.get(&dkey) {
            return Ok(s.clone());
        }
        if let Some(rec) = self
            .store
            .sent_record(&from.user, &from.device, &client_msg_id)?
        {
            return Ok(Sent {
                client_msg_id,
                msg_id: rec.msg_id,
                ts: rec.ts,
            });
        }
        if self.blocked(&from.user, &to, b)? {
            return Err(ChatError::Blocked(format!(
                "you have blocked {to}: unblock to send"
            )));
        }
        let ts = b.now_ms;
        let msg_id = (self.env.new_id)();
        let message = Message {
            msg_id: msg_id.clone(),
            from: from.user.clone(),
            from_device: from.device.clone(),
            to: to.clone(),
            body,
            ts,
            client_msg_id: client_msg_id.clone(),
            group: String::new(),
            attachment,
        };
        let entry = InboxEntry {
            entry: Some(inbox_entry::Entry::Message(message)),
        };
        // A user with other devices finds its own message in its inbox too (not for a message
        // to itself, which is there already).
        let own_copy =
            to != from.user && self.cache.user(&self.store, &from.user)?.state.devices > 1;
        if own_copy {
            self.deliver_to(&from.user, ts, &msg_id, entry.clone(), b)?;
        }
        self.deliver_to(&to, ts, &msg_id, entry, b)?;
        let rec = SentRecord {
            msg_id: msg_id.clone(),
            ts,
        };
        b.writes.put(Cf::Dedup, &dkey, timed_value(ts, &rec));
        let sent = Sent {
            client_msg_id,
            msg_id,
            ts,
        };
        b.sent.insert(dkey, sent.clone());
        Ok(sent)
    }

    fn device(
        &mut self,
        key: &[u8],
        who: &Identity,
        b: &Batch,
    ) -> Result<Option<DeviceState>, ChatError> {
        if let Some(d) = b.devices.get(key).or_else(|| self.cache.devices.get(key)) {
            return Ok(*d);
        }
        let d = self.store.device_state(&who.user, &who.device)?;
        self.cache.devices.insert(key.to_vec(), d);
        Ok(d)
    }

    /// Writes a device's state, marking it seen now.
    fn put_device(&self, key: Vec<u8>, mut state: DeviceState, b: &mut Batch) {
        state.last_seen_ms = b.now_ms;
        b.writes.put(Cf::Meta, &key, state.encode_to_vec());
        b.devices.insert(key, Some(state));
    }

    fn delete_device(&self, key: Vec<u8>, b: &mut Batch) {
        b.writes.delete(Cf::Meta, &key);
        b.devices.insert(key, None);
    }

    fn attach(
        &mut self,
        who: &Identity,
        max_devices: u32,
        b: &mut Batch,
    ) -> Result<Attached, ChatError> {
        let now = b.now_ms;
        let key = device_key(&who.user, &who.device);
        let state = match self.device(&key, who, b)? {
            Some(d) => d,
            None => {
                // Devices unseen for the whole retention have nothing left to receive: forget them.
                let floor = now - self.retention_ms;
                let mut live = Vec::new();
                for (name, d) in self.store.devices(&who.user)? {
                    let k = device_key(&who.user, &name);
                    let d = match b.devices.get(&k) {
                        Some(Some(d)) => *d,
                        Some(None) => continue,
                        None => d,
                    };
                    if d.last_seen_ms < floor {
                        self.delete_device(k, b);
                    } else {
                        live.push(d);
                    }
                }
                let pending_new = b.new_devices.get(&who.user).copied().unwrap_or(0);
                if live.len() + pending_new >= max_devices as usize {
                    return Err(ChatError::TooManyDevices { max: max_devices });
                }
                *b.new_devices.entry(who.user.clone()).or_default() += 1;
                let u = self.cache.user(&self.store, &who.user)?;
                u.state.devices = (live.len() + pending_new + 1) as u32;
                b.mark_dirty(&who.user);
                // A new device starts where the user's least advanced device stands: whatever no
                // device has yet is delivered to it too; older entries are history to page.
                DeviceState {
                    cursor: live.iter().map(|d| d.cursor).min().unwrap_or(0),
                    first_seen_ms: now,
                    last_seen_ms: now,
                }
            }
        };
        let cursor = state.cursor;
        self.put_device(key, state, b);
        // Users from before the count was kept are counted once, on their next connection.
        if self.cache.user(&self.store, &who.user)?.state.devices == 0 {
            let n = self.store.devices(&who.user)?.len().max(1) as u32;
            self.cache.user(&self.store, &who.user)?.state.devices = n;
            b.mark_dirty(&who.user);
        }
        let u = self.cache.user(&self.store, &who.user)?;
        Ok(Attached {
            cursor,
            inbox_seq: u.state.next_seq - 1,
            read_seq: u.state.read_upto,
        })
    }

    fn ack(
        &mut self,
        who: &Identity,
        up_to: u64,
        read: bool,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let u = self.cache.user(&self.store, &who.user)?;
        // Only entries already on disk can have been delivered; a client acking beyond them must
        // not skip receipts for entries appended later.
        let up_to = up_to.min(u.committed_next - 1);
        let (delivered_from, read_from) = (u.state.delivered_upto, u.state.read_upto);
        let key = device_key(&who.user, &who.device);
        // A connected device whose record was forgotten (unseen for the retention before this
        // connection) is registered again rather than refused.
        let mut dev = self.device(&key, who, b)?.unwrap_or(DeviceState {
            cursor: 0,
            first_seen_ms: b.now_ms,
            last_seen_ms: 0,
        });
        if up_to > dev.cursor {
            dev.cursor = up_to;
            self.put_device(key, dev, b);
        }
        if up_to > delivered_from {
            self.receipts(
                &who.user,
                delivered_from + 1,
                up_to,
                ReceiptKind::Delivered,
                b,
            )?;
        }
        if read && up_to > read_from {
            self.receipts(&who.user, read_from + 1, up_to, ReceiptKind::Read, b)?;
        }
        let u = self.cache.user(&self.store, &who.user)?;
        let before = (u.state.delivered_upto, u.state.read_upto);
        u.state.delivered_upto = u.state.delivered_upto.max(up_to);
        if read {
            u.state.read_upto = u.state.read_upto.max(up_to);
        }
        let changed = before != (u.state.delivered_upto, u.state.read_upto);
        if u.state.read_upto > before.1 {
            // Every device of the user shows the conversations read.
            b.read_states
                .push((who.user.clone(), u.state.read_upto, who.device.clone()));
        }
        let done = u.state.delivered_upto.min(u.state.read_upto);
        if changed {
            b.mark_dirty(&who.user);
        }
        self.cache.covered(&who.user, done);
        self.trim_history(&who.user, b)
    }
}
