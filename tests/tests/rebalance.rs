//! Moves of the ring as the operator drives them: starting (one at a time), status, abort,
//! commit refused until every node is done. Real etcd, real nodes, real `chatctl`.

use std::process::Command;
use std::time::{Duration, Instant};

use chat_proto::v1::server_frame;
use chat_tests::*;

/// Runs `chatctl` and returns whether it succeeded, and its stdout + stderr.
fn chatctl_try(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("chatctl"))
        .args(args)
        .output()
        .expect("run chatctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn status(c: &TestCluster) -> serde_json::Value {
    let out = chatctl(&[
        "rebalance",
        "status",
        "--json",
        "--etcd",
        &c.etcd.url,
        "--prefix",
        &c.prefix,
    ]);
    serde_json::from_str(&out).expect("status is JSON")
}

/// Waits until every node reports `chat_ring_epoch` = `epoch`.
fn wait_epoch(c: &TestCluster, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("chat_ring_epoch {epoch}");
    for n in &c.nodes {
        loop {
            let body = http_get(&format!("{}/metrics", n.admin_url)).map(|(_, b)| b);
            if body.as_deref().is_some_and(|b| b.contains(&want)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached epoch {epoch}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_starting_moves_at_once_one_is_refused() {
    let c = TestCluster::start(&[]);
    let (etcd, prefix) = (c.etcd.url.clone(), c.prefix.clone());
    // Both start at the same moment, each for a different node.
    let runs: Vec<_> = ["n1", "n2"]
        .into_iter()
        .map(|n| {
            let (etcd, prefix) = (etcd.clone(), prefix.clone());
            std::thread::spawn(move || {
                chatctl_try(&[
                    "rebalance",
                    "start",
                    "--remove",
                    n,
                    "--etcd",
                    &etcd,
                    "--prefix",
                    &prefix,
                ])
            })
        })
        .collect();
    let results: Vec<(bool, String)> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<&(bool, String)> = results.iter().filter(|r| r.0).collect();
    assert_eq!(ok.len(), 1, "exactly one move starts: {results:?}");
    let refused = results.iter().find(|r| !r.0).unwrap();
    assert!(refused.1.contains("in flight"), "{}", refused.1);
    // The status shows the one move, to epoch 2, not committable: no node has copied yet.
    let s = status(&c);
    assert_eq!(s["current_epoch"], 1);
    assert_eq!(s["moving"]["epoch"], 2);
    assert_eq!(s["moving"]["may_commit"], false);
    let nodes = s["moving"]["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 3);
    // A third try is refused too, while the move is in flight.
    let (ok, out) = chatctl_try(&[
        "rebalance",
        "start",
        "--remove",
        "n3",
        "--etcd",
        &etcd,
        "--prefix",
        &prefix,
    ]);
    assert!(!ok && out.contains("in flight"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keeps_the_old_ring_and_spends_the_epoch() {
    let c = TestCluster::start(&[]);
    let args = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--etcd".into(),
            c.etcd.url.clone(),
            "--prefix".into(),
            c.prefix.clone(),
        ]);
        v
    };
    let run = |cmd: &[&str]| {
        let a = args(cmd);
        chatctl_try(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Adding a node that is not running is refused before anything is written.
    let (ok, out) = run(&["rebalance", "start", "--add", "n9"]);
    assert!(!ok && out.contains("not registered"), "{out}");
    assert!(status(&c)["moving"].is_null());

    let (ok, out) = run(&["rebalance", "start", "--remove", "n3"]);
    assert!(ok, "{out}");
    let s = status(&c);
    let share = s["moving"]["moved_share"].as_f64().unwrap();
    assert!(
        (0.2..0.45).contains(&share),
        "n3's third of the users moves: {share}"
    );
    assert_eq!(s["moving"]["nodes"]["n3"]["receives"], 0);
    assert!(s["moving"]["nodes"]["n3"]["gives"].as_u64().unwrap() > 0);
    // Nobody has copied: a commit is refused.
    let (ok, out) = run(&["rebalance", "commit"]);
    assert!(!ok && out.contains("may not commit"), "{out}");

    let (ok, out) = run(&["rebalance", "abort"]);
    assert!(ok && out.contains("epoch 2"), "{out}");
    assert!(status(&c)["moving"].is_null());
    // Every node takes the old members under the spent epoch, and keeps serving: a message
    // from a user on n3 reaches a user on n1.
    wait_epoch(&c, 2);
    let (a, b) = (
        c.users_on("n3", "a", 1).remove(0),
        c.users_on("n1", "b", 1).remove(0),
    );
    let mut ca = c.node("n3").connect(&a, "phone").await;
    let mut cb = c.node("n1").connect(&b, "phone").await;
    ca.send_message("m1", &b, "still here").await.unwrap();
    recv_until(&mut ca, "sent", |f| {
        matches!(f.frame, Some(server_frame::Frame::Sent(_)))
    })
    .await;
    let got = receive_messages(&mut cb, 1).await;
    assert_eq!(got[0].1.body, "still here");

    // The next move gets a new epoch; nothing to abort once it is aborted.
    let (ok, out) = run(&["rebalance", "start", "--remove", "n2"]);
    assert!(ok && out.contains("epoch 3"), "{out}");
    assert!(run(&["rebalance", "abort"]).0);
    let (ok, out) = run(&["rebalance", "abort"]);
    assert!(!ok && out.contains("no move"), "{out}");
    wait_epoch(&c, 3);
}
