//! Groups, on the group's home node (the owner of its id): changes, sends fanned out to every
//! member's inbox (here, or through the outbox with one entry per member: the forwarder batches
//! them per node), events in the members' inboxes, and the delivered/read tallies of group
//! messages. On a member's home node: the user's list of its groups, kept from its events.
//!
//! Every check is made before the first write, so a refused request leaves the batch as it was.

use std::collections::BTreeSet;

use chat_auth::Identity;
use chat_proto::store::{
    inbox_entry, GroupMemberRecord, GroupState, InboxEntry, MyGroup, SentRecord,
};
use chat_proto::v1::{
    group_reply, group_request, GroupEvent, GroupEventKind, GroupInfo, GroupMember, GroupReceipts,
    GroupReceiptsQuery, GroupReply, GroupRequest, Message, Sent,
};
use prost::Message as _;

use super::batch::{Answer, Batch, BatchError};
use super::cache::CachedGroup;
use super::command::Reply;
use super::{moved, Writer};
use crate::error::ChatError;
use crate::store::groups::{TALLY_DELIVERED, TALLY_READ};
use crate::store::keys::*;
use crate::store::Cf;

/// What a group call asks of the group's home node.
#[derive(Debug, Clone)]
pub enum GroupOp {
    Send {
        client_msg_id: String,
        group: String,
        body: String,
        attachment: Option<chat_proto::v1::Attachment>,
    },
    Request(GroupRequest),
}

impl GroupOp {
    /// The group the call is about (`None`: a request that names none, such as `mine`).
    pub fn group(&self) -> Option<&str> {
        use group_request::Op;
        let g = match self {
            GroupOp::Send { group, .. } => group,
            GroupOp::Request(r) => match r.op.as_ref()? {
                Op::Create(c) => &c.group,
                Op::Rename(r) => &r.group,
                Op::Add(m) | Op::Remove(m) | Op::Promote(m) | Op::Demote(m) => &m.group,
                Op::Leave(r) | Op::Info(r) => &r.group,
                Op::Receipts(q) => &q.group,
                Op::Mine(_) => return None,
            },
        };
        Some(g)
    }
}

/// The answer to a group call.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupDone {
    Sent(Sent),
    Reply(GroupReply),
}

/// The limits a group's home node enforces (`[groups]`, `limits.max_id_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub max_members: u32,
    pub max_name_bytes: u32,
    pub max_id_bytes: u32,
}

impl Writer {
    pub(super) fn apply_group(
        &mut self,
        who: Identity,
        op: GroupOp,
        limits: GroupLimits,
        reply: Reply<GroupDone>,
        b: &mut Batch,
    ) {
        let Some(group) = op.group().map(str::to_string) else {
            let e = ChatError::InvalidArgument("the request names no group".into());
            let _ = reply.send(Err(e));
            return;
        };
        if !self.owns(&group, b) {
            let _ = reply.send(Err(moved(&group)));
            return;
        }
        match self.group_op(&who, &group, op, &limits, b) {
            Ok(done) => b.answers.push(Answer::Group(reply, done)),
            Err(e) => {
                // Refusals come before any write; a fault after writes abandons the batch.
                if e.is_internal() {
                    b.abort = Some(BatchError::Aborted(format!("group {group}: {e}")));
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn group_op(
        &mut self,
        who: &Identity,
        group: &str,
        op: GroupOp,
        limits: &GroupLimits,
        b: &mut Batch,
    ) -> Result<GroupDone, ChatError> {
        use group_request::Op;
        let request = match op {
            GroupOp::Send {
                client_msg_id,
                body,
                attachment,
                ..
            } => {
                return self
                    .group_send(who, group, client_msg_id, body, attachment, b)
                    .map(GroupDone::Sent)
            }
            GroupOp::Request(r) => r,
        };
        let user = who.user.as_str();
        let reply = match request.op {
            Some(Op::Create(c)) => {
                self.group_create(user, group, &c.name, c.members, limits, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Rename(r)) => {
                check_name(&r.name, limits)?;
                let members = self.admin_check(group, user)?;
                let g = self.cached_group(group)?;
                g.state.name = r.name.clone();
                let state = g.state.encode_to_vec();
                b.writes.put(Cf::Meta, group_key(group), state);
                let ev = (GroupEventKind::Renamed, Vec::new());
                self.group_event(group, user, ev, &members, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Add(m)) => {
                self.group_add(user, group, m.users, limits, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Remove(m)) => {
                self.group_remove(user, group, m.users, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Promote(m)) => {
                self.group_admins(user, group, m.users, true, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Demote(m)) => {
                self.group_admins(user, group, m.users, false, b)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Leave(_)) => {
                self.group_leave(user, group, b)?;
                None
            }
            Some(Op::Info(_)) => {
                self.member_check(group, user)?;
                Some(group_reply::Reply::Info(self.group_info(group)?))
            }
            Some(Op::Receipts(q)) => {
                self.member_check(group, user)?;
                Some(group_reply::Reply::Receipts(self.group_receipts(q)?))
            }
            Some(Op::Mine(_)) | None => {
                return Err(ChatError::InvalidArgument(
                    "not a request for a group's home node".into(),
                ))
            }
        };
        Ok(GroupDone::Reply(GroupReply {
            request_id: request.request_id,
            reply,
        }))
    }

    /// The cached group, which exists (checked by the caller).
    fn cached_group(&mut self, group: &str) -> Result<&mut CachedGroup, ChatError> {
        self.cache
            .group(&self.store, group)?
            .ok_or_else(|| ChatError::UnknownGroup(group.to_string()))
    }

    /// The group's members if `user` is one of them.
    fn member_check(&mut self, group: &str, user: &str) -> Result<Vec<String>, ChatError> {
        let g = self.cached_group(group)?;
        if !g.members.contains_key(user) {
            return Err(ChatError::NotAMember(group.to_string()));
        }
        Ok(g.members.keys().cloned().collect())
    }

    /// The group's members if `user` is one of its admins.
    fn admin_check(&mut self, group: &str, user: &str) -> Result<Vec<String>, ChatError> {
        let members = self.member_check(group, user)?;
        if !self.cached_group(group)?.members[user].admin {
            return Err(ChatError::NotAnAdmin(group.to_string()));
        }
        Ok(members)
    }

    fn group_info(&mut self, group: &str) -> Result<GroupInfo, ChatError> {
        let g = self.cached_group(group)?;
        Ok(GroupInfo {
            group: group.to_string(),
            name: g.state.name.clone(),
            created_by: g.state.created_by.clone(),
            created_ms: g.state.created_ms,
            members: g
                .members
                .iter()
                .map(|(user, r)| GroupMember {
                    user: user.clone(),
                    admin: r.admin,
                    joined_ms: r.joined_ms,
                })
                .collect(),
        })
    }

    fn group_create(
        &mut self,
        user: &str,
        group: &str,
        name: &str,
        members: Vec<String>,
        limits: &GroupLimits,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        check_name(name, limits)?;
        if let Some(g) = self.cache.group(&self.store, group)? {
            // The same create again (its first answer was lost on the way): already done.
            if g.state.created_by == user && g.state.name == name {
                return Ok(());
            }
            return Err(ChatError::InvalidArgument(format!("group {group} exists")));
        }
        let mut all = check_users(members, limits)?;
        all.insert(user.to_string());
        check_size(all.len(), limits)?;
        let now = b.now_ms;
        let state = GroupState {
            name: name.to_string(),
            created_by: user.to_string(),
            created_ms: now,
        };
        b.writes
            .put(Cf::Meta, group_key(group), state.encode_to_vec());
        let mut cached = CachedGroup {
            state,
            members: Default::default(),
        };
        for m in &all {
            let r = GroupMemberRecord {
                admin: m == user,
                joined_ms: now,
            };
            b.writes
                .put(Cf::Meta, member_key(group, m), r.encode_to_vec());
            cached.members.insert(m.clone(), r);
        }
        self.cache.groups.insert(group.to_string(), Some(cached));
        let all: Vec<String> = all.into_iter().collect();
        let ev = (GroupEventKind::Created, all.clone());
        self.group_event(group, user, ev, &all, b)
    }

    fn group_add(
        &mut self,
        user: &str,
        group: &str,
        users: Vec<String>,
        limits: &GroupLimits,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let asked = check_users(users, limits)?;
        self.admin_check(group, user)?;
        let g = self.cached_group(group)?;
        let new: Vec<String> = asked
            .into_iter()
            .filter(|u| !g.members.contains_key(u))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        check_size(g.members.len() + new.len(), limits)?;
        let r = GroupMemberRecord {
            admin: false,
            joined_ms: b.now_ms,
        };
        for u in &new {
            g.members.insert(u.clone(), r);
            b.writes
                .put(Cf::Meta, member_key(group, u), r.encode_to_vec());
        }
        // After the insert: the added users learn of it too, and nothing sent before it.
        let members: Vec<String> = g.members.keys().cloned().collect();
        self.group_event(group, user, (GroupEventKind::Added, new), &members, b)
    }

    fn group_remove(
        &mut self,
        user: &str,
        group: &str,
        users: Vec<String>,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let members = self.admin_check(group, user)?;
        if users.iter().any(|u| u == user) {
            return Err(ChatError::InvalidArgument(
                "an admin leaves a group with leave, not remove".into(),
            ));
        }
        let gone: Vec<String> = users
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|u| members.contains(u))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        // Before the removal: the removed users learn of it, and receive nothing after it.
        self.group_event(
            group,
            user,
            (GroupEventKind::Removed, gone.clone()),
            &members,
            b,
        )?;
        let g = self.cached_group(group)?;
        for u in &gone {
            g.members.remove(u);
            b.writes.delete(Cf::Meta, member_key(group, u));
        }
        Ok(())
    }

    fn group_leave(&mut self, user: &str, group: &str, b: &mut Batch) -> Result<(), ChatError> {
        let members = self.member_check(group, user)?;
        let ev = (GroupEventKind::Left, vec![user.to_string()]);
        self.group_event(group, user, ev, &members, b)?;
        let g = self.cached_group(group)?;
        g.members.remove(user);
        b.writes.delete(Cf::Meta, member_key(group, user));
        if g.members.is_empty() {
            // The last member left: the group is gone.
            b.writes.delete(Cf::Meta, group_key(group));
            self.cache.groups.insert(group.to_string(), None);
            return Ok(());
        }
        if g.members.values().any(|r| r.admin) {
            return Ok(());
        }
        // The last admin left: the longest-standing member becomes admin.
        let (heir, r) = g
            .members
            .iter_mut()
            .min_by_key(|(u, r)| (r.joined_ms, u.to_string()))
            .expect("members remain");
        r.admin = true;
        let (heir, record) = (heir.clone(), r.encode_to_vec());
        b.writes.put(Cf::Meta, member_key(group, &heir), record);
        let rest: Vec<String> = g.members.keys().cloned().collect();
        self.group_event(
            group,
            user,
            (GroupEventKind::Promoted, vec![heir]),
            &rest,
            b,
        )
    }

    fn group_admins(
        &mut self,
        user: &str,
        group: &str,
        users: Vec<String>,
        admin: bool,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let members = self.admin_check(group, user)?;
        let g = self.cached_group(group)?;
        let changed: Vec<String> = users
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|u| g.members.get(u).is_some_and(|r| r.admin != admin))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let admins_left = g
            .members
            .iter()
            .filter(|(u, r)| r.admin && (admin || !changed.contains(u)))
            .count();
        if admins_left == 0 {
            return Err(ChatError::InvalidArgument(
                "a group keeps at least one admin".into(),
            ));
        }
        for u in &changed {
            let r = g.members.get_mut(u).expect("a member");
            r.admin = admin;
            b.writes
                .put(Cf::Meta, member_key(group, u), r.encode_to_vec());
        }
        let kind = if admin {
            GroupEventKind::Promoted
        } else {
            GroupEventKind::Demoted
        };
        self.group_event(group, user, (kind, changed), &members, b)
    }

    fn group_receipts(&mut self, q: GroupReceiptsQuery) -> Result<GroupReceipts, ChatError> {
        let delivered = self.store.tallies(&q.group, &q.msg_id, TALLY_DELIVERED)?;
        let read = self.store.tallies(&q.group, &q.msg_id, TALLY_READ)?;
        Ok(GroupReceipts {
            delivered: delivered.len() as u32,
            read: read.len() as u32,
            delivered_by: if q.who { delivered } else { Vec::new() },
            read_by: if q.who { read } else { Vec::new() },
            group: q.group,
            msg_id: q.msg_id,
        })
    }

    /// A member's message: ✓ once every member's copy is in this batch (here or in the
    /// outbox); a retry gets the first ✓ again, even after the sender left.
    fn group_send(
        &mut self,
        who: &Identity,
        group: &str,
        client_msg_id: String,
        body: String,
        attachment: Option<chat_proto::v1::Attachment>,
        b: &mut Batch,
    ) -> Result<Sent, ChatError> {
        let key = group_send_key(group, &who.user, &who.device, &client_msg_id);
        if let Some(s) = b.sent.get(&key) {
            return Ok(s.clone());
        }
        if let Some(rec) = self
            .store
            .group_sent(group, &who.user, &who.device, &client_msg_id)?
        {
            return Ok(Sent {
                client_msg_id,
                msg_id: rec.msg_id,
                ts: rec.ts,
            });
        }
        let members = self.member_check(group, &who.user)?;
        let (ts, msg_id) = (b.now_ms, (self.env.new_id)());
        let entry = InboxEntry {
            entry: Some(inbox_entry::Entry::Message(Message {
                msg_id: msg_id.clone(),
                from: who.user.clone(),
                from_device: who.device.clone(),
                to: group.to_string(),
                body,
                ts,
                client_msg_id: client_msg_id.clone(),
                group: group.to_string(),
                attachment,
            })),
        };
        // The sender too: its other devices show what it sent.
        for m in &members {
            self.deliver_to(m, ts, &msg_id, entry.clone(), b)?;
        }
        let rec = SentRecord {
            msg_id: msg_id.clone(),
            ts,
        };
        b.writes.put(Cf::Dedup, &key, timed_value(ts, &rec));
        let sent = Sent {
            client_msg_id,
            msg_id,
            ts,
        };
        b.sent.insert(key, sent.clone());
        metrics::counter!(crate::admin::GROUP_SENDS).increment(1);
        metrics::counter!(crate::admin::GROUP_COPIES).increment(members.len() as u64);
        Ok(sent)
    }

    /// An event in the inbox of each of `to`.
    fn group_event(
        &mut self,
        group: &str,
        by: &str,
        (kind, users): (GroupEventKind, Vec<String>),
        to: &[String],
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let (ts, event_id) = (b.now_ms, (self.env.new_id)());
        let name = self.cached_group(group)?.state.name.clone();
        let entry = InboxEntry {
            entry: Some(inbox_entry::Entry::GroupEvent(GroupEvent {
                group: group.to_string(),
                kind: kind as i32,
                by: by.to_string(),
                users,
                name,
                ts,
                event_id: event_id.clone(),
            })),
        };
        for u in to {
            self.deliver_to(u, ts, &event_id, entry.clone(), b)?;
        }
        Ok(())
    }

    /// On a member's home node: an event in `user`'s inbox keeps its list of groups.
    pub(super) fn index_group(&mut self, user: &str, ev: &GroupEvent, b: &mut Batch) {
        let about_user = ev.users.iter().any(|u| u == user);
        let key = my_group_key(user, &ev.group);
        match GroupEventKind::try_from(ev.kind) {
            Ok(GroupEventKind::Created | GroupEventKind::Added) if about_user => {
                let mine = MyGroup {
                    name: ev.name.clone(),
                };
                b.writes.put(Cf::Meta, key, mine.encode_to_vec());
            }
            Ok(GroupEventKind::Renamed) => {
                let mine = MyGroup {
                    name: ev.name.clone(),
                };
                b.writes.put(Cf::Meta, key, mine.encode_to_vec());
            }
            Ok(GroupEventKind::Removed | GroupEventKind::Left) if about_user => {
                b.writes.delete(Cf::Meta, key);
            }
            _ => {}
        }
    }
}

fn check_name(name: &str, limits: &GroupLimits) -> Result<(), ChatError> {
    if name.trim().is_empty() || name.len() > limits.max_name_bytes as usize {
        return Err(ChatError::InvalidArgument(format!(
            "a group name is 1 to {} bytes",
            limits.max_name_bytes
        )));
    }
    Ok(())
}

/// Valid user ids, without repeats, in id order.
fn check_users(users: Vec<String>, limits: &GroupLimits) -> Result<BTreeSet<String>, ChatError> {
    if users.len() > limits.max_members as usize {
        return Err(too_many(users.len(), limits));
    }
    for u in &users {
        crate::validate::check_id(
            crate::validate::IdKind::User,
            u,
            limits.max_id_bytes as usize,
        )?;
    }
    Ok(users.into_iter().collect())
}

fn check_size(n: usize, limits: &GroupLimits) -> Result<(), ChatError> {
    if n > limits.max_members as usize {
        return Err(too_many(n, limits));
    }
    Ok(())
}

fn too_many(n: usize, limits: &GroupLimits) -> ChatError {
    ChatError::LimitReached(format!(
        "a group has at most {} members (groups.max_members); this would make {n}",
        limits.max_members
    ))
}
