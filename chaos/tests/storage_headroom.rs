//! A node whose disk stays nearly full (about 32 MiB free, as the chaos harness holds every
//! node, with the floor at 8 MiB) while far more than that flows through it must not run
//! RocksDB out of space in the background: before the fix, the memtable grew to 64 MiB (the
//! space came back as the harness shrank its reserve) and its flush failed with ENOSPC, so the
//! node fail-stopped (the 30-minute chaos run, seed 21). It must stay up, give a ✓ only for what
//! it stored, and deliver every ✓'d message. Needs root (a tmpfs mount) and the debug binaries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_chaos::cluster::TmpfsMount;
use chat_client::v1::{server_frame, ErrorCode};
use chat_tests::{receive_messages, TestNode};
use rand::{Rng, SeedableRng};

/// Holds the free space like the harness, from its own thread, until dropped. Dropped before
/// the tmpfs is unmounted, also when the test fails: run on the unmounted directory it would
/// fill the disk beneath.
struct Holder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Holder {
    fn start(mnt: &std::path::Path) -> Holder {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, mnt) = (stop.clone(), mnt.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                chat_chaos::cluster::keep_free(&mnt).expect("keep the free space");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Holder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Messages sent: 2,400 of 30 KiB (about 70 MiB, more than the memtable before a flush).
const MESSAGES: usize = 2400;
const BODY: usize = 30 * 1024;
/// Sends waiting for their ✓ at once.
const WINDOW: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_kept_nearly_full_flushes_early_instead_of_running_out() {
    assert!(chat_chaos::is_root(), "needs root (tmpfs mount)");
    let tmp = tempfile::Builder::new()
        .prefix("chat-chaos-headroom-")
        .tempdir()
        .unwrap();
    let mnt = tmp.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt, 400).expect("mount tmpfs");
    chat_chaos::cluster::keep_free(&mnt).unwrap();
    let data = mnt.join("data");
    let env = [("CHAT_NODE_STORAGE__MIN_FREE_MIB", "8")];
    let mut node = TestNode::start_in(&data, &env);

    // Like the harness: about 32 MiB stay free, whatever the node writes or deletes.
    let holder = Holder::start(&mnt);

    let mut alice = node.connect("alice", "phone").await;
    // Random letters: LZ4 cannot shrink them much, so the table files are as large as the data.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut body = || -> String {
        (0..BODY)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pending: HashMap<String, String> = HashMap::new();
    let (mut acked, mut refused, mut next) = (Vec::new(), 0usize, 0usize);
    while acked.len() < MESSAGES {
        while pending.len() < WINDOW && next < MESSAGES + refused {
            let cmid = format!("m{next}");
            let b = body();
            alice
                .send_message(&cmid, "bob", &b)
                .await
                .unwrap_or_else(|e| panic!("send {cmid}: {e}; log:\n{}", node.log_text()));
            pending.insert(cmid, b);
            next += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let f = match tokio::time::timeout(left, alice.recv()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!(
                "the connection ended ({e}): status {:?}; log:\n{}",
                node.wait_exit(Duration::from_secs(10)),
                node.log_text()
            ),
            Err(_) => panic!(
                "{} of {MESSAGES} acknowledged by the deadline; log:\n{}",
                acked.len(),
                node.log_text()
            ),
        };
        match f.frame {
            Some(server_frame::Frame::Sent(s)) => {
                pending
                    .remove(&s.client_msg_id)
                    .expect("a ✓ for a pending send");
                acked.push(s.client_msg_id);
            }
            // Refused while the flush catches up: nothing stored, send another one later.
            Some(server_frame::Frame::Error(e)) if e.code == ErrorCode::StorageFull as i32 => {
                pending
                    .remove(&e.r#ref)
                    .expect("an error for a pending send");
                refused += 1;
            }
            _ => {}
        }
    }
    drop(holder);
    // The operators' signal that nothing is being compacted (and nothing expires) meanwhile.
    assert!(chat_tests::metrics_contain(
        &node.admin_url,
        "chat_storage_compactions_paused 1"
    ));
    assert!(
        node.wait_exit(Duration::from_millis(1)).is_none(),
        "the node stopped; log:\n{}",
        node.log_text()
    );
    eprintln!("{} acknowledged, {refused} refused", acked.len());

    let mut bob = node.connect("bob", "phone").await;
    let got = receive_messages(&mut bob, acked.len()).await;
    let ids: Vec<String> = got.into_iter().map(|(_, m)| m.client_msg_id).collect();
    assert_eq!(
        ids, acked,
        "every ✓'d message is delivered, once, in ✓ order"
    );
}
