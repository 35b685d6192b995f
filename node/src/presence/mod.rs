//! Presence: who is online, when users were last seen, and live updates for the users a
//! connection watches. Never on the message path: nothing here waits for the disk, and every
//! queue drops (and counts) rather than grows.
//!
//! - A user's home node keeps its status ([`table`]): connections and activity come from its
//!   sessions; a user goes offline when its window passes (one timer task) or its last device
//!   leaves. Its last seen is stored coarsely, once per offline transition, with no fsync.
//! - A connection's watch list lives on its own node ([`watchers::Local`]). For users homed
//!   elsewhere, the node registers its interest at their home ([`watchers::Remote`] there),
//!   renewed periodically and at once after a ring change, so interests follow the ring.
//! - A change is pushed to local watchers through their devices' event queues and to interested
//!   nodes as ephemeral events, filtered by the user's block list and last-seen setting.

pub mod table;
pub mod watchers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_proto::cluster::{
    peer_request, peer_response, signal, PeerRequest, PresenceInterest, PresenceNotice,
    PresenceQuery, PresenceWatch, Signal,
};
use chat_proto::v1::{server_frame, PresenceStatus, PresenceUpdate, ServerFrame};
use tokio::sync::{broadcast, Notify};

use crate::admin;
use crate::config::PresenceSection;
use crate::ephemeral::Ephemeral;
use crate::overload::{Level, Load};
use crate::peer::transport::Peers;
use crate::routing::Routing;
use crate::store::Store;
use crate::writer::WriterHandle;
use table::{Change, Status, Table};
use watchers::{Local, Remote};

/// Where a watching connection's updates go: its device's event queue.
pub type Sink = Arc<crate::hub::Signals>;

pub struct Presence {
    routing: Routing,
    cfg: PresenceSection,
    table: Mutex<Table>,
    /// Wakes the expiry task when a user comes online (a new deadline).
    wake: Notify,
    local: Mutex<Local<Sink>>,
    remote: Mutex<Remote>,
    store: Arc<Store>,
    writer: WriterHandle,
    ephemeral: Arc<Ephemeral>,
    peers: Option<Arc<Peers>>,
    next_conn: AtomicU64,
    /// Updates are the second traffic shed when the node is loaded (after typing).
    load: Load,
}

fn unknown(user: &str) -> PresenceStatus {
    PresenceStatus {
        user: user.to_string(),
        online: false,
        last_seen_ms: 0,
    }
}

impl Presence {
    pub fn new(
        routing: Routing,
        cfg: PresenceSection,
        store: Arc<Store>,
        writer: WriterHandle,
        ephemeral: Arc<Ephemeral>,
        peers: Option<Arc<Peers>>,
        load: Load,
    ) -> Arc<Presence> {
        Arc::new(Presence {
            table: Mutex::new(Table::new(cfg.online_window_ms as i64)),
            routing,
            cfg,
            wake: Notify::new(),
            local: Mutex::new(Local::new()),
            remote: Mutex::new(Remote::default()),
            store,
            writer,
            ephemeral,
            peers,
            next_conn: AtomicU64::new(1),
            load,
        })
    }

    pub fn max_watch(&self) -> usize {
        self.cfg.max_watch as usize
    }

    pub fn max_query(&self) -> usize {
        self.cfg.max_query as usize
    }

    /// A device of `user` connected; the id names the connection's watch list.
    pub fn connected(&self, user: &str) -> u64 {
        self.table.lock().expect("presence lock").connected(user);
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection `conn` of `user` ended.
    pub fn disconnected(self: &Arc<Self>, user: &str, conn: u64) {
        self.local.lock().expect("watchers lock").remove(conn);
        let change = self.table.lock().expect("presence lock").disconnected(user);
        self.publish(change.into_iter().collect());
    }

    /// `user` did something on a connected device.
    pub fn active(self: &Arc<Self>, user: &str) {
        let now = chat_proto::now_ms();
        let change = self.table.lock().expect("presence lock").active(user, now);
        if let Some(c) = change {
            self.wake.notify_one();
            self.publish(vec![c]);
        }
    }

    /// `user`'s status as `asker` may see it, for a user homed here: nothing for a user that
    /// blocked the asker, no last seen for one that hides it.
    pub fn status_for(&self, user: &str, asker: &str) -> PresenceStatus {
        let live = self.table.lock().expect("presence lock").status(user);
        let seen = || -> Result<PresenceStatus, crate::store::engine::StorageError> {
            if self.store.is_blocked(user, asker)? {
                return Ok(unknown(user));
            }
            let hidden = self.store.settings(user)?.hide_last_seen;
            let status = match live {
                Some(s) if s.online || s.last_seen_ms > 0 => s,
                _ => Status {
                    online: false,
                    last_seen_ms: self.store.last_seen(user)?.unwrap_or(0),
                },
            };
            Ok(PresenceStatus {
                user: user.to_string(),
                online: status.online,
                last_seen_ms: if hidden { 0 } else { status.last_seen_ms },
            })
        };
        seen().unwrap_or_else(|e| {
            tracing::warn!(user, error = %e, "reading presence records failed");
            unknown(user)
        })
    }

    /// The home node of each user: `None` for this node (or no ring).
    fn homes(&self, users: &[String]) -> BTreeMap<Option<String>, Vec<String>> {
        let v = self.routing.view.borrow();
        let mut by = BTreeMap::<Option<String>, Vec<String>>::new();
        for u in users {
            let home = v
                .owner(u)
                .filter(|o| *o != self.routing.self_id && self.peers.is_some())
                .map(str::to_string);
            by.entry(home).or_default().push(u.clone());
        }
        by
    }

    /// The statuses of `users` (any home) as `asker` may see them, in the order asked. A home
    /// node that does not answer in time leaves its users unknown.
    pub async fn query(self: &Arc<Self>, asker: &str, users: &[String]) -> Vec<PresenceStatus> {
        let mut found = std::collections::HashMap::new();
        for (home, group) in self.homes(users) {
            match home {
                None => {
                    for u in &group {
                        found.insert(u.clone(), self.status_for(u, asker));
                    }
                }
                Some(node) => {
                    let req = peer_request::Request::PresenceQuery(PresenceQuery {
                        asker: asker.to_string(),
                        users: group,
                    });
                    for s in self.ask(&node, req).await {
                        found.insert(s.user.clone(), s);
                    }
                }
            }
        }
        users
            .iter()
            .map(|u| found.remove(u).unwrap_or_else(|| unknown(u)))
            .collect()
    }

    /// One request to a peer; its statuses, or none if it fails.
    async fn ask(&self, node: &str, req: peer_request::Request) -> Vec<PresenceStatus> {
        let Some(peers) = &self.peers else {
            return Vec::new();
        };
        let req = PeerRequest {
            from_node: self.routing.self_id.clone(),
            epoch: self.routing.view.borrow().epoch(),
            request: Some(req),
        };
        let timeout = Duration::from_millis(self.cfg.peer_timeout_ms);
        match peers.request(node, &req, timeout).await {
            Ok(r) => match r.response {
                Some(peer_response::Response::Presence(a)) => a.statuses,
                other => {
                    tracing::debug!(peer = node, response = ?other, "presence request refused");
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::debug!(peer = node, error = %e, "presence request failed");
                Vec::new()
            }
        }
    }

    /// Connection `conn` of `asker` now watches `users`; returns their statuses now.
    pub async fn watch(
        self: &Arc<Self>,
        conn: u64,
        asker: &str,
        sink: Sink,
        users: &[String],
    ) -> Vec<PresenceStatus> {
        self.local
            .lock()
            .expect("watchers lock")
            .set(conn, asker, sink, users);
        let homes = self.homes(users);
        for (home, targets) in &homes {
            if let Some(node) = home {
                self.register(node, targets).await;
            }
        }
        self.query(asker, users).await
    }

    /// Tells `node` which users of this node watch `targets` (all of them, as the interest of
    /// a node replaces its previous one).
    async fn register(&self, node: &str, targets: &[String]) {
        let interests: Vec<PresenceInterest> = {
            let local = self.local.lock().expect("watchers lock");
            targets
                .iter()
                .map(|t| PresenceInterest {
                    target: t.clone(),
                    watchers: local.watchers_of(t),
                })
                .collect()
        };
        let req = peer_request::Request::PresenceWatch(PresenceWatch {
            interests,
            ttl_ms: (self.cfg.watch_renew_ms * 3).min(u64::from(u32::MAX)) as u32,
        });
        self.ask(node, req).await;
    }

    /// A peer's users watch users of this node. A new interest in a user who is online here is
    /// answered with a push as well: the watchers may have missed the change while their
    /// interest was on its way (the user just moved here with the ring, say).
    pub fn on_watch(self: &Arc<Self>, node: &str, w: PresenceWatch) -> Vec<PresenceStatus> {
        let now = chat_proto::now_ms();
        let until = now + i64::from(w.ttl_ms);
        let fresh: Vec<&PresenceInterest> = {
            let mut remote = self.remote.lock().expect("watchers lock");
            w.interests
                .iter()
                .filter(|i| remote.renew(node, &i.target, &i.watchers, until, now))
                .collect()
        };
        for i in fresh {
            let watchers: Vec<String> = i
                .watchers
                .iter()
                .filter(|u| self.status_for(&i.target, u).online)
                .cloned()
                .collect();
            if let (false, Some(first)) = (watchers.is_empty(), watchers.first()) {
                let status = self.status_for(&i.target, first);
                self.ephemeral.send_to(node, notice(status, watchers));
            }
        }
        w.interests
            .iter()
            .map(|i| match i.watchers.first() {
                Some(asker) => self.status_for(&i.target, asker),
                None => unknown(&i.target),
            })
            .collect()
    }

    /// A status change from a user's home node, for this node's watchers of that user.
    pub fn on_notice(&self, n: &PresenceNotice) {
        let Some(status) = &n.status else { return };
        let sinks = self
            .local
            .lock()
            .expect("watchers lock")
            .watching(&status.user);
        let frame = update(status.clone());
        for (watcher, sink) in sinks {
            if n.watchers.contains(&watcher) {
                push(&sink, &frame);
            }
        }
    }

    /// Pushes changes to watchers here and on other nodes, and stores last seens.
    fn publish(self: &Arc<Self>, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let now = chat_proto::now_ms();
        for c in changes {
            metrics::counter!(admin::PRESENCE_CHANGES, "to" => if c.status.online { "online" } else { "offline" })
                .increment(1);
            if !c.status.online && c.status.last_seen_ms > 0 {
                // Coarse, and never waited for: dropped if the writer is busy.
                if !self
                    .writer
                    .try_last_seen(c.user.clone(), c.status.last_seen_ms)
                {
                    metrics::counter!(admin::SHED, "kind" => "presence", "reason" => "writer_busy")
                        .increment(1);
                }
            }
            if self.load.level() >= Level::ShedPresence {
                // The status itself is kept (queries answer it); only the push is dropped.
                metrics::counter!(admin::SHED, "kind" => "presence", "reason" => "overload")
                    .increment(1);
                continue;
            }
            let hidden = self
                .store
                .settings(&c.user)
                .map(|s| s.hide_last_seen)
                .unwrap_or(true);
            let status = PresenceStatus {
                user: c.user.clone(),
                online: c.status.online,
                last_seen_ms: if hidden { 0 } else { c.status.last_seen_ms },
            };
            let may_see = |watcher: &str| !self.store.is_blocked(&c.user, watcher).unwrap_or(true);
            let sinks = self.local.lock().expect("watchers lock").watching(&c.user);
            let frame = update(status.clone());
            for (watcher, sink) in sinks {
                if may_see(&watcher) {
                    push(&sink, &frame);
                }
            }
            let nodes = self
                .remote
                .lock()
                .expect("watchers lock")
                .interested(&c.user, now);
            for (node, watchers) in nodes {
                let watchers: Vec<String> = watchers.into_iter().filter(|w| may_see(w)).collect();
                if watchers.is_empty() {
                    continue;
                }
                self.ephemeral
                    .send_to(&node, notice(status.clone(), watchers));
            }
        }
    }

    /// Takes users offline as their windows pass. Sleeps while nobody is online.
    pub async fn run_expiry(self: Arc<Self>, mut shutdown: broadcast::Receiver<()>) {
        loop {
            let next = self.table.lock().expect("presence lock").next_deadline();
            let sleep = async {
                match next {
                    Some(at) => {
                        let ms = (at - chat_proto::now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = self.wake.notified() => continue,
                _ = sleep => {}
            }
            let now = chat_proto::now_ms();
            let changes = self.table.lock().expect("presence lock").expire(now);
            self.publish(changes);
        }
    }

    /// Renews this node's interests at the home nodes of the watched users: periodically, and
    /// at once when the ring changes (the users may have a new home).
    pub async fn run_renew(self: Arc<Self>, mut shutdown: broadcast::Receiver<()>) {
        let mut view = self.routing.view.clone();
        let mut epoch = view.borrow().epoch();
        let every = Duration::from_millis(self.cfg.watch_renew_ms);
        loop {
            tokio::select! {
                _ = shutdown.recv() => return,
                _ = tokio::time::sleep(every) => {}
                changed = view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = view.borrow().epoch();
                    if now == epoch {
                        continue;
                    }
                    epoch = now;
                }
            }
            let targets: Vec<String> = {
                let local = self.local.lock().expect("watchers lock");
                local.interests().into_iter().map(|(t, _)| t).collect()
            };
            for (home, targets) in self.homes(&targets) {
                if let Some(node) = home {
                    self.register(&node, &targets).await;
                }
            }
            self.remote
                .lock()
                .expect("watchers lock")
                .sweep(chat_proto::now_ms());
        }
    }
}

/// A status change for `watchers` on another node (an event for that node, not for a user).
fn notice(status: PresenceStatus, watchers: Vec<String>) -> Signal {
    Signal {
        to: String::new(),
        item: Some(signal::Item::Presence(PresenceNotice {
            status: Some(status),
            watchers,
        })),
    }
}

fn update(status: PresenceStatus) -> Arc<ServerFrame> {
    Arc::new(ServerFrame {
        frame: Some(server_frame::Frame::PresenceUpdate(PresenceUpdate {
            status: Some(status),
        })),
    })
}

fn push(sink: &Sink, frame: &Arc<ServerFrame>) {
    if !sink.push_notice(frame.clone()) {
        metrics::counter!(admin::SHED, "kind" => "presence", "reason" => "device_queue_full")
            .increment(1);
    }
}
