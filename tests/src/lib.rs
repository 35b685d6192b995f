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
    pub url: String,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// Starts a standalone node with a fresh data dir; `env` adds config overrides such as
    /// `("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "100")`.
    pub fn start(env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut n = TestNode {
            child: None,
            url: String::new(),
            data_dir: tmp.path().join("data"),
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

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(bin("chat-node"));
        cmd.args(["--standalone", "--node-id", "n1", "--listen", "127.0.0.1:0"])
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
        let stdout = child.stdout.take().expect("stdout");
        // Read the ready line on a thread so a node that never prints cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("chat-node did not become ready; log:\n{}", self.log_text());
            }
        };
        self.url = line
            .strip_prefix("chat-node ready ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.child = Some(child);
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
    chat_node::auth::issue_token(SECRET.as_bytes(), user, device, 3600)
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
