//! The hostile cases about media attachments: a message naming a file this user was never
//! given, and a download URL for a file that is not in this user's inbox. Both must be refused
//! (`UNKNOWN_MEDIA`); a ✓ or a URL is a violation.

use std::time::Duration;

use chat_client::v1::{media_request, server_frame, Attachment, MediaDownload, Send};

use super::{error_codes, token, Ctx};
use crate::history::{HostileRecord, HOSTILE_MARKER};

/// A well-formed media id nobody was given (ids are `m` + a UUIDv7 the node makes).
fn made_up_id(n: u32) -> String {
    format!("m{:012x}7000800000000000{n:04x}", chat_proto::now_ms())
}

impl Ctx {
    /// A message to a victim whose attachment names a file this user never uploaded.
    pub(super) async fn foreign_media(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let v = &self.cfg.victims;
        let to = &v[n as usize % v.len()];
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let send = Send {
            client_msg_id: format!("foreign-media-{n}"),
            to: to.clone(),
            body: format!("{HOSTILE_MARKER} a file that is not mine"),
            attachment: Some(Attachment {
                media_id: made_up_id(n),
                ..Default::default()
            }),
            ..Default::default()
        };
        Self::send_one(&mut c, send, r).await?;
        r.detail = format!("to {to}");
        Ok(())
    }

    /// Download URLs for a file in nobody's inbox of this user: at seq 1 and as its own upload.
    pub(super) async fn steal_media(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let media_id = made_up_id(n);
        let mut frames = Vec::new();
        for seq in [1, 0] {
            let id = format!("steal-{seq}");
            let op = media_request::Op::Download(MediaDownload {
                media_id: media_id.clone(),
                seq,
            });
            c.media_request(&id, op).await.map_err(|e| e.to_string())?;
            r.sent += 1;
            let (got, closed) =
                Self::collect(&mut c, Duration::from_secs(10), |f| match &f.frame {
                    Some(server_frame::Frame::Media(m)) => m.request_id == id,
                    Some(server_frame::Frame::Error(e)) => e.r#ref == id,
                    _ => false,
                })
                .await;
            frames.extend(got);
            r.closed = closed;
            if r.closed.is_some() {
                break;
            }
        }
        // A URL granted counts as a ✓ here: the checker allows none.
        r.acked = frames
            .iter()
            .filter(|f| matches!(f.frame, Some(server_frame::Frame::Media(_))))
            .count() as u32;
        r.errors = error_codes(&frames);
        r.detail = format!("media {media_id}");
        Ok(())
    }
}
