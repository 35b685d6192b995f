//! `TestRouter`: a `chat-router` child process.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::http::is_ok;
use crate::process::{bin, first_line, kill};
use crate::wait::wait_until;
use crate::WAIT;

/// A `chat-router` child process. Killed when dropped.
pub struct TestRouter {
    child: Option<Child>,
    pub url: String,
}

impl TestRouter {
    pub fn start(etcd_url: &str, prefix: &str, log: &Path) -> TestRouter {
        Self::start_with(etcd_url, prefix, log, &[])
    }

    /// [`TestRouter::start`] with more flags (`--web-dir`, ...).
    pub fn start_with(etcd_url: &str, prefix: &str, log: &Path, extra: &[&str]) -> TestRouter {
        let log = std::fs::File::create(log).expect("router log");
        let mut child = Command::new(bin("chat-router"))
            .args(["--listen", "127.0.0.1:0"])
            .args(["--etcd", etcd_url, "--prefix", prefix])
            .args(extra)
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
        let readyz = format!("{}/readyz", r.url);
        wait_until("the router to be ready", WAIT, || is_ok(&readyz)).unwrap();
        r
    }

    /// The router's URL as a WebSocket client uses it.
    pub fn ws_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1)
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
