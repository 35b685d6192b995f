//! `TestNode`: a `chat-node` child process on loopback, standalone or a cluster member.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_client::{Client, ConnectOptions};

use crate::http::is_ok;
use crate::process::{bin, first_line, kill, signal, wait_exit};
use crate::wait::wait_until;
use crate::{token, SECRET, WAIT};

/// A `chat-node` child process. Killed (SIGKILL) when dropped.
pub struct TestNode {
    child: Option<Child>,
    pub id: String,
    pub url: String,
    pub admin_url: String,
    /// The client HTTP listener (the embedded media store's routes).
    pub http_url: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Owned copies of `(key, value)` config overrides.
fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl TestNode {
    /// Starts a standalone node with a fresh data dir; `env` adds config overrides such as
    /// `("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "100")`.
    pub fn start(env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        Self::standalone(data_dir, tmp, env)
    }

    /// Starts a standalone node whose data is in `data_dir` (kept by the caller).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("temp dir");
        Self::standalone(data_dir.to_path_buf(), tmp, env)
    }

    /// A standalone node with its data in `data_dir` and its log in `tmp`.
    fn standalone(data_dir: PathBuf, tmp: tempfile::TempDir, env: &[(&str, &str)]) -> TestNode {
        let log = tmp.path().join("node.log");
        Self::launch(
            "n1",
            vec!["--standalone".into()],
            data_dir,
            owned(env),
            log,
            Some(tmp),
        )
    }

    /// Starts a cluster member `id` against etcd at `etcd_url`, with its certificate in `certs`
    /// (`ca.pem`, `<id>.pem`, `<id>.key`) and its data and log in `dir`.
    pub fn start_member(
        id: &str,
        etcd_url: &str,
        prefix: &str,
        certs: &Path,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> TestNode {
        let mut all: Vec<(String, String)> = vec![
            ("CHAT_NODE_CLUSTER__PREFIX".into(), prefix.into()),
            (
                "CHAT_NODE_CLUSTER__CA_FILE".into(),
                certs.join("ca.pem").display().to_string(),
            ),
            // Short lease (a stopped node leaves the registry quickly), yet long enough that a
            // busy machine does not miss keepalives.
            ("CHAT_NODE_CLUSTER__LEASE_TTL_SECS".into(), "6".into()),
        ];
        all.extend(owned(env));
        let args = ["--etcd", etcd_url, "--quic-listen", "127.0.0.1:0"];
        Self::launch(
            id,
            args.map(String::from).to_vec(),
            dir.join(format!("{id}-data")),
            all,
            dir.join(format!("{id}.log")),
            None,
        )
    }

    /// The one place a `TestNode` is built: every kind of node starts here.
    fn launch(
        id: &str,
        args: Vec<String>,
        data_dir: PathBuf,
        env: Vec<(String, String)>,
        log: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> TestNode {
        let mut n = TestNode {
            child: None,
            id: id.into(),
            url: String::new(),
            admin_url: String::new(),
            http_url: String::new(),
            data_dir,
            args,
            env,
            log,
            _tmp: tmp,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the process and waits for its ready line; `Err` with its log if it exits first.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("chat-node"));
        cmd.args(&self.args)
            .args(["--node-id", &self.id, "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("CHAT_NODE_AUTH__JWT_SECRET", SECRET)
            // Tests send floods from one user and open many connections from one address; the
            // rate limits' own tests turn them back on.
            .env("CHAT_NODE_RATE__MESSAGES_PER_MIN", "0")
            .env("CHAT_NODE_RATE__GROUP_SENDS_PER_MIN", "0")
            .env("CHAT_NODE_RATE__GROUP_REQUESTS_PER_MIN", "0")
            .env("CHAT_NODE_RATE__CONNECTIONS_PER_ADDR_PER_MIN", "0")
            // `CHAT_TEST_NODE_LOG` lets a developer trace one flaky run.
            .env(
                "RUST_LOG",
                std::env::var("CHAT_TEST_NODE_LOG")
                    .unwrap_or_else(|_| "info,chat_node=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn chat-node");
        let rx = first_line(&mut child);
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "chat-node did not become ready; log:\n{}",
                    self.log_text()
                ));
            }
        };
        let rest = line
            .strip_prefix("chat-node ready ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let urls: Vec<&str> = rest.split(' ').collect();
        let [url, admin, http] = urls[..] else {
            panic!("expected client, admin and HTTP URLs in {line:?}");
        };
        self.url = url.to_string();
        self.admin_url = admin.to_string();
        self.http_url = http.to_string();
        self.child = Some(child);
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let readyz = format!("{}/readyz", self.admin_url);
        wait_until(&format!("{} to be ready", self.id), WAIT, || is_ok(&readyz))
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    /// SIGTERM, then waits for the exit; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(c) = &self.child else {
            return false;
        };
        signal(c.id(), "TERM");
        match wait_exit(&mut self.child, WAIT) {
            Some(st) => st.success(),
            None => {
                kill(&mut self.child);
                false
            }
        }
    }

    /// Starts the node again on the same data dir (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
    }

    /// Like [`TestNode::restart`], for a start that may be refused: `Err` with the node's log.
    pub fn try_restart(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "stop the node first");
        self.try_spawn()
    }

    /// Sets a config override (`CHAT_NODE_…`) for the node's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub async fn connect(&self, user: &str, device: &str) -> Client {
        self.connect_with(user, device, &ConnectOptions::default())
            .await
    }

    pub async fn connect_with(&self, user: &str, device: &str, opts: &ConnectOptions) -> Client {
        Client::connect_with(&self.url, &token(user, device), opts)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect {user}/{device}: {e}\nnode log:\n{}",
                    self.log_text()
                )
            })
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
