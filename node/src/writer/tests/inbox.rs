//! Sends, attach, acks and receipts.

use prost::Message as _;

use super::*;
use crate::store::keys::device_key;
use crate::store::Cf;
use chat_proto::store::DeviceState;
use chat_proto::v1::ReceiptKind;

#[test]
fn retries_in_one_batch_get_the_same_sent_and_store_one_message() {
    let (mut c, _hub) = writer();
    let alice = id("alice", "phone");
    let (a, ra) = send(&alice, "x", "bob");
    let (b, rb) = send(&alice, "x", "bob");
    c.run_batch(vec![a, b].into_iter());
    let (sa, sb) = (
        ra.blocking_recv().unwrap().unwrap(),
        rb.blocking_recv().unwrap().unwrap(),
    );
    assert_eq!(sa, sb);
    assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
    // And in a later batch, from disk.
    let (d, rd) = send(&alice, "x", "bob");
    c.run_batch(vec![d].into_iter());
    assert_eq!(rd.blocking_recv().unwrap().unwrap(), sa);
    assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
}

/// Receipts come from the writer's recent entries when it has them and from storage
/// otherwise; both must give the same receipts, including across the boundary between them.
#[test]
fn receipts_from_recent_entries_and_from_storage_agree() {
    let run = |forget_at: Option<usize>| {
        let (mut c, _hub) = writer();
        let (alice, carol, bob) = (id("alice", "a"), id("carol", "c"), id("bob", "phone"));
        let (p, _) = attach(&bob, 8);
        c.run_batch(vec![p].into_iter());
        // 100 messages (more than one user's recent entries) from two senders.
        let mut ids = Vec::new();
        for i in 0..100 {
            let from = if i % 3 == 0 { &carol } else { &alice };
            let (s, r) = send(from, &i.to_string(), "bob");
            c.run_batch(vec![s].into_iter());
            ids.push(r.blocking_recv().unwrap().unwrap().msg_id);
            if forget_at == Some(i) {
                c.cache.forget();
            }
        }
        // Delivered in steps, read in one go at the end.
        for up_to in [10, 50, 95, 100] {
            c.run_batch(vec![ack(&bob, up_to, false)].into_iter());
        }
        c.run_batch(vec![ack(&bob, 100, true)].into_iter());
        // Receipts with each msg id replaced by the message's index in the send order.
        let index = |r: Vec<(i32, Vec<String>)>| -> Vec<(i32, Vec<usize>)> {
            r.into_iter()
                .map(|(k, got)| {
                    let at = got.iter().map(|m| ids.iter().position(|x| x == m).unwrap());
                    (k, at.collect())
                })
                .collect()
        };
        (
            index(receipts_of(&c, "alice")),
            index(receipts_of(&c, "carol")),
        )
    };
    let (alice, carol) = run(None);
    for (got, from_carol) in [(&alice, false), (&carol, true)] {
        let expect: Vec<usize> = (0..100).filter(|i| (i % 3 == 0) == from_carol).collect();
        for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
            let at: Vec<usize> = got
                .iter()
                .filter(|(k, _)| *k == kind as i32)
                .flat_map(|(_, at)| at.clone())
                .collect();
            assert_eq!(at, expect, "{kind:?}");
        }
    }
    // Caches emptied part-way, so that other ranges are read from storage: the same receipts.
    for forget_at in [0, 40, 80, 97] {
        assert_eq!(
            run(Some(forget_at)),
            (alice.clone(), carol.clone()),
            "{forget_at}"
        );
    }
}

#[test]
fn receipts_are_produced_once_even_for_acks_in_one_batch() {
    let (mut c, _hub) = writer();
    let (alice, phone, laptop) = (id("alice", "a"), id("bob", "phone"), id("bob", "laptop"));
    let (p, _) = attach(&phone, 8);
    let (l, _) = attach(&laptop, 8);
    let (s1, r1) = send(&alice, "1", "bob");
    let (s2, r2) = send(&alice, "2", "bob");
    c.run_batch(vec![p, l, s1, s2].into_iter());
    let ids = vec![
        r1.blocking_recv().unwrap().unwrap().msg_id,
        r2.blocking_recv().unwrap().unwrap().msg_id,
    ];
    // Both devices ack both messages, and one of them reads, all in one batch.
    c.run_batch(
        vec![
            ack(&phone, 1, false),
            ack(&laptop, 2, false),
            ack(&phone, 2, false),
            ack(&laptop, 2, true),
        ]
        .into_iter(),
    );
    // And again in a later batch: nothing new.
    c.run_batch(vec![ack(&phone, 2, true), ack(&laptop, 2, true)].into_iter());
    let got = receipts_of(&c, "alice");
    let delivered: Vec<String> = got
        .iter()
        .filter(|(k, _)| *k == ReceiptKind::Delivered as i32)
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    let read: Vec<String> = got
        .iter()
        .filter(|(k, _)| *k == ReceiptKind::Read as i32)
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    assert_eq!(delivered, ids);
    assert_eq!(read, ids);
}

#[test]
fn acks_beyond_what_is_committed_do_not_skip_receipts() {
    let (mut c, _hub) = writer();
    let (alice, bob) = (id("alice", "a"), id("bob", "phone"));
    let (p, _) = attach(&bob, 8);
    let (s1, _) = send(&alice, "1", "bob");
    c.run_batch(vec![p, s1].into_iter());
    // An ack for seq 5 arrives in the same batch as the message that becomes seq 2.
    let (s2, r2) = send(&alice, "2", "bob");
    c.run_batch(vec![ack(&bob, 5, false), s2].into_iter());
    let second = r2.blocking_recv().unwrap().unwrap().msg_id;
    assert_eq!(receipts_of(&c, "alice").len(), 1, "receipt for seq 1 only");
    c.run_batch(vec![ack(&bob, 2, false)].into_iter());
    let got = receipts_of(&c, "alice");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].1, vec![second]);
}

#[test]
fn a_stale_device_deleted_in_a_batch_is_not_resurrected_by_a_later_command() {
    let (mut c, _hub) = writer();
    let stale = id("carol", "old");
    // A device last seen long before the retention.
    let rec = DeviceState {
        cursor: 7,
        first_seen_ms: 1,
        last_seen_ms: 1,
    };
    let mut wb = c.store.batch();
    wb.put(Cf::Meta, &device_key("carol", "old"), &rec.encode_to_vec());
    c.store.write(wb, false).unwrap();
    let (x, rx) = attach(&id("carol", "new"), 2);
    let (again, ragain) = attach(&stale, 2);
    c.run_batch(vec![x, again].into_iter());
    assert!(rx.blocking_recv().unwrap().is_ok());
    // The stale device comes back as a new device (cursor from the live ones, not its old 7),
    // within the limit of 2.
    let a = ragain.blocking_recv().unwrap().unwrap();
    assert_eq!(a.cursor, 0);
    let devices = c.store.devices("carol").unwrap();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(devices.iter().all(|(_, d)| d.last_seen_ms > 1));
}

#[test]
fn an_ack_from_a_forgotten_device_registers_it_again() {
    let (mut c, _hub) = writer();
    let (alice, bob) = (id("alice", "a"), id("bob", "phone"));
    let (s1, _) = send(&alice, "1", "bob");
    c.run_batch(vec![s1].into_iter());
    c.run_batch(vec![ack(&bob, 1, false)].into_iter());
    let d = c.store.device_state("bob", "phone").unwrap().unwrap();
    assert_eq!(d.cursor, 1);
    assert_eq!(receipts_of(&c, "alice").len(), 1);
}

/// Below `storage.min_free_mib` of free disk a batch is refused with STORAGE_FULL before
/// RocksDB is asked to write (it would go read-only on an out-of-space write), and nothing
/// of it is stored; once space is back the same retry is accepted.
#[test]
fn writes_are_refused_with_storage_full_below_the_free_space_floor() {
    let (mut c, _hub, _dir) = writer_on_disk();
    c.store.set_min_free_bytes(u64::MAX);
    let alice = id("alice", "p");
    let (s1, mut r1) = send(&alice, "c1", "bob");
    c.run_batch(std::iter::once(s1));
    match r1.try_recv().unwrap() {
        Err(e @ ChatError::StorageFull(_)) => {
            assert_eq!(e.code(), chat_proto::v1::ErrorCode::StorageFull)
        }
        other => panic!("expected STORAGE_FULL, got {other:?}"),
    }
    assert!(c.store.inbox_from("bob", 1, 10).unwrap().is_empty());
    c.store.set_min_free_bytes(0);
    let (s2, mut r2) = send(&alice, "c1", "bob");
    c.run_batch(std::iter::once(s2));
    r2.try_recv().unwrap().unwrap();
    assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
}

/// Devices unseen for the whole retention are forgotten when another device attaches, judged
/// by the writer's clock (no waiting on real time); every record of a batch has its time.
#[test]
fn devices_unseen_for_the_retention_are_forgotten_at_the_next_attach() {
    let (mut c, _hub, clock) = writer_with_clock();
    let start = (c.env.now_ms)();
    for device in ["old", "tablet"] {
        let (a, r) = attach(&id("dan", device), 2);
        c.run_batch(std::iter::once(a));
        assert_eq!(r.blocking_recv().unwrap().unwrap().cursor, 0);
    }
    let (a, r) = attach(&id("dan", "laptop"), 2);
    c.run_batch(std::iter::once(a));
    assert!(matches!(
        r.blocking_recv().unwrap(),
        Err(ChatError::TooManyDevices { max: 2 })
    ));
    clock.advance(Duration::from_millis(RETENTION_MS as u64 + 1));
    let (a, r) = attach(&id("dan", "laptop"), 2);
    let (s, rs) = send(&id("dan", "laptop"), "c1", "erin");
    c.run_batch(vec![a, s].into_iter());
    r.blocking_recv().unwrap().unwrap();
    let devices = c.store.devices("dan").unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let later = start + RETENTION_MS + 1;
    assert_eq!(devices[0].1.last_seen_ms, later);
    let sent = rs.blocking_recv().unwrap().unwrap();
    assert_eq!((sent.ts, sent.msg_id.as_str()), (later, "id-000000"));
}
