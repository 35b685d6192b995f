//! `TestEtcd`: a real single-member etcd on free loopback ports.

use std::process::{Child, Command, Stdio};

use crate::http::http_get;
use crate::process::kill;
use crate::wait::wait_until;
use crate::WAIT;

/// A real etcd server on free loopback ports with its data in a temp dir.
pub struct TestEtcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

/// A loopback port nothing listens on right now (another process may take it before it is
/// bound: servers started on one retry with another).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl TestEtcd {
    pub fn start() -> TestEtcd {
        // A free port can be taken by another test between our probe and etcd's bind: then
        // etcd exits, and we try other ports.
        for _ in 0..5 {
            let mut e = TestEtcd {
                child: None,
                url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                dir: tempfile::tempdir().expect("temp dir"),
            };
            if e.spawn() {
                return e;
            }
        }
        panic!("etcd did not start on any of 5 port pairs");
    }

    /// Starts etcd and waits until it is healthy; false if it exited (ports taken).
    fn spawn(&mut self) -> bool {
        let log_path = self.dir.path().join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &format!("test={}", self.peer_url)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd (install etcd-server: ops/install-deps.sh)");
        self.child = Some(child);
        let health = format!("{}/health", self.url);
        // Some(true): healthy; Some(false): etcd exited.
        let up = wait_until("etcd to be healthy", WAIT, || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Some(false);
            }
            http_get(&health)
                .is_some_and(|(st, b)| st == 200 && b.contains("true"))
                .then_some(true)
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        if !up {
            self.child = None;
        }
        up
    }

    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop etcd first");
        assert!(self.spawn(), "etcd did not restart on its ports");
    }

    pub fn config(&self, prefix: &str) -> chat_cluster::EtcdConfig {
        chat_cluster::EtcdConfig {
            endpoints: vec![self.url.clone()],
            prefix: prefix.into(),
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
