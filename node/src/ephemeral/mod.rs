//! Ephemeral events (typing, presence changes): handed to the recipient's connected devices, here or on the
//! recipient's home node over QUIC; never stored and never retried.
//!
//! Every step is bounded and drops rather than waits: a queue per peer node
//! (`ephemeral.peer_queue`), one request in flight per peer with a deadline
//! (`ephemeral.peer_timeout_ms`), a queue per device (`ephemeral.device_queue`, in the hub). So
//! typing is the first traffic shed when anything backs up, and it can never hold up a message.
//! Each drop is counted in `chat_shed_total{kind, reason}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::cluster::{peer_request, peer_response, signal, PeerRequest, Signal, Signals};
use chat_proto::v1::{server_frame, ServerFrame, TypingNotice};
use tokio::sync::mpsc;

use crate::admin;
use crate::config::EphemeralSection;
use crate::hub::Hub;
use crate::overload::{Level, Load};
use crate::peer::transport::Peers;
use crate::routing::Routing;
use crate::store::Store;

pub struct Ephemeral {
    routing: Routing,
    hub: Arc<Hub>,
    /// Block lists: a blocked user's events are not shown.
    store: Arc<Store>,
    /// Typing is the first traffic shed when the node is loaded.
    load: Load,
    /// `None` standalone: every user is here.
    peers: Option<Arc<Peers>>,
    cfg: EphemeralSection,
    /// The queue to each peer node, with its sending task (started on first use).
    lanes: Mutex<HashMap<String, mpsc::Sender<Signal>>>,
}

/// The `kind` label of an event, for metrics.
fn kind(s: &Signal) -> &'static str {
    match &s.item {
        Some(signal::Item::Typing(_)) => "typing",
        Some(signal::Item::Presence(_)) => "presence",
        None => "none",
    }
}

fn shed(kind: &'static str, reason: &'static str, n: usize) {
    metrics::counter!(admin::SHED, "kind" => kind, "reason" => reason).increment(n as u64);
}

impl Ephemeral {
    pub fn new(
        routing: Routing,
        hub: Arc<Hub>,
        store: Arc<Store>,
        load: Load,
        peers: Option<Arc<Peers>>,
        cfg: EphemeralSection,
    ) -> Arc<Ephemeral> {
        Arc::new(Ephemeral {
            routing,
            hub,
            store,
            load,
            peers,
            cfg,
            lanes: Mutex::new(HashMap::new()),
        })
    }

    pub fn typing_expiry_ms(&self) -> u32 {
        self.cfg.typing_expiry_ms
    }

    /// Sends `s` towards the home node of its recipient. Never waits: an event that cannot be
    /// queued is dropped (and counted).
    pub fn send(self: &Arc<Self>, s: Signal) {
        if self.load.level() >= Level::ShedTyping {
            shed(kind(&s), "overload", 1);
            return;
        }
        let owner = {
            let v = self.routing.view.borrow();
            v.owner(&s.to).map(str::to_string)
        };
        match (owner, &self.peers) {
            (Some(o), Some(_)) if o != self.routing.self_id => self.queue(&o, s),
            // Here, or no ring yet (then nobody can be connected anywhere to care).
            _ => {
                self.deliver_here(&s);
            }
        }
    }

    /// Sends `s` to `node` (an event for that node itself, such as a presence change for its
    /// watchers). Never waits.
    pub fn send_to(self: &Arc<Self>, node: &str, s: Signal) {
        if self.peers.is_some() && node != self.routing.self_id {
            self.queue(node, s);
        }
    }

    /// Hands `s` to its recipient's devices connected to this node; whether any took it.
    /// Nothing from a user the recipient blocked is shown. (Presence changes go to the
    /// presence service instead.)
    pub fn deliver_here(self: &Arc<Self>, s: &Signal) -> bool {
        let (frame, from) = match &s.item {
            Some(signal::Item::Typing(t)) if !t.group.is_empty() && s.to == t.group => {
                return self.to_members(&t.group, t);
            }
            Some(signal::Item::Typing(t)) => (server_frame::Frame::Typing(t.clone()), &t.from),
            Some(signal::Item::Presence(_)) | None => return false,
        };
        if !self.hub.is_connected(&s.to) {
            return false;
        }
        if self.load.level() >= Level::ShedTyping {
            shed(kind(s), "overload", 1);
            return false;
        }
        match self.store.is_blocked(&s.to, from) {
            Ok(false) => {}
            Ok(true) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "reading a block list failed; event dropped");
                return false;
            }
        }
        let frame = Arc::new(ServerFrame { frame: Some(frame) });
        let k = kind(s);
        let reached = self.hub.notify(&s.to, &frame, k);
        if reached > 0 {
            metrics::counter!(admin::EPHEMERAL_DELIVERED, "kind" => k).increment(reached as u64);
        }
        reached > 0
    }

    /// On a group's home node: typing in the group, for each other member (on its own home
    /// node). Nothing from a non-member; whether the group exists here.
    fn to_members(self: &Arc<Self>, group: &str, t: &TypingNotice) -> bool {
        let members = match self.store.group_members(group) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, group, "reading a group's members failed; typing dropped");
                return false;
            }
        };
        if !members.iter().any(|(u, _)| *u == t.from) {
            return false;
        }
        for (member, _) in members {
            if member != t.from {
                self.send(Signal {
                    to: member,
                    item: Some(signal::Item::Typing(t.clone())),
                });
            }
        }
        true
    }

    fn queue(self: &Arc<Self>, node: &str, s: Signal) {
        let k = kind(&s);
        let mut lanes = self.lanes.lock().expect("lanes lock");
        let tx = lanes.entry(node.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.cfg.peer_queue);
            if let Some(peers) = &self.peers {
                // The lane holds what it needs, not this service: it ends when the service
                // (the lane's sender) is dropped, and nothing keeps the node's parts alive.
                let lane = Lane {
                    peers: peers.clone(),
                    routing: self.routing.clone(),
                    node: node.to_string(),
                    timeout: Duration::from_millis(self.cfg.peer_timeout_ms),
                    batch: self.cfg.peer_batch,
                };
                tokio::spawn(lane.run(rx));
            }
            tx
        });
        if tx.try_send(s).is_err() {
            shed(k, "peer_queue_full", 1);
        }
    }
}

/// The sending side of the events for one peer node.
struct Lane {
    peers: Arc<Peers>,
    routing: Routing,
    node: String,
    timeout: Duration,
    batch: usize,
}

impl Lane {
    /// Sends the events queued for `node`, one request at a time, each with a deadline; a
    /// request that fails is dropped with its events.
    async fn run(self, mut rx: mpsc::Receiver<Signal>) {
        let (peers, node, timeout) = (&self.peers, &self.node, self.timeout);
        let mut items = Vec::with_capacity(self.batch);
        while rx.recv_many(&mut items, self.batch).await > 0 {
            let epoch = self.routing.view.borrow().epoch();
            let req = PeerRequest {
                from_node: self.routing.self_id.clone(),
                epoch,
                request: Some(peer_request::Request::Signals(Signals {
                    items: std::mem::take(&mut items),
                })),
            };
            let failed = match peers.request(node, &req, timeout).await {
                Ok(resp) => match resp.response {
                    Some(peer_response::Response::Signals(_)) => None,
                    other => Some(format!("refused: {other:?}")),
                },
                Err(e) => Some(e.to_string()),
            };
            if let (Some(why), Some(peer_request::Request::Signals(s))) = (failed, req.request) {
                tracing::debug!(peer = %node, %why, events = s.items.len(), "events not handed over; dropped");
                for item in &s.items {
                    shed(kind(item), "peer_failed", 1);
                }
            }
        }
    }
}
