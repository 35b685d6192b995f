//! A client's WebSocket as frames: decode (with the frame cap), encode in the encoding the
//! client last used (binary: protobuf, text: JSON), and writes with a deadline.

use std::time::Duration;

use super::tls::ClientStream;
use chat_proto::v1::{ClientFrame, ServerFrame};
use chat_proto::Encoding;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::End;
use crate::error::ChatError;

/// What one message from the client is.
// Made and matched once per frame, never stored: a box would cost more than the move.
#[allow(clippy::large_enum_variant)]
pub(super) enum Inbound {
    Frame(ClientFrame),
    /// A ping or pong: the WebSocket layer answers it.
    Control,
    /// The client sent a close frame.
    Closed,
    /// A frame to refuse with this error (the connection stays).
    Bad(ChatError),
}

/// The socket could not take a write in time (or at all): the connection is over.
#[derive(Debug)]
pub(super) struct Gone;

impl From<Gone> for End {
    fn from(_: Gone) -> End {
        End::Gone
    }
}

pub(super) struct Conn {
    /// Boxed: it is passed down several async calls, and each would otherwise hold a copy of
    /// its few hundred bytes in every idle connection's task.
    ws: Box<WebSocketStream<ClientStream>>,
    enc: Encoding,
    /// Frames fed to the socket since the last flush.
    unflushed: bool,
    write_timeout: Duration,
    max_frame: usize,
}

impl Conn {
    pub(super) fn new(
        ws: Box<WebSocketStream<ClientStream>>,
        write_timeout: Duration,
        max_frame: usize,
    ) -> Conn {
        Conn {
            ws,
            enc: Encoding::Json,
            unflushed: false,
            write_timeout,
            max_frame,
        }
    }

    /// The next message, `None` once the stream ended; a failed read ends the connection.
    pub(super) async fn next(&mut self) -> Option<Result<WsMessage, End>> {
        self.ws.next().await.map(|r| r.map_err(read_error))
    }

    pub(super) fn decode(&mut self, msg: WsMessage) -> Inbound {
        let (enc, data): (Encoding, &[u8]) = match &msg {
            WsMessage::Text(t) => (Encoding::Json, t.as_bytes()),
            WsMessage::Binary(b) => (Encoding::Protobuf, b),
            WsMessage::Close(_) => return Inbound::Closed,
            _ => return Inbound::Control,
        };
        self.enc = enc;
        if data.len() > self.max_frame {
            return Inbound::Bad(ChatError::FrameTooLarge {
                size: data.len(),
                max: self.max_frame,
            });
        }
        match chat_proto::decode::<ClientFrame>(enc, data) {
            Ok(f) => Inbound::Frame(f),
            Err(e) => Inbound::Bad(e.into()),
        }
    }

    /// Queues a frame; `flush` sends what is queued.
    pub(super) async fn send(&mut self, frame: &ServerFrame) -> Result<(), Gone> {
        let bytes = chat_proto::encode(self.enc, frame);
        let msg = match self.enc {
            Encoding::Protobuf => WsMessage::binary(bytes),
            Encoding::Json => {
                WsMessage::text(String::from_utf8(bytes).expect("serde_json writes UTF-8"))
            }
        };
        self.feed(msg).await
    }

    /// Answers a refused request with its error (and the request's reference, if any).
    pub(super) async fn refuse(&mut self, e: &ChatError, reference: &str) -> Result<(), Gone> {
        tracing::debug!(error = %e, "request refused");
        self.send(&e.to_frame(reference)).await
    }

    pub(super) async fn ping(&mut self) -> Result<(), Gone> {
        self.feed(WsMessage::Ping(Default::default())).await
    }

    async fn feed(&mut self, msg: WsMessage) -> Result<(), Gone> {
        self.unflushed = true;
        match tokio::time::timeout(self.write_timeout, self.ws.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// A client that does not take what the node writes within `client.write_timeout_ms` is
    /// dropped: it must not hold a session (or the node's shutdown) hostage.
    pub(super) async fn flush(&mut self) -> Result<(), Gone> {
        if !self.unflushed {
            return Ok(());
        }
        self.unflushed = false;
        match tokio::time::timeout(self.write_timeout, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Ends the connection as `end` says.
    pub(super) async fn finish(mut self, end: End) {
        let timeout = self.write_timeout;
        match end {
            End::Close(code, reason) => {
                let _ = self.flush().await;
                let close = WebSocketStream::close(
                    &mut self.ws,
                    Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    }),
                );
                let _ = tokio::time::timeout(timeout, close).await;
            }
            End::PeerClosed => {
                // The echo is queued already; only a flush sends it (sending a close frame of
                // our own would fail: the peer has closed).
                let _ = tokio::time::timeout(timeout, SinkExt::flush(&mut self.ws)).await;
            }
            End::Gone => {}
        }
    }
}

/// How a failed read ends the connection: a frame over the hard cap gets 1009 (message too
/// big), a text frame that is not UTF-8 gets 1007 (invalid frame payload data, RFC 6455 §8.1).
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => End::Close(CloseCode::Size, "frame too large"),
        Error::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not valid UTF-8"),
        _ => End::Gone,
    }
}
