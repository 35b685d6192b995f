//! Several devices of one user: a message sent from one shows on the others (an own copy in the
//! sender's inbox, once it has more than one device), and a read on one is told to all.

use super::*;

fn messages_of(c: &Writer, user: &str) -> Vec<(String, String)> {
    c.store
        .inbox_from(user, 1, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.entry.entry {
            Some(inbox_entry::Entry::Message(m)) => Some((m.from.clone(), m.to.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_second_device_makes_sends_appear_in_the_senders_own_inbox() {
    let (mut c, _hub) = writer();
    let (phone, laptop) = (id("alice", "phone"), id("alice", "laptop"));
    let (a, ra) = attach(&phone, 8);
    c.run_batch(vec![a].into_iter());
    ra.blocking_recv().unwrap().unwrap();
    // One device: the device has its message; nothing is copied.
    let (s, rs) = send(&phone, "1", "bob");
    c.run_batch(vec![s].into_iter());
    let first = rs.blocking_recv().unwrap().unwrap();
    assert!(messages_of(&c, "alice").is_empty());

    let (a, ra) = attach(&laptop, 8);
    c.run_batch(vec![a].into_iter());
    ra.blocking_recv().unwrap().unwrap();
    let (s, rs) = send(&phone, "2", "bob");
    let (me, rme) = send(&phone, "3", "alice");
    c.run_batch(vec![s, me].into_iter());
    let second = rs.blocking_recv().unwrap().unwrap();
    rme.blocking_recv().unwrap().unwrap();
    let ours = c.store.inbox_from("alice", 1, 10).unwrap();
    assert_eq!(
        messages_of(&c, "alice"),
        vec![
            ("alice".to_string(), "bob".to_string()),
            ("alice".to_string(), "alice".to_string())
        ],
        "the own copy of the message to bob, and the message to herself once"
    );
    match &ours[0].entry.entry {
        Some(inbox_entry::Entry::Message(m)) => assert_eq!(m.msg_id, second.msg_id),
        other => panic!("{other:?}"),
    }
    assert_eq!(messages_of(&c, "bob").len(), 2);
    assert_ne!(first.msg_id, second.msg_id);

    // A retry creates no second copy anywhere.
    let (s, rs) = send(&phone, "2", "bob");
    c.run_batch(vec![s].into_iter());
    assert_eq!(rs.blocking_recv().unwrap().unwrap(), second);
    assert_eq!(messages_of(&c, "alice").len(), 2);
    assert_eq!(messages_of(&c, "bob").len(), 2);

    // Acknowledging and reading own copies sends no receipts to oneself.
    c.run_batch(vec![ack(&laptop, 2, true)].into_iter());
    assert!(receipts_of(&c, "alice").is_empty());
}

#[tokio::test]
async fn a_read_on_one_device_is_told_to_every_device() {
    let (mut c, hub) = writer();
    let (phone, laptop) = (id("bob", "phone"), id("bob", "laptop"));
    for d in [&phone, &laptop] {
        let (a, _) = attach(d, 8);
        c.run_batch(vec![a].into_iter());
    }
    let sub = hub.subscribe("bob", "laptop");
    let (s, _) = send(&id("alice", "a"), "1", "bob");
    c.run_batch(vec![s].into_iter());
    c.run_batch(vec![ack(&phone, 1, true)].into_iter());
    let n = sub.signals.pop_notice().unwrap();
    match &n.frame {
        Some(chat_proto::v1::server_frame::Frame::ReadState(r)) => {
            assert_eq!((r.up_to_seq, r.device.as_str()), (1, "phone"))
        }
        other => panic!("{other:?}"),
    }
    // And a device connecting later learns it from its welcome.
    let (a, ra) = attach(&id("bob", "tablet"), 8);
    c.run_batch(vec![a].into_iter());
    assert_eq!(ra.await.unwrap().unwrap().read_seq, 1);
    // An ack without a read tells nobody.
    let (s, _) = send(&id("alice", "a"), "2", "bob");
    c.run_batch(vec![s].into_iter());
    c.run_batch(vec![ack(&phone, 2, false)].into_iter());
    assert!(sub.signals.pop_notice().is_none());
}
