//! The outbox, forwarded entries and give-up.

use super::*;
use crate::writer::command::OutboxCmd;

#[test]
fn entries_for_users_owned_elsewhere_go_to_the_outbox_in_the_same_batch() {
    let (mut c, mut rx) = routed("n1");
    let alice = user_on(&c, "n1", "alice");
    let bob = user_on(&c, "n2", "bob");
    let (s1, mut r1) = send(&id(&alice, "p"), "c1", &bob);
    let (s2, mut r2) = send(&id(&alice, "p"), "c2", &alice);
    c.run_batch(vec![s1, s2].into_iter());
    let sent = r1.try_recv().unwrap().unwrap();
    r2.try_recv().unwrap().unwrap();
    assert!(
        c.store.inbox_from(&bob, 1, 10).unwrap().is_empty(),
        "not stored here"
    );
    assert_eq!(
        c.store.inbox_from(&alice, 1, 10).unwrap().len(),
        1,
        "local stays local"
    );
    let out = c.store.outbox_from(0, 10).unwrap();
    assert_eq!(out.len(), 1);
    let (seq, e) = &out[0];
    assert_eq!(
        (e.to.as_str(), e.id.as_str()),
        (bob.as_str(), sent.msg_id.as_str())
    );
    let handed = rx.try_recv().unwrap();
    assert_eq!(handed.len(), 1);
    assert_eq!((handed[0].0, &*handed[0].1), (*seq, e));
    // Seqs keep growing across batches and restarts of the writer.
    let (s3, _r3) = send(&id(&alice, "p"), "c3", &bob);
    c.run_batch(vec![s3].into_iter());
    assert_eq!(c.store.last_outbox_seq().unwrap(), seq + 1);
}

#[test]
fn forwarded_entries_are_stored_once_and_only_by_the_owner() {
    let (mut c, _rx) = routed("n1");
    let alice = user_on(&c, "n1", "alice");
    let bob = user_on(&c, "n2", "bob");
    let (a1, mut r1) = apply(vec![forwarded(&alice, "m1"), forwarded(&alice, "m1")]);
    c.run_batch(vec![a1].into_iter());
    assert_eq!(
        r1.try_recv().unwrap().unwrap(),
        [ForwardStatus::Stored, ForwardStatus::Stored]
    );
    let (a2, mut r2) = apply(vec![
        forwarded(&alice, "m1"),
        forwarded(&bob, "m2"),
        forwarded(&alice, ""),
        forwarded(&alice, "m3"),
    ]);
    c.run_batch(vec![a2].into_iter());
    assert_eq!(
        r2.try_recv().unwrap().unwrap(),
        [
            ForwardStatus::Stored,
            ForwardStatus::NotOwner,
            ForwardStatus::Invalid,
            ForwardStatus::Stored
        ]
    );
    let inbox: Vec<String> = c
        .store
        .inbox_from(&alice, 1, 10)
        .unwrap()
        .into_iter()
        .map(|e| match e.entry.entry {
            Some(inbox_entry::Entry::Message(m)) => m.msg_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(inbox, ["m1", "m3"], "a retry is stored once");
    assert!(c.store.inbox_from(&bob, 1, 10).unwrap().is_empty());
}

#[test]
fn giving_up_tells_the_sender_and_empties_the_outbox() {
    let (mut c, _rx) = routed("n1");
    let alice = user_on(&c, "n1", "alice");
    let bob = user_on(&c, "n2", "bob");
    let (s1, mut r1) = send(&id(&alice, "p"), "c1", &bob);
    c.run_batch(vec![s1].into_iter());
    let sent = r1.try_recv().unwrap().unwrap();
    let entries: Vec<(u64, Arc<ForwardEntry>)> = c
        .store
        .outbox_from(0, 10)
        .unwrap()
        .into_iter()
        .map(|(s, e)| (s, Arc::new(e)))
        .collect();
    let (reply, mut done) = oneshot::channel();
    c.run_batch(
        vec![Command::Outbox(OutboxCmd::GiveUp {
            entries,
            reason: "n2 unreachable".into(),
            reply,
        })]
        .into_iter(),
    );
    done.try_recv().unwrap().unwrap();
    assert!(c.store.outbox_from(0, 10).unwrap().is_empty());
    let inbox = c.store.inbox_from(&alice, 1, 10).unwrap();
    match &inbox[0].entry.entry {
        Some(inbox_entry::Entry::Failed(f)) => {
            assert_eq!(f.msg_id, sent.msg_id);
            assert_eq!(f.client_msg_id, "c1");
            assert_eq!(f.to, bob);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// The forwarder's clean-up goes through the writer: delivered entries leave the outbox and
/// the recipient's count, and a batch of only those needs no fsync (a lost delete means the
/// entry is sent again and deduplicated by the receiver); any other write does.
#[test]
fn delivered_entries_leave_the_outbox_without_an_fsync_of_their_own() {
    use crate::writer::batch::Writes;
    let (mut c, mut rx) = routed("n1");
    let (alice, bob) = (user_on(&c, "n1", "alice"), user_on(&c, "n2", "bob"));
    let (s1, _) = send(&id(&alice, "p"), "c1", &bob);
    c.run_batch(std::iter::once(s1));
    let (seq, entry) = rx.try_recv().unwrap().remove(0);
    assert!(c.outbox.pending(&bob));
    let (reply, mut done) = oneshot::channel();
    let cmd = Command::Outbox(OutboxCmd::Delivered {
        entries: vec![(seq, entry.to.clone())],
        reply,
    });
    c.run_batch(std::iter::once(cmd));
    done.try_recv().unwrap().unwrap();
    assert!(c.store.outbox_from(0, 10).unwrap().is_empty());
    assert!(!c.outbox.pending(&bob));

    let mut w = Writes::new(c.store.clone(), Default::default());
    w.delete_relaxed(crate::store::Cf::Outbox, [0u8; 8]);
    assert!(!w.into_parts().1, "relaxed deletes alone are not synced");
    let mut w = Writes::new(c.store.clone(), Default::default());
    w.delete_relaxed(crate::store::Cf::Outbox, [0u8; 8]);
    w.delete(crate::store::Cf::Meta, b"k");
    assert!(w.into_parts().1);
}

/// The forwarder may report an entry delivered twice (a queue rebuild reads it back from disk
/// before its removal is written, and it is sent again). The second report must not count for
/// another entry of the same recipient still waiting: while one waits, a new entry for that
/// recipient must not be appended directly once this node owns it, or it overtakes the waiting one.
#[test]
fn an_entry_reported_delivered_twice_does_not_release_a_waiting_one() {
    let (mut c, mut rx) = routed("n1");
    let (alice, bob) = (user_on(&c, "n1", "alice"), user_on(&c, "n2", "bob"));
    let (s1, _) = send(&id(&alice, "p"), "c1", &bob);
    let (s2, _) = send(&id(&alice, "p"), "c2", &bob);
    c.run_batch(std::iter::once(s1));
    c.run_batch(std::iter::once(s2));
    let (first, _) = rx.try_recv().unwrap().remove(0);
    for _ in 0..2 {
        let (reply, mut done) = oneshot::channel();
        let cmd = Command::Outbox(OutboxCmd::Delivered {
            entries: vec![(first, bob.clone())],
            reply,
        });
        c.run_batch(std::iter::once(cmd));
        done.try_recv().unwrap().unwrap();
    }
    assert!(c.outbox.pending(&bob), "the second entry still waits");

    // Bob moves here: a third message must queue behind the second, not be appended first.
    let ring = Ring::equal(2, &["n1"], 16).unwrap();
    let (_tx, view) = watch::channel(ClusterView::fixed(ring, []));
    c.routing.view = view;
    let (s3, mut r3) = send(&id(&alice, "p"), "c3", &bob);
    c.run_batch(std::iter::once(s3));
    r3.try_recv().unwrap().unwrap();
    assert!(
        c.store.inbox_from(&bob, 1, 10).unwrap().is_empty(),
        "nothing overtakes the waiting entry"
    );
    assert_eq!(c.store.outbox_from(0, 10).unwrap().len(), 2);
}
