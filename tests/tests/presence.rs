//! Presence across nodes: online while active, offline when the window passes or the last
//! device leaves, last seen moved only by activity (never by background frames), watch lists
//! pushed across nodes, hidden last seen, and nothing for a user who blocked the asker.

use chat_client::Client;
use chat_proto::v1::{
    block_request, client_frame, presence_request, server_frame, BlockRequest, Ping,
    PresenceSettings, PresenceStatus, PresenceUsers,
};
use chat_tests::*;

/// Waits for the answer to presence request `id`.
async fn answer(c: &mut Client, id: &str) -> Vec<PresenceStatus> {
    let (f, _) = recv_until(c, id, |f| match &f.frame {
        Some(server_frame::Frame::Presence(p)) => p.request_id == id,
        Some(server_frame::Frame::Error(e)) => e.r#ref == id,
        _ => false,
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Presence(p)) => p.statuses,
        other => panic!("{id}: {other:?}"),
    }
}

async fn query(c: &mut Client, id: &str, users: &[&str]) -> Vec<PresenceStatus> {
    let users = users.iter().map(|u| u.to_string()).collect();
    c.presence(id, presence_request::Op::Query(PresenceUsers { users }))
        .await
        .unwrap();
    answer(c, id).await
}

async fn watch(c: &mut Client, id: &str, users: &[&str]) -> Vec<PresenceStatus> {
    let users = users.iter().map(|u| u.to_string()).collect();
    c.presence(id, presence_request::Op::Watch(PresenceUsers { users }))
        .await
        .unwrap();
    answer(c, id).await
}

/// The next pushed update about `user`.
async fn update(c: &mut Client, user: &str) -> PresenceStatus {
    let (f, _) = recv_until(c, &format!("presence update of {user}"), |f| {
        matches!(&f.frame, Some(server_frame::Frame::PresenceUpdate(u))
            if u.status.as_ref().is_some_and(|s| s.user == user))
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::PresenceUpdate(u)) => u.status.unwrap(),
        _ => unreachable!(),
    }
}

async fn active_ping(c: &mut Client, nonce: u64) {
    c.send_active(client_frame::Frame::Ping(Ping { nonce }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_activity_across_nodes() {
    let cluster = TestCluster::start(&[
        // Long enough that a busy machine answers a query well within it, short enough that
        // waiting it out twice keeps the test quick.
        ("CHAT_NODE_PRESENCE__ONLINE_WINDOW_MS", "5000"),
        ("CHAT_NODE_PRESENCE__WATCH_RENEW_MS", "1000"),
    ]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let mut a = cluster.node("n1").connect(&alice, "phone").await;
    let mut c = cluster.node("n3").connect(&carol, "phone").await;
    // Connecting is not activity: a phone syncing in the background is not "online".
    let mut b = cluster.node("n2").connect(&bob, "phone").await;
    let st = query(&mut a, "q1", &[&bob]).await;
    assert_eq!((st[0].online, st[0].last_seen_ms), (false, 0), "{st:?}");

    let st = watch(&mut a, "w1", &[&bob, &carol]).await;
    assert_eq!(st.len(), 2);
    assert!(st.iter().all(|s| !s.online), "{st:?}");

    // Activity on n2 reaches alice's watch on n1, and carol's query from n3.
    active_ping(&mut b, 1).await;
    let on = update(&mut a, &bob).await;
    assert!(on.online && on.last_seen_ms > 0, "{on:?}");
    let st = query(&mut c, "q2", &[&bob]).await;
    assert!(st[0].online, "{st:?}");

    // Background frames (plain pings, acks) keep the connection but not the user: the window
    // passes and bob goes offline, last seen at his activity.
    b.ping(2).await.unwrap();
    until_pong(&mut b, 3).await;
    let off = update(&mut a, &bob).await;
    assert!(!off.online);
    assert_eq!(off.last_seen_ms, on.last_seen_ms, "moved only by activity");

    // A send is activity; the last device leaving ends it at once, and the last seen is kept.
    b.send_message("m1", &carol, "hi").await.unwrap();
    let on = update(&mut a, &bob).await;
    assert!(on.online);
    drop(b);
    let off = update(&mut a, &bob).await;
    assert!(!off.online);
    assert_eq!(off.last_seen_ms, on.last_seen_ms);
    // Stored coarsely on bob's home: a query after he left answers from it.
    let seen = on.last_seen_ms;
    let asker = &mut c;
    let mut n = 0;
    wait_until_async("bob's stored last seen", WAIT, async || {
        n += 1;
        let st = query(asker, &format!("q3-{n}"), &[&bob]).await;
        (st[0].last_seen_ms == seen)
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await
    .unwrap();

    // Hidden last seen: online still shows, the time never does.
    let mut b = cluster.node("n2").connect(&bob, "laptop").await;
    b.presence(
        "s1",
        presence_request::Op::Settings(PresenceSettings {
            hide_last_seen: true,
        }),
    )
    .await
    .unwrap();
    assert!(answer(&mut b, "s1").await.is_empty());
    active_ping(&mut b, 4).await;
    let on = update(&mut a, &bob).await;
    assert_eq!((on.online, on.last_seen_ms), (true, 0));
    drop(b);
    let off = update(&mut a, &bob).await;
    assert_eq!((off.online, off.last_seen_ms), (false, 0));
    let st = query(&mut c, "q4", &[&bob]).await;
    assert_eq!((st[0].online, st[0].last_seen_ms), (false, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_blocked_the_asker_shows_nothing() {
    let cluster = TestCluster::start(&[]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let mut b = cluster.node("n2").connect(&bob, "phone").await;
    b.send(client_frame::Frame::Block(BlockRequest {
        request_id: "b1".into(),
        op: Some(block_request::Op::Block(alice.clone())),
    }))
    .await
    .unwrap();
    recv_until(&mut b, "block list", |f| {
        matches!(&f.frame, Some(server_frame::Frame::Blocked(_)))
    })
    .await;
    let mut a = cluster.node("n1").connect(&alice, "phone").await;
    let mut c = cluster.node("n3").connect(&carol, "phone").await;
    watch(&mut a, "wa", &[&bob]).await;
    watch(&mut c, "wc", &[&bob]).await;
    active_ping(&mut b, 1).await;
    // Carol sees bob come online; alice, whom he blocked, neither then nor when she asks.
    assert!(update(&mut c, &bob).await.online);
    let st = query(&mut a, "qa", &[&bob]).await;
    assert_eq!((st[0].online, st[0].last_seen_ms), (false, 0));
    let seen = until_pong(&mut a, 2).await;
    assert!(
        !seen
            .iter()
            .any(|f| matches!(&f.frame, Some(server_frame::Frame::PresenceUpdate(_)))),
        "{seen:?}"
    );
    let st = query(&mut c, "qc", &[&bob]).await;
    assert!(st[0].online);
}

#[tokio::test]
async fn bad_presence_requests_are_refused_and_change_nothing() {
    let node = TestNode::start(&[("CHAT_NODE_PRESENCE__MAX_WATCH", "2")]);
    let mut a = node.connect("alice", "phone").await;
    let id_of = |i: usize| format!("r{i}");
    let cases: Vec<(presence_request::Op, chat_proto::v1::ErrorCode)> = vec![
        (
            presence_request::Op::Watch(PresenceUsers {
                users: vec!["a".into(), "b".into(), "c".into()],
            }),
            chat_proto::v1::ErrorCode::InvalidArgument,
        ),
        (
            presence_request::Op::Query(PresenceUsers {
                users: vec!["no spaces".into()],
            }),
            chat_proto::v1::ErrorCode::InvalidId,
        ),
    ];
    for (i, (op, code)) in cases.into_iter().enumerate() {
        a.presence(&id_of(i), op).await.unwrap();
        let id = id_of(i);
        let (f, _) = recv_until(&mut a, &id, |f| error_code(f).is_some()).await;
        assert_eq!(error_code(&f), Some(code), "{id}");
    }
    // A good one still works, the same user listed twice is answered once.
    let st = watch(&mut a, "ok", &["bob", "bob"]).await;
    assert_eq!(st.len(), 1);
}

/// A watched user moves to another node with the ring: the watch follows it (its watcher's node
/// registers at the new home), its settings move with it, and its next activity there reaches
/// the watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_follows_the_watched_user_through_a_move() {
    let cluster = TestCluster::start(&[("CHAT_NODE_PRESENCE__WATCH_RENEW_MS", "60000")]);
    let mover = cluster.users_on("n3", "mover", 1).remove(0);
    let watcher = cluster.users_on("n1", "watcher", 1).remove(0);
    let mut w = cluster.node("n1").connect(&watcher, "phone").await;
    let mut m = cluster.node("n3").connect(&mover, "phone").await;
    m.presence(
        "s",
        presence_request::Op::Settings(PresenceSettings {
            hide_last_seen: true,
        }),
    )
    .await
    .unwrap();
    answer(&mut m, "s").await;
    watch(&mut w, "w", &[&mover]).await;
    active_ping(&mut m, 1).await;
    assert!(update(&mut w, &mover).await.online);

    cluster.chatctl(&["rebalance", "start", "--remove", "n3"]);
    // The mover is sent to its new home (going offline on n3 as its session ends there).
    recv_until(&mut m, "the mover's redirect", |f| {
        matches!(f.frame, Some(server_frame::Frame::Redirect(_)))
    })
    .await;
    drop(m);
    let off = update(&mut w, &mover).await;
    assert_eq!((off.online, off.last_seen_ms), (false, 0));
    let home = cluster.ring().owner(&mover).to_string();
    assert_ne!(home, "n3");
    let mut m = cluster.node(&home).connect(&mover, "phone").await;
    active_ping(&mut m, 2).await;
    // Renewals are a minute apart here: the update comes from the ring change's re-registration
    // (or the change itself, whichever is first), and the hidden last seen moved with him.
    let on = update(&mut w, &mover).await;
    assert_eq!((on.online, on.last_seen_ms), (true, 0));
    let st = query(&mut w, "q", &[&mover]).await;
    assert!(st[0].online, "{st:?}");
}
