//! Replication with real nodes (docs/replication.md): a ✓ means the owner and its follower both
//! stored the message; a paused follower holds the ✓ back until it returns; a follower whose
//! store was lost is filled again; a replicated ring refuses moves.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_node::testing::{owner_hash, Cf, Store, StoreOptions};
use chat_proto::v1::{server_frame, ServerFrame};
use chat_tests::*;

/// n1, n2, n3 with two copies of every key.
fn replicated() -> TestCluster {
    TestCluster::start_replicated(
        &[("n1", 1), ("n2", 1), ("n3", 1)],
        chat_ring::DEFAULT_VNODES_PER_WEIGHT,
        2,
        &[],
    )
}

/// The first `count` ids `<stem>-<i>` that `owner` owns and `follower` follows.
fn held_by(ring: &chat_ring::Ring, owner: &str, follower: &str, stem: &str) -> Vec<String> {
    (0..100_000)
        .map(|i| format!("{stem}-{i}"))
        .filter(|u| {
            let r = ring.replicas(u);
            r.owner == owner && r.holds(follower)
        })
        .take(2)
        .collect()
}

fn is_sent(f: &ServerFrame) -> bool {
    matches!(&f.frame, Some(server_frame::Frame::Sent(_)))
}

/// Sends `count` messages from `from` to `to` (ids `<tag>-<i>`) and waits for every ✓.
async fn send_acked(node: &TestNode, from: &str, to: &str, tag: &str, count: usize) {
    let mut c = node.connect(from, "phone").await;
    for i in 0..count {
        c.send_message(&format!("{tag}-{i}"), to, &format!("{tag} {i}"))
            .await
            .unwrap();
    }
    for _ in 0..count {
        recv_until(&mut c, "✓", is_sent).await;
    }
}

/// The value of a metric line that starts with `prefix` (name and labels), if present.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
}

/// Waits until every node has made everything visible and copied: nothing held, nothing queued
/// on a stream or in an outbox, every follower in sync.
fn wait_quiet(c: &TestCluster) {
    wait_until("every node to be quiet", WAIT, || {
        for n in &c.nodes {
            let text = metrics_text(&n.admin_url);
            let busy = text.lines().find(|l| {
                let zero_wanted = l.starts_with("chat_batches_held")
                    || l.starts_with("chat_outbox_depth")
                    || l.starts_with("chat_stream_queued_items");
                let one_wanted = l.starts_with("chat_replica_in_sync");
                let v = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
                (zero_wanted && v != Some(0.0)) || (one_wanted && v != Some(1.0))
            });
            if let Some(l) = busy {
                return Err(format!("{}: {l}", n.id));
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// Stops every node (kill -9: nothing written on the way out) and checks that each key of the
/// replicated column families is on exactly its holders in `ring`, with the same value there.
/// Returns the number of keys per column family.
fn assert_copies_agree(c: &mut TestCluster, ring: &chat_ring::Ring) -> BTreeMap<String, usize> {
    for n in &mut c.nodes {
        n.kill9();
    }
    let opts = StoreOptions {
        retention: Duration::from_secs(3600),
        block_cache_mib: 8,
        min_free_bytes: 0,
        compaction_headroom_bytes: 0,
    };
    let stores: Vec<(String, std::sync::Arc<Store>)> = c
        .nodes
        .iter()
        .map(|n| (n.id.clone(), Store::open(&n.data_dir, &opts).unwrap()))
        .collect();
    let mut counts = BTreeMap::new();
    for cf in Cf::MOVING {
        // key -> node -> value
        let mut seen: BTreeMap<Vec<u8>, BTreeMap<&str, Vec<u8>>> = BTreeMap::new();
        for (id, store) in &stores {
            for (k, v) in store.all_keys(cf).unwrap() {
                seen.entry(k).or_default().insert(id, v);
            }
        }
        for (key, copies) in &seen {
            let hash = owner_hash(key).expect("a key of a replicated column family has an owner");
            let holders: BTreeSet<&str> = ring.replicas_at(hash).all().collect();
            let on: BTreeSet<&str> = copies.keys().copied().collect();
            assert_eq!(on, holders, "{cf:?} key {key:?} is on {on:?}");
            let values: BTreeSet<&Vec<u8>> = copies.values().collect();
            assert_eq!(values.len(), 1, "{cf:?} key {key:?} differs between copies");
        }
        counts.insert(format!("{cf:?}"), seen.len());
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_are_on_the_owner_and_its_follower() {
    let mut c = replicated();
    let shown = c.chatctl(&["ring", "show"]);
    assert!(shown.contains("copies of every key 2"), "{shown}");
    // A replicated ring cannot move yet: the operator is told, nothing changes.
    let refused = c
        .try_chatctl(&["rebalance", "start", "--remove", "n3"])
        .unwrap_err();
    assert!(refused.contains("replicated"), "{refused}");
    assert_eq!(c.ring_doc().current.epoch, 1);

    let ring = c.ring();
    // Senders and recipients on every node, messages within a node and between nodes.
    let ids = ["n1", "n2", "n3"];
    for (i, owner) in ids.iter().enumerate() {
        let next = ids[(i + 1) % 3];
        let local = c.users_on(owner, &format!("local-{owner}"), 2);
        let remote = c.users_on(next, &format!("remote-{owner}"), 1);
        let node = c.node(owner);
        send_acked(node, &local[0], &local[1], "near", 20).await;
        send_acked(node, &local[0], &remote[0], "far", 20).await;
        // The recipient reads them (delivered receipts and cursors are replicated too).
        let mut r = node.connect(&local[1], "phone").await;
        receive_messages(&mut r, 20).await;
    }
    wait_quiet(&c);
    let counts = assert_copies_agree(&mut c, &ring);
    // 40 inbox entries per owner's senders, delivered to recipients on all three nodes.
    assert!(counts["Inbox"] >= 120, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_holds_the_acks_back_until_it_returns() {
    let mut c = replicated();
    let ring = c.ring();
    let users = held_by(&ring, "n1", "n3", "paused");
    let (alice, bob) = (&users[0], &users[1]);
    let mut a = c.node("n1").connect(alice, "phone").await;
    let n3 = c.node("n3").pid();
    signal(n3, "STOP");
    for i in 0..5 {
        a.send_message(&format!("p{i}"), bob, &format!("p {i}"))
            .await
            .unwrap();
    }
    // n1 stored them and waits for n3's copy before the ✓.
    let admin = c.node("n1").admin_url.clone();
    wait_until("n1 to hold a batch for n3", WAIT, || {
        metric(&metrics_text(&admin), "chat_batches_held").is_some_and(|v| v >= 1.0)
    })
    .unwrap();
    while let Ok(f) = a.recv_timeout(Duration::from_secs(1)).await {
        assert!(!is_sent(&f), "a ✓ while the follower is paused: {f:?}");
    }
    signal(n3, "CONT");
    for _ in 0..5 {
        recv_until(&mut a, "✓", is_sent).await;
    }
    let mut b = c.node("n1").connect(bob, "phone").await;
    let got = receive_messages(&mut b, 5).await;
    let bodies: Vec<&str> = got.iter().map(|(_, m)| m.body.as_str()).collect();
    assert_eq!(bodies, ["p 0", "p 1", "p 2", "p 3", "p 4"]);
    drop((a, b));
    wait_quiet(&c);
    assert_copies_agree(&mut c, &ring);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_store_is_filled_again() {
    let mut c = replicated();
    let ring = c.ring();
    let users = held_by(&ring, "n1", "n3", "lost");
    let (alice, bob) = (&users[0], &users[1]);
    send_acked(c.node("n1"), alice, bob, "before", 10).await;

    let n3 = c.node_mut("n3");
    n3.kill9();
    std::fs::remove_dir_all(&n3.data_dir).unwrap();
    // A new store where the ring names a holder: refused, its followers' copies are kept.
    let refused = n3.try_restart().unwrap_err();
    assert!(refused.contains("accept_empty_store"), "{refused}");
    n3.set_env("CHAT_NODE_CLUSTER__ACCEPT_EMPTY_STORE", "true");
    n3.restart();
    n3.wait_ready();

    // n1 sees n3's new store and fills it again.
    send_acked(c.node("n1"), alice, bob, "after", 10).await;
    // (Its ✓ may come before the new store is noticed: the first answer from it names it.)
    let admin = c.node("n1").admin_url.clone();
    wait_until("n1 to fill n3 a second time", WAIT, || {
        let fills = metric(
            &metrics_text(&admin),
            "chat_replica_fills_total{node=\"n3\"}",
        );
        fills
            .is_some_and(|f| f >= 2.0)
            .then_some(())
            .ok_or(format!("fills: {fills:?}"))
    })
    .unwrap();
    wait_quiet(&c);
    assert_copies_agree(&mut c, &ring);
    // The copy of bob's inbox on n3 holds the messages from before the loss too.
    let store = Store::open(
        &c.node("n3").data_dir,
        &StoreOptions {
            retention: Duration::from_secs(3600),
            block_cache_mib: 8,
            min_free_bytes: 0,
            compaction_headroom_bytes: 0,
        },
    )
    .unwrap();
    let prefix = chat_node::testing::owner_prefix(bob);
    let entries = store
        .all_keys(Cf::Inbox)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .count();
    assert_eq!(entries, 20, "bob's inbox on n3");
}
