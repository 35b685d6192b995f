//! The 1:1 lifecycle on one node: ✓ sent, ✓✓ delivered, read, in that order; offline inboxes
//! drained once and in order; several devices per user with independent cursors.

use chat_proto::v1::{deliver, server_frame, ReceiptKind};
use chat_tests::*;

#[tokio::test]
async fn online_send_with_sent_delivered_and_read_receipts_in_order() {
    let node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "phone").await;

    for i in 1..=3 {
        alice
            .send_message(&format!("c{i}"), "bob", &format!("hello {i}"))
            .await
            .unwrap();
    }
    let mut msg_ids = Vec::new();
    for i in 1..=3 {
        let (f, _) = recv_until(&mut alice, "sent", |f| {
            matches!(f.frame, Some(server_frame::Frame::Sent(_)))
        })
        .await;
        let Some(server_frame::Frame::Sent(s)) = f.frame else {
            unreachable!()
        };
        assert_eq!(s.client_msg_id, format!("c{i}"), "✓ in send order");
        msg_ids.push(s.msg_id);
    }

    // Bob receives all three in send order, then acknowledges the last (cumulative).
    let got = receive_messages(&mut bob, 3).await;
    let bodies: Vec<_> = got.iter().map(|(_, m)| m.body.as_str()).collect();
    assert_eq!(bodies, ["hello 1", "hello 2", "hello 3"]);
    assert!(got
        .iter()
        .all(|(_, m)| m.from == "alice" && m.from_device == "phone"));
    let ids: Vec<_> = got.iter().map(|(_, m)| m.msg_id.clone()).collect();
    assert_eq!(ids, msg_ids);
    let seqs: Vec<_> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 3]);

    // ✓✓ delivered reaches Alice for exactly those messages, before any read receipt.
    let (f, _) = recv_until(&mut alice, "delivered receipt", |f| as_receipt(f).is_some()).await;
    let (_, r) = as_receipt(&f).unwrap();
    assert_eq!(r.kind, ReceiptKind::Delivered as i32);
    assert_eq!(r.by, "bob");
    let mut delivered: Vec<String> = r.msg_ids.clone();
    while delivered.len() < 3 {
        // Acks may have been committed in separate batches: more delivered receipts follow.
        let (f, _) = recv_until(&mut alice, "delivered receipt", |f| as_receipt(f).is_some()).await;
        let (_, r) = as_receipt(&f).unwrap();
        assert_eq!(
            r.kind,
            ReceiptKind::Delivered as i32,
            "read before delivered"
        );
        delivered.extend(r.msg_ids.clone());
    }
    assert_eq!(delivered, msg_ids);

    bob.read(3).await.unwrap();
    let (f, _) = recv_until(&mut alice, "read receipt", |f| as_receipt(f).is_some()).await;
    let (_, r) = as_receipt(&f).unwrap();
    assert_eq!(r.kind, ReceiptKind::Read as i32);
    assert_eq!(r.msg_ids, msg_ids);
    // Nothing further: no duplicate receipts.
    let rest = until_pong(&mut alice, 7).await;
    assert!(rest.iter().all(|f| as_receipt(f).is_none()), "{rest:#?}");
}

#[tokio::test]
async fn offline_recipient_gets_backlog_once_in_order_then_live() {
    let node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    // Bob has never connected. 300 messages wait in his inbox (more than one catch-up page
    // would hold if pages were small, and enough to cross batches).
    let n = 300;
    for i in 0..n {
        alice
            .send_message(&format!("c{i}"), "bob", &format!("m{i}"))
            .await
            .unwrap();
    }
    recv_until(&mut alice, "last ✓", |f| {
        matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == format!("c{}", n - 1))
    })
    .await;

    let mut bob = node.connect("bob", "phone").await;
    assert_eq!(bob.welcome.cursor, 0);
    assert_eq!(bob.welcome.inbox_seq, n as u64);
    // While Bob drains, Alice keeps sending: live and stored entries must join without a gap.
    let sender = tokio::spawn(async move {
        for i in n..n + 100 {
            alice
                .send_message(&format!("c{i}"), "bob", &format!("m{i}"))
                .await
                .unwrap();
        }
        alice
    });
    let got = receive_messages(&mut bob, n + 100).await;
    let _alice = sender.await.unwrap();
    let bodies: Vec<String> = got.iter().map(|(_, m)| m.body.clone()).collect();
    let expected: Vec<String> = (0..n + 100).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected, "every message once, in send order");
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=(n as u64 + 100)).collect::<Vec<_>>());
    // Nothing more is pending for Bob.
    let extra = until_pong(&mut bob, 1).await;
    assert!(extra.iter().all(|f| as_message(f).is_none()), "{extra:#?}");

    // Reconnecting resumes after the acknowledged cursor: nothing is delivered twice.
    bob.close().await.unwrap();
    let mut bob = node.connect("bob", "phone").await;
    // The acks were sent before the close; the cursor is at the end or, if the last ack was still
    // queued, just before it. Whatever it is, only entries after it are sent again.
    let cursor = bob.welcome.cursor;
    let again = backlog(&mut bob, 2).await;
    let again_seqs: Vec<u64> = again
        .iter()
        .filter_map(as_message)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        again_seqs,
        ((cursor + 1)..=(n as u64 + 100)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn two_devices_both_receive_with_independent_cursors_and_one_delivered_receipt() {
    let node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    let mut phone = node.connect("bob", "phone").await;
    let mut laptop = node.connect("bob", "laptop").await;

    alice.send_message("c1", "bob", "one").await.unwrap();
    alice.send_message("c2", "bob", "two").await.unwrap();
    for dev in [&mut phone, &mut laptop] {
        let (f, _) = recv_until(dev, "second message", |f| {
            as_message(f).is_some_and(|(_, m)| m.body == "two")
        })
        .await;
        assert_eq!(as_message(&f).unwrap().0, 2);
    }
    phone.ack(2).await.unwrap();
    laptop.ack(1).await.unwrap();
    let (f, _) = recv_until(&mut alice, "delivered receipt", |f| as_receipt(f).is_some()).await;
    let (_, r) = as_receipt(&f).unwrap();
    assert_eq!(r.kind, ReceiptKind::Delivered as i32);

    // Reconnect both: each resumes from its own cursor.
    phone.close().await.unwrap();
    laptop.close().await.unwrap();
    let mut phone = node.connect("bob", "phone").await;
    let mut laptop = node.connect("bob", "laptop").await;
    assert_eq!(phone.welcome.cursor, 2);
    assert_eq!(laptop.welcome.cursor, 1);
    let redelivered: Vec<u64> = backlog(&mut laptop, 3)
        .await
        .iter()
        .filter_map(as_message)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(redelivered, [2], "the laptop never acknowledged seq 2");
    assert!(backlog(&mut phone, 4)
        .await
        .iter()
        .all(|f| as_message(f).is_none()));
    laptop.ack(2).await.unwrap();

    // The laptop's late acknowledgements produced no second receipt: Alice's inbox holds
    // exactly one delivered receipt per message. (A fresh connection is a barrier: its attach is
    // committed after the acks above.)
    let _ = node.connect("bob", "tablet").await;
    let mut skipped = Vec::new();
    let mut sent_ids: Vec<String> = phone
        .history(0, 10, WAIT, &mut skipped)
        .await
        .unwrap()
        .entries
        .into_iter()
        .filter_map(|d| match d.entry {
            Some(deliver::Entry::Message(m)) => Some(m.msg_id),
            _ => None,
        })
        .collect();
    let mut delivered_ids: Vec<String> = alice
        .history(0, 50, WAIT, &mut skipped)
        .await
        .unwrap()
        .entries
        .into_iter()
        .filter_map(|d| match d.entry {
            Some(deliver::Entry::Receipt(r)) if r.kind == ReceiptKind::Delivered as i32 => {
                Some(r.msg_ids)
            }
            _ => None,
        })
        .flatten()
        .collect();
    sent_ids.sort();
    delivered_ids.sort();
    assert_eq!(sent_ids.len(), 2);
    assert_eq!(delivered_ids, sent_ids, "one delivered receipt per message");
}

#[tokio::test]
async fn device_limit_is_enforced_with_a_clear_error() {
    let node = TestNode::start(&[("CHAT_NODE_LIMITS__MAX_DEVICES_PER_USER", "2")]);
    let _a = node.connect("carol", "d1").await;
    let _b = node.connect("carol", "d2").await;
    let err = chat_client::Client::connect(&node.url, &token("carol", "d3"))
        .await
        .err()
        .expect("third device refused");
    assert!(
        matches!(
            err,
            chat_client::ClientError::Refused {
                code: chat_proto::v1::ErrorCode::TooManyDevices,
                ..
            }
        ),
        "{err}"
    );
    // Known devices still connect.
    let _a2 = node.connect("carol", "d1").await;
}

#[tokio::test]
async fn a_device_with_a_tiny_live_queue_still_gets_everything_once_in_order() {
    // A queue of 2 overflows on every burst: delivery falls back to storage over and over.
    let node = TestNode::start(&[("CHAT_NODE_LIMITS__SESSION_QUEUE", "2")]);
    let mut bob = node.connect("bob", "phone").await;
    let mut senders = Vec::new();
    for s in 0..4 {
        let mut c = node.connect(&format!("sender{s}"), "d").await;
        senders.push(tokio::spawn(async move {
            for i in 0..150 {
                c.send_message(&format!("{i}"), "bob", &format!("{s}:{i}"))
                    .await
                    .unwrap();
            }
            c
        }));
    }
    let got = receive_messages(&mut bob, 600).await;
    for s in senders {
        s.await.unwrap();
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=600).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    // Per sender, send order is kept.
    for s in 0..4 {
        let mine: Vec<String> = got
            .iter()
            .filter(|(_, m)| m.from == format!("sender{s}"))
            .map(|(_, m)| m.body.clone())
            .collect();
        let expected: Vec<String> = (0..150).map(|i| format!("{s}:{i}")).collect();
        assert_eq!(mine, expected);
    }
    assert!(until_pong(&mut bob, 9)
        .await
        .iter()
        .all(|f| as_message(f).is_none()));
}

/// A device that says which seq it processed last (`Hello.resume_after`) is not sent that part of
/// its backlog again, even though it never acknowledged it; without it, everything after the
/// durable cursor comes again.
#[tokio::test]
async fn resume_after_skips_what_the_device_already_processed() {
    let node = TestNode::start(&[]);
    let mut alice = node.connect("alice", "phone").await;
    for i in 1..=5 {
        alice
            .send_message(&format!("c{i}"), "bob", &format!("m{i}"))
            .await
            .unwrap();
        recv_until(&mut alice, "sent", |f| {
            matches!(f.frame, Some(server_frame::Frame::Sent(_)))
        })
        .await;
    }
    let opts = |resume_after: u64| chat_client::ConnectOptions {
        resume_after,
        ..Default::default()
    };
    let seqs = |frames: Vec<chat_proto::v1::ServerFrame>| -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| as_message(f).map(|(seq, _)| seq))
            .collect()
    };
    // Processed up to 3 (no ack sent): only 4 and 5 come. The backlog is read from storage at
    // its own pace, so it may arrive after a pong: wait for seq 5 (`backlog`), not a pong.
    let mut bob = node.connect_with("bob", "phone", &opts(3)).await;
    assert_eq!(bob.welcome.cursor, 0, "nothing acknowledged");
    assert_eq!(seqs(backlog(&mut bob, 1).await), vec![4, 5]);
    drop(bob);
    // Without the hint, everything after the cursor; a hint beyond the inbox is capped.
    let mut bob = node.connect_with("bob", "phone", &opts(0)).await;
    assert_eq!(seqs(backlog(&mut bob, 2).await), vec![1, 2, 3, 4, 5]);
    drop(bob);
    let mut bob = node.connect_with("bob", "phone", &opts(99)).await;
    assert_eq!(seqs(until_pong(&mut bob, 3).await), Vec::<u64>::new());
    // New messages still arrive after a capped hint, and the first message to arrive is the new
    // one (a backlog sent late, after the pong, would come first here).
    alice.send_message("c6", "bob", "m6").await.unwrap();
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!((got[0].0, got[0].1.body.as_str()), (6, "m6"));
}
