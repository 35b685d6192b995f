//! ✓ means stored: idempotent retries, kill -9 right after ✓, graceful SIGTERM.

use std::collections::BTreeMap;

use chat_proto::v1::{server_frame, Sent};
use chat_tests::*;

fn sent(f: &chat_proto::v1::ServerFrame) -> Option<&Sent> {
    match &f.frame {
        Some(server_frame::Frame::Sent(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn the_same_client_msg_id_three_times_is_one_message_with_three_identical_acks() {
    let mut node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    // Two retries pipelined behind the first (they may land in the same commit batch)...
    for _ in 0..2 {
        alice.send_message("same-id", "bob", "hello").await.unwrap();
    }
    // ...and one after the first ✓, with a different body: still the first message's answer.
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let (f, _) = recv_until(&mut alice, "sent", |f| sent(f).is_some()).await;
        acks.push(sent(&f).unwrap().clone());
    }
    alice
        .send_message("same-id", "bob", "hello again")
        .await
        .unwrap();
    let (f, _) = recv_until(&mut alice, "sent", |f| sent(f).is_some()).await;
    acks.push(sent(&f).unwrap().clone());
    assert_eq!(acks[0], acks[1]);
    assert_eq!(acks[0], acks[2]);

    let mut bob = node.connect("bob", "phone").await;
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!(got[0].1.msg_id, acks[0].msg_id);
    assert_eq!(got[0].1.body, "hello");
    let more = until_pong(&mut bob, 1).await;
    assert!(more.iter().all(|f| as_message(f).is_none()), "{more:#?}");

    // The dedup record is durable: a retry after a restart gets the same answer.
    assert!(node.terminate(), "clean exit on SIGTERM");
    node.restart();
    let mut alice = node.connect("alice", "phone").await;
    alice.send_message("same-id", "bob", "hello").await.unwrap();
    let (f, _) = recv_until(&mut alice, "sent", |f| sent(f).is_some()).await;
    assert_eq!(sent(&f).unwrap(), &acks[0]);
    // The same client_msg_id from another device is another message.
    let mut tablet = node.connect("alice", "tablet").await;
    tablet.send_message("same-id", "bob", "hi").await.unwrap();
    let (f, _) = recv_until(&mut tablet, "sent", |f| sent(f).is_some()).await;
    assert_ne!(sent(&f).unwrap().msg_id, acks[0].msg_id);
}

#[tokio::test]
async fn kill_9_right_after_ack_loses_nothing_that_was_acknowledged() {
    let mut node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    // Many sends in flight; kill the node the moment the 50th ✓ arrives.
    let n = 400;
    for i in 0..n {
        alice
            .send_message(&format!("c{i}"), "bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut acked = BTreeMap::new();
    while acked.len() < 50 {
        let (f, _) = recv_until(&mut alice, "sent", |f| sent(f).is_some()).await;
        let s = sent(&f).unwrap();
        acked.insert(s.client_msg_id.clone(), s.msg_id.clone());
    }
    node.kill9();
    // Frames already on the wire may hold more ✓ than we counted: they count too.
    while let Ok(f) = alice.recv_timeout(std::time::Duration::from_secs(2)).await {
        if let Some(s) = sent(&f) {
            acked.insert(s.client_msg_id.clone(), s.msg_id.clone());
        }
    }

    node.restart();
    let mut bob = node.connect("bob", "phone").await;
    let inbox = bob.welcome.inbox_seq as usize;
    assert!(
        inbox >= acked.len(),
        "inbox {inbox} < acknowledged {}",
        acked.len()
    );
    let got = receive_messages(&mut bob, inbox).await;
    let delivered: BTreeMap<String, String> = got
        .iter()
        .map(|(_, m)| (m.client_msg_id.clone(), m.msg_id.clone()))
        .collect();
    for (cmid, msg_id) in &acked {
        assert_eq!(
            delivered.get(cmid),
            Some(msg_id),
            "acknowledged {cmid} lost"
        );
    }
    // What survived is a prefix of the send order, each message once.
    let bodies: Vec<String> = got.iter().map(|(_, m)| m.body.clone()).collect();
    let expected: Vec<String> = (0..inbox).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected);
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "phone").await;
    alice
        .send_message("c1", "bob", "before shutdown")
        .await
        .unwrap();
    recv_until(&mut alice, "sent", |f| sent(f).is_some()).await;
    assert!(node.terminate(), "chat-node exits 0 on SIGTERM");
    // Clients are told the node is going away, then the connection closes.
    let mut saw_shutdown = false;
    while let Ok(f) = bob.recv_timeout(WAIT).await {
        if error_code(&f) == Some(chat_proto::v1::ErrorCode::ShuttingDown) {
            saw_shutdown = true;
        }
    }
    assert!(saw_shutdown, "SHUTTING_DOWN error before the close");
    node.restart();
    let mut bob = node.connect("bob", "phone").await;
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!(got[0].1.body, "before shutdown");
}
