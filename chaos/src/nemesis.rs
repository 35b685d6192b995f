//! The nemesis: runs the seeded plan against the real processes and network (no fault layer in
//! the product), logs every fault with when it took effect and when it healed, watches for nodes
//! that exit without being killed (a finding: logged with the log tail, then restarted), and
//! heals everything at the end.
//!
//! Faults run as concurrent tasks, so they overlap. Process and disk faults *claim* their node,
//! so two of them never fight over one process (a SIGCONT must not revive a node another task is
//! stopping); network faults claim nothing and compose with everything.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{wait_ready_line, Cluster, NodeState};
use crate::history::{Clock, FaultKind, FaultRecord, Micros, NemesisLog};
use crate::netfault::NetFaults;
use crate::schedule::Planned;
use crate::{ChaosError, Result};

mod disk;
mod moves;
mod supervise;

/// Restarts of one node after unasked exits before the nemesis gives up on it.
const MAX_CRASH_RESTARTS: u32 = 10;

pub struct Nemesis {
    pub cluster: Arc<Mutex<Cluster>>,
    etcd_url: String,
    net: Mutex<NetFaults>,
    log: Mutex<NemesisLog>,
    clock: Clock,
    claims: Mutex<HashSet<String>>,
    /// One move at a time; holds the number of nodes added so far.
    moves: tokio::sync::Mutex<u32>,
    /// etcd is down on purpose.
    etcd_killed: AtomicBool,
    stop: AtomicBool,
    crash_restarts: Mutex<HashMap<String, u32>>,
    next_probe: AtomicU32,
    /// Last known probe user of each node (see `disk.rs`).
    probe_users: Mutex<HashMap<String, String>>,
    /// Nodes under a disk fault now: a storage fail-stop of theirs is expected (see `disk.rs`).
    disk_faulted: Mutex<HashSet<String>>,
    /// When each node's last disk fault ended: RocksDB may have run out of space during it and
    /// say so only at the node's next write, after the space is back (see `supervise.rs`).
    disk_fault_ended: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Nemesis {
    pub fn new(cluster: Arc<Mutex<Cluster>>, clock: Clock) -> Result<Nemesis> {
        let etcd_url = cluster.lock().expect("cluster lock").etcd_ops_url();
        Ok(Nemesis {
            cluster,
            etcd_url,
            net: Mutex::new(NetFaults::new()?),
            log: Mutex::new(NemesisLog::default()),
            clock,
            claims: Mutex::new(HashSet::new()),
            moves: tokio::sync::Mutex::new(0),
            etcd_killed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            crash_restarts: Mutex::new(HashMap::new()),
            next_probe: AtomicU32::new(0),
            probe_users: Mutex::new(HashMap::new()),
            disk_faulted: Mutex::new(HashSet::new()),
            disk_fault_ended: Mutex::new(HashMap::new()),
        })
    }

    pub fn log(&self) -> NemesisLog {
        self.log.lock().expect("log lock").clone()
    }

    fn now(&self) -> Micros {
        self.clock.now()
    }

    fn finding(&self, text: String) {
        eprintln!("chaos: FINDING: {text}");
        self.log.lock().expect("log lock").findings.push(text);
    }

    fn record(&self, kind: FaultKind, target: &str, start: Micros, outcome: String, ok: bool) {
        self.record_until(kind, target, (start, self.now()), outcome, ok)
    }

    /// A fault that was in effect from `start` to `end` (not necessarily now).
    fn record_until(
        &self,
        kind: FaultKind,
        target: &str,
        (start, end): (Micros, Micros),
        outcome: String,
        ok: bool,
    ) {
        eprintln!(
            "chaos: {:>9.3}s {kind:?} {target}: {outcome}",
            end as f64 / 1e6
        );
        self.log.lock().expect("log lock").faults.push(FaultRecord {
            kind,
            target: target.into(),
            start,
            end: Some(end),
            outcome,
            ok,
        });
    }

    /// Runs `f` on the cluster in a blocking task.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Cluster) -> T + Send + 'static,
    ) -> T {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&mut c.lock().expect("cluster lock")))
            .await
            .expect("cluster task")
    }

    /// `chatctl` against the cluster, in a blocking task.
    async fn ctl(&self, args: Vec<String>, timeout: Duration) -> Result<String> {
        let url = self.etcd_url.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::cluster::ctl_at(&url, &a, timeout)
        })
        .await
        .expect("chatctl task")
    }

    /// Members that are running and not claimed, sorted by id.
    fn candidates(&self, members_only: bool) -> Vec<String> {
        let c = self.cluster.lock().expect("cluster lock");
        let claims = self.claims.lock().expect("claims lock");
        let mut v: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Running && (n.member || !members_only))
            .filter(|n| !claims.contains(&n.spec.id))
            .map(|n| n.spec.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Claims the `selector`-th candidate member for a process or disk fault.
    fn pick_claim(&self, selector: u32, except: &[&str]) -> Option<String> {
        let v: Vec<String> = self
            .candidates(true)
            .into_iter()
            .filter(|id| !except.contains(&id.as_str()))
            .collect();
        let id = v.get(selector as usize % v.len().max(1))?.clone();
        self.claims
            .lock()
            .expect("claims lock")
            .insert(id.clone())
            .then_some(id)
    }

    fn release(&self, id: &str) {
        self.claims.lock().expect("claims lock").remove(id);
    }

    /// Ring members (any state), sorted.
    fn members(&self) -> Vec<String> {
        let c = self.cluster.lock().expect("cluster lock");
        let mut v: Vec<String> = c
            .nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| n.spec.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Starts node `id` again on its ports and data and waits for its ready line. A node
    /// someone else has restarted meanwhile (the supervisor and a fault's task may both try) is
    /// left as it is.
    async fn restart(&self, id: &str) -> Result<()> {
        let i = id.to_string();
        let rx = self
            .blocking(move |c| {
                if c.node(&i).is_some_and(|n| n.has_process()) {
                    return Ok(None);
                }
                c.spawn_node(&i).map(Some)
            })
            .await?;
        let Some((rx, generation)) = rx else {
            return Ok(());
        };
        let i = id.to_string();
        let ready =
            tokio::task::spawn_blocking(move || wait_ready_line(&i, rx, Duration::from_secs(60)))
                .await
                .expect("ready task");
        if ready.is_err() {
            // Hung before its ready line (an exited one is the supervisor's to report).
            let i = id.to_string();
            let _ = self
                .blocking(move |c| c.kill9_generation(&i, generation))
                .await;
        }
        ready
    }

    /// Restarts with a few attempts; a node that will not come back is a finding.
    async fn bring_back(&self, id: &str, why: &str) -> String {
        for attempt in 1..=3 {
            match self.restart(id).await {
                Ok(()) => return "restarted".into(),
                Err(e) => {
                    let tail = self
                        .blocking({
                            let i = id.to_string();
                            move |c| c.log_tail(&i, 20)
                        })
                        .await;
                    self.finding(format!(
                        "{id} did not restart after {why} (attempt {attempt}): {e}\n{tail}"
                    ));
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        "did not restart".into()
    }

    /// Runs the plan: each fault at its time, as its own task; returns once every fault has
    /// healed (or `deadline` passed).
    pub async fn run(self: Arc<Self>, plan: Vec<Planned>, phase_start: Instant, deadline: Instant) {
        let mut tasks = Vec::new();
        for p in plan {
            tokio::time::sleep_until(phase_start + p.at()).await;
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            tasks.push(tokio::spawn(self.clone().inject(p)));
        }
        for t in tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                self.finding("a fault did not heal before the run's deadline".into());
            }
        }
    }

    async fn inject(self: Arc<Self>, p: Planned) {
        match p.kind {
            FaultKind::Kill => self.kill(&p).await,
            FaultKind::Pause => self.pause(&p).await,
            FaultKind::Partition | FaultKind::OneWayPartition => self.partition(&p).await,
            FaultKind::EtcdPartition => self.etcd_partition(&p).await,
            FaultKind::EtcdKill => self.etcd_kill(&p).await,
            FaultKind::DiskFull | FaultKind::DiskFullKill => self.disk_full(&p).await,
            FaultKind::AddNode => self.add_node(&p).await,
            FaultKind::RemoveNode => self.remove_node(&p).await,
            FaultKind::KillDuringMove => {}
        }
    }

    async fn kill(&self, p: &Planned) {
        let Some(id) = self.pick_claim(p.target, &[]) else {
            return self.record(
                p.kind,
                "-",
                self.now(),
                "no running member to kill".into(),
                false,
            );
        };
        let start = self.now();
        let i = id.clone();
        let killed = self.blocking(move |c| c.kill9(&i)).await;
        tokio::time::sleep(p.hold()).await;
        let outcome = self.bring_back(&id, "kill -9").await;
        self.release(&id);
        self.record(
            p.kind,
            &id,
            start,
            format!("kill -9, {outcome}"),
            killed.is_ok() && outcome == "restarted",
        );
    }

    async fn pause(&self, p: &Planned) {
        let Some(id) = self.pick_claim(p.target, &[]) else {
            return self.record(
                p.kind,
                "-",
                self.now(),
                "no running member to pause".into(),
                false,
            );
        };
        let start = self.now();
        let i = id.clone();
        let stopped = self
            .blocking(move |c| c.signal(&i, libc::SIGSTOP, NodeState::Paused))
            .await;
        tokio::time::sleep(p.hold()).await;
        let i = id.clone();
        let cont = self
            .blocking(move |c| c.signal(&i, libc::SIGCONT, NodeState::Running))
            .await;
        self.release(&id);
        let ok = stopped.is_ok() && cont.is_ok();
        self.record(
            p.kind,
            &id,
            start,
            format!("SIGSTOP for {:?}, SIGCONT", p.hold()),
            ok,
        );
    }

    async fn partition(&self, p: &Planned) {
        let members = self.members();
        if members.len() < 2 {
            return self.record(
                p.kind,
                "-",
                self.now(),
                "fewer than two members".into(),
                false,
            );
        }
        let a = &members[p.target as usize % members.len()];
        let rest: Vec<&String> = members.iter().filter(|m| *m != a).collect();
        let b = rest[p.peer as usize % rest.len()];
        let ports = {
            let c = self.cluster.lock().expect("cluster lock");
            (
                c.node(a).map(|n| n.spec.quic_port),
                c.node(b).map(|n| n.spec.quic_port),
            )
        };
        let (Some(pa), Some(pb)) = ports else { return };
        let one_way = p.kind == FaultKind::OneWayPartition;
        let target = if one_way {
            format!("{a}->{b}")
        } else {
            format!("{a}<->{b}")
        };
        self.net_fault(p, &target, |n| n.partition(pa, pb, one_way))
            .await;
    }

    async fn etcd_partition(&self, p: &Planned) {
        let members = self.members();
        let Some(id) = members
            .get(p.target as usize % members.len().max(1))
            .cloned()
        else {
            return self.record(p.kind, "-", self.now(), "no member".into(), false);
        };
        let port = self.cluster.lock().expect("cluster lock").etcd_port_of(&id);
        let Some(port) = port else { return };
        self.net_fault(p, &id, |n| n.isolate_tcp_port(port)).await;
    }

    async fn net_fault(
        &self,
        p: &Planned,
        target: &str,
        install: impl FnOnce(&mut NetFaults) -> Result<crate::netfault::Rule>,
    ) {
        let start = self.now();
        let rule = install(&mut self.net.lock().expect("net lock"));
        let rule = match rule {
            Ok(r) => r,
            Err(e) => return self.record(p.kind, target, start, format!("nft failed: {e}"), false),
        };
        tokio::time::sleep(p.hold()).await;
        let healed = self.net.lock().expect("net lock").heal(&rule);
        let outcome = match &healed {
            Ok(()) => format!("dropped for {:?}, healed", p.hold()),
            Err(e) => format!("could not heal: {e}"),
        };
        self.record(p.kind, target, start, outcome, healed.is_ok());
    }

    async fn etcd_kill(&self, p: &Planned) {
        if self.etcd_killed.swap(true, Ordering::AcqRel) {
            return self.record(
                p.kind,
                "etcd",
                self.now(),
                "etcd is already down".into(),
                false,
            );
        }
        let start = self.now();
        self.blocking(|c| c.etcd_kill9()).await;
        tokio::time::sleep(p.hold()).await;
        let started = self.blocking(|c| c.etcd_start()).await;
        self.etcd_killed.store(false, Ordering::Release);
        let outcome = match &started {
            Ok(()) => format!("kill -9, down {:?}, restarted", p.hold()),
            Err(e) => {
                self.finding(format!("etcd did not restart: {e}"));
                format!("did not restart: {e}")
            }
        };
        self.record(p.kind, "etcd", start, outcome, started.is_ok());
    }
}

/// Reads one gauge from a node's `/metrics` (None if the node does not answer).
pub fn metric(admin_url: &str, name: &str) -> Option<f64> {
    let (st, body) = chat_tests::http_get(&format!("{admin_url}/metrics"))?;
    if st != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

impl From<tokio::task::JoinError> for ChaosError {
    fn from(e: tokio::task::JoinError) -> Self {
        ChaosError::Setup(format!("task: {e}"))
    }
}
