//! The first frame of a connection: a Hello with a token. Other frames are answered with
//! UNAUTHENTICATED; a few bad tokens, or none in time, close the connection.

use std::time::Duration;

use chat_auth::{Identity, Verifier};
use chat_proto::v1::client_frame;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::conn::{Conn, Inbound};
use super::End;
use crate::error::ChatError;

/// Failed Hello frames before the connection is closed.
const MAX_HELLO_ATTEMPTS: u32 = 3;

/// The identity of a good Hello, and the seq the device says it has processed.
pub(super) async fn hello(
    conn: &mut Conn,
    verifier: &Verifier,
    timeout: Duration,
    shutdown: &mut broadcast::Receiver<()>,
) -> Result<(Identity, u64), End> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0;
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout_at(deadline, conn.next()) => m,
            _ = shutdown.recv() => {
                let _ = conn.send(&ChatError::ShuttingDown.to_frame("")).await;
                return Err(End::Close(CloseCode::Away, "node shutting down"));
            }
        };
        let msg = match msg {
            Err(_) => {
                let _ = conn.send(&ChatError::Unauthenticated.to_frame("")).await;
                return Err(End::Close(CloseCode::Policy, "no hello in time"));
            }
            Ok(None) => return Err(End::Gone),
            Ok(Some(m)) => m?,
        };
        let frame = match conn.decode(msg) {
            Inbound::Frame(f) => f,
            Inbound::Control => continue,
            Inbound::Closed => return Err(End::PeerClosed),
            Inbound::Bad(e) => {
                conn.refuse(&e, "").await?;
                conn.flush().await?;
                continue;
            }
        };
        match frame.frame {
            Some(client_frame::Frame::Hello(h)) => match verifier.verify(&h.token) {
                Ok(who) => return Ok((who, h.resume_after)),
                Err(e) => {
                    let e = ChatError::from(e);
                    tracing::debug!(error = %e, "hello refused");
                    conn.refuse(&e, "").await?;
                    attempts += 1;
                    if attempts >= MAX_HELLO_ATTEMPTS {
                        return Err(End::Close(CloseCode::Policy, "authentication failed"));
                    }
                }
            },
            _ => conn.refuse(&ChatError::Unauthenticated, "").await?,
        }
        conn.flush().await?;
    }
}
