//! Blocking across nodes: a blocked sender's messages get ✓ but never arrive and its typing is
//! not shown; the blocker cannot send or type to it; unblocking restores both.

use chat_client::Client;
use chat_proto::v1::{
    block_request, client_frame, server_frame, BlockRequest, ErrorCode, ServerFrame, TypingState,
};
use chat_tests::*;

async fn request(c: &mut Client, id: &str, op: block_request::Op) -> ServerFrame {
    c.send(client_frame::Frame::Block(BlockRequest {
        request_id: id.into(),
        op: Some(op),
    }))
    .await
    .unwrap();
    recv_until(c, id, |f| match &f.frame {
        Some(server_frame::Frame::Blocked(b)) => b.request_id == id,
        Some(server_frame::Frame::Error(e)) => e.r#ref == id,
        _ => false,
    })
    .await
    .0
}

async fn blocked_list(c: &mut Client, id: &str, op: block_request::Op) -> Vec<String> {
    match request(c, id, op).await.frame {
        Some(server_frame::Frame::Blocked(b)) => b.users,
        other => panic!("{id}: {other:?}"),
    }
}

/// Sends and waits for the answer: Ok(msg_id) or the error code.
async fn send(c: &mut Client, cmid: &str, to: &str) -> Result<String, ErrorCode> {
    c.send_message(cmid, to, cmid).await.unwrap();
    let (f, _) = recv_until(c, cmid, |f| match &f.frame {
        Some(server_frame::Frame::Sent(s)) => s.client_msg_id == cmid,
        Some(server_frame::Frame::Error(e)) => e.r#ref == cmid,
        _ => false,
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Sent(s)) => Ok(s.msg_id),
        _ => Err(error_code(&f).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_works_in_both_directions_across_nodes() {
    let cluster = TestCluster::start(&[]);
    let mallory = cluster.users_on("n1", "mallory", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n2", "carol", 1).remove(0);
    let mut m = cluster.node("n1").connect(&mallory, "phone").await;
    let mut b = cluster.node("n2").connect(&bob, "phone").await;
    let mut c = cluster.node("n2").connect(&carol, "phone").await;

    let list = blocked_list(&mut b, "b1", block_request::Op::Block(mallory.clone())).await;
    assert_eq!(list, vec![mallory.clone()]);

    // Mallory is not told: ✓ as usual. Then a message to carol on bob's node, which n1 hands
    // over after the first (one destination, in order): once carol has it, n2 has judged the
    // one for bob.
    send(&mut m, "to-bob-1", &bob)
        .await
        .expect("✓ for a blocked sender");
    m.typing(&bob, TypingState::Typing).await.unwrap();
    send(&mut m, "to-carol-1", &carol).await.unwrap();
    m.typing(&carol, TypingState::Typing).await.unwrap();
    // Both reach carol, in either order.
    let (mut message, mut typing) = (false, false);
    recv_until(&mut c, "mallory's message and typing to carol", |f| {
        message |= as_message(f).is_some();
        typing |= matches!(&f.frame, Some(server_frame::Frame::Typing(_)));
        message && typing
    })
    .await;
    let seen = until_pong(&mut b, 1).await;
    assert!(
        !seen
            .iter()
            .any(|f| as_message(f).is_some()
                || matches!(&f.frame, Some(server_frame::Frame::Typing(_)))),
        "bob saw something from mallory: {seen:?}"
    );

    // The other direction: bob cannot message or type to the user he blocked.
    assert_eq!(
        send(&mut b, "to-mallory", &mallory).await,
        Err(ErrorCode::Blocked)
    );
    b.typing(&mallory, TypingState::Typing).await.unwrap();
    let (f, _) = recv_until(&mut b, "typing refusal", |f| error_code(f).is_some()).await;
    assert_eq!(error_code(&f), Some(ErrorCode::Blocked));

    // Unblocked: messages flow both ways again; what came while blocked stays undelivered.
    let list = blocked_list(&mut b, "b2", block_request::Op::Unblock(mallory.clone())).await;
    assert!(list.is_empty());
    let id = send(&mut m, "to-bob-2", &bob).await.unwrap();
    let got = receive_messages(&mut b, 1).await;
    assert_eq!(
        (got[0].1.msg_id.as_str(), got[0].1.body.as_str()),
        (id.as_str(), "to-bob-2")
    );
    send(&mut b, "to-mallory-2", &mallory).await.unwrap();
    let got = receive_messages(&mut m, 1).await;
    assert_eq!(got[0].1.body, "to-mallory-2");
}

#[tokio::test]
async fn bad_block_requests_are_refused_and_change_nothing() {
    let node = TestNode::start(&[("CHAT_NODE_LIMITS__MAX_BLOCKED", "1")]);
    let mut a = node.connect("alice", "phone").await;
    let code = |f: ServerFrame| error_code(&f);
    assert_eq!(
        code(request(&mut a, "r1", block_request::Op::Block("".into())).await),
        Some(ErrorCode::InvalidId)
    );
    assert_eq!(
        code(request(&mut a, "r2", block_request::Op::Block("alice".into())).await),
        Some(ErrorCode::InvalidArgument)
    );
    a.send(client_frame::Frame::Block(BlockRequest {
        request_id: "r3".into(),
        op: None,
    }))
    .await
    .unwrap();
    let (f, _) = recv_until(&mut a, "r3", |f| error_code(f).is_some()).await;
    assert_eq!(error_code(&f), Some(ErrorCode::InvalidArgument));
    blocked_list(&mut a, "r4", block_request::Op::Block("bob".into())).await;
    assert_eq!(
        code(request(&mut a, "r5", block_request::Op::Block("carol".into())).await),
        Some(ErrorCode::LimitReached)
    );
    assert_eq!(
        blocked_list(&mut a, "r6", block_request::Op::List(true)).await,
        vec!["bob".to_string()]
    );
}
