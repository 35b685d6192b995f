//! What the cluster borrows from the host: loopback ports, etcd as a process, tmpfs mounts
//! (and those a killed earlier run left behind).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{ChaosError, Result};

/// Ports below the kernel's ephemeral range (32768+), so that the workload's outgoing
/// connections can never hold a port a restarting node needs.
const PORT_BASE: u16 = 20_000;
const PORT_SPAN: u16 = 12_000;

/// The etcd process.
pub(super) struct Etcd {
    pub child: Option<Child>,
    pub ops_port: u16,
    pub peer_port: u16,
    pub node_ports: Vec<u16>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Etcd {
    /// Starts etcd on its ports and data (first start or after a kill) and waits until healthy.
    pub fn start(&mut self) -> Result<()> {
        let e = self;
        let mut urls = vec![format!("http://127.0.0.1:{}", e.ops_port)];
        urls.extend(e.node_ports.iter().map(|p| format!("http://127.0.0.1:{p}")));
        let peer = format!("http://127.0.0.1:{}", e.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&e.log)?;
        let child = Command::new("etcd")
            .args(["--name", "chaos", "--data-dir"])
            .arg(&e.data)
            .args(["--listen-client-urls", &urls.join(",")])
            .args(["--advertise-client-urls", &urls[0]])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("chaos={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("spawn etcd (install etcd-server): {e}")))?;
        e.child = Some(child);
        let health = format!("http://127.0.0.1:{}/health", e.ops_port);
        // Ok: healthy; Err: etcd exited.
        let up = chat_tests::wait_until("etcd to be healthy", Duration::from_secs(30), || {
            if let Some(Ok(Some(st))) = e.child.as_mut().map(|c| c.try_wait()) {
                return Some(Err(st));
            }
            chat_tests::http_get(&health)
                .is_some_and(|(st, b)| st == 200 && b.contains("true"))
                .then_some(Ok(()))
        });
        match up {
            Ok(Ok(())) => Ok(()),
            Ok(Err(st)) => {
                e.child = None;
                Err(ChaosError::Setup(format!("etcd exited: {st}")))
            }
            Err(timeout) => Err(ChaosError::Timeout(timeout.to_string())),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(Some(_))),
            None => false,
        }
    }
}

/// Hands out free ports below the ephemeral range, never the same one twice.
pub(super) struct PortPool {
    next: u16,
}

impl PortPool {
    pub fn new() -> PortPool {
        PortPool {
            next: PORT_BASE + (std::process::id() % 400) as u16 * 25,
        }
    }

    /// A port free for both TCP and UDP right now.
    pub fn take(&mut self) -> Result<u16> {
        for _ in 0..PORT_SPAN {
            let p = self.next;
            self.next = if p + 1 >= PORT_BASE + PORT_SPAN {
                PORT_BASE
            } else {
                p + 1
            };
            let tcp = std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            let udp = std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok();
            if tcp && udp {
                return Ok(p);
            }
        }
        Err(ChaosError::Setup("no free port below 32000".into()))
    }
}

/// Mounts a tmpfs of `mib` MiB on `dir`, creating the directory first.
pub fn mount_tmpfs(dir: &Path, mib: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let args = ["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]
        .map(String::from)
        .into_iter()
        .chain([dir.display().to_string()])
        .collect::<Vec<_>>();
    crate::run_cmd(Path::new("mount"), &args, Duration::from_secs(10))?;
    Ok(())
}

/// A tmpfs mounted for as long as this lives (the suite's storage tests).
pub struct TmpfsMount(PathBuf);

impl TmpfsMount {
    pub fn new(dir: &Path, mib: u64) -> Result<TmpfsMount> {
        mount_tmpfs(dir, mib)?;
        Ok(TmpfsMount(dir.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// Unmounts `path` (lazily if busy); whether it is no longer mounted.
pub fn unmount(path: &Path) -> bool {
    let ok = Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status();
    if ok.is_ok_and(|s| s.success()) {
        return true;
    }
    Command::new("umount")
        .arg("-l")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Tmpfs mounts of earlier runs whose process is gone (a run killed with SIGKILL cannot clean
/// up): unmounted, so they do not pin memory.
pub fn clean_stale_mounts() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut cleaned = Vec::new();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(kind), Some(path)) = (f.next(), f.next()) else {
            continue;
        };
        if kind != "tmpfs" || !path.contains("/chat-chaos-") {
            continue;
        }
        let path = Path::new(path);
        let Some(run_dir) = path.parent() else {
            continue;
        };
        let alive = std::fs::read_to_string(run_dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive && unmount(path) {
            cleaned.push(path.display().to_string());
        }
    }
    cleaned
}

/// Free space every node's file system is held at outside disk faults: a nearly full disk, so
/// that the nodes' free-space rules (`storage.min_free_mib`, early flushes, paused compactions)
/// are always in play, and a disk-full fault reaches a node within seconds. (The nodes have
/// RocksDB's file preallocation off: with it, a new log reserved about 70 MiB ahead.)
pub const FREE_SPACE: u64 = 32 << 20;
const SLACK: u64 = 4 << 20;

/// Bytes available to unprivileged writers on the file system of `dir`.
pub fn available(dir: &Path) -> std::io::Result<u64> {
    chat_node::free_bytes(dir).ok_or_else(std::io::Error::last_os_error)
}

/// Grows or shrinks `dir/reserve` so that about [`FREE_SPACE`] stays free on `dir`'s file system.
pub fn keep_free(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let avail = available(dir)?;
    let path = dir.join("reserve");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    let len = f.metadata()?.len();
    if avail > FREE_SPACE + SLACK {
        let grow = (avail - FREE_SPACE) as i64;
        // SAFETY: fallocate on an open file we own; extends it (tmpfs allocates the pages).
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, len as i64, grow) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    } else if avail + SLACK < FREE_SPACE {
        f.set_len(len.saturating_sub(FREE_SPACE - avail))?;
    }
    Ok(())
}
