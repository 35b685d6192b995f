//! Group calls from this node's users: to the group's home node (the owner of the group's
//! id), which alone changes a group and fans its messages out (`crate::writer::groups`).
//!
//! A call for a group owned here goes straight to the writer. A call for a group owned
//! elsewhere joins the queue of that node: one task per peer sends the queued calls in order,
//! one request at a time (`GroupCalls`), so one sender's messages reach the group's node in the
//! order the sender made them. A request that gets no answer in `groups.call_timeout_ms` is
//! sent again (nothing behind it goes first) for up to 30 s, then its calls fail with
//! UNAVAILABLE: the client retries, and a send retried with the same client_msg_id is stored
//! once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_auth::Identity;
use chat_proto::cluster::{
    group_call, group_result, peer_request, peer_response, GroupCall, GroupCalls, GroupResult,
    GroupResults, PeerRequest,
};
use chat_proto::v1::{group_request, GroupRequest, Send as SendMessage};
use tokio::sync::{mpsc, oneshot};

use crate::admin;
use crate::config::GroupsSection;
use crate::error::ChatError;
use crate::peer::transport::Peers;
use crate::routing::Routing;
use crate::writer::{GroupDone, GroupLimits, GroupOp, WriterHandle};

/// How long a lane sends the same calls again while their node does not answer, and the
/// waits between tries.
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The answer to a group call, once the group's home node has it stored.
pub type GroupAnswer = Pin<Box<dyn Future<Output = Result<GroupDone, ChatError>> + Send>>;

pub struct Groups {
    routing: Routing,
    writer: WriterHandle,
    /// `None` standalone: every group is here.
    peers: Option<Arc<Peers>>,
    cfg: GroupsSection,
    limits: GroupLimits,
    /// The queue to each peer node, with its sending task (started on first use).
    lanes: Mutex<HashMap<String, mpsc::Sender<Call>>>,
}

struct Call {
    who: Identity,
    call: group_call::Call,
    reply: oneshot::Sender<Result<GroupDone, ChatError>>,
}

fn counted(route: &'static str, r: &Result<GroupDone, ChatError>) {
    let result = match r {
        Ok(_) => "ok",
        Err(ChatError::Unavailable(_) | ChatError::ShuttingDown) => "unavailable",
        Err(_) => "refused",
    };
    metrics::counter!(admin::GROUP_CALLS, "route" => route, "result" => result).increment(1);
}

impl Groups {
    pub fn new(
        routing: Routing,
        writer: WriterHandle,
        peers: Option<Arc<Peers>>,
        cfg: GroupsSection,
        max_id_bytes: u32,
    ) -> Arc<Groups> {
        let limits = GroupLimits {
            max_members: cfg.max_members,
            max_name_bytes: cfg.max_name_bytes,
            max_id_bytes,
        };
        Arc::new(Groups {
            routing,
            writer,
            peers,
            cfg,
            limits,
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Queues a call of `who` for the group's home node, in order with this node's other calls
    /// to that node; the answer resolves once it is stored there (or refused).
    pub async fn call(
        self: &Arc<Self>,
        who: Identity,
        call: group_call::Call,
    ) -> Result<GroupAnswer, ChatError> {
        let op = to_op(&call);
        let group = op
            .group()
            .ok_or_else(|| ChatError::InvalidArgument("the request names no group".into()))?
            .to_string();
        let owner = {
            let v = self.routing.view.borrow();
            v.owner(&group).map(str::to_string)
        };
        match (owner, &self.peers) {
            (Some(o), Some(_)) if o != self.routing.self_id => {
                let (reply, rx) = oneshot::channel();
                self.queue(&o, Call { who, call, reply })?;
                Ok(Box::pin(async move {
                    let r = rx.await.unwrap_or(Err(ChatError::ShuttingDown));
                    counted("remote", &r);
                    r
                }))
            }
            (None, Some(_)) => Err(ChatError::Unavailable("the cluster has no ring yet".into())),
            _ => {
                let pending = self.writer.group(who, op, self.limits).await?;
                Ok(Box::pin(async move {
                    let r = pending.await;
                    counted("local", &r);
                    r
                }))
            }
        }
    }

    /// Calls from another node for groups this node owns: queued to the writer in their order,
    /// answered in that order.
    pub async fn serve(&self, calls: Vec<GroupCall>) -> Result<GroupResults, ChatError> {
        let mut pending = Vec::with_capacity(calls.len());
        for c in calls {
            let Some(call) = c.call else {
                pending.push(Err(ChatError::UnknownFrame("group call".into())));
                continue;
            };
            let who = Identity {
                user: c.user,
                device: c.device,
            };
            pending.push(Ok(self
                .writer
                .group(who, to_op(&call), self.limits)
                .await?));
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            let r = match p {
                Ok(p) => p.await,
                Err(e) => Err(e),
            };
            let result = match r {
                Ok(GroupDone::Sent(s)) => group_result::Result::Sent(s),
                Ok(GroupDone::Reply(r)) => group_result::Result::Reply(r),
                // The user's own error, as its node would have given it (retry hints too).
                Err(e) => match e.to_frame("").frame {
                    Some(chat_proto::v1::server_frame::Frame::Error(e)) => {
                        group_result::Result::Error(e)
                    }
                    _ => unreachable!("to_frame makes an error frame"),
                },
            };
            results.push(GroupResult {
                result: Some(result),
            });
        }
        Ok(GroupResults { results })
    }

    fn queue(self: &Arc<Self>, node: &str, call: Call) -> Result<(), ChatError> {
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let tx = lanes.entry(node.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.cfg.call_queue as usize);
            if let Some(peers) = &self.peers {
                let lane = Lane {
                    peers: peers.clone(),
                    routing: self.routing.clone(),
                    node: node.to_string(),
                    timeout: Duration::from_millis(self.cfg.call_timeout_ms),
                    batch: self.cfg.call_batch as usize,
                };
                tokio::spawn(lane.run(rx));
            }
            tx
        });
        tx.try_send(call).map_err(|_| {
            ChatError::Overloaded(format!(
                "too many group calls waiting for node {node}; retry"
            ))
        })
    }
}

/// The writer's form of a call.
fn to_op(call: &group_call::Call) -> GroupOp {
    match call {
        group_call::Call::Send(s) => GroupOp::Send {
            client_msg_id: s.client_msg_id.clone(),
            group: s.group.clone(),
            body: s.body.clone(),
            attachment: s.attachment.clone(),
        },
        group_call::Call::Request(r) => GroupOp::Request(r.clone()),
    }
}

/// A send as a call.
pub fn send_call(s: SendMessage) -> group_call::Call {
    group_call::Call::Send(s)
}

/// A request as a call (`mine` is answered by the user's own node, never a call).
pub fn request_call(r: GroupRequest) -> Option<group_call::Call> {
    match r.op {
        Some(group_request::Op::Mine(_)) | None => None,
        Some(_) => Some(group_call::Call::Request(r)),
    }
}

/// The sending side of the calls for one peer node.
struct Lane {
    peers: Arc<Peers>,
    routing: Routing,
    node: String,
    timeout: Duration,
    batch: usize,
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<Call>) {
        let mut calls = Vec::with_capacity(self.batch);
        while rx.recv_many(&mut calls, self.batch).await > 0 {
            let (wire, replies): (Vec<GroupCall>, Vec<_>) = calls
                .drain(..)
                .map(|c| {
                    let wire = GroupCall {
                        user: c.who.user,
                        device: c.who.device,
                        call: Some(c.call),
                    };
                    (wire, c.reply)
                })
                .unzip();
            let n = wire.len();
            let req = PeerRequest {
                from_node: self.routing.self_id.clone(),
                epoch: self.routing.view.borrow().epoch(),
                request: Some(peer_request::Request::GroupCalls(GroupCalls {
                    calls: wire,
                })),
            };
            let unavailable = |why: &str| {
                ChatError::Unavailable(format!(
                    "the group's home node {} did not answer ({why}); retry",
                    self.node
                ))
            };
            // A request that got no answer may still be applied later (a paused node handles its
            // streams when it resumes, in any order): the same calls go again, and nothing
            // after them, until the node answers (retried sends are stored once), so a later
            // request can never overtake them. Only after `RETRY_FOR` are they failed.
            let first = tokio::time::Instant::now();
            let mut wait = RETRY_MIN;
            let results = loop {
                let answer = match self.peers.request(&self.node, &req, self.timeout).await {
                    Ok(resp) => match resp.response {
                        Some(peer_response::Response::GroupResults(r)) if r.results.len() == n => {
                            Ok(r.results)
                        }
                        Some(peer_response::Response::Error(e)) => Err(e.message),
                        other => Err(format!("unexpected answer {other:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Err(why) if first.elapsed() + wait < RETRY_FOR => {
                        tracing::debug!(peer = %self.node, calls = n, %why, "group calls again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                    other => break other,
                }
            };
            match results {
                Ok(results) => {
                    for (r, reply) in results.into_iter().zip(replies) {
                        let r = match r.result {
                            Some(group_result::Result::Sent(s)) => Ok(GroupDone::Sent(s)),
                            Some(group_result::Result::Reply(r)) => Ok(GroupDone::Reply(r)),
                            Some(group_result::Result::Error(e)) => Err(ChatError::Relayed(e)),
                            None => Err(unavailable("an empty result")),
                        };
                        let _ = reply.send(r);
                    }
                }
                Err(why) => {
                    tracing::debug!(peer = %self.node, calls = n, %why, "group calls failed");
                    for reply in replies {
                        let _ = reply.send(Err(unavailable(&why)));
                    }
                }
            }
        }
    }
}
