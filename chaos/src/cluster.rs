//! The cluster under test as real processes: one etcd listening on one client port per node (so
//! a node↔etcd partition is a port drop), nodes on ports fixed for the whole run (a restart
//! keeps them, so partitions and peers' cached addresses stay valid), each node's data on its own
//! small tmpfs (so "disk full" is real ENOSPC), the router, the CA. Everything lives in one run
//! directory. Synchronous: the nemesis calls it from blocking tasks.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{run_cmd, ChaosError, Result};

mod host;

pub use host::{clean_stale_mounts, keep_free, mount_tmpfs, unmount, TmpfsMount, FREE_SPACE};
use host::{Etcd, PortPool};

/// The cluster's key prefix in etcd.
pub const PREFIX: &str = "/chaos/";

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub dir: PathBuf,
    pub initial_nodes: usize,
    /// Nodes the run may add later (their etcd ports must exist from the start).
    pub extra_nodes: usize,
    pub tmpfs_mib: u64,
    pub lease_ttl_secs: u64,
    /// Extra environment for every node (config overrides such as
    /// `CHAT_NODE_STORAGE__MIN_FREE_MIB=0`); applied after the suite's own.
    pub node_env: Vec<(String, String)>,
}

/// A node's fixed identity: ports, mount, log.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: String,
    pub client_port: u16,
    pub admin_port: u16,
    /// The client HTTP listener (the embedded media store).
    pub http_port: u16,
    pub quic_port: u16,
    /// Its own etcd client port.
    pub etcd_port: u16,
    /// The tmpfs mount holding `data/`, `reserve` (which keeps its free space at [`FREE_SPACE`])
    /// and, while the nemesis fills it, `ballast`.
    pub mount: PathBuf,
    pub log: PathBuf,
}

impl NodeSpec {
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn data_dir(&self) -> PathBuf {
        self.mount.join("data")
    }
    pub fn ballast(&self) -> PathBuf {
        self.mount.join("ballast")
    }
    pub fn reserve(&self) -> PathBuf {
        self.mount.join("reserve")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    /// SIGSTOPped.
    Paused,
    /// Killed by the nemesis (or crashed), to be restarted.
    Down,
    /// SIGTERM sent; the nemesis waits for the exit.
    Stopping,
    /// Removed from the ring and stopped for good.
    Retired,
}

pub struct NodeProc {
    pub spec: NodeSpec,
    pub state: NodeState,
    /// In the current ring (or being added to it).
    pub member: bool,
    child: Option<Child>,
    mounted: bool,
    /// Counts spawns, so that a task can kill the process it started and no later one.
    generation: u32,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub lease_ttl_secs: u64,
    tmpfs_mib: u64,
    node_env: Vec<(String, String)>,
    etcd: Etcd,
    pub nodes: Vec<NodeProc>,
    router: Option<chat_tests::TestRouter>,
    ports: PortPool,
}

impl NodeProc {
    /// A process of this node exists (running, paused or stopping; not yet reaped).
    pub fn has_process(&self) -> bool {
        self.child.is_some()
    }
}

impl Cluster {
    /// etcd, certificates, the first nodes, the ring, the router.
    pub fn start(cfg: &ClusterConfig) -> Result<Cluster> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut ports = PortPool::new();
        let etcd = Etcd {
            child: None,
            ops_port: ports.take()?,
            peer_port: ports.take()?,
            node_ports: (0..cfg.initial_nodes + cfg.extra_nodes)
                .map(|_| ports.take())
                .collect::<Result<_>>()?,
            data: cfg.dir.join("etcd-data"),
            log: cfg.dir.join("etcd.log"),
        };
        let mut c = Cluster {
            dir: cfg.dir.clone(),
            certs: cfg.dir.join("certs"),
            lease_ttl_secs: cfg.lease_ttl_secs,
            node_env: cfg.node_env.clone(),
            tmpfs_mib: cfg.tmpfs_mib,
            etcd,
            nodes: Vec::new(),
            router: None,
            ports,
        };
        c.etcd_start()?;
        let certs = c.certs.display().to_string();
        c.ctl_plain(&["certs", "init", "--dir", &certs])?;
        let mut ready = Vec::new();
        for i in 1..=cfg.initial_nodes {
            let id = format!("n{i}");
            c.create_node(&id)?;
            ready.push((id.clone(), c.spawn_node(&id)?.0));
        }
        for (id, rx) in ready {
            wait_ready_line(&id, rx, Duration::from_secs(120))?;
        }
        let n = cfg.initial_nodes.to_string();
        c.ctl(
            &["cluster", "init", "--wait-nodes", &n],
            Duration::from_secs(60),
        )?;
        for n in &mut c.nodes {
            n.member = true;
        }
        let router =
            chat_tests::TestRouter::start(&c.etcd_ops_url(), PREFIX, &c.dir.join("router.log"));
        c.router = Some(router);
        Ok(c)
    }

    pub fn router_ws_url(&self) -> String {
        self.router.as_ref().map(|r| r.ws_url()).unwrap_or_default()
    }

    pub fn etcd_ops_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd.ops_port)
    }

    pub fn etcd_port_of(&self, id: &str) -> Option<u16> {
        self.node(id).map(|n| n.spec.etcd_port)
    }

    pub fn node(&self, id: &str) -> Option<&NodeProc> {
        self.nodes.iter().find(|n| n.spec.id == id)
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut NodeProc> {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.id == id)
            .ok_or_else(|| ChaosError::Setup(format!("no node {id}")))
    }

    /// `chatctl` against this cluster's etcd (the operator's port) with a deadline.
    pub fn ctl(&self, args: &[&str], timeout: Duration) -> Result<String> {
        ctl_at(&self.etcd_ops_url(), args, timeout)
    }

    fn ctl_plain(&self, args: &[&str]) -> Result<String> {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        run_cmd(&chat_tests::bin("chatctl"), &a, Duration::from_secs(60))
    }

    /// Certificate, ports, tmpfs mount for a new node `id` (not started).
    pub fn create_node(&mut self, id: &str) -> Result<()> {
        let certs = self.certs.display().to_string();
        self.ctl_plain(&["certs", "issue", id, "--dir", &certs])?;
        let index = self.nodes.len();
        let etcd_port = *self.etcd.node_ports.get(index).ok_or_else(|| {
            ChaosError::Setup(format!("no etcd port left for node #{}", index + 1))
        })?;
        let spec = NodeSpec {
            id: id.into(),
            client_port: self.ports.take()?,
            admin_port: self.ports.take()?,
            http_port: self.ports.take()?,
            quic_port: self.ports.take()?,
            etcd_port,
            mount: self.dir.join(id),
            log: self.dir.join(format!("{id}.log")),
        };
        mount_tmpfs(&spec.mount, self.tmpfs_mib)?;
        // Before the node's first WAL: see `FREE_SPACE`.
        keep_free(&spec.mount)?;
        self.nodes.push(NodeProc {
            spec,
            state: NodeState::Down,
            member: false,
            child: None,
            mounted: true,
            generation: 0,
        });
        Ok(())
    }

    /// Starts node `id` on its fixed ports; the receiver gets its ready line; the number
    /// identifies this process for [`Cluster::kill9_generation`].
    pub fn spawn_node(&mut self, id: &str) -> Result<(mpsc::Receiver<String>, u32)> {
        let ttl = self.lease_ttl_secs.to_string();
        let ca = self.certs.join("ca.pem");
        let etcd_url = format!(
            "http://127.0.0.1:{}",
            self.node(id).map_or(0, |n| n.spec.etcd_port)
        );
        let node_env = self.node_env.clone();
        let n = self.node_mut(id)?;
        if n.child.is_some() {
            return Err(ChaosError::Setup(format!("{id} is already running")));
        }
        std::fs::create_dir_all(n.spec.data_dir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.spec.log)?;
        let s = &n.spec;
        let mut child = Command::new(chat_tests::bin("chat-node"))
            .args(["--node-id", &s.id, "--etcd", &etcd_url])
            .args(["--listen", &format!("127.0.0.1:{}", s.client_port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", s.admin_port)])
            .args(["--http-listen", &format!("127.0.0.1:{}", s.http_port)])
            .args(["--quic-listen", &format!("127.0.0.1:{}", s.quic_port)])
            .arg("--data-dir")
            .arg(s.data_dir())
            .env("CHAT_NODE_AUTH__JWT_SECRET", chat_tests::SECRET)
            .env("CHAT_NODE_CLUSTER__PREFIX", PREFIX)
            .env("CHAT_NODE_CLUSTER__CA_FILE", &ca)
            .env("CHAT_NODE_CLUSTER__LEASE_TTL_SECS", &ttl)
            // The node's free-space floor must sit below what the reserve leaves free
            // (`FREE_SPACE`), or it would refuse every write from the start.
            .env("CHAT_NODE_STORAGE__MIN_FREE_MIB", "8")
            // The workload sends faster than a person; the limits are not under test here.
            .env("CHAT_NODE_RATE__MESSAGES_PER_MIN", "0")
            .env("CHAT_NODE_RATE__GROUP_SENDS_PER_MIN", "0")
            .env("CHAT_NODE_RATE__GROUP_REQUESTS_PER_MIN", "0")
            .env("CHAT_NODE_RATE__CONNECTIONS_PER_ADDR_PER_MIN", "0")
            .env("RUST_LOG", "info,chat_node=debug")
            .env("NO_COLOR", "1")
            // Panics keep their backtrace (RUST_BACKTRACE); a returned error is one line.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .envs(node_env)
            .spawn()?;
        let rx = chat_tests::process::first_line(&mut child);
        n.child = Some(child);
        n.state = NodeState::Running;
        n.generation += 1;
        Ok((rx, n.generation))
    }

    /// `kill -9` node `id` if its process is still the one of spawn `generation`.
    pub fn kill9_generation(&mut self, id: &str, generation: u32) -> Result<()> {
        if self.node_mut(id)?.generation == generation {
            self.kill9(id)?;
        }
        Ok(())
    }

    /// `kill -9` (and reap) node `id`; it stays down until [`Cluster::spawn_node`].
    pub fn kill9(&mut self, id: &str) -> Result<()> {
        let n = self.node_mut(id)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.state = NodeState::Down;
        Ok(())
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM) to node `id`, setting its state.
    pub fn signal(&mut self, id: &str, sig: i32, state: NodeState) -> Result<()> {
        let n = self.node_mut(id)?;
        let Some(c) = &n.child else {
            return Err(ChaosError::Setup(format!("{id} is not running")));
        };
        // SAFETY: kill(2) on a pid we spawned and have not reaped.
        unsafe { libc::kill(c.id() as i32, sig) };
        n.state = state;
        Ok(())
    }

    /// Reaps node `id` if it has exited (after SIGTERM): its exit status.
    pub fn try_reap(&mut self, id: &str) -> Result<Option<ExitStatus>> {
        let n = self.node_mut(id)?;
        let st = match &mut n.child {
            Some(c) => c.try_wait()?,
            None => return Ok(None),
        };
        if st.is_some() {
            n.child = None;
        }
        Ok(st)
    }

    /// Nodes that exited while running or paused (no one asked): reaped and marked down.
    pub fn exited_unasked(&mut self) -> Vec<(String, ExitStatus)> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if !matches!(n.state, NodeState::Running | NodeState::Paused) {
                continue;
            }
            if let Some(c) = &mut n.child {
                if let Ok(Some(st)) = c.try_wait() {
                    n.child = None;
                    n.state = NodeState::Down;
                    out.push((n.spec.id.clone(), st));
                }
            }
        }
        out
    }

    pub fn set_state(&mut self, id: &str, state: NodeState) -> Result<()> {
        self.node_mut(id)?.state = state;
        Ok(())
    }

    pub fn set_member(&mut self, id: &str, member: bool) -> Result<()> {
        self.node_mut(id)?.member = member;
        Ok(())
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: &str, lines: usize) -> String {
        let text = self
            .node(id)
            .and_then(|n| std::fs::read_to_string(&n.spec.log).ok())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts etcd on its ports and data (first start or after a kill) and waits until healthy.
    pub fn etcd_start(&mut self) -> Result<()> {
        self.etcd.start()
    }

    pub fn etcd_kill9(&mut self) {
        self.etcd.kill9()
    }

    pub fn etcd_running(&mut self) -> bool {
        self.etcd.running()
    }

    /// Stops everything and unmounts the tmpfs mounts; with `keep_data`, copies each node's
    /// data dir into the run dir first (a tmpfs forgets it at unmount).
    pub fn shutdown(&mut self, keep_data: bool) {
        for n in &mut self.nodes {
            if let Some(c) = &n.child {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            }
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.router = None;
        self.etcd_kill9();
        for n in &mut self.nodes {
            if !n.mounted {
                continue;
            }
            if keep_data {
                let to = self.dir.join(format!("{}-data", n.spec.id));
                let _ = Command::new("cp")
                    .arg("-a")
                    .arg(n.spec.data_dir())
                    .arg(&to)
                    .status();
            }
            let _ = std::fs::remove_file(n.spec.ballast());
            let _ = std::fs::remove_file(n.spec.reserve());
            if unmount(&n.spec.mount) {
                n.mounted = false;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// `chatctl ARGS --etcd URL --prefix PREFIX`, with a deadline.
pub fn ctl_at(etcd_url: &str, args: &[&str], timeout: Duration) -> Result<String> {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend([
        "--etcd".into(),
        etcd_url.into(),
        "--prefix".into(),
        PREFIX.into(),
    ]);
    run_cmd(&chat_tests::bin("chatctl"), &a, timeout)
}

/// Waits for a node's ready line.
pub fn wait_ready_line(id: &str, rx: mpsc::Receiver<String>, timeout: Duration) -> Result<()> {
    match rx.recv_timeout(timeout) {
        Ok(l) if l.starts_with("chat-node ready ") => Ok(()),
        Ok(l) => Err(ChaosError::Setup(format!(
            "{id}: unexpected first line {l:?}"
        ))),
        Err(_) => Err(ChaosError::Timeout(format!(
            "{id} did not print its ready line"
        ))),
    }
}
