//! `chatctl rebalance`: start, watch, commit and abort moves of the ring.

use std::collections::BTreeMap;

use anyhow::bail;
use chat_cluster::rebalance::{self, Change, Progress};
use chat_cluster::{EtcdConfig, RingDoc};
use serde::Serialize;

use crate::cluster::client;

/// What `rebalance status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub current_epoch: u64,
    /// `None` when no move is in flight.
    pub moving: Option<Move>,
    /// With no move in flight: the nodes that have not yet finished their share of the last
    /// committed move (sealing, dropping, waiting for seals). A new move waits for them.
    pub unfinished: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Move {
    pub epoch: u64,
    pub change: String,
    pub phase: chat_cluster::Phase,
    pub started_ms: i64,
    /// Share of the key space that moves (0..=1).
    pub moved_share: f64,
    pub segments: usize,
    /// Every node of either ring, with what it reported (absent: nothing yet).
    pub nodes: BTreeMap<String, NodeStatus>,
    pub may_commit: bool,
    /// Seconds left, estimated from the copy rate so far (absent until there is a rate).
    pub eta_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Segments this node gives away, and receives.
    pub gives: usize,
    pub receives: usize,
    pub registered: bool,
    pub progress: Option<Progress>,
}

pub async fn start(cfg: &EtcdConfig, change: &Change) -> anyhow::Result<RingDoc> {
    let mut c = client(cfg).await?;
    if let Change::Add { node, .. } = change {
        let nodes = chat_cluster::list_nodes(&mut c, &cfg.prefix).await?;
        if !nodes.iter().any(|n| &n.id == node) {
            bail!(
                "{node} is not registered under {}nodes/: start it first (it must be running before it can receive its share)",
                cfg.prefix
            );
        }
    }
    Ok(rebalance::begin(&mut c, &cfg.prefix, change).await?)
}

pub async fn abort(cfg: &EtcdConfig) -> anyhow::Result<RingDoc> {
    let mut c = client(cfg).await?;
    Ok(rebalance::abort(&mut c, &cfg.prefix).await?)
}

pub async fn commit(cfg: &EtcdConfig) -> anyhow::Result<Option<RingDoc>> {
    let mut c = client(cfg).await?;
    Ok(rebalance::commit(&mut c, &cfg.prefix).await?)
}

pub async fn status(cfg: &EtcdConfig) -> anyhow::Result<Status> {
    let mut c = client(cfg).await?;
    let Some(doc) = chat_cluster::read_ring(&mut c, &cfg.prefix).await? else {
        bail!(
            "no ring under {} yet: run `chatctl cluster init`",
            cfg.prefix
        );
    };
    let Some(t) = doc.transition()? else {
        return Ok(Status {
            current_epoch: doc.current.epoch,
            moving: None,
            unfinished: rebalance::unfinished(&mut c, &cfg.prefix, &doc).await?,
        });
    };
    let next = doc.next.as_ref().expect("a transition has a next ring");
    let progress = rebalance::read_progress(&mut c, &cfg.prefix, next.ring.epoch).await?;
    let registered = chat_cluster::list_nodes(&mut c, &cfg.prefix).await?;
    let nodes: BTreeMap<String, NodeStatus> = t
        .nodes()
        .into_iter()
        .map(|n| {
            let s = NodeStatus {
                gives: t.copies_of(n).count(),
                receives: t.receives(n).count(),
                registered: registered.iter().any(|r| r.id == n),
                progress: progress.get(n).cloned(),
            };
            (n.to_string(), s)
        })
        .collect();
    let states = progress
        .iter()
        .map(|(n, p)| (n.clone(), p.state()))
        .collect();
    // Time left, from the share of segments copied so far and the time it took.
    let done: u64 = progress.values().map(|p| p.segments_done).sum();
    let total: u64 = nodes.values().map(|n| n.gives as u64).sum();
    let elapsed = (now_ms() - next.started_ms).max(1) as f64 / 1000.0;
    let eta_secs =
        (done > 0 && total > done).then(|| elapsed * (total - done) as f64 / done as f64);
    Ok(Status {
        current_epoch: doc.current.epoch,
        unfinished: Vec::new(),
        moving: Some(Move {
            epoch: next.ring.epoch,
            change: next.change.clone(),
            phase: next.phase,
            started_ms: next.started_ms,
            moved_share: t.moved_share(),
            segments: t.segments().len(),
            may_commit: t.may_commit(&states),
            nodes,
            eta_secs,
        }),
    })
}

/// The status for a terminal.
pub fn print(s: &Status) {
    let Some(m) = &s.moving else {
        println!("no move in flight (ring epoch {})", s.current_epoch);
        if !s.unfinished.is_empty() {
            println!(
                "the move to epoch {} committed; still finishing their share (seal, drop): {}",
                s.current_epoch,
                s.unfinished.join(", ")
            );
        }
        return;
    };
    let age = (now_ms() - m.started_ms) as f64 / 1000.0;
    println!(
        "moving epoch {} -> {}: {}  ({} segments, {:.1}% of users; phase {:?}, started {age:.0} s ago)",
        s.current_epoch,
        m.epoch,
        m.change,
        m.segments,
        m.moved_share * 100.0,
        m.phase
    );
    println!(
        "{:<12} {:>5} {:>8} {:>5} {:>6} {:>12} {:>12} {:>10}  note",
        "node", "gives", "receives", "seen", "copied", "keys", "bytes", "segments"
    );
    for (id, n) in &m.nodes {
        let p = n.progress.clone().unwrap_or_default();
        let note = match (&p.error, n.registered, &n.progress) {
            (Some(e), _, _) => format!("retrying: {e}"),
            (None, false, _) => "not registered (down?)".to_string(),
            (None, true, None) => "has not reported yet".to_string(),
            _ => String::new(),
        };
        println!(
            "{id:<12} {:>5} {:>8} {:>5} {:>6} {:>12} {:>12} {:>10}  {note}",
            n.gives,
            n.receives,
            yes(p.seen),
            yes(p.copied || n.gives == 0 && p.seen),
            format!("{}/{}", p.keys_copied, p.keys_total),
            p.bytes_copied,
            format!("{}/{}", p.segments_done, p.segments),
        );
    }
    match (m.may_commit, m.eta_secs) {
        (true, _) => println!("every node has seen and copied: the move can commit"),
        (false, Some(eta)) => println!("about {eta:.0} s of copying left"),
        (false, None) => println!("waiting for nodes to see the next ring and copy"),
    }
}

/// How long one etcd read of `wait` may take before it counts as failed (a partitioned etcd
/// does not answer at all).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `read` until it succeeds or `deadline` passes. An etcd outage shorter than the deadline
/// must not end `wait`: the move goes on without us (nodes commit it themselves), and the scripts
/// that follow it (`add-node.sh`, `remove-node.sh`) must not fail in the middle. Says once per
/// outage that it is retrying, and when etcd answers again.
async fn retrying<T, F, Fut>(
    deadline: tokio::time::Instant,
    what: &str,
    mut read: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut failing = false;
    loop {
        let err = match tokio::time::timeout(READ_TIMEOUT, read()).await {
            Ok(Ok(v)) => {
                if failing {
                    eprintln!("etcd answers again");
                }
                return Ok(v);
            }
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("no answer within {READ_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() + std::time::Duration::from_secs(1) > deadline {
            return Err(err.context(format!("{what}: still failing at the deadline")));
        }
        if !failing {
            eprintln!("{what} failed ({err:#}); retrying until the deadline");
            failing = true;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The ring document as it stands (retried like every read of `wait`).
async fn ring_doc(cfg: &EtcdConfig) -> anyhow::Result<Option<RingDoc>> {
    let mut c = client(cfg).await?;
    Ok(chat_cluster::read_ring(&mut c, &cfg.prefix).await?)
}

/// Follows the move in flight until it ends, and after a commit until every node finished its
/// share (only then may the next move start, and a removed node be stopped): a progress bar in
/// a terminal (segments copied over all old owners), one line per change otherwise. Returns
/// whether it committed. Reads that fail (etcd down or unreachable) are retried until `timeout`
/// has passed.
pub async fn wait(cfg: &EtcdConfig, timeout: std::time::Duration) -> anyhow::Result<bool> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let deadline = tokio::time::Instant::now() + timeout;
    let first = retrying(deadline, "reading the move's status", || status(cfg)).await?;
    let Some(m) = &first.moving else {
        println!("no move in flight (ring epoch {})", first.current_epoch);
        wait_finished(cfg, deadline, timeout).await?;
        return Ok(true);
    };
    let (epoch, change) = (m.epoch, m.change.clone());
    let moving = retrying(deadline, "reading the ring", || ring_doc(cfg))
        .await?
        .and_then(|d| d.transition().ok().flatten())
        .filter(|t| t.to().epoch() == epoch);
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} segments  {msg}",
        )
        .expect("valid template"),
    );
    let mut last_line = String::new();
    loop {
        let s = match retrying(deadline, "reading the move's status", || status(cfg)).await {
            Ok(s) => s,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        let Some(m) = &s.moving else {
            bar.finish_and_clear();
            let ring = retrying(deadline, "reading the ring", || ring_doc(cfg))
                .await?
                .and_then(|d| d.current.build().ok());
            let committed = ring
                .zip(moving.as_ref())
                .is_some_and(|(r, t)| t.committed_in(&r));
            println!(
                "move to epoch {epoch} ({change}) {}",
                if committed {
                    "committed"
                } else {
                    "was aborted"
                }
            );
            if committed {
                wait_finished(cfg, deadline, timeout).await?;
            }
            return Ok(committed);
        };
        let (done, total) = m.nodes.values().fold((0, 0), |(d, t), n| {
            let p = n.progress.clone().unwrap_or_default();
            (d + p.segments_done, t + n.gives as u64)
        });
        let waiting: Vec<String> = m
            .nodes
            .iter()
            .filter_map(|(id, n)| match &n.progress {
                None => Some(format!("{id}: not seen")),
                Some(p) if n.gives > 0 && !p.copied => Some(format!(
                    "{id}: {} keys{}",
                    p.keys_copied,
                    p.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )),
                _ => None,
            })
            .collect();
        let msg = if waiting.is_empty() {
            "committing".to_string()
        } else {
            waiting.join(", ")
        };
        bar.set_length(total.max(1));
        bar.set_position(done);
        bar.set_message(msg.clone());
        if bar.is_hidden() && msg != last_line {
            println!("{done}/{total} segments copied; {msg}");
            last_line = msg;
        }
        if tokio::time::Instant::now() > deadline {
            bar.abandon();
            anyhow::bail!(
                "the move did not end within {timeout:?}; see `chatctl rebalance status`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Waits until no node has work left in the last committed move (see `Status::unfinished`).
async fn wait_finished(
    cfg: &EtcdConfig,
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut said = Vec::new();
    loop {
        let s = retrying(deadline, "reading the move's status", || status(cfg)).await?;
        if s.moving.is_some() || s.unfinished.is_empty() {
            if !said.is_empty() {
                println!("every node finished its share");
            }
            return Ok(());
        }
        if s.unfinished != said {
            println!(
                "waiting for {} to finish their share (seal, drop)",
                s.unfinished.join(", ")
            );
            said = s.unfinished;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the move committed, but not every node finished its share within {timeout:?}; see `chatctl rebalance status`"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
