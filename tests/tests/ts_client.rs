//! The TypeScript client library (`web/client`) against a real cluster, outside a browser: its
//! `live/live.mjs` runs in Node and checks route lookup, a `redirect` frame followed from a
//! node that is not the user's home, order and ✓ of 1:1 messages with their delivered and read
//! receipts, an idempotent retry, a group of three, an upload fetched back byte for byte,
//! presence, and a typed error.
//!
//! Needs the built library (`cd web && npm ci && npm run build`; `ops/test.sh` does it).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chat_tests::{token, TestCluster};

#[test]
fn the_typescript_client_talks_to_a_real_cluster() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web/client");
    assert!(
        web.join("dist/index.js").is_file(),
        "{} is not built: run `cd web && npm ci && npm run build` (ops/test.sh does)",
        web.display()
    );
    let c = TestCluster::start(&[]);
    let router = c.start_router();
    let ring = c.ring();
    let (alice, bob, carol) = ("ts-alice", "ts-bob", "ts-carol");
    let bob_home = ring.owner(bob).to_string();
    let wrong = c
        .nodes
        .iter()
        .find(|n| n.id != bob_home)
        .expect("another node");

    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(web.join("live/live.mjs"))
        .env("CHAT_ROUTER", &router.url)
        .env("CHAT_WRONG_NODE", &wrong.url)
        .env("CHAT_BOB_HOME", &bob_home)
        .env("CHAT_ALICE_TOKEN", token(alice, "node"))
        .env("CHAT_BOB_TOKEN", token(bob, "node"))
        .env("CHAT_CAROL_TOKEN", token(carol, "node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (ops/install-deps.sh installs Node.js)");
    // The script's own waits are 30 s each; give the whole run two minutes.
    let end = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("live: all checks passed"),
        "status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nnode logs:\n{}",
        c.logs()
    );
}
