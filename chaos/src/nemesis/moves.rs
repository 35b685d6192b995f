//! Moves of the ring, driven as an operator would (`ops/add-node.sh`, `ops/remove-node.sh`):
//! `chatctl rebalance start`, then `chatctl rebalance status --json` polled with retries until
//! the move ends (`rebalance wait` gives up on one failed etcd read, and etcd is one of our
//! targets), then the ring read back to tell a commit from an abort. A removed node is stopped
//! only once its outbox is empty and its share finished (`chat_rebalance_pending 0`).

use std::time::Duration;

use super::{metric, Nemesis};
use crate::cluster::NodeState;
use crate::history::FaultKind;
use crate::schedule::Planned;

/// A move still in flight after this long is a finding (and is aborted).
const MOVE_DEADLINE: Duration = Duration::from_secs(240);
/// How long a removed node may take to hand on its outbox and finish its share.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);
/// The ring never shrinks below this many members.
const MIN_MEMBERS: usize = 3;

impl Nemesis {
    /// Waits for this move's turn (one move at a time); `None`, recorded as not run, if the
    /// previous move has not ended within the move deadline.
    async fn move_turn(&self, p: &Planned) -> Option<tokio::sync::MutexGuard<'_, u32>> {
        match tokio::time::timeout(MOVE_DEADLINE, self.moves.lock()).await {
            Ok(turn) => Some(turn),
            Err(_) => {
                let why = "the previous move never ended".to_string();
                self.record(p.kind, "-", self.now(), why, false);
                None
            }
        }
    }

    pub(super) async fn add_node(&self, p: &Planned) {
        let Some(_turn) = self.move_turn(p).await else {
            return;
        };
        let id = format!(
            "n{}",
            self.cluster.lock().expect("cluster lock").nodes.len() + 1
        );
        let start = self.now();
        let i = id.clone();
        if let Err(e) = self.blocking(move |c| c.create_node(&i)).await {
            return self.record(p.kind, &id, start, format!("could not create: {e}"), false);
        }
        if let Err(e) = self.restart(&id).await {
            self.finding(format!("new node {id} did not start: {e}"));
            return self.record(p.kind, &id, start, format!("did not start: {e}"), false);
        }
        if !self.wait_registered(&id).await {
            return self.record(p.kind, &id, start, "never registered".into(), false);
        }
        let mut participants = self.members();
        participants.push(id.clone());
        let started = self.start_move(&["--add", &id]).await;
        if let Err(e) = started {
            return self.record(p.kind, &id, start, format!("start refused: {e}"), false);
        }
        let want = id.clone();
        let (outcome, _) = tokio::join!(
            self.follow_move(move |m| m.contains(&want)),
            self.kill_during_move(p, participants)
        );
        let committed = outcome.starts_with("committed");
        if committed {
            let i = id.clone();
            let _ = self.blocking(move |c| c.set_member(&i, true)).await;
        }
        self.record(p.kind, &id, start, format!("add: {outcome}"), committed);
    }

    pub(super) async fn remove_node(&self, p: &Planned) {
        let Some(_turn) = self.move_turn(p).await else {
            return;
        };
        let members = self.members();
        let free = self.candidates(true);
        if members.len() <= MIN_MEMBERS || free.is_empty() {
            let why = format!(
                "{} members, {} free: not removing",
                members.len(),
                free.len()
            );
            return self.record(p.kind, "-", self.now(), why, false);
        }
        let id = free[p.target as usize % free.len()].clone();
        let start = self.now();
        if let Err(e) = self.start_move(&["--remove", &id]).await {
            return self.record(p.kind, &id, start, format!("start refused: {e}"), false);
        }
        let gone = id.clone();
        let (outcome, _) = tokio::join!(
            self.follow_move(move |m| !m.contains(&gone)),
            self.kill_during_move(p, members)
        );
        if !outcome.starts_with("committed") {
            return self.record(p.kind, &id, start, format!("remove: {outcome}"), false);
        }
        let i = id.clone();
        let _ = self.blocking(move |c| c.set_member(&i, false)).await;
        // Ours alone from now on: no other fault may pause or kill it while it drains and stops.
        let t0 = tokio::time::Instant::now();
        while !self.claims.lock().expect("claims lock").insert(id.clone()) {
            if t0.elapsed() > DRAIN_DEADLINE {
                self.finding(format!("{id}: could not claim it to stop it"));
                return self.record(
                    p.kind,
                    &id,
                    start,
                    format!("remove: {outcome}; not stopped"),
                    false,
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stopped = self.drain_and_stop(&id).await;
        self.record(
            p.kind,
            &id,
            start,
            format!("remove: {outcome}; {stopped}"),
            true,
        );
    }

    /// Waits until `id` is in `chatctl nodes`.
    async fn wait_registered(&self, id: &str) -> bool {
        let t0 = tokio::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let out = self
                .ctl(
                    vec!["nodes".into(), "--json".into()],
                    Duration::from_secs(20),
                )
                .await;
            if let Ok(v) = out.and_then(|o| Ok(serde_json::from_str::<serde_json::Value>(&o)?)) {
                if v.as_array()
                    .is_some_and(|a| a.iter().any(|n| n["id"] == id))
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.finding(format!("{id} did not register within 60 s"));
        false
    }

    /// `chatctl rebalance start ARGS`, retried while etcd is unreachable, a move is in flight or
    /// a node has not finished its share of the last one (a node killed meanwhile finishes it
    /// after its restart).
    async fn start_move(&self, args: &[&str]) -> crate::Result<String> {
        let mut a: Vec<String> = vec!["rebalance".into(), "start".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        let t0 = tokio::time::Instant::now();
        loop {
            match self.ctl(a.clone(), Duration::from_secs(15)).await {
                Ok(out) => return Ok(out),
                Err(e) if t0.elapsed() > MOVE_DEADLINE => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    /// Polls the move until it ends; "committed ..." if the ring then satisfies `done`.
    async fn follow_move(&self, done: impl Fn(&[String]) -> bool) -> String {
        let t0 = tokio::time::Instant::now();
        let status = || {
            self.ctl(
                vec!["rebalance".into(), "status".into(), "--json".into()],
                Duration::from_secs(20),
            )
        };
        loop {
            let moving = status()
                .await
                .ok()
                .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok());
            if moving.as_ref().is_some_and(|v| v["moving"].is_null()) {
                break;
            }
            if t0.elapsed() > MOVE_DEADLINE {
                let why = format!(
                    "still in flight after {MOVE_DEADLINE:?}: {:?}",
                    moving.map(|v| v.to_string())
                );
                self.finding(format!("a move did not end: {why}; aborting it"));
                let _ = self
                    .ctl(
                        vec!["rebalance".into(), "abort".into()],
                        Duration::from_secs(15),
                    )
                    .await;
                return format!("ABORTED by the nemesis ({why})");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let took = t0.elapsed().as_secs_f64();
        for _ in 0..60 {
            let ring = self
                .ctl(
                    vec!["ring".into(), "show".into(), "--json".into()],
                    Duration::from_secs(20),
                )
                .await;
            let Ok(v) = ring.and_then(|o| Ok(serde_json::from_str::<serde_json::Value>(&o)?))
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let epoch = v["ring"]["current"]["epoch"].as_u64().unwrap_or(0);
            let members: Vec<String> = v["ring"]["current"]["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m["id"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            return if done(&members) {
                format!("committed epoch {epoch} in {took:.1} s")
            } else {
                self.finding(format!(
                    "a move ended without its change (aborted?): ring epoch {epoch} is {members:?}"
                ));
                format!(
                    "ended WITHOUT the change in {took:.1} s (epoch {epoch}, members {members:?})"
                )
            };
        }
        "ended, but the ring could not be read".into()
    }

    /// With `kill_during`: `kill -9` one participant shortly after the start, restart it 2 s later.
    async fn kill_during_move(&self, p: &Planned, participants: Vec<String>) {
        if !p.kill_during {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100 + u64::from(p.peer % 900))).await;
        let free: Vec<String> = self
            .candidates(false)
            .into_iter()
            .filter(|c| participants.contains(c))
            .collect();
        let Some(id) = free.get(p.peer as usize % free.len().max(1)).cloned() else {
            return self.record(
                FaultKind::KillDuringMove,
                "-",
                self.now(),
                "no free participant".into(),
                false,
            );
        };
        if !self.claims.lock().expect("claims lock").insert(id.clone()) {
            return self.record(
                FaultKind::KillDuringMove,
                &id,
                self.now(),
                "claimed meanwhile".into(),
                false,
            );
        }
        let start = self.now();
        let i = id.clone();
        let _ = self.blocking(move |c| c.kill9(&i)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outcome = self.bring_back(&id, "a kill during a move").await;
        self.release(&id);
        let ok = outcome == "restarted";
        self.record(
            FaultKind::KillDuringMove,
            &id,
            start,
            format!("kill -9 during the {:?}, {outcome}", p.kind),
            ok,
        );
    }

    /// Whether `chatctl rebalance status` no longer lists `id` as finishing the last move.
    async fn share_finished(&self, id: &str) -> bool {
        let args = vec!["rebalance".into(), "status".into(), "--json".into()];
        let Ok(out) = self.ctl(args, Duration::from_secs(20)).await else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
            v["unfinished"]
                .as_array()
                .is_some_and(|a| !a.iter().any(|n| n == id))
        })
    }

    /// Waits for a removed node's outbox and share to finish, then SIGTERM; what happened.
    async fn drain_and_stop(&self, id: &str) -> String {
        let admin = self
            .cluster
            .lock()
            .expect("cluster lock")
            .node(id)
            .map(|n| n.spec.admin_url());
        let Some(admin) = admin else {
            return "unknown node".into();
        };
        let t0 = tokio::time::Instant::now();
        let drained = loop {
            let a = admin.clone();
            let (depth, pending) = tokio::task::spawn_blocking(move || {
                (
                    metric(&a, "chat_outbox_depth"),
                    metric(&a, "chat_rebalance_pending"),
                )
            })
            .await
            .expect("metrics task");
            // Its finished share must be on record in etcd too: the next move waits for it.
            if depth == Some(0.0) && pending == Some(0.0) && self.share_finished(id).await {
                break true;
            }
            if t0.elapsed() > DRAIN_DEADLINE {
                self.finding(format!(
                    "removed node {id} did not drain within {DRAIN_DEADLINE:?} (outbox {depth:?}, rebalance pending {pending:?}); left running"
                ));
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if !drained {
            self.release(id);
            return "NOT drained, left running".into();
        }
        let i = id.to_string();
        if let Err(e) = self
            .blocking(move |c| c.signal(&i, libc::SIGTERM, NodeState::Stopping))
            .await
        {
            return format!("drained; SIGTERM failed: {e}");
        }
        let t1 = tokio::time::Instant::now();
        loop {
            let i = id.to_string();
            if let Ok(Some(st)) = self.blocking(move |c| c.try_reap(&i)).await {
                let i = id.to_string();
                let _ = self
                    .blocking(move |c| c.set_state(&i, NodeState::Retired))
                    .await;
                if !st.success() {
                    let i = id.to_string();
                    let tail = self.blocking(move |c| c.log_tail(&i, 20)).await;
                    self.finding(format!(
                        "removed node {id} exited with {st} after SIGTERM\n{tail}"
                    ));
                }
                return format!(
                    "drained in {:.1} s, stopped ({st})",
                    t0.elapsed().as_secs_f64()
                );
            }
            if t1.elapsed() > Duration::from_secs(30) {
                let i = id.to_string();
                let _ = self.blocking(move |c| c.kill9(&i)).await;
                let _ = self
                    .blocking({
                        let i = id.to_string();
                        move |c| c.set_state(&i, NodeState::Retired)
                    })
                    .await;
                self.finding(format!(
                    "removed node {id} did not exit within 30 s of SIGTERM; killed"
                ));
                return "drained; did not exit after SIGTERM".into();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
