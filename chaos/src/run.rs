//! One chaos run, phase by phase: set up the cluster; connect every device; the fault phase
//! (workload sending, hostile clients, the nemesis's plan); heal; the quiet phase (wait until
//! every ✓'d message and receipt has arrived, or a deadline); check; report. Cleanup (processes,
//! tmpfs mounts, nftables) happens on every path, including a panic or an interrupted run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::checker::{self, Report};
use crate::cluster::{Cluster, ClusterConfig};
use crate::history::{Clock, FaultKind, RunData};
use crate::hostile::{Hostile, HostileConfig};
use crate::nemesis::Nemesis;
use crate::schedule::{self, Profile};
use crate::workload::{user_id, Workload, WorkloadConfig};
use crate::{ChaosError, Result};

#[derive(Debug, Clone)]
pub struct Options {
    pub profile: Profile,
    /// Length of the fault phase (default: the profile's).
    pub duration: Option<Duration>,
    pub seed: u64,
    pub users: Option<usize>,
    pub rate: Option<f64>,
    /// Keep the run dir even when the run is clean.
    pub keep_dir: bool,
    /// Size of each node's tmpfs, MiB.
    pub tmpfs_mib: u64,
    pub lease_ttl_secs: u64,
    /// Where the run dir is created (default: the system temp dir).
    pub base_dir: Option<PathBuf>,
    /// Extra environment for every node (`KEY=VALUE` config overrides).
    pub node_env: Vec<(String, String)>,
}

impl Options {
    pub fn new(profile: Profile, seed: u64) -> Options {
        Options {
            profile,
            duration: None,
            seed,
            users: None,
            rate: None,
            keep_dir: false,
            tmpfs_mib: 512,
            lease_ttl_secs: 4,
            base_dir: None,
            node_env: Vec::new(),
        }
    }
}

pub struct Outcome {
    pub report: Report,
    /// The table and, on violations, the evidence.
    pub text: String,
    /// Kept when the run found something or `keep_dir` was set.
    pub run_dir: Option<PathBuf>,
}

/// Stops and cleans up whatever is running when dropped (the end of the run, a panic, an
/// interrupted future).
struct Guard {
    cluster: Arc<Mutex<Cluster>>,
    nemesis: Option<Arc<Nemesis>>,
    keep_data: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(n) = &self.nemesis {
            n.stop();
            n.remove_net_faults();
        }
        let mut c = match self.cluster.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        c.shutdown(self.keep_data);
    }
}

pub async fn run(o: Options) -> Result<Outcome> {
    if !crate::is_root() {
        return Err(ChaosError::Setup(
            "the chaos suite needs root (nftables rules and tmpfs mounts); run it as root (CI does)"
                .into(),
        ));
    }
    for m in crate::cluster::clean_stale_mounts() {
        eprintln!("chaos: unmounted a stale tmpfs of an earlier run: {m}");
    }
    let phase = o.duration.unwrap_or_else(|| o.profile.default_duration());
    let ttl = Duration::from_secs(o.lease_ttl_secs);
    let plan = schedule::plan(o.profile, phase, o.seed, ttl);
    let base = o.base_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("chat-chaos-")
        .tempdir_in(&base)?
        .keep();
    std::fs::write(dir.join("pid"), std::process::id().to_string())?;
    std::fs::write(dir.join("plan.json"), serde_json::to_string_pretty(&plan)?)?;
    eprintln!(
        "chaos: profile {}, seed {}, {} s of faults, {} planned; run dir {}",
        o.profile.name(),
        o.seed,
        phase.as_secs(),
        plan.len(),
        dir.display()
    );
    let cfg = ClusterConfig {
        dir: dir.clone(),
        initial_nodes: 3,
        extra_nodes: plan.iter().filter(|p| p.kind == FaultKind::AddNode).count() + 1,
        tmpfs_mib: o.tmpfs_mib,
        lease_ttl_secs: o.lease_ttl_secs,
        node_env: o.node_env.clone(),
    };
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&cfg)).await??;
    let router = cluster.router_ws_url();
    let cluster = Arc::new(Mutex::new(cluster));
    let mut guard = Guard {
        cluster: cluster.clone(),
        nemesis: None,
        keep_data: true,
    };
    let clock = Clock::new();
    let nemesis = Arc::new(Nemesis::new(cluster.clone(), clock)?);
    guard.nemesis = Some(nemesis.clone());
    let supervisor = tokio::spawn(nemesis.clone().supervise());

    let users = o.users.unwrap_or_else(|| o.profile.default_users());
    let wcfg = WorkloadConfig {
        router_url: router.clone(),
        users,
        rate: o.rate.unwrap_or_else(|| o.profile.default_rate()),
        seed: o.seed,
        read_share: 0.3,
        token_ttl_secs: phase.as_secs() + 4 * 3600,
        groups: 4,
        group_size: 8.min(users),
        group_share: 0.15,
    };
    let groups = crate::workload::groups::make(&wcfg).await?;
    eprintln!(
        "chaos: {} groups of {} members made",
        groups.len(),
        wcfg.group_size
    );
    let workload = Workload::start(&wcfg, &groups, clock);
    let t0 = Instant::now();
    while workload.connected() < workload.devices() && t0.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "chaos: {} of {} devices of {users} users connected in {:.1} s; faults start",
        workload.connected(),
        workload.devices(),
        t0.elapsed().as_secs_f64()
    );
    let hostile = Hostile::start(
        HostileConfig {
            router_url: router,
            victims: (0..users.min(10)).map(user_id).collect(),
            seed: o.seed,
            flood: 2_000,
        },
        clock,
    );

    // Fault phase.
    workload.start_sending();
    let phase_start = Instant::now();
    let faults = tokio::spawn(nemesis.clone().run(
        plan,
        phase_start,
        phase_start + phase + Duration::from_secs(600),
    ));
    tokio::time::sleep_until(phase_start + phase).await;
    workload.stop_sending();
    let fault_phase_end = clock.now();
    eprintln!("chaos: fault phase over; stopping hostile clients, waiting for faults to heal");
    let hostile = hostile.stop().await;
    if tokio::time::timeout(Duration::from_secs(600), faults)
        .await
        .is_err()
    {
        eprintln!("chaos: the nemesis did not finish its plan within 600 s of the phase end");
    }
    let unhealed = nemesis.heal_all().await;

    // Quiet phase.
    let quiet = o.profile.quiet_deadline();
    let q0 = Instant::now();
    loop {
        let t = Instant::now();
        let snapshot = RunData {
            end: clock.now(),
            devices: workload.snapshot(),
            nemesis: nemesis.log(),
            groups: groups.clone(),
            ..RunData::default()
        };
        let left = checker::outstanding(&snapshot);
        if left.is_done() {
            eprintln!(
                "chaos: everything arrived {:.1} s into the quiet phase",
                q0.elapsed().as_secs_f64()
            );
            break;
        }
        if q0.elapsed() > quiet {
            eprintln!("chaos: quiet phase deadline ({quiet:?}) passed with {left:?} outstanding");
            break;
        }
        // Judging a long run's histories takes a while: poll no more than a third of the time.
        tokio::time::sleep(Duration::from_secs(2).max(t.elapsed() * 2)).await;
    }
    nemesis.stop();
    let _ = supervisor.await;
    let devices = workload.stop().await;
    let mut log = nemesis.log();
    log.findings.extend(
        unhealed
            .into_iter()
            .map(|u| format!("not healed at the end: {u}")),
    );
    let data = RunData {
        seed: o.seed,
        profile: o.profile.name().into(),
        start_unix_us: clock.start_unix_us,
        fault_phase_end,
        end: clock.now(),
        devices,
        hostile,
        nemesis: log,
        groups,
    };
    let report = checker::check(&data);
    let mut text = crate::report::table(&report, phase.as_secs_f64());
    if !report.is_clean() {
        text.push_str(&crate::report::evidence(&report, &dir, data.start_unix_us));
    }
    std::fs::write(dir.join("run.json"), serde_json::to_string(&data)?)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(dir.join("report.txt"), &text)?;
    let keep = o.keep_dir || !report.is_clean();
    guard.keep_data = keep;
    drop(guard);
    let run_dir = if keep {
        Some(dir)
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        None
    };
    Ok(Outcome {
        report,
        text,
        run_dir,
    })
}
