//! Rate limits: a user over its message or typing rate, or an address over its rate of new
//! connections, is refused with RATE_LIMITED and an exact retry hint; nothing is stored for a
//! refused request, and other users and addresses are unaffected.

use std::time::Duration;

use chat_client::{Client, ClientError, ConnectOptions};
use chat_proto::v1::{server_frame, ErrorCode, TypingState};
use chat_tests::*;

/// Sends `n` messages from `c` to `to` and returns, per message, Ok or the refusal's hint.
async fn flood(c: &mut Client, prefix: &str, to: &str, n: usize) -> Vec<Result<(), u32>> {
    for i in 0..n {
        c.send_message(&format!("{prefix}{i}"), to, "hi")
            .await
            .unwrap();
    }
    let mut out = vec![None; n];
    while out.iter().any(Option::is_none) {
        let (f, _) = recv_until(c, "answers", |f| {
            matches!(
                &f.frame,
                Some(server_frame::Frame::Sent(_) | server_frame::Frame::Error(_))
            )
        })
        .await;
        let (cmid, res) = match f.frame {
            Some(server_frame::Frame::Sent(s)) => (s.client_msg_id, Ok(())),
            Some(server_frame::Frame::Error(e)) => {
                assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
                (e.r#ref, Err(e.retry_after_ms))
            }
            _ => unreachable!(),
        };
        let i: usize = cmid.strip_prefix(prefix).unwrap().parse().unwrap();
        out[i] = Some(res);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_refused_with_a_hint_while_others_are_not() {
    let node = TestNode::start(&[
        // One token every 10 s: a slow, busy machine cannot refill a bucket during the test's
        // few steps, so what passes is the burst (plus a token per 10 s elapsed).
        ("CHAT_NODE_RATE__MESSAGES_PER_MIN", "6"),
        ("CHAT_NODE_RATE__MESSAGES_BURST", "5"),
        ("CHAT_NODE_RATE__TYPING_PER_MIN", "6"),
        ("CHAT_NODE_RATE__TYPING_BURST", "2"),
    ]);
    let mut alice = node.connect("alice", "phone").await;
    let mut alice_web = node.connect("alice", "web").await;
    let mut carol = node.connect("carol", "phone").await;
    let mut bob = node.connect("bob", "phone").await;

    let started = std::time::Instant::now();
    let answers = flood(&mut alice, "a", "bob", 20).await;
    let took = started.elapsed().as_secs() as usize;
    let sent = answers.iter().filter(|r| r.is_ok()).count();
    // The burst, plus the tokens refilled (one per 10 s) while the flood was answered.
    assert!(
        (5..=6 + took / 10).contains(&sent),
        "{answers:?} in {took} s"
    );
    for hint in answers.iter().filter_map(|r| r.err()) {
        assert!(
            (1..=10_000).contains(&hint),
            "a hint of at most one refill: {hint}"
        );
    }
    // The limit is the user's, not the connection's: alice's other device is refused too.
    let web = flood(&mut alice_web, "w", "bob", 1).await;
    assert!(web[0].is_err(), "{web:?}");
    // Another user is not touched.
    let other = flood(&mut carol, "c", "bob", 5).await;
    assert!(other.iter().all(Result::is_ok), "{other:?}");
    // Typing has its own bucket: alice may still type, up to its own burst.
    alice.typing("bob", TypingState::Typing).await.unwrap();
    alice.typing("bob", TypingState::Typing).await.unwrap();
    alice.typing("bob", TypingState::Typing).await.unwrap();
    let (f, _) = recv_until(&mut alice, "typing refusal", |f| error_code(f).is_some()).await;
    assert_eq!(error_code(&f), Some(ErrorCode::RateLimited));

    // After the hint, the same request goes through (same client_msg_id: one message).
    let refused = answers.iter().position(Result::is_err).unwrap();
    let hint = answers[refused].unwrap_err();
    tokio::time::sleep(Duration::from_millis(u64::from(hint))).await;
    let cmid = format!("a{refused}");
    alice.send_message(&cmid, "bob", "hi").await.unwrap();
    let (f, _) = recv_until(&mut alice, "the retry's answer", |f| {
        matches!(
            &f.frame,
            Some(server_frame::Frame::Sent(_) | server_frame::Frame::Error(_))
        )
    })
    .await;
    assert!(
        matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid),
        "{f:?}"
    );

    // Bob got exactly what was accepted: refused messages were never stored.
    let expected = sent + 5 + 1;
    let got = receive_messages(&mut bob, expected).await;
    let seen = until_pong(&mut bob, 9).await;
    assert!(
        !seen.iter().any(|f| as_message(f).is_some()),
        "more messages than were accepted: {seen:?}"
    );
    let from_alice = got.iter().filter(|(_, m)| m.from == "alice").count();
    assert_eq!(from_alice, sent + 1);
    let line = "chat_rate_limited_total{limit=\"typing\"} 1";
    wait_until_async(line, WAIT, async || metrics_contain(&node.admin_url, line))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_opening_too_many_connections_is_refused_others_are_not() {
    let node = TestNode::start(&[
        ("CHAT_NODE_RATE__CONNECTIONS_PER_ADDR_PER_MIN", "1"),
        ("CHAT_NODE_RATE__CONNECTIONS_PER_ADDR_BURST", "3"),
    ]);
    let from = |ip: &str| ConnectOptions {
        local_ip: Some(ip.parse().unwrap()),
        ..ConnectOptions::default()
    };
    let mut kept = Vec::new();
    for i in 0..3 {
        let t = token(&format!("u{i}"), "d");
        kept.push(
            Client::connect_with(&node.url, &t, &from("127.0.0.1"))
                .await
                .unwrap(),
        );
    }
    match Client::connect_with(&node.url, &token("u9", "d"), &from("127.0.0.1")).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::RateLimited),
        Err(e) => panic!("expected RATE_LIMITED, got {e}"),
        Ok(_) => panic!("a fourth connection within the burst was admitted"),
    }
    // Another address is not affected, and the connections already open keep working.
    Client::connect_with(&node.url, &token("u9", "d"), &from("127.0.0.2"))
        .await
        .unwrap();
    for c in &mut kept {
        until_pong(c, 1).await;
    }
}
