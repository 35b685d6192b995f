//! Node-to-node traffic: mutual-TLS QUIC (`tls`, `transport`), the outbox forwarder
//! (`forwarder`), and the handler for requests peers send to this node.

pub mod forwarder;
pub mod tls;
pub mod transport;

use chat_proto::cluster::{
    peer_request, peer_response, ForwardAck, MirrorAck, PeerError, PeerPong, PeerRequest,
    PeerResponse,
};
use tokio::sync::oneshot;

use crate::commit::{Command, CommitterHandle, Routing};

/// Most entries one forward request may carry.
pub const MAX_FORWARD_ENTRIES: usize = 10_000;

pub(crate) fn error_response(epoch: u64, message: String) -> PeerResponse {
    PeerResponse {
        epoch,
        response: Some(peer_response::Response::Error(PeerError { message })),
    }
}

/// Answers one request from a peer.
pub async fn handle(
    req: PeerRequest,
    committer: CommitterHandle,
    routing: Routing,
) -> PeerResponse {
    let epoch = routing.view.borrow().epoch();
    match req.request {
        Some(peer_request::Request::Ping(_)) => PeerResponse {
            epoch,
            response: Some(peer_response::Response::Pong(PeerPong {
                node: routing.self_id.clone(),
            })),
        },
        Some(peer_request::Request::Forward(f)) => {
            if f.entries.len() > MAX_FORWARD_ENTRIES {
                return error_response(
                    epoch,
                    format!(
                        "{} entries is over the limit of {MAX_FORWARD_ENTRIES}",
                        f.entries.len()
                    ),
                );
            }
            let n = f.entries.len();
            let (reply, rx) = oneshot::channel();
            if let Err(e) = committer
                .submit(Command::Apply {
                    entries: f.entries,
                    reply,
                })
                .await
            {
                return error_response(epoch, e.to_string());
            }
            match rx.await {
                Ok(Ok(status)) => {
                    metrics::counter!(crate::admin::FORWARD_RECEIVED).increment(n as u64);
                    PeerResponse {
                        epoch,
                        response: Some(peer_response::Response::Forward(ForwardAck {
                            status: status.into_iter().map(|s| s as i32).collect(),
                        })),
                    }
                }
                Ok(Err(e)) => error_response(epoch, e.to_string()),
                Err(_) => error_response(epoch, "node shutting down".into()),
            }
        }
        Some(peer_request::Request::Mirror(m)) => {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Mirror {
                from: req.from_node,
                req: m,
                reply,
            };
            if let Err(e) = committer.submit(cmd).await {
                return error_response(epoch, e.to_string());
            }
            match rx.await {
                Ok(Ok(())) => PeerResponse {
                    epoch,
                    response: Some(peer_response::Response::Mirror(MirrorAck {})),
                },
                Ok(Err(e)) => error_response(epoch, e.to_string()),
                Err(_) => error_response(epoch, "node shutting down".into()),
            }
        }
        None => error_response(epoch, "unknown request kind".into()),
    }
}
