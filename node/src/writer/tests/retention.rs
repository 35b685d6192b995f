//! Retention on RocksDB: inbox entries and dedup records past the retention disappear in
//! compaction (its filter), not by a scan; reads never return them, and sequence numbers keep
//! growing afterwards. (The other writer tests run on the in-memory engine.)

use std::time::Duration;

use crate::hub::Hub;
use crate::routing::Routing;
use crate::store::{Cf, Store, StoreOptions};
use crate::writer::{Writer, WriterHandle, WriterOptions};
use chat_auth::Identity;

async fn send(c: &WriterHandle, cmid: &str, body: &str) -> chat_proto::v1::Sent {
    let from = Identity {
        user: "alice".into(),
        device: "phone".into(),
    };
    let queued = c.send(from, cmid.into(), "bob".into(), body.into(), None);
    queued.await.unwrap().await.unwrap()
}

#[tokio::test]
async fn expired_entries_are_dropped_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the first reads below happen well inside it even on a loaded machine.
    let retention = Duration::from_secs(5);
    let store = Store::open(
        dir.path(),
        &StoreOptions {
            retention,
            block_cache_mib: 8,
            min_free_bytes: 0,
            compaction_headroom_bytes: 1024 * 1024 * 1024,
        },
    )
    .unwrap();
    let (handle, join) = Writer::start(
        store.clone(),
        Hub::new(16, 16),
        WriterOptions {
            sync: true,
            max_batch: 64,
            queue_depth: 64,
            retention_ms: retention.as_millis() as i64,
            routing: Routing::standalone("n1"),
            env: Default::default(),
            outbox_tx: None,
            streams_tx: None,
            events_tx: None,
            fills_tx: None,
        },
    )
    .unwrap();
    for i in 0..10 {
        send(&handle, &format!("old-{i}"), "old").await;
    }
    store.flush().unwrap();
    assert_eq!(store.count_keys(Cf::Inbox).unwrap(), 10);
    assert_eq!(store.inbox_from("bob", 1, 100).unwrap().len(), 10);

    // Wait (bounded) until the old entries are past the retention.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !store.inbox_from("bob", 1, 100).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "entries never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Expired but still on disk until compaction...
    assert_eq!(store.count_keys(Cf::Inbox).unwrap(), 10);
    let fresh = send(&handle, "new-1", "fresh").await;
    store.flush().unwrap();
    store.compact_now();
    // ...and gone after it, while the fresh entry stays.
    assert_eq!(store.count_keys(Cf::Inbox).unwrap(), 1);
    assert_eq!(store.count_keys(Cf::Dedup).unwrap(), 1);
    let left = store.inbox_from("bob", 1, 100).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].seq, 11, "seqs keep growing after expiry");
    match &left[0].entry.entry {
        Some(chat_proto::store::inbox_entry::Entry::Message(m)) => {
            assert_eq!(m.msg_id, fresh.msg_id)
        }
        other => panic!("{other:?}"),
    }
    let (page, more) = store.inbox_before("bob", 0, 100).unwrap();
    assert_eq!(page.len(), 1);
    assert!(!more);

    drop(handle);
    join.join().unwrap();
}
