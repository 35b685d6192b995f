//! Media frames: an upload slot (checked, recorded through the writer, then signed) or a
//! download URL (only for a file in the user's own inbox). The bytes never come here.

use chat_auth::Identity;
use chat_proto::v1::{media_request, server_frame, MediaReply, MediaRequest, ServerFrame};

use super::conn::Gone;
use super::session::{Live, Session};
use crate::error::ChatError;
use crate::rate::Limit;

impl Session {
    pub(super) async fn media(&mut self, live: &mut Live, r: MediaRequest) -> Result<(), Gone> {
        let request_id = r.request_id.clone();
        match self.media_answer(&live.who, r).await {
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

    async fn media_answer(&self, who: &Identity, r: MediaRequest) -> Result<MediaReply, ChatError> {
        self.ctx.user_limits.check(&who.user, Limit::Media)?;
        let now = chat_proto::now_ms();
        match r.op {
            Some(media_request::Op::Upload(u)) => {
                let (id, record, reply) = self.ctx.media.slot(&u, now).await?;
                // Recorded before the URL is handed out: a message may name only a slot the
                // user's home node remembers.
                self.ctx
                    .writer
                    .upload(who.clone(), id.to_string(), record)
                    .await?;
                Ok(reply)
            }
            Some(media_request::Op::Download(d)) => {
                self.ctx.media.download(&who.user, &d, now).await
            }
            None => Err(ChatError::InvalidArgument("say upload or download".into())),
        }
    }
}
