//! The presence request of a connection: query users, watch a list of users, or change this
//! user's own presence settings.

use chat_proto::v1::{
    presence_request, server_frame, PresenceList, PresenceRequest, PresenceStatus, ServerFrame,
};

use super::conn::Gone;
use super::session::{Live, Session};
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::rate::Limit;
use crate::validate::{check_id, IdKind};
use crate::writer::SettingsChange;

impl Session {
    pub(super) async fn presence(
        &mut self,
        live: &mut Live,
        r: PresenceRequest,
    ) -> Result<(), Gone> {
        let answer = self.presence_answer(live, r.op).await;
        match answer {
            Ok(statuses) => {
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Presence(PresenceList {
                        request_id: r.request_id,
                        statuses,
                    })),
                };
                self.conn.send(&frame).await
            }
            Err(e) => self.conn.refuse(&e, &r.request_id).await,
        }
    }

    async fn presence_answer(
        &mut self,
        live: &mut Live,
        op: Option<presence_request::Op>,
    ) -> Result<Vec<PresenceStatus>, ChatError> {
        let presence = self.ctx.presence.clone();
        let user = live.who.user.clone();
        match op {
            None => Err(ChatError::InvalidArgument(
                "say query, watch or settings".into(),
            )),
            Some(presence_request::Op::Settings(s)) => {
                let change = SettingsChange {
                    hide_last_seen: Some(s.hide_last_seen),
                    history_days: None,
                };
                self.ctx.writer.settings(live.who.clone(), change).await?;
                Ok(Vec::new())
            }
            Some(presence_request::Op::Query(q)) => {
                let users = checked_users(&self.ctx, &user, q.users, presence.max_query())?;
                Ok(presence.query(&user, &users).await)
            }
            Some(presence_request::Op::Watch(w)) => {
                let users = checked_users(&self.ctx, &user, w.users, presence.max_watch())?;
                let sink = live.sub.signals.clone();
                Ok(presence
                    .watch(live.presence.conn, &user, sink, &users)
                    .await)
            }
        }
    }
}

/// The users of a query or watch list: valid ids, at most `max`, each once; counted against
/// the user's presence rate.
pub(crate) fn checked_users(
    ctx: &NodeContext,
    user: &str,
    mut users: Vec<String>,
    max: usize,
) -> Result<Vec<String>, ChatError> {
    if users.len() > max {
        return Err(ChatError::InvalidArgument(format!(
            "{} users is over the limit of {max}",
            users.len()
        )));
    }
    let max_id = ctx.cfg.limits.max_id_bytes as usize;
    for u in &users {
        check_id(IdKind::User, u, max_id)?;
    }
    let mut seen = std::collections::HashSet::new();
    users.retain(|u| seen.insert(u.clone()));
    ctx.user_limits.check(&user.to_string(), Limit::Presence)?;
    Ok(users)
}
