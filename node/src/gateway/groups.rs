//! Group frames: a send to a group and group requests. Both go to the group's home node
//! (`crate::groups`); a user's list of its groups is answered here, from its own records.

use chat_proto::v1::{
    group_reply, group_request, server_frame, GroupList, GroupReply, GroupRequest, GroupSummary,
    Send as SendMessage, ServerFrame,
};

use chat_auth::Identity;

use super::conn::Gone;
use super::session::{Live, Session};
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::groups::{request_call, send_call};
use crate::rate::Limit;
use crate::validate::{check_body, check_id, IdKind};
use crate::writer::GroupDone;

impl Session {
    /// Checks a group message and queues it for the group's home node; its ✓ is sent in order
    /// with the connection's other sends.
    pub(super) async fn group_send(
        &mut self,
        live: &mut Live,
        mut s: SendMessage,
    ) -> Result<(), Gone> {
        let max_id = self.ctx.cfg.limits.max_id_bytes as usize;
        let checked = (|| {
            check_id(IdKind::ClientMsgId, &s.client_msg_id, max_id)?;
            if !s.from.is_empty() && s.from != live.who.user {
                return Err(ChatError::PermissionDenied(format!(
                    "authenticated as {:?}, cannot send as {:?}",
                    live.who.user, s.from
                )));
            }
            check_id(IdKind::Group, &s.group, max_id)?;
            if !s.to.is_empty() && s.to != s.group {
                return Err(ChatError::InvalidArgument(
                    "a group message names its group, not a recipient".into(),
                ));
            }
            let max_body = self.ctx.cfg.limits.max_body_bytes as usize;
            check_body(&s.body, max_body, s.attachment.is_some())?;
            let limits = &self.ctx.user_limits;
            limits.check(&live.who.user, Limit::GroupSends)?;
            limits.check(&live.who.user, Limit::Messages)
        })();
        let checked = match checked {
            Ok(()) => self.checked_attachment(&live.who.user, &mut s).await,
            Err(e) => Err(e),
        };
        let cmid = s.client_msg_id.clone();
        if let Err(e) = checked {
            return self.conn.refuse(&e, &cmid).await;
        }
        match self.ctx.groups.call(live.who.clone(), send_call(s)).await {
            Ok(answer) => {
                live.inflight.push_back(Box::pin(async move {
                    let sent = match answer.await {
                        Ok(GroupDone::Sent(s)) => Ok(s),
                        Ok(GroupDone::Reply(_)) => {
                            Err(ChatError::Internal("a send answered as a request".into()))
                        }
                        Err(e) => Err(e),
                    };
                    (cmid, sent)
                }));
                Ok(())
            }
            Err(e) => self.conn.refuse(&e, &cmid).await,
        }
    }

    /// A group request: answered with a GroupReply once the group's home node has it.
    pub(super) async fn group(&mut self, live: &mut Live, mut r: GroupRequest) -> Result<(), Gone> {
        let request_id = r.request_id.clone();
        let answer = match group_answer(&self.ctx, live.who.clone(), &mut r).await {
            Ok(a) => a,
            Err(e) => return self.conn.refuse(&e, &request_id).await,
        };
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Group(answer)),
        };
        self.conn.send(&frame).await
    }
}

/// A group request of `who` (WebSocket or HTTP API), answered once the group's home node has it.
pub(crate) async fn group_answer(
    ctx: &NodeContext,
    who: Identity,
    r: &mut GroupRequest,
) -> Result<GroupReply, ChatError> {
    use group_request::Op;
    ctx.user_limits.check(&who.user, Limit::GroupRequests)?;
    let max_id = ctx.cfg.limits.max_id_bytes as usize;
    match &mut r.op {
        None => {
            return Err(ChatError::InvalidArgument(
                "say create, rename, add, remove, leave, promote, demote, info, mine or receipts"
                    .into(),
            ))
        }
        Some(Op::Mine(_)) => return my_groups(ctx, who.user, &r.request_id).await,
        // The group's id decides its home node: made here, before the call is routed.
        Some(Op::Create(c)) => c.group = format!("g-{}", uuid::Uuid::now_v7()),
        Some(Op::Receipts(q)) => {
            check_id(IdKind::Group, &q.group, max_id)?;
            check_id(IdKind::MsgId, &q.msg_id, max_id)?;
        }
        Some(_) => {}
    }
    let call = request_call(r.clone())
        .ok_or_else(|| ChatError::InvalidArgument("not a group call".into()))?;
    if !matches!(r.op, Some(Op::Create(_))) {
        if let Some(group) = crate::writer::GroupOp::Request(r.clone()).group() {
            check_id(IdKind::Group, group, max_id)?;
        }
    }
    match ctx.groups.call(who, call).await?.await? {
        GroupDone::Reply(reply) => Ok(reply),
        GroupDone::Sent(_) => Err(ChatError::Internal("a request answered as a send".into())),
    }
}

/// The groups `user` is a member of, from its own records.
pub(crate) async fn my_groups(
    ctx: &NodeContext,
    user: String,
    request_id: &str,
) -> Result<GroupReply, ChatError> {
    let store = ctx.store.clone();
    let mine = tokio::task::spawn_blocking(move || store.my_groups(&user))
        .await
        .map_err(|e| ChatError::Internal(e.to_string()))??;
    Ok(GroupReply {
        request_id: request_id.to_string(),
        reply: Some(group_reply::Reply::Groups(GroupList {
            groups: mine
                .into_iter()
                .map(|(group, m)| GroupSummary {
                    group,
                    name: m.name,
                })
                .collect(),
        })),
    })
}
