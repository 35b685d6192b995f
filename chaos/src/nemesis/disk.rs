//! Disk full: a ballast file fills the node's tmpfs until ENOSPC (the nemesis holds every
//! node's free space low, see `cluster::FREE_SPACE`, so this is quick and the node notices at
//! its next write), stays for the hold, and is deleted. For `DiskFullKill`, the node is
//! `kill -9`ed while full, started once while still full (it should refuse clearly), and
//! restarted once space is back. Probe sends to a user the node owns show what a client is
//! told while the disk is full, and whether the node takes writes again once space returns.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chat_client::v1::server_frame;
use chat_client::{Client, ConnectOptions};

use super::Nemesis;
use crate::history::FaultKind;
use crate::schedule::Planned;

/// The line that says why a process ended: an `Error:` or panic line, or the last line.
fn error_line(tail: &str) -> String {
    let lines: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .find(|l| l.contains("Error:") || l.contains("panicked") || l.contains(" ERROR "))
        .or(lines.last())
        .map_or(String::new(), |l| l.trim().to_string())
}

/// How long a node may take to accept writes again after space returns.
const RECOVERY: Duration = Duration::from_secs(60);

impl Nemesis {
    pub(super) async fn disk_full(&self, p: &Planned) {
        let Some(id) = self.pick_claim(p.target, &[]) else {
            return self.record(p.kind, "-", self.now(), "no running member".into(), false);
        };
        let (ballast, port) = {
            let c = self.cluster.lock().expect("cluster lock");
            let n = c.node(&id).expect("claimed node exists");
            (n.spec.ballast(), n.spec.client_port)
        };
        self.disk_faulted
            .lock()
            .expect("disk faulted lock")
            .insert(id.clone());
        let b = ballast.clone();
        let filled = tokio::task::spawn_blocking(move || fill(&b))
            .await
            .expect("fill task");
        let start = self.now();
        let filled = match filled {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = std::fs::remove_file(&ballast);
                self.end_disk_fault(&id).await;
                return self.record(p.kind, &id, start, format!("could not fill: {e}"), false);
            }
        };
        // The reserve kept the node's WAL from being preallocated, so its next write needs
        // space (see `cluster::FREE_SPACE`).
        let while_full = if p.kind == FaultKind::DiskFull {
            self.probe_during(&id, port, p.hold()).await
        } else {
            let a = self.probe_answer(&id, port).await;
            tokio::time::sleep(p.hold()).await;
            a
        };
        let killed = p.kind == FaultKind::DiskFullKill;
        let mut restarted = String::new();
        if killed {
            let i = id.clone();
            let _ = self.blocking(move |c| c.kill9(&i)).await;
            restarted = format!("; kill -9 while full; {}", self.start_while_full(&id).await);
        }
        let _ = std::fs::remove_file(&ballast);
        let end = self.now();
        if killed {
            let back = self.bring_back(&id, "a kill while the disk was full").await;
            restarted = format!("{restarted}; space freed, {back}");
        }
        let t0 = tokio::time::Instant::now();
        let mut last = String::new();
        let recovered = loop {
            if self.stopped_itself(&id) {
                // What a supervisor (systemd `Restart=on-failure`) does after the fail-stop.
                let back = self.bring_back(&id, "its fail-stop on the full disk").await;
                restarted = format!(
                    "{restarted}; it had stopped itself on a storage error (exit {}), {back}",
                    chat_node::EXIT_STORAGE_FAILED
                );
            }
            match self.probe(&id, port, Duration::from_secs(5)).await {
                Ok(_) => break true,
                Err(e) => last = e,
            }
            if t0.elapsed() > RECOVERY {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let recovery = if recovered {
            format!(
                "writes again {:.1} s after space returned",
                t0.elapsed().as_secs_f64()
            )
        } else {
            self.finding(format!(
                "{id} did not take writes within {RECOVERY:?} after its disk had space again (last answer: {last}); \
                 a send while full was answered: {while_full}; restarting it (kill -9) so the run goes on"
            ));
            // What an operator would do; the rest of the run then shows whether anything
            // acknowledged was lost (as opposed to stuck behind the broken node).
            let i = id.clone();
            let _ = self.blocking(move |c| c.kill9(&i)).await;
            let back = self.bring_back(&id, "a restart after a full disk").await;
            let t1 = tokio::time::Instant::now();
            let mut after = "no writes after the restart either".to_string();
            while t1.elapsed() < RECOVERY {
                if self.probe(&id, port, Duration::from_secs(5)).await.is_ok() {
                    after = format!(
                        "writes {:.1} s after the restart",
                        t1.elapsed().as_secs_f64()
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            format!("NO writes within {RECOVERY:?} after space returned (last: {last}); kill -9, {back}: {after}")
        };
        self.end_disk_fault(&id).await;
        let outcome = format!(
            "filled {} MiB; a send while full got: {while_full}{restarted}; {recovery}",
            filled >> 20
        );
        self.record_until(p.kind, &id, (start, end), outcome, recovered);
    }

    /// Whether `id` is down after a fail-stop the supervisor saw during this disk fault (and
    /// nobody restarted it yet).
    fn stopped_itself(&self, id: &str) -> bool {
        let stopped = self
            .log
            .lock()
            .expect("log lock")
            .storage_stops
            .iter()
            .any(|s| s.node == id);
        let down = self
            .cluster
            .lock()
            .expect("cluster lock")
            .node(id)
            .is_some_and(|n| n.state == crate::cluster::NodeState::Down);
        stopped && down
    }

    /// Ends the disk fault on `id`: a fail-stop the supervisor reports after this is a finding
    /// again.
    async fn end_disk_fault(&self, id: &str) {
        if self.stopped_itself(id) {
            self.bring_back(id, "its fail-stop on the full disk").await;
        }
        self.disk_fault_ended
            .lock()
            .expect("disk fault ended lock")
            .insert(id.to_string(), tokio::time::Instant::now());
        self.disk_faulted
            .lock()
            .expect("disk faulted lock")
            .remove(id);
        self.release(id);
    }

    /// Starts node `id` while its disk is still full: it should refuse with a clear error (or
    /// come up, if it needs no new space); an exit here is expected, not a crash.
    async fn start_while_full(&self, id: &str) -> String {
        let i = id.to_string();
        let spawned = self
            .blocking(move |c| {
                let s = c.spawn_node(&i)?;
                c.set_state(&i, crate::cluster::NodeState::Stopping)?;
                Ok::<_, crate::ChaosError>(s)
            })
            .await;
        let (rx, generation) = match spawned {
            Ok(s) => s,
            Err(e) => return format!("could not spawn while full: {e}"),
        };
        let ready = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .expect("ready task");
        if ready.is_ok_and(|l| l.starts_with("chat-node ready")) {
            let i = id.to_string();
            let _ = self
                .blocking(move |c| c.set_state(&i, crate::cluster::NodeState::Running))
                .await;
            return "it STARTED while the disk was full".into();
        }
        for _ in 0..50 {
            let i = id.to_string();
            if let Ok(Some(st)) = self.blocking(move |c| c.try_reap(&i)).await {
                let i = id.to_string();
                let _ = self
                    .blocking(move |c| c.set_state(&i, crate::cluster::NodeState::Down))
                    .await;
                let i = id.to_string();
                let tail = self.blocking(move |c| c.log_tail(&i, 80)).await;
                let last = error_line(&tail);
                return format!("a start while full exited ({st}): {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let i = id.to_string();
        let _ = self
            .blocking(move |c| c.kill9_generation(&i, generation))
            .await;
        "a start while full hung (no ready line in 20 s, no exit); killed".into()
    }

    /// A user `node` owns under the current ring (the last one found while etcd is away).
    async fn probe_user(&self, node: &str) -> Result<String, String> {
        let t0 = tokio::time::Instant::now();
        loop {
            let args = vec!["ring".into(), "show".into(), "--json".into()];
            let found = match self.ctl(args, Duration::from_secs(10)).await {
                Ok(ring) => owned_probe_user(&ring, node),
                Err(e) => Err(format!(
                    "no ring: {}",
                    e.to_string().lines().next().unwrap_or("")
                )),
            };
            let cached = {
                let mut cache = self.probe_users.lock().expect("probe users lock");
                if let Ok(u) = &found {
                    cache.insert(node.to_string(), u.clone());
                }
                cache.get(node).cloned()
            };
            match (found, cached) {
                (Ok(u), _) | (Err(_), Some(u)) => return Ok(u),
                (Err(e), None) if t0.elapsed() > Duration::from_secs(20) => return Err(e),
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Probes once a second for `hold`: the distinct answers, in order.
    async fn probe_during(&self, id: &str, port: u16, hold: Duration) -> String {
        let until = tokio::time::Instant::now() + hold;
        let mut seen: Vec<String> = Vec::new();
        while tokio::time::Instant::now() < until {
            let a = self.probe_answer(id, port).await;
            // `✓ (12 ms)`: one answer whatever the time.
            let a = if a.starts_with('✓') {
                "✓".to_string()
            } else {
                a
            };
            if !seen.contains(&a) {
                seen.push(a);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        seen.join(" | ")
    }

    /// What a probe send was answered: `✓ (time)` or the refusal.
    async fn probe_answer(&self, id: &str, port: u16) -> String {
        match self.probe(id, port, Duration::from_secs(5)).await {
            Ok(s) => format!("✓ ({s})"),
            Err(e) => e,
        }
    }

    /// Sends one message from a user `node` owns to itself, straight to the node: `Ok` with the
    /// ✓ time, or `Err` with what the node answered (code and message) or why it could not.
    async fn probe(&self, node: &str, port: u16, timeout: Duration) -> Result<String, String> {
        let user = self.probe_user(node).await?;
        let n = self
            .next_probe
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = chat_auth::issue_token(chat_tests::SECRET.as_bytes(), &user, "probe", 3600);
        let opts = ConnectOptions {
            timeout,
            ..ConnectOptions::default()
        };
        let t0 = tokio::time::Instant::now();
        let mut c = Client::connect_with(&format!("ws://127.0.0.1:{port}"), &token, &opts)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let cmid = format!("probe-{n}");
        c.send_message(&cmid, &user, "disk probe")
            .await
            .map_err(|e| format!("send: {e}"))?;
        let deadline = t0 + timeout;
        loop {
            match c
                .recv_until(deadline)
                .await
                .map_err(|e| format!("waiting for ✓: {e}"))?
                .frame
            {
                Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid => {
                    return Ok(format!("{} ms", t0.elapsed().as_millis()));
                }
                Some(server_frame::Frame::Error(e)) if e.r#ref == cmid => {
                    let code =
                        chat_client::v1::ErrorCode::try_from(e.code).map_or("?".into(), |c| {
                            c.as_str_name()
                                .trim_start_matches("ERROR_CODE_")
                                .to_string()
                        });
                    return Err(format!("{code}: {}", e.message));
                }
                _ => {}
            }
        }
    }
}

/// The first `probe-N` user that `node` owns in the ring of `chatctl ring show --json`.
fn owned_probe_user(ring_json: &str, node: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(ring_json).map_err(|e| e.to_string())?;
    let current: chat_cluster::RingVersion =
        serde_json::from_value(v["ring"]["current"].clone()).map_err(|e| e.to_string())?;
    let ring = current.build().map_err(|e| e.to_string())?;
    (0..100_000)
        .map(|i| format!("probe-{i}"))
        .find(|u| ring.owner(u) == node)
        .ok_or_else(|| format!("{node} owns no probe user"))
}

/// Writes (appends to) `path` until the file system is full; the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut total = 0u64;
    for chunk in [1usize << 20, 4096, 512] {
        let buf = vec![0xA5u8; chunk];
        loop {
            match f.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}
