//! Node-to-node traffic: mutual-TLS QUIC (`tls`, `transport`), the outbox forwarder
//! (`forwarder`), and the handler for requests peers send to this node.

pub mod forwarder;
pub(crate) mod pipeline;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use chat_proto::cluster::{
    peer_request, peer_response, signal, ForwardAck, ForwardStatus, MirrorAck, PeerError, PeerPong,
    PeerRequest, PeerResponse, PresenceAnswer, SignalsAck,
};

use crate::context::NodeContext;

use crate::error::ChatError;

/// Most entries one forward request may carry (and events one signals request).
pub const MAX_FORWARD_ENTRIES: usize = 10_000;

/// A failed request's answer: the error's peer code (`ChatError::peer_code`) and its message.
pub(crate) fn error_response(epoch: u64, e: &ChatError) -> PeerResponse {
    PeerResponse {
        epoch,
        response: Some(peer_response::Response::Error(PeerError {
            message: e.to_string(),
            code: e.peer_code() as i32,
        })),
    }
}

fn presence_answer(epoch: u64, statuses: Vec<chat_proto::v1::PresenceStatus>) -> PeerResponse {
    PeerResponse {
        epoch,
        response: Some(peer_response::Response::Presence(PresenceAnswer {
            statuses,
        })),
    }
}

/// Answers one request from a peer while the node's context lives (`SHUTTING_DOWN` after).
pub async fn handle_weak(req: PeerRequest, ctx: std::sync::Weak<NodeContext>) -> PeerResponse {
    match ctx.upgrade() {
        Some(ctx) => handle(req, ctx).await,
        None => error_response(0, &ChatError::ShuttingDown),
    }
}

/// Answers one request from a peer; every answer carries this node's ring epoch.
pub async fn handle(req: PeerRequest, ctx: Arc<NodeContext>) -> PeerResponse {
    let (writer, routing) = (&ctx.writer, &ctx.routing);
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
                let e = ChatError::BadFrame(format!(
                    "{} entries is over the limit of {MAX_FORWARD_ENTRIES}",
                    f.entries.len()
                ));
                return error_response(epoch, &e);
            }
            let n = f.entries.len();
            let applied = writer.apply(f.entries).await;
            // The ring the entries were judged by is at most this one: read after applying.
            let epoch = routing.view.borrow().epoch();
            match applied {
                Ok(status) => {
                    metrics::counter!(crate::admin::FORWARD_RECEIVED).increment(n as u64);
                    let refused = status
                        .iter()
                        .filter(|s| **s == ForwardStatus::NotOwner)
                        .count();
                    if refused > 0 {
                        tracing::debug!(peer = %req.from_node, refused, epoch, sender_epoch = req.epoch, "forwarded entries for users this node does not own");
                    }
                    PeerResponse {
                        epoch,
                        response: Some(peer_response::Response::Forward(ForwardAck {
                            status: status.into_iter().map(|s| s as i32).collect(),
                        })),
                    }
                }
                Err(e) => error_response(epoch, &e),
            }
        }
        Some(peer_request::Request::Mirror(m)) => match writer.apply_stream(req.from_node, m).await
        {
            Ok(()) => PeerResponse {
                epoch,
                response: Some(peer_response::Response::Mirror(MirrorAck {
                    incarnation: ctx.store.incarnation().to_string(),
                })),
            },
            Err(e) => error_response(epoch, &e),
        },
        Some(peer_request::Request::Signals(s)) => {
            if s.items.len() > MAX_FORWARD_ENTRIES {
                let e = ChatError::BadFrame(format!(
                    "{} events is over the limit of {MAX_FORWARD_ENTRIES}",
                    s.items.len()
                ));
                return error_response(epoch, &e);
            }
            // Not stored: whoever of the recipients is connected here gets them now.
            let mut delivered = 0;
            for item in &s.items {
                match &item.item {
                    Some(signal::Item::Presence(n)) => ctx.presence.on_notice(n),
                    _ => delivered += usize::from(ctx.ephemeral.deliver_here(item)),
                }
            }
            PeerResponse {
                epoch,
                response: Some(peer_response::Response::Signals(SignalsAck {
                    delivered: delivered as u32,
                })),
            }
        }
        Some(peer_request::Request::PresenceQuery(q)) => {
            let statuses = q
                .users
                .iter()
                .take(MAX_FORWARD_ENTRIES)
                .map(|u| ctx.presence.status_for(u, &q.asker))
                .collect();
            presence_answer(epoch, statuses)
        }
        Some(peer_request::Request::PresenceWatch(w)) => {
            if w.interests.len() > MAX_FORWARD_ENTRIES {
                let e = ChatError::BadFrame(format!(
                    "{} interests is over the limit of {MAX_FORWARD_ENTRIES}",
                    w.interests.len()
                ));
                return error_response(epoch, &e);
            }
            presence_answer(epoch, ctx.presence.on_watch(&req.from_node, w))
        }
        Some(peer_request::Request::GroupCalls(g)) => {
            if g.calls.len() > MAX_FORWARD_ENTRIES {
                let e = ChatError::BadFrame(format!(
                    "{} calls is over the limit of {MAX_FORWARD_ENTRIES}",
                    g.calls.len()
                ));
                return error_response(epoch, &e);
            }
            match ctx.groups.serve(g.calls).await {
                Ok(results) => PeerResponse {
                    epoch: routing.view.borrow().epoch(),
                    response: Some(peer_response::Response::GroupResults(results)),
                },
                Err(e) => error_response(epoch, &e),
            }
        }
        None => error_response(epoch, &ChatError::UnknownFrame("peer request".into())),
    }
}
