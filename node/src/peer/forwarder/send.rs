//! One forward request and what its answer means to the forwarder.

use std::time::Duration;

use chat_proto::cluster::{
    peer_request, peer_response, ForwardEntry, ForwardStatus, PeerErrorCode, PeerRequest,
};

use crate::peer::transport::{Peers, RequestError};
use crate::writer::WriterHandle;

/// A peer's answer to a forward: one status per entry, and the peer's ring epoch, so that a
/// `NOT_OWNER` can be told apart: a peer ahead of this node means this node's ring is stale
/// (the entries wait for the new ring), a peer behind means the peer's is (retry it later).
pub(super) struct ForwardReply {
    pub statuses: Vec<ForwardStatus>,
    pub epoch: u64,
}

/// The registered peers and their addresses, to notice a peer that (re)registers.
pub(super) fn registered(v: &chat_cluster::ClusterView) -> Vec<(String, String)> {
    v.nodes
        .values()
        .map(|n| (n.id.clone(), n.quic_addr.clone()))
        .collect()
}

pub(super) async fn forward(
    peers: &Peers,
    dest: &str,
    req: &PeerRequest,
    timeout: Duration,
) -> Result<ForwardReply, RequestError> {
    let n = match &req.request {
        Some(peer_request::Request::Forward(f)) => f.entries.len(),
        _ => 0,
    };
    let resp = peers.request(dest, req, timeout).await?;
    match resp.response {
        Some(peer_response::Response::Forward(ack)) if ack.status.len() == n => Ok(ForwardReply {
            statuses: ack
                .status
                .into_iter()
                .map(|s| ForwardStatus::try_from(s).unwrap_or(ForwardStatus::Unspecified))
                .collect(),
            epoch: resp.epoch,
        }),
        // The peer failed the request. Part of it may be stored (a storage error mid-batch), so
        // it counts as unknown: retried, never given up.
        Some(peer_response::Response::Error(e)) => {
            let code = PeerErrorCode::try_from(e.code).unwrap_or(PeerErrorCode::Unspecified);
            Err(RequestError::Unknown(format!(
                "{dest} failed the request ({code:?}, its ring epoch {}): {}",
                resp.epoch, e.message
            )))
        }
        other => Err(RequestError::Unknown(format!(
            "{dest}: unexpected answer {other:?}"
        ))),
    }
}

/// Entries whose recipient this node owns now (the ring changed under them): applied locally,
/// answered as a peer would (with this node's epoch after applying).
pub(super) async fn apply_here(
    writer: &WriterHandle,
    entries: Vec<ForwardEntry>,
    view: &tokio::sync::watch::Receiver<chat_cluster::ClusterView>,
) -> Result<ForwardReply, RequestError> {
    // A failed command may have been partly applied: unknown, never given up.
    let statuses = writer
        .apply(entries)
        .await
        .map_err(|e| RequestError::Unknown(e.to_string()))?;
    let epoch = view.borrow().epoch();
    Ok(ForwardReply { statuses, epoch })
}
