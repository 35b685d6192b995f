//! When RocksDB itself fails a write (here ENOSPC on a full tmpfs, with the node's free-space
//! floor turned off so the write reaches RocksDB), it refuses every later write until reopened.
//! The node must stop at once with exit code 74 (`EXIT_STORAGE_FAILED`), acknowledge nothing it
//! did not store, and come back with everything acknowledged once restarted with space.
//! Needs root (a tmpfs mount) and the debug binaries, like the short profile.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chat_chaos::cluster::TmpfsMount;
use chat_client::v1::server_frame;
use chat_tests::{receive_messages, TestNode};

/// Appends to `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1usize << 20, 4096, 512, 1] {
        let buf = vec![0x5Au8; chunk];
        while f.write(&buf).is_ok_and(|n| n > 0) {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_when_rocksdb_fails_a_write_and_recovers_after_a_restart() {
    assert!(chat_chaos::is_root(), "needs root (tmpfs mount)");
    let tmp = tempfile::Builder::new()
        .prefix("chat-chaos-failstop-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("mnt");
    // Small, so that filling it takes little time and memory.
    let _mount = TmpfsMount::new(&mnt, 40).expect("mount tmpfs");
    let data = mnt.join("data");
    let env = [("CHAT_NODE_STORAGE__MIN_FREE_MIB", "0")];
    let mut node = TestNode::start_in(&data, &env);

    let mut alice = node.connect("alice", "phone").await;
    let mut acked: Vec<String> = Vec::new();
    let body = "x".repeat(16 * 1024);
    alice.send_message("m0", "bob", &body).await.unwrap();
    chat_tests::recv_until(
        &mut alice,
        "✓ m0",
        |f| matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == "m0"),
    )
    .await;
    acked.push("m0".into());

    fill(&mnt.join("ballast"));
    // Send until the node stops; a ✓ can still come for what fit in the last free page.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    'sending: for i in 1..200 {
        let cmid = format!("m{i}");
        if alice.send_message(&cmid, "bob", &body).await.is_err() {
            break;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, alice.recv()).await {
                Ok(Ok(f)) => match f.frame {
                    Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid => {
                        acked.push(cmid);
                        break;
                    }
                    Some(server_frame::Frame::Error(e)) if e.r#ref == cmid => {
                        refused += 1;
                        break;
                    }
                    _ => {}
                },
                // The connection ended: the node stopped.
                Ok(Err(_)) => break 'sending,
                Err(_) => panic!("no answer and no exit; log:\n{}", node.log_text()),
            }
        }
    }
    let status = node
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the node did not stop; log:\n{}", node.log_text()));
    assert_eq!(
        status.code(),
        Some(chat_node::EXIT_STORAGE_FAILED),
        "log:\n{}",
        node.log_text()
    );
    assert!(node.log_text().contains("storage failed"));
    eprintln!(
        "{} acknowledged, {refused} refused before the stop",
        acked.len()
    );

    // Space again: the restart replays the log, and every ✓ is there, once, in order.
    std::fs::remove_file(mnt.join("ballast")).unwrap();
    node.restart();
    node.wait_ready();
    let mut bob = node.connect("bob", "phone").await;
    let got = receive_messages(&mut bob, acked.len()).await;
    let ids: Vec<String> = got.iter().map(|(_, m)| m.client_msg_id.clone()).collect();
    assert_eq!(ids, acked);
    let mut alice = node.connect("alice", "phone").await;
    alice.send_message("after", "bob", "hello").await.unwrap();
    chat_tests::recv_until(
        &mut alice,
        "✓ after",
        |f| matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == "after"),
    )
    .await;
}
