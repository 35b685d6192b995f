//! Media frames: an upload slot (checked, recorded through the writer, then signed) or a
//! download URL (only for a file in the user's own inbox). The bytes never come here.

use chat_auth::Identity;
use chat_proto::v1::{media_request, server_frame, MediaReply, MediaRequest, ServerFrame};

use super::conn::Gone;
use super::session::{Live, Session};
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::rate::Limit;

impl Session {
    pub(super) async fn media(&mut self, live: &mut Live, r: MediaRequest) -> Result<(), Gone> {
        let request_id = r.request_id.clone();
        match media_answer(&self.ctx, &live.who, r.op).await {
            Ok(mut reply) => {
                reply.request_id = request_id;
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Media(reply)),
                };
                self.conn.send(&frame).await
            }
            Err(e) => self.conn.refuse(&e, &request_id).await,
        }
    }
}

/// A media request of `who` (WebSocket or HTTP API): an upload slot or a download URL.
pub(crate) async fn media_answer(
    ctx: &NodeContext,
    who: &Identity,
    op: Option<media_request::Op>,
) -> Result<MediaReply, ChatError> {
    let now = chat_proto::now_ms();
    let kind = match op {
        Some(media_request::Op::Download(_)) => "download",
        _ => "slot",
    };
    let answer = async {
        ctx.user_limits.check(&who.user, Limit::Media)?;
        match op {
            Some(media_request::Op::Upload(u)) => {
                let (id, record, reply) = ctx.media.slot(&u, now).await?;
                // Recorded before the URL is handed out: a message may name only a slot the
                // user's home node remembers.
                ctx.writer
                    .upload(who.clone(), id.to_string(), record)
                    .await?;
                Ok(reply)
            }
            Some(media_request::Op::Download(d)) => ctx.media.download(&who.user, &d, now).await,
            None => Err(ChatError::InvalidArgument("say upload or download".into())),
        }
    }
    .await;
    crate::media::count(kind, &answer);
    answer
}
