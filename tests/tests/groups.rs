//! Groups across the cluster: a full group spread over three nodes, members added and removed
//! while messages flow, refusals that leave the connection intact, typing in a group, and a
//! group whose home node is removed from the ring.

use std::collections::HashMap;

use chat_client::Client;
use chat_proto::v1::{
    deliver, group_reply, group_request::Op, server_frame, ErrorCode, GroupCreate, GroupEventKind,
    GroupInfo, GroupMembers, GroupReceipts, GroupReceiptsQuery, GroupRef, GroupRename, GroupReply,
    Message, ServerFrame, TypingState,
};
use chat_tests::*;
use futures_util::future::join_all;
use tokio::time::{Duration, Instant};

/// Asks a group request and returns its answer (panics on a refusal).
async fn ask(c: &mut Client, id: &str, op: Op) -> GroupReply {
    match try_ask(c, id, op).await {
        Ok(r) => r,
        Err(code) => panic!("request {id} refused: {code:?}"),
    }
}

/// Asks a group request: its answer, or the code it was refused with.
async fn try_ask(c: &mut Client, id: &str, op: Op) -> Result<GroupReply, ErrorCode> {
    c.group_request(id, op).await.unwrap();
    let (f, _) = recv_until(c, "a group answer", |f| match &f.frame {
        Some(server_frame::Frame::Group(r)) => r.request_id == id,
        Some(server_frame::Frame::Error(e)) => e.r#ref == id,
        _ => false,
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Group(r)) => Ok(r),
        _ => Err(error_code(&f).unwrap()),
    }
}

fn info(r: GroupReply) -> GroupInfo {
    match r.reply {
        Some(group_reply::Reply::Info(i)) => i,
        other => panic!("not info: {other:?}"),
    }
}

async fn create(c: &mut Client, name: &str, members: &[String]) -> GroupInfo {
    let op = Op::Create(GroupCreate {
        name: name.into(),
        members: members.to_vec(),
        group: String::new(),
    });
    info(ask(c, "create", op).await)
}

fn members(group: &str, users: &[&str]) -> GroupMembers {
    GroupMembers {
        group: group.into(),
        users: users.iter().map(|u| u.to_string()).collect(),
    }
}

async fn receipts(c: &mut Client, group: &str, msg_id: &str) -> GroupReceipts {
    let op = Op::Receipts(GroupReceiptsQuery {
        group: group.into(),
        msg_id: msg_id.into(),
        who: true,
    });
    match ask(c, "receipts", op).await.reply {
        Some(group_reply::Reply::Receipts(r)) => r,
        other => panic!("not receipts: {other:?}"),
    }
}

/// Waits for the ✓ of each of `cmids` (any order); returns their msg_ids by cmid.
async fn ticks(c: &mut Client, cmids: &[String]) -> HashMap<String, String> {
    ticks_keeping(c, cmids, &mut Vec::new()).await
}

/// [`ticks`], keeping the other frames that arrive meanwhile in `other`.
async fn ticks_keeping(
    c: &mut Client,
    cmids: &[String],
    other: &mut Vec<ServerFrame>,
) -> HashMap<String, String> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < cmids.len() {
        let f = c.recv_until(deadline).await.expect("waiting for ✓");
        match &f.frame {
            Some(server_frame::Frame::Sent(s)) => {
                got.insert(s.client_msg_id.clone(), s.msg_id.clone());
            }
            Some(server_frame::Frame::Error(e)) => panic!("refused: {e:?}"),
            _ => other.push(f),
        }
    }
    got
}

/// A send's refusal code.
async fn refused_send(c: &mut Client, cmid: &str, group: &str) -> ErrorCode {
    c.send_group_message(cmid, group, "x").await.unwrap();
    let (f, _) = recv_until(c, "a refusal", |f| {
        matches!(&f.frame, Some(server_frame::Frame::Error(e)) if e.r#ref == cmid)
            || matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid)
    })
    .await;
    error_code(&f).unwrap_or_else(|| panic!("{cmid} was accepted: {f:?}"))
}

/// Everything in `user`'s inbox (a fresh device's backlog), oldest first.
async fn inbox(cluster: &TestCluster, user: &str) -> Vec<deliver::Entry> {
    let home = cluster.ring().owner(user).to_string();
    let mut c = cluster.node(&home).connect(user, "reader").await;
    backlog(&mut c, 7)
        .await
        .into_iter()
        .filter_map(|f| as_deliver(&f).and_then(|d| d.entry.clone()))
        .collect()
}

fn group_messages(entries: &[deliver::Entry], group: &str) -> Vec<Message> {
    entries
        .iter()
        .filter_map(|e| match e {
            deliver::Entry::Message(m) if m.group == group => Some(m.clone()),
            _ => None,
        })
        .collect()
}

async fn connect_home(cluster: &TestCluster, user: &str) -> Client {
    let home = cluster.ring().owner(user).to_string();
    cluster.node(&home).connect(user, "phone").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_group_over_three_nodes_gets_each_message_once_in_each_senders_order() {
    const SIZE: usize = 256;
    const EACH: usize = 8;
    let cluster = TestCluster::start(&[]);
    let mut users = Vec::new();
    for n in ["n1", "n2", "n3"] {
        users.extend(cluster.users_on(n, &format!("m{n}"), SIZE / 3 + 1));
    }
    users.truncate(SIZE);
    let mut clients = Vec::new();
    for chunk in users.chunks(32) {
        clients.extend(join_all(chunk.iter().map(|u| connect_home(&cluster, u))).await);
    }
    let i = create(&mut clients[0], "everyone", &users[1..]).await;
    assert_eq!(i.members.len(), SIZE);
    let group = i.group.clone();
    // Member 257 is refused, and the group is as it was.
    let extra = Op::Add(members(&group, &["one-too-many"]));
    assert_eq!(
        try_ask(&mut clients[0], "add", extra).await.unwrap_err(),
        ErrorCode::LimitReached
    );

    // Two senders on different nodes, each sending in a row without waiting.
    let senders = [0, SIZE / 2];
    assert_ne!(
        cluster.ring().owner(&users[0]),
        cluster.ring().owner(&users[SIZE / 2])
    );
    let mut cmids = HashMap::new();
    for s in senders {
        let list: Vec<String> = (0..EACH).map(|k| format!("{s}-{k}")).collect();
        for cmid in &list {
            clients[s]
                .send_group_message(cmid, &group, cmid)
                .await
                .unwrap();
        }
        cmids.insert(s, list);
    }
    let mut msg_ids = HashMap::new();
    // What reaches a sender while it waits for its ✓ (the other sender's messages) is kept.
    let mut early: Vec<Vec<ServerFrame>> = vec![Vec::new(); SIZE];
    for s in senders {
        msg_ids.extend(ticks_keeping(&mut clients[s], &cmids[&s], &mut early[s]).await);
    }

    // Every member gets each message once, each sender's in its order; half of them read.
    let received = join_all(
        clients
            .iter_mut()
            .zip(early)
            .enumerate()
            .map(|(k, (c, early))| {
                let group = group.clone();
                async move {
                    let mut got: Vec<Message> = Vec::new();
                    let deadline = Instant::now() + WAIT;
                    let mut early = early.into_iter();
                    while got.len() < 2 * EACH {
                        let next = match early.next() {
                            Some(f) => Ok(f),
                            None => c.recv_until(deadline).await,
                        };
                        let f = next.unwrap_or_else(|e| {
                            let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
                            panic!("member {k} ({}): {e} after {bodies:?}", c.welcome.user)
                        });
                        if let Some((seq, m)) = as_message(&f) {
                            assert_eq!(m.group, group);
                            got.push(m.clone());
                            if k % 2 == 0 {
                                c.read(seq).await.unwrap();
                            } else {
                                c.ack(seq).await.unwrap();
                            }
                        }
                    }
                    // Nothing more (no copy twice).
                    let more = until_pong(c, 9).await;
                    assert!(!more.iter().any(|f| as_message(f).is_some()), "{more:?}");
                    got
                }
            }),
    )
    .await;
    for (k, got) in received.iter().enumerate() {
        for s in senders {
            let from: Vec<&str> = got
                .iter()
                .filter(|m| m.from == users[s])
                .map(|m| m.body.as_str())
                .collect();
            assert_eq!(from, cmids[&s], "member {k}: sender {s}'s order");
        }
    }

    // Delivered and read add up on the group's node: everyone but the sender received it,
    // the even members (but the sender) read it.
    let first = &msg_ids[&cmids[&0][0]];
    let readers = (0..SIZE).filter(|k| k % 2 == 0 && *k != 0).count() as u32;
    let want = ((SIZE - 1) as u32, readers);
    let deadline = Instant::now() + WAIT;
    let r = loop {
        let r = receipts(&mut clients[0], &group, first).await;
        if (r.delivered, r.read) == want || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((r.delivered, r.read), want, "{r:?}");
    assert!(!r.delivered_by.contains(&users[0]));
    assert_eq!(r.delivered_by.len(), SIZE - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_added_and_removed_while_messages_flow_get_exactly_their_share() {
    let cluster = TestCluster::start(&[]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let dave = cluster.users_on("n1", "dave", 1).remove(0);
    let erin = cluster.users_on("n2", "erin", 1).remove(0);
    let mut a = connect_home(&cluster, &alice).await;
    let mut b = connect_home(&cluster, &bob).await;
    let mut e = connect_home(&cluster, &erin).await;
    let group = create(&mut a, "team", &[bob.clone(), carol.clone()])
        .await
        .group;

    // Bob sends 40 messages: the first 20 are stored before anything changes; while the other
    // 20 are on their way, alice removes carol and adds dave.
    let cmids: Vec<String> = (0..40).map(|k| format!("b{k:02}")).collect();
    for cmid in &cmids[..20] {
        b.send_group_message(cmid, &group, cmid).await.unwrap();
    }
    ticks(&mut b, &cmids[..20]).await;
    for cmid in &cmids[20..] {
        b.send_group_message(cmid, &group, cmid).await.unwrap();
    }
    ask(&mut a, "rm", Op::Remove(members(&group, &[&carol]))).await;
    ask(&mut a, "add", Op::Add(members(&group, &[&dave]))).await;
    ticks(&mut b, &cmids[20..]).await;

    let bodies = |ms: Vec<Message>| ms.into_iter().map(|m| m.body).collect::<Vec<_>>();
    // The sender's own inbox holds every message, in order.
    let own = bodies(group_messages(&inbox(&cluster, &bob).await, &group));
    assert_eq!(own, cmids);
    // Carol: a prefix, then the removal, then nothing of the group's.
    let carol_inbox = inbox(&cluster, &carol).await;
    let removed_at = carol_inbox
        .iter()
        .position(|e| matches!(e, deliver::Entry::GroupEvent(ev) if ev.kind == GroupEventKind::Removed as i32))
        .expect("carol is told she was removed");
    let after: Vec<_> = group_messages(&carol_inbox[removed_at..], &group);
    assert!(after.is_empty(), "after the removal: {after:?}");
    let got = bodies(group_messages(&carol_inbox, &group));
    assert_eq!(got, cmids[..got.len()], "a prefix");
    assert!(got.len() >= 20, "all that was stored before the removal");
    // Dave: told he was added, then a suffix and nothing from before.
    let dave_inbox = inbox(&cluster, &dave).await;
    assert!(
        matches!(&dave_inbox[0], deliver::Entry::GroupEvent(ev) if ev.kind == GroupEventKind::Added as i32),
        "{dave_inbox:?}"
    );
    let got = bodies(group_messages(&dave_inbox, &group));
    assert_eq!(got, cmids[cmids.len() - got.len()..], "a suffix");
    assert!(got.len() <= 20, "nothing from before he joined");

    // Each user's list of groups follows its events.
    let mine = |r: GroupReply| match r.reply {
        Some(group_reply::Reply::Groups(l)) => {
            l.groups.into_iter().map(|g| g.group).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    let mut c = connect_home(&cluster, &carol).await;
    let mut d = connect_home(&cluster, &dave).await;
    assert!(mine(ask(&mut c, "mine", Op::Mine(true)).await).is_empty());
    assert_eq!(
        mine(ask(&mut d, "mine", Op::Mine(true)).await),
        vec![group.clone()]
    );

    // Refusals: each with its code, and the connection goes on.
    assert_eq!(
        refused_send(&mut e, "e1", &group).await,
        ErrorCode::NotAMember
    );
    assert_eq!(
        refused_send(&mut c, "c1", &group).await,
        ErrorCode::NotAMember
    );
    assert_eq!(
        refused_send(&mut e, "e2", "g-nope").await,
        ErrorCode::UnknownGroup
    );
    assert_eq!(
        refused_send(&mut e, "e3", "bad group").await,
        ErrorCode::InvalidId
    );
    let info_op = || {
        Op::Info(GroupRef {
            group: group.clone(),
        })
    };
    assert_eq!(
        try_ask(&mut e, "i", info_op()).await.unwrap_err(),
        ErrorCode::NotAMember
    );
    let rename = Op::Rename(GroupRename {
        group: group.clone(),
        name: "mine now".into(),
    });
    assert_eq!(
        try_ask(&mut d, "rn", rename).await.unwrap_err(),
        ErrorCode::NotAnAdmin
    );
    let add = Op::Add(members(&group, &[&erin]));
    assert_eq!(
        try_ask(&mut b, "ad", add).await.unwrap_err(),
        ErrorCode::NotAnAdmin
    );
    let names: Vec<String> = info(ask(&mut b, "i2", info_op()).await)
        .members
        .into_iter()
        .map(|m| m.user)
        .collect();
    let mut want = vec![alice.clone(), bob.clone(), dave.clone()];
    want.sort();
    assert_eq!(names, want);
    until_pong(&mut e, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_a_group_reaches_its_online_members_only_and_is_never_stored() {
    let cluster = TestCluster::start(&[]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    // On alice's node: its events take the same queues to the group's node as hers, in order.
    let erin = cluster.users_on("n1", "erin", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let mut a = connect_home(&cluster, &alice).await;
    let mut b = connect_home(&cluster, &bob).await;
    let mut c = connect_home(&cluster, &carol).await;
    let mut e = connect_home(&cluster, &erin).await;
    let group = create(&mut a, "team", &[bob.clone(), carol.clone()])
        .await
        .group;
    recv_until(&mut b, "the group's creation", |f| {
        matches!(as_deliver(f), Some(d) if matches!(d.entry, Some(deliver::Entry::GroupEvent(_))))
    })
    .await;

    // A non-member types first, then alice: the members see alice, and never erin.
    e.typing_group(&group, TypingState::Typing).await.unwrap();
    until_pong(&mut e, 1).await;
    a.typing_group(&group, TypingState::Typing).await.unwrap();
    for dev in [&mut b, &mut c] {
        let (f, before) = recv_until(
            dev,
            "typing in the group",
            |f| matches!(&f.frame, Some(server_frame::Frame::Typing(t)) if t.from == alice),
        )
        .await;
        match f.frame {
            Some(server_frame::Frame::Typing(t)) => assert_eq!(t.group, group),
            _ => unreachable!(),
        }
        let typing = |f: &ServerFrame| matches!(&f.frame, Some(server_frame::Frame::Typing(_)));
        assert!(!before.iter().any(typing), "{before:?}");
    }
    // The typer is not shown its own typing.
    let seen = until_pong(&mut a, 2).await;
    assert!(
        !seen
            .iter()
            .any(|f| matches!(&f.frame, Some(server_frame::Frame::Typing(_)))),
        "{seen:?}"
    );
    // Bob's inbox holds the group's creation, and nothing else.
    let stored = inbox(&cluster, &bob).await;
    assert!(
        matches!(&stored[..], [deliver::Entry::GroupEvent(ev)] if ev.kind == GroupEventKind::Created as i32),
        "{stored:?}"
    );
}

/// Sends until ✓, again with the same client_msg_id while the group's node is moving.
async fn send_until_ticked(c: &mut Client, cmid: &str, group: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        c.send_group_message(cmid, group, cmid).await.unwrap();
        let (f, _) = recv_until(c, "✓ or a refusal", |f| match &f.frame {
            Some(server_frame::Frame::Sent(s)) => s.client_msg_id == cmid,
            Some(server_frame::Frame::Error(e)) => e.r#ref == cmid,
            _ => false,
        })
        .await;
        match f.frame {
            Some(server_frame::Frame::Sent(s)) => return s.msg_id,
            _ if error_code(&f) == Some(ErrorCode::Unavailable) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => panic!("{cmid} refused: {f:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_and_its_counts_move_with_the_ring() {
    let cluster = TestCluster::start(&[]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let mut a = connect_home(&cluster, &alice).await;
    let mut b = connect_home(&cluster, &bob).await;
    // A group whose home is n3 (ids are random: make groups until one lands there).
    let mut group = String::new();
    for _ in 0..64 {
        let g = create(&mut a, "moving", &[bob.clone(), carol.clone()])
            .await
            .group;
        if cluster.ring().owner(&g) == "n3" {
            group = g;
            break;
        }
    }
    assert!(!group.is_empty(), "no group landed on n3 in 64 tries");
    let before = send_until_ticked(&mut a, "before", &group).await;
    let (seq, _) = receive_messages(&mut b, 1).await.remove(0);
    b.read(seq).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while receipts(&mut a, &group, &before).await.read < 1 {
        assert!(Instant::now() < deadline, "bob's read was never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.chatctl(&["rebalance", "start", "--remove", "n3"]);
    wait_until("n3 to leave the ring", WAIT * 2, || {
        let ring = cluster.ring();
        if ring.owner(&group) != "n3" && ring.owner(&carol) != "n3" {
            Ok(())
        } else {
            Err(ring.epoch())
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // At its new home: the same members, the same counts, and sends go on (retried while the
    // move settles).
    let deadline = Instant::now() + WAIT;
    let i = loop {
        match try_ask(
            &mut a,
            "info",
            Op::Info(GroupRef {
                group: group.clone(),
            }),
        )
        .await
        {
            Ok(r) => break info(r),
            Err(ErrorCode::Unavailable) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(code) => panic!("info after the move: {code:?}"),
        }
    };
    assert_eq!(i.members.len(), 3);
    let r = receipts(&mut a, &group, &before).await;
    assert_eq!(
        (r.delivered, r.read),
        (1, 1),
        "bob's receipts moved with the group: {r:?}"
    );
    send_until_ticked(&mut a, "after", &group).await;
    let carol_inbox = inbox(&cluster, &carol).await;
    let got: Vec<String> = group_messages(&carol_inbox, &group)
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        got,
        vec!["before", "after"],
        "carol moved too, and has both"
    );
}
