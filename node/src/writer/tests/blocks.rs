//! Blocking: messages from a blocked sender are taken but never appended (here or forwarded),
//! the blocker cannot send to the blocked user, and the list is bounded.

use super::*;
use crate::writer::command::ClientCmd;

fn block(
    who: &Identity,
    other: &str,
    on: bool,
    max: u32,
) -> (Command, oneshot::Receiver<Result<(), ChatError>>) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Client(ClientCmd::Block {
        who: who.clone(),
        other: other.into(),
        block: on,
        max,
        reply,
    });
    (cmd, rx)
}

fn messages_of(c: &Writer, user: &str) -> Vec<String> {
    c.store
        .inbox_from(user, 1, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.entry.entry {
            Some(inbox_entry::Entry::Message(m)) => Some(m.body.clone() + "/" + &m.from),
            _ => None,
        })
        .collect()
}

#[test]
fn a_blocked_senders_messages_get_a_tick_but_are_never_delivered() {
    let (mut c, _hub) = writer();
    let (bob, mallory, alice) = (id("bob", "phone"), id("mallory", "m"), id("alice", "a"));
    let (b, rb) = block(&bob, "mallory", true, 10);
    // In the same batch as the block, after it: already blocked.
    let (m1, r1) = send(&mallory, "1", "bob");
    let (a1, ra) = send(&alice, "1", "bob");
    c.run_batch(vec![b, m1, a1].into_iter());
    rb.blocking_recv().unwrap().unwrap();
    r1.blocking_recv()
        .unwrap()
        .expect("the blocked sender still gets ✓");
    ra.blocking_recv().unwrap().unwrap();
    assert_eq!(messages_of(&c, "bob"), vec!["hi/alice"]);
    assert_eq!(c.store.blocked("bob").unwrap(), vec!["mallory"]);

    // The blocker cannot send to the user it blocked; nothing is stored.
    let (s, rs) = send(&bob, "b1", "mallory");
    c.run_batch(vec![s].into_iter());
    assert!(matches!(
        rs.blocking_recv().unwrap(),
        Err(ChatError::Blocked(_))
    ));
    assert!(messages_of(&c, "mallory").is_empty());

    // Unblocked: new messages arrive again; the ones sent while blocked stay undelivered.
    let (u, ru) = block(&bob, "mallory", false, 10);
    c.run_batch(vec![u].into_iter());
    ru.blocking_recv().unwrap().unwrap();
    let (m2, r2) = send(&mallory, "2", "bob");
    c.run_batch(vec![m2].into_iter());
    r2.blocking_recv().unwrap().unwrap();
    assert_eq!(messages_of(&c, "bob"), vec!["hi/alice", "hi/mallory"]);
    assert!(c.store.blocked("bob").unwrap().is_empty());
}

#[test]
fn a_forwarded_message_from_a_blocked_sender_is_stored_once_and_never_appended() {
    let (mut c, _hub) = writer();
    let bob = id("bob", "phone");
    let (b, rb) = block(&bob, "far-away", true, 10);
    c.run_batch(vec![b].into_iter());
    rb.blocking_recv().unwrap().unwrap();
    for _ in 0..2 {
        let (a, ra) = apply(vec![forwarded("bob", "m1")]);
        c.run_batch(vec![a].into_iter());
        // Answered as stored (the sending node must not learn of the block), and a retry too.
        assert_eq!(
            ra.blocking_recv().unwrap().unwrap(),
            vec![ForwardStatus::Stored]
        );
    }
    assert!(messages_of(&c, "bob").is_empty());
    assert!(c.store.forward_seen("bob", "m1").unwrap());
}

#[test]
fn the_block_list_is_bounded_and_a_user_cannot_block_itself() {
    let (mut c, _hub) = writer();
    let bob = id("bob", "phone");
    let (b1, r1) = block(&bob, "u1", true, 2);
    let (b2, r2) = block(&bob, "u2", true, 2);
    let (b3, r3) = block(&bob, "u3", true, 2);
    let (again, ra) = block(&bob, "u1", true, 2);
    let (me, rm) = block(&bob, "bob", true, 2);
    c.run_batch(vec![b1, b2, b3, again, me].into_iter());
    r1.blocking_recv().unwrap().unwrap();
    r2.blocking_recv().unwrap().unwrap();
    assert!(matches!(
        r3.blocking_recv().unwrap(),
        Err(ChatError::LimitReached(_))
    ));
    ra.blocking_recv()
        .unwrap()
        .expect("blocking again changes nothing");
    assert!(matches!(
        rm.blocking_recv().unwrap(),
        Err(ChatError::InvalidArgument(_))
    ));
    assert_eq!(c.store.blocked("bob").unwrap(), vec!["u1", "u2"]);
}
