//! Overload: with a tiny writer queue, a flood of sends fills it; typing and presence updates
//! are shed first and acks are held back and merged, yet every ✓'d message is delivered and
//! every one of them gets its DELIVERED receipt; the metrics say what was shed.

use std::collections::HashSet;

use chat_client::Client;
use chat_proto::v1::{client_frame, server_frame, ErrorCode, Ping, ReceiptKind, TypingState};
use chat_tests::*;
use tokio::time::Instant;

const SENDERS: usize = 6;
const PER_SENDER: usize = 150;

/// Sends `PER_SENDER` messages to bob as fast as the node takes them, re-sending any refused
/// with OVERLOADED (as a client does); returns the msg ids of the ✓'d ones.
async fn flood(mut c: Client, me: usize) -> (Client, HashSet<String>) {
    for i in 0..PER_SENDER {
        c.send_message(&format!("s{me}-{i}"), "bob", "flood")
            .await
            .unwrap();
    }
    let mut ok = HashSet::new();
    let deadline = Instant::now() + WAIT * 4;
    while ok.len() < PER_SENDER {
        let f = c.recv_until(deadline).await.expect("answers to the flood");
        match f.frame {
            Some(server_frame::Frame::Sent(s)) => {
                ok.insert(s.msg_id);
            }
            Some(server_frame::Frame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Overloaded as i32, "{e:?}");
                assert!(e.retry_after_ms > 0);
                c.send_message(&e.r#ref, "bob", "flood").await.unwrap();
            }
            _ => {}
        }
    }
    (c, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_sheds_typing_and_presence_first_and_loses_no_message_or_receipt() {
    let node = TestNode::start(&[
        ("CHAT_NODE_STORAGE__QUEUE_DEPTH", "4"),
        ("CHAT_NODE_STORAGE__MAX_BATCH", "1"),
        ("CHAT_NODE_OVERLOAD__SEND_WAIT_MS", "200"),
    ]);
    let mut bob = node.connect("bob", "phone").await;
    let mut watcher = node.connect("wendy", "phone").await;
    let mut typist = node.connect("tom", "phone").await;
    watcher
        .presence(
            "w",
            chat_proto::v1::presence_request::Op::Watch(chat_proto::v1::PresenceUsers {
                users: vec!["dave".into()],
            }),
        )
        .await
        .unwrap();
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(node.connect(&format!("s{i}"), "phone").await);
    }
    let flooding: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(flood(c, i)))
        .collect();
    // While the flood runs: typing to bob, and dave coming and going (presence changes).
    let mut typed = 0;
    let mut cycles = 0;
    while flooding.iter().any(|f| !f.is_finished()) && cycles < 200 {
        typist.typing("bob", TypingState::Typing).await.unwrap();
        typed += 1;
        let mut dave = node.connect("dave", "phone").await;
        dave.send_active(client_frame::Frame::Ping(Ping { nonce: 1 }))
            .await
            .unwrap();
        until_pong(&mut dave, 2).await;
        drop(dave);
        cycles += 1;
    }
    let mut sent = HashSet::new();
    let mut clients = Vec::new();
    for f in flooding {
        let (c, ok) = f.await.unwrap();
        sent.extend(ok);
        clients.push(c);
    }
    assert_eq!(sent.len(), SENDERS * PER_SENDER);

    // Every ✓'d message reaches bob once, and he acknowledges as he goes.
    let mut got = HashSet::new();
    let deadline = Instant::now() + WAIT * 4;
    while got.len() < sent.len() {
        let f = bob.recv_until(deadline).await.expect("bob's deliveries");
        if let Some((seq, m)) = as_message(&f) {
            assert!(got.insert(m.msg_id.clone()), "{} twice", m.msg_id);
            bob.ack(seq).await.unwrap();
        }
    }
    assert_eq!(got, sent);
    // And every sender gets DELIVERED receipts covering all its messages: held-back acks were
    // merged, never dropped.
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut covered = HashSet::new();
        while covered.len() < PER_SENDER {
            let (f, _) = recv_until(&mut c, &format!("s{i}'s receipts"), |f| {
                as_receipt(f).is_some_and(|(_, r)| r.kind == ReceiptKind::Delivered as i32)
            })
            .await;
            let (_, r) = as_receipt(&f).unwrap();
            covered.extend(r.msg_ids.iter().cloned());
        }
    }
    // The metrics say what was shed, and why.
    let (_, metrics) = http_get(&format!("{}/metrics", node.admin_url)).unwrap();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let typing = value("chat_shed_total{kind=\"typing\",reason=\"overload\"}");
    let presence = value("chat_shed_total{kind=\"presence\",reason=\"overload\"}");
    let deferred = value("chat_acks_deferred_total");
    assert!(typing > 0.0, "no typing shed of {typed}:\n{metrics}");
    assert!(
        presence > 0.0,
        "no presence update shed in {cycles} cycles:\n{metrics}"
    );
    assert!(deferred > 0.0, "no ack held back:\n{metrics}");
    eprintln!("typed {typed}, presence cycles {cycles}: shed typing {typing}, presence {presence}, acks held back {deferred}");
    let _ = &mut watcher;
}
