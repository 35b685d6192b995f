//! The writer with followers: batches visible only once followers stored them and every fill
//! is done; a follower applying only what its ring says the sender owns, answering once on disk.

use chat_proto::cluster::{HashRange, Mirror, MovingCf, RawWrite};

use super::*;
use crate::error::ChatError;
use crate::rebalance::MoveError;
use crate::replication::Fill;
use crate::store::keys::inbox_key;
use crate::store::Cf;
use crate::stream::{ItemKind, Scope, StreamItem};
use crate::writer::command::{ReplicaCmd, ReplicaPage};

fn ring(epoch: u64, copies: u32) -> Ring {
    Ring::equal(epoch, &["n1", "n2", "n3"], 16)
        .unwrap()
        .with_replication(copies)
        .unwrap()
}

/// A writer that is `me` in `ring`, wired to channels the test reads.
struct Replicated {
    c: Writer,
    view: watch::Sender<ClusterView>,
    streams: mpsc::UnboundedReceiver<StreamItem>,
    fills: mpsc::UnboundedReceiver<Fill>,
}

impl Replicated {
    fn new(me: &str, ring: Ring) -> Replicated {
        let (mut c, _hub) = writer();
        let (view, rx) = watch::channel(ClusterView::fixed(ring, []));
        c.routing = Routing {
            self_id: me.into(),
            view: rx,
        };
        c.role = crate::rebalance::role::MoveRole::new(me, None);
        let (stx, streams) = mpsc::unbounded_channel();
        let (ftx, fills) = mpsc::unbounded_channel();
        c.streams_tx = Some(stx);
        c.fills_tx = Some(ftx);
        Replicated {
            c,
            view,
            streams,
            fills,
        }
    }

    fn wake(&mut self) {
        self.c.run_batch(std::iter::once(Command::Move(
            super::super::command::MoveCmd::Wake,
        )));
    }

    fn items(&mut self) -> Vec<StreamItem> {
        std::iter::from_fn(|| self.streams.try_recv().ok()).collect()
    }

    fn fills(&mut self) -> Vec<Fill> {
        std::iter::from_fn(|| self.fills.try_recv().ok()).collect()
    }

    fn ring(&self) -> Arc<Ring> {
        self.view.borrow().ring.clone().unwrap()
    }

    /// A user `owner` owns whose follower is `follower` in the two-copy ring of this writer's
    /// members (owners are the same whatever the factor).
    fn user(&self, stem: &str, owner: &str, follower: &str) -> String {
        let ring = ring(self.ring().epoch(), 2);
        (0..100_000)
            .map(|i| format!("{stem}-{i}"))
            .find(|u| {
                let r = ring.replicas(u);
                r.owner == owner && r.followers == [follower]
            })
            .expect("such a user among the first 100,000")
    }
}

fn keys_to(items: &[StreamItem], dest: &str) -> Vec<Vec<u8>> {
    items
        .iter()
        .filter(|i| i.dest == dest)
        .flat_map(|i| match &i.kind {
            ItemKind::Writes { writes, .. } => writes.iter().map(|w| w.key.clone()).collect(),
            ItemKind::Seal { .. } => Vec::new(),
        })
        .collect()
}

#[test]
fn a_batch_becomes_visible_only_once_its_followers_stored_it_and_every_fill_is_done() {
    let mut r = Replicated::new("n1", ring(1, 2));
    r.wake();
    // At start every follower is cleared and filled: nothing is known of what it holds.
    let resets = r.items();
    let mut dests: Vec<&str> = resets.iter().map(|i| i.dest.as_str()).collect();
    dests.sort();
    assert_eq!(dests, ["n2", "n3"]);
    assert!(resets.iter().all(|i| i.scope.is_replica()
        && matches!(&i.kind, ItemKind::Writes { reset, writes } if !reset.is_empty() && writes.is_empty())));
    let fills = r.fills();
    assert_eq!(fills.len(), 2);

    let (alice, bob) = (r.user("alice", "n1", "n2"), r.user("bob", "n1", "n3"));
    let (cmd, mut sent) = send(&id(&alice, "phone"), "m1", &bob);
    r.c.run_batch(std::iter::once(cmd));
    let items = r.items();
    assert!(
        keys_to(&items, "n3").contains(&inbox_key(&bob, 1)),
        "bob's copy goes to bob's follower"
    );
    assert!(!keys_to(&items, "n2").contains(&inbox_key(&bob, 1)));
    assert!(items
        .iter()
        .all(|i| i.scope.is_replica() && i.scope.epoch() == 1));
    assert!(sent.try_recv().is_err(), "no ✓ before the followers");

    for i in items {
        i.done.acked();
    }
    assert!(sent.try_recv().is_err(), "no ✓ before the fills are done");
    for f in fills {
        f.hold.release();
    }
    let s = sent.try_recv().expect("✓ once stored everywhere").unwrap();
    assert!(!s.msg_id.is_empty());

    // The same ring again: nobody is filled twice.
    r.wake();
    assert!(r.fills().is_empty());
}

#[test]
fn one_copy_captures_nothing_and_holds_nothing() {
    let mut r = Replicated::new("n1", ring(1, 1));
    let (alice, bob) = (user_on(&r.c, "n1", "alice"), user_on(&r.c, "n1", "bob"));
    let (cmd, mut sent) = send(&id(&alice, "phone"), "m1", &bob);
    r.c.run_batch(std::iter::once(cmd));
    assert!(r.items().is_empty());
    assert!(r.fills().is_empty());
    assert!(sent.try_recv().unwrap().is_ok());
}

fn replica(epoch: u64, reset: Vec<HashRange>, writes: Vec<RawWrite>) -> Mirror {
    Mirror {
        epoch,
        reset,
        writes,
        replica: true,
        ..Mirror::default()
    }
}

fn put(key: Vec<u8>) -> RawWrite {
    RawWrite {
        cf: MovingCf::Inbox as i32,
        key,
        value: b"v".to_vec(),
        delete: false,
    }
}

fn stream(from: &str, req: Mirror) -> (Command, oneshot::Receiver<Result<(), ChatError>>) {
    let (reply, rx) = oneshot::channel();
    (
        Command::Peer(PeerCmd::Stream {
            from: from.into(),
            req,
            reply,
        }),
        rx,
    )
}

#[test]
fn a_follower_applies_only_what_its_ring_says_the_sender_owns_and_answers_once_on_disk() {
    let mut r = Replicated::new("n2", ring(1, 2));
    r.wake();
    // n2's own fills are pending, so none of its batches is visible: a replication request is
    // answered anyway, once on disk.
    let _fills = r.fills();
    let followed = r.user("a", "n1", "n2");
    let not_followed = r.user("b", "n1", "n3");
    let of_n3 = r.user("c", "n3", "n2");
    let key = inbox_key(&followed, 1);

    let (cmd, mut ok) = stream("n1", replica(1, Vec::new(), vec![put(key.clone())]));
    r.c.run_batch(std::iter::once(cmd));
    assert!(ok.try_recv().unwrap().is_ok());
    assert!(
        r.c.store
            .all_keys(Cf::Inbox)
            .unwrap()
            .contains(&(key.clone(), b"v".to_vec())),
        "stored as sent"
    );

    let refused = |r: &mut Replicated, from: &str, req: Mirror| -> ChatError {
        let (cmd, mut rx) = stream(from, req);
        r.c.run_batch(std::iter::once(cmd));
        rx.try_recv().unwrap().unwrap_err()
    };
    let e = refused(&mut r, "n3", replica(1, Vec::new(), vec![put(key.clone())]));
    assert!(
        matches!(e, ChatError::Move(MoveError::OutOfRange(_))),
        "{e}"
    );
    let e = refused(
        &mut r,
        "n1",
        replica(1, Vec::new(), vec![put(inbox_key(&not_followed, 1))]),
    );
    assert!(
        matches!(e, ChatError::Move(MoveError::OutOfRange(_))),
        "{e}"
    );
    let e = refused(
        &mut r,
        "n1",
        replica(1, Vec::new(), vec![put(inbox_key(&of_n3, 1))]),
    );
    assert!(
        matches!(e, ChatError::Move(MoveError::OutOfRange(_))),
        "{e}"
    );
    let e = refused(&mut r, "n1", replica(2, Vec::new(), vec![put(key.clone())]));
    assert!(
        matches!(e, ChatError::Move(MoveError::NotYet(_))),
        "a ring not seen yet: {e}"
    );
    let everything = HashRange {
        start: 0,
        end: u64::MAX,
    };
    let e = refused(&mut r, "n1", replica(1, vec![everything], Vec::new()));
    assert!(
        matches!(e, ChatError::Move(MoveError::OutOfRange(_))),
        "a reset of the whole circle: {e}"
    );

    // A reset of exactly what n2 follows for n1 clears it.
    let p = crate::replication::placement::Placement::new(&r.ring(), "n1");
    let reset: Vec<HashRange> = p.followers()["n2"]
        .iter()
        .map(|&(start, end)| HashRange { start, end })
        .collect();
    let before = r.c.store.count_keys(Cf::Inbox).unwrap();
    let (cmd, mut ok) = stream("n1", replica(1, reset, Vec::new()));
    r.c.run_batch(std::iter::once(cmd));
    assert!(ok.try_recv().unwrap().is_ok());
    assert_eq!(r.c.store.count_keys(Cf::Inbox).unwrap(), before - 1);
}

#[test]
fn fill_pages_come_after_the_reset_and_before_later_writes() {
    // Messages stored while the ring had one copy; then the ring keeps two.
    let mut r = Replicated::new("n1", ring(1, 1));
    let (alice, bob) = (r.user("alice", "n1", "n2"), r.user("bob", "n1", "n2"));
    for i in 0..5 {
        let (cmd, _) = send(&id(&alice, "phone"), &format!("m{i}"), &bob);
        r.c.run_batch(std::iter::once(cmd));
    }
    r.view.send_replace(ClusterView::fixed(ring(2, 2), []));
    r.wake();
    let fills = r.fills();
    let fill = fills.iter().find(|f| f.dest == "n2").expect("n2 is filled");
    let items = r.items();
    assert!(items.iter().any(|i| i.dest == "n2"
        && matches!(&i.kind, ItemKind::Writes { reset, .. } if !reset.is_empty())));

    let (reply, mut page) = oneshot::channel();
    let req = ReplicaPage {
        dest: "n2".into(),
        epoch: 2,
        cf: Cf::Inbox,
        range: fill.ranges[0],
        max: (1000, 1 << 20),
        after: None,
    };
    let range_holds_bob = fill.ranges.iter().position(|&(a, z)| {
        let h = chat_ring::key_hash(&bob);
        a <= h && h <= z
    });
    let req = ReplicaPage {
        range: fill.ranges[range_holds_bob.expect("bob is in a followed range")],
        ..req
    };
    r.c.run_batch(std::iter::once(Command::Replica(ReplicaCmd::Page {
        req,
        reply,
    })));
    let page = page.try_recv().expect("answered at once").unwrap();
    assert_eq!(page.keys, 5, "bob's five messages");
    let (cmd, _) = send(&id(&alice, "phone"), "m-late", &bob);
    r.c.run_batch(std::iter::once(cmd));
    let items = r.items();
    let to_n2: Vec<&StreamItem> = items.iter().filter(|i| i.dest == "n2").collect();
    assert!(matches!(&to_n2[0].kind, ItemKind::Writes { writes, .. } if writes.len() == 5));
    assert!(
        keys_to(&items[1..], "n2").contains(&inbox_key(&bob, 6)),
        "the later message follows the page"
    );
    assert!(matches!(to_n2[0].scope, Scope::Replica { epoch: 2 }));

    // A page of another ring is refused (the fill stops; the writer filled anew).
    let (reply, mut rx) = oneshot::channel();
    let stale = ReplicaPage {
        dest: "n2".into(),
        epoch: 1,
        cf: Cf::Inbox,
        range: fill.ranges[0],
        max: (10, 1 << 20),
        after: None,
    };
    r.c.run_batch(std::iter::once(Command::Replica(ReplicaCmd::Page {
        req: stale,
        reply,
    })));
    assert!(matches!(
        rx.try_recv().unwrap(),
        Err(ChatError::Move(MoveError::NotInFlight(_)))
    ));
}
