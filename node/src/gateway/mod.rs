//! Client connections: [`conn`] (frames over the WebSocket, write deadlines), [`hello`]
//! (authentication), [`session`] (one task per connection: attach, then frames in and entries
//! out), [`delivery`] (the no-gap, no-duplicate cursor, with no I/O) and [`handlers`] (one per
//! frame kind). [`moved`] tells the sessions of users a ring change moves away to redirect them.

mod conn;
mod delivery;
mod groups;
mod handlers;
mod hello;
mod media;
mod moved;
mod presence;
mod session;
pub(crate) mod tls;

pub use moved::signal_moved;
// What the HTTP API asks the same way as a connection does.
pub(crate) use groups::{group_answer, my_groups};
pub(crate) use handlers::history_page;
pub(crate) use media::media_answer;
pub(crate) use presence::checked_users;

use std::net::SocketAddr;
use std::sync::Arc;

use chat_proto::store::{inbox_entry, InboxEntry};
use chat_proto::v1::{deliver, Deliver};
use tls::ClientStream;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::admin;
use crate::context::NodeContext;

/// Why a connection ended.
pub(crate) enum End {
    /// The socket failed or the client vanished without a close frame.
    Gone,
    /// The client sent a close frame: it gets the echo the protocol asks for (RFC 6455 §5.5.1),
    /// which the WebSocket layer queued when it read the client's frame.
    PeerClosed,
    /// We close it with this code and reason.
    Close(CloseCode, &'static str),
}

/// Serves one connection until it ends or the node shuts down.
pub async fn serve(
    ws: Box<WebSocketStream<ClientStream>>,
    peer: SocketAddr,
    ctx: Arc<NodeContext>,
    shutdown: broadcast::Receiver<()>,
) {
    let span = tracing::info_span!(
        "conn",
        %peer,
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    async move {
        metrics::gauge!(admin::CONNECTIONS).increment(1.0);
        let (conn, end) = session::run(ws, ctx, shutdown).await;
        metrics::gauge!(admin::CONNECTIONS).decrement(1.0);
        Box::pin(conn.finish(end)).await;
        tracing::debug!("connection closed");
    }
    .instrument(span)
    .await
}

pub fn to_deliver(seq: u64, entry: &InboxEntry) -> Deliver {
    Deliver {
        seq,
        entry: entry.entry.clone().map(|e| match e {
            inbox_entry::Entry::Message(m) => deliver::Entry::Message(m),
            inbox_entry::Entry::Receipt(r) => deliver::Entry::Receipt(r),
            inbox_entry::Entry::Failed(f) => deliver::Entry::Failed(f),
            inbox_entry::Entry::GroupEvent(e) => deliver::Entry::GroupEvent(e),
        }),
    }
}
