//! Test harness: real `chat-node` processes on loopback with their data in temp dirs, and clients
//! that talk to them. Every wait has a deadline; nothing sleeps for a fixed time.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_client::v1::{deliver, server_frame, Deliver, Message, Receipt, ServerFrame};
use chat_client::{Client, ConnectOptions};
use tokio::time::Instant;

pub use chat_client;
pub use chat_proto;

/// The secret every test node and token uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// Generous: the suite must pass on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// Path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "CHAT_TEST_{}_BIN",
        name.to_uppercase().replace('-', "_")
    )) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A `chat-node` child process. Killed (SIGKILL) when dropped.
pub struct TestNode {
    child: Option<Child>,
    pub id: String,
    pub url: String,
    pub admin_url: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Starts a standalone node with a fresh data dir; `env` adds config overrides such as
    /// `("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "100")`.
    pub fn start(env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("temp dir");
        Self::standalone(tmp.path().join("data"), tmp, env)
    }

    /// Starts a standalone node whose data is in `data_dir` (kept by the caller).
    pub fn start_in(data_dir: &std::path::Path, env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("temp dir");
        Self::standalone(data_dir.to_path_buf(), tmp, env)
    }

    /// A standalone node with its data in `data_dir` and its log in `tmp`.
    fn standalone(data_dir: PathBuf, tmp: tempfile::TempDir, env: &[(&str, &str)]) -> TestNode {
        let mut n = TestNode {
            child: None,
            id: "n1".into(),
            url: String::new(),
            admin_url: String::new(),
            args: vec!["--standalone".into()],
            data_dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: tmp.path().join("node.log"),
            _tmp: Some(tmp),
        };
        n.spawn();
        n
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a cluster member `id` against etcd at `etcd_url`, with its certificate in `certs`
    /// (`ca.pem`, `<id>.pem`, `<id>.key`) and its data in `dir`.
    pub fn start_member(
        id: &str,
        etcd_url: &str,
        prefix: &str,
        certs: &std::path::Path,
        dir: &std::path::Path,
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
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut n = TestNode {
            child: None,
            id: id.into(),
            url: String::new(),
            admin_url: String::new(),
            args: vec![
                "--etcd".into(),
                etcd_url.into(),
                "--quic-listen".into(),
                "127.0.0.1:0".into(),
            ],
            data_dir: dir.join(format!("{id}-data")),
            env: all,
            log: dir.join(format!("{id}.log")),
            _tmp: None,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("chat-node"));
        cmd.args(&self.args)
            .args(["--node-id", &self.id, "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("CHAT_NODE_AUTH__JWT_SECRET", SECRET)
            .env("RUST_LOG", "info,chat_node=debug")
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
                panic!("chat-node did not become ready; log:\n{}", self.log_text());
            }
        };
        let rest = line
            .strip_prefix("chat-node ready ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (url, admin) = rest.split_once(' ').expect("client and admin URLs");
        self.url = url.to_string();
        self.admin_url = admin.to_string();
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if http_get(&format!("{}/readyz", self.admin_url)).is_some_and(|(st, _)| st == 200) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} not ready; log:\n{}",
                self.id,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same data dir (on a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
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

pub fn token(user: &str, device: &str) -> String {
    chat_auth::issue_token(SECRET.as_bytes(), user, device, 3600)
}

/// Receives frames until `pred` matches one, returning it and every frame seen before it.
pub async fn recv_until(
    c: &mut Client,
    what: &str,
    mut pred: impl FnMut(&ServerFrame) -> bool,
) -> (ServerFrame, Vec<ServerFrame>) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        match c.recv_until(deadline).await {
            Ok(f) if pred(&f) => return (f, before),
            Ok(f) => before.push(f),
            Err(e) => panic!("waiting for {what}: {e}; frames so far: {before:#?}"),
        }
    }
}

/// Sends a ping and returns every frame that arrived before its pong: a barrier that shows what
/// the node had sent this connection up to now.
pub async fn until_pong(c: &mut Client, nonce: u64) -> Vec<ServerFrame> {
    c.ping(nonce).await.expect("ping");
    recv_until(
        c,
        "pong",
        |f| matches!(&f.frame, Some(server_frame::Frame::Pong(p)) if p.nonce == nonce),
    )
    .await
    .1
}

/// Everything a freshly connected client is sent: its backlog (up to `welcome.inbox_seq`, which
/// arrives from storage at its own pace) and then whatever precedes a pong.
pub async fn backlog(c: &mut Client, nonce: u64) -> Vec<ServerFrame> {
    let end = c.welcome.inbox_seq;
    let mut frames = Vec::new();
    if end > c.welcome.cursor {
        let (last, before) = recv_until(c, "backlog", |f| {
            as_deliver(f).is_some_and(|d| d.seq >= end)
        })
        .await;
        frames = before;
        frames.push(last);
    }
    frames.extend(until_pong(c, nonce).await);
    frames
}

pub fn as_deliver(f: &ServerFrame) -> Option<&Deliver> {
    match &f.frame {
        Some(server_frame::Frame::Deliver(d)) => Some(d),
        _ => None,
    }
}

pub fn as_message(f: &ServerFrame) -> Option<(u64, &Message)> {
    match as_deliver(f)? {
        Deliver {
            seq,
            entry: Some(deliver::Entry::Message(m)),
        } => Some((*seq, m)),
        _ => None,
    }
}

pub fn as_receipt(f: &ServerFrame) -> Option<(u64, &Receipt)> {
    match as_deliver(f)? {
        Deliver {
            seq,
            entry: Some(deliver::Entry::Receipt(r)),
        } => Some((*seq, r)),
        _ => None,
    }
}

/// The error code of an Error frame.
pub fn error_code(f: &ServerFrame) -> Option<chat_proto::v1::ErrorCode> {
    match &f.frame {
        Some(server_frame::Frame::Error(e)) => chat_proto::v1::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// Receives messages (acknowledging each) until `n` have arrived; returns them in arrival order.
pub async fn receive_messages(c: &mut Client, n: usize) -> Vec<(u64, Message)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let f = c
            .recv_until(deadline)
            .await
            .unwrap_or_else(|e| panic!("waiting for message {} of {n}: {e}", got.len() + 1));
        if let Some((seq, m)) = as_message(&f) {
            got.push((seq, m.clone()));
            c.ack(seq).await.expect("ack");
        }
    }
    got
}

/// The first line a child prints on stdout, read on a thread so that a process that never
/// prints cannot hang the test; the rest is drained so it never blocks on a full pipe.
fn first_line(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

/// A plain HTTP/1.0 GET on loopback: the whole response, or `None` if the server is not there.
fn http_raw(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

fn http_status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// `(status, body)` of a GET, or `None` if the server is not there.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let r = http_raw(url)?;
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((http_status(&r)?, body))
}

/// `(status, Location header)` of a GET (for redirects).
pub fn http_location(url: &str) -> Option<(u16, Option<String>)> {
    let r = http_raw(url)?;
    let location = r
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(|l| l.trim().to_string());
    Some((http_status(&r)?, location))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real etcd server on free loopback ports with its data in a temp dir.
pub struct TestEtcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
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
        let deadline = std::time::Instant::now() + WAIT;
        while http_get(&format!("{}/health", self.url))
            .is_none_or(|(st, b)| st != 200 || !b.contains("true"))
        {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not become healthy: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

/// Runs `chatctl` with `args`; panics with its output unless it succeeds.
pub fn chatctl(args: &[&str]) -> String {
    let out = Command::new(bin("chatctl"))
        .args(args)
        .output()
        .expect("run chatctl");
    assert!(
        out.status.success(),
        "chatctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A `chat-router` child process.
pub struct TestRouter {
    child: Option<Child>,
    pub url: String,
}

impl TestRouter {
    pub fn start(etcd_url: &str, prefix: &str, log: &std::path::Path) -> TestRouter {
        let log = std::fs::File::create(log).expect("router log");
        let mut child = Command::new(bin("chat-router"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                etcd_url,
                "--prefix",
                prefix,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn chat-router");
        let line = first_line(&mut child)
            .recv_timeout(WAIT)
            .expect("router ready line");
        let url = line
            .strip_prefix("chat-router ready ")
            .expect("ready line")
            .to_string();
        let r = TestRouter {
            child: Some(child),
            url,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while http_get(&format!("{}/readyz", r.url)).is_none_or(|(st, _)| st != 200) {
            assert!(std::time::Instant::now() < deadline, "router not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// The router's URL as a WebSocket client uses it.
    pub fn ws_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1)
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// etcd, a cluster CA, `n` nodes with their certificates, and the first ring.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub etcd: TestEtcd,
    pub prefix: String,
    pub certs: PathBuf,
    pub ring: chat_ring::Ring,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// `members`: (node id, weight); `env` applies to every node.
    pub fn start_with(
        members: &[(&str, u32)],
        vnodes_per_weight: u32,
        env: &[(&str, &str)],
    ) -> TestCluster {
        let etcd = TestEtcd::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let certs_s = certs.display().to_string();
        chatctl(&["certs", "init", "--dir", &certs_s]);
        let prefix = "/test/".to_string();
        let mut nodes = Vec::new();
        for (id, weight) in members {
            chatctl(&["certs", "issue", id, "--dir", &certs_s]);
            let w = weight.to_string();
            let mut e: Vec<(&str, &str)> = vec![("CHAT_NODE_CLUSTER__WEIGHT", &w)];
            e.extend_from_slice(env);
            nodes.push(TestNode::start_member(
                id,
                &etcd.url,
                &prefix,
                &certs,
                dir.path(),
                &e,
            ));
        }
        chatctl(&[
            "cluster",
            "init",
            "--etcd",
            &etcd.url,
            "--prefix",
            &prefix,
            "--vnodes-per-weight",
            &vnodes_per_weight.to_string(),
            "--wait-nodes",
            &members.len().to_string(),
        ]);
        let members: Vec<chat_ring::Member> = members
            .iter()
            .map(|(id, w)| chat_ring::Member {
                id: id.to_string(),
                weight: *w,
            })
            .collect();
        let ring = chat_ring::Ring::new(1, &members, vnodes_per_weight).expect("ring");
        for n in &nodes {
            n.wait_ready();
        }
        TestCluster {
            nodes,
            etcd,
            prefix,
            certs,
            ring,
            dir,
        }
    }

    /// Three nodes n1, n2, n3 of weight 1.
    pub fn start(env: &[(&str, &str)]) -> TestCluster {
        Self::start_with(
            &[("n1", 1), ("n2", 1), ("n3", 1)],
            chat_ring::DEFAULT_VNODES_PER_WEIGHT,
            env,
        )
    }

    pub fn node(&self, id: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).expect("node")
    }

    pub fn node_mut(&mut self, id: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// The first `count` ids `<stem>-<i>` that `node` owns.
    pub fn users_on(&self, node: &str, stem: &str, count: usize) -> Vec<String> {
        (0..100_000)
            .map(|i| format!("{stem}-{i}"))
            .filter(|u| self.ring.owner(u) == node)
            .take(count)
            .collect()
    }

    /// Starts one more member node `id` (certificate, registration): it owns nothing until a
    /// move of the ring gives it a share.
    pub fn start_extra_node(&mut self, id: &str) {
        let certs = self.certs.display().to_string();
        chatctl(&["certs", "issue", id, "--dir", &certs]);
        let n = TestNode::start_member(
            id,
            &self.etcd.url,
            &self.prefix,
            &self.certs,
            self.dir.path(),
            &[],
        );
        n.wait_ready();
        self.nodes.push(n);
    }

    pub fn start_router(&self) -> TestRouter {
        TestRouter::start(
            &self.etcd.url,
            &self.prefix,
            &self.dir.path().join("router.log"),
        )
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, n.log_text()))
            .collect()
    }
}
