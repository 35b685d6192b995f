//! Typing: forwarded to the recipient's connected devices, on its node or across the cluster,
//! never stored; bad typing frames are refused and leave the connection as it was.

use chat_client::Client;
use chat_proto::v1::{
    client_frame, server_frame, ErrorCode, ServerFrame, Typing, TypingNotice, TypingState,
};
use chat_tests::*;

/// Waits for the next typing notice from `from`.
async fn notice(c: &mut Client, from: &str) -> TypingNotice {
    let (f, _) = recv_until(
        c,
        "typing notice",
        |f| matches!(&f.frame, Some(server_frame::Frame::Typing(t)) if t.from == from),
    )
    .await;
    match f.frame {
        Some(server_frame::Frame::Typing(t)) => t,
        _ => unreachable!(),
    }
}

fn is_typing(f: &ServerFrame) -> bool {
    matches!(&f.frame, Some(server_frame::Frame::Typing(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_every_device_across_nodes_and_is_never_stored() {
    let mut cluster = TestCluster::start(&[("CHAT_NODE_EPHEMERAL__TYPING_EXPIRY_MS", "4000")]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let carol = cluster.users_on("n1", "carol", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let mut a = cluster.node("n1").connect(&alice, "phone").await;
    let mut c = cluster.node("n1").connect(&carol, "phone").await;
    let mut b_phone = cluster.node("n2").connect(&bob, "phone").await;
    let mut b_laptop = cluster.node("n2").connect(&bob, "laptop").await;

    // Across nodes, to both of bob's devices.
    a.typing(&bob, TypingState::Typing).await.unwrap();
    for dev in [&mut b_phone, &mut b_laptop] {
        let t = notice(dev, &alice).await;
        assert_eq!(t.state, TypingState::Typing as i32);
        assert_eq!(t.from_device, "phone");
        assert_eq!(t.expires_in_ms, 4000, "the configured expiry");
    }
    a.typing(&bob, TypingState::Stopped).await.unwrap();
    for dev in [&mut b_phone, &mut b_laptop] {
        assert_eq!(notice(dev, &alice).await.state, TypingState::Stopped as i32);
    }
    // On the same node, and back the other way across nodes.
    a.typing(&carol, TypingState::Typing).await.unwrap();
    assert_eq!(
        notice(&mut c, &alice).await.state,
        TypingState::Typing as i32
    );
    b_laptop.typing(&alice, TypingState::Typing).await.unwrap();
    let t = notice(&mut a, &bob).await;
    assert_eq!(
        (t.from_device.as_str(), t.state),
        ("laptop", TypingState::Typing as i32)
    );
    // The sender's other devices are not told, and nothing reached carol that was meant for bob.
    let seen = until_pong(&mut c, 1).await;
    assert!(!seen.iter().any(is_typing), "{seen:?}");

    // Never stored: a device connecting now gets no backlog and no typing, and the inbox is
    // as empty as before.
    let mut b_tablet = cluster.node("n2").connect(&bob, "tablet").await;
    assert_eq!(
        b_tablet.welcome.inbox_seq, 0,
        "typing wrote nothing to bob's inbox"
    );
    let seen = backlog(&mut b_tablet, 2).await;
    assert!(seen.is_empty(), "{seen:?}");
    // n2 counts the notices it handed to bob's two devices (twice each).
    let line = "chat_ephemeral_delivered_total{kind=\"typing\"} 4";
    let admin = &cluster.node("n2").admin_url;
    wait_until_async(line, WAIT, async || metrics_contain(admin, line))
        .await
        .unwrap();

    // A node that sent and received events stops cleanly: nothing it keeps for them holds its
    // writer (which would stop only after the drain period, skipping the memtable flush).
    let n2 = cluster.node_mut("n2");
    assert!(n2.terminate(), "n2 exits 0 on SIGTERM");
    let log = n2.log_text();
    assert!(log.contains("storage flushed; bye"), "{log}");
}

#[tokio::test]
async fn bad_typing_frames_are_refused_and_the_connection_stays() {
    let node = TestNode::start(&[]);
    let mut a = node.connect("alice", "phone").await;
    let cases = [
        (
            Typing {
                to: "".into(),
                state: TypingState::Typing as i32,
                group: String::new(),
            },
            ErrorCode::InvalidId,
        ),
        (
            Typing {
                to: "b o b".into(),
                state: TypingState::Typing as i32,
                group: String::new(),
            },
            ErrorCode::InvalidId,
        ),
        (
            Typing {
                to: "bob".into(),
                state: TypingState::Unspecified as i32,
                group: String::new(),
            },
            ErrorCode::InvalidArgument,
        ),
        (
            Typing {
                to: "bob".into(),
                state: 99,
                group: String::new(),
            },
            ErrorCode::InvalidArgument,
        ),
        (
            Typing {
                to: "alice".into(),
                state: TypingState::Typing as i32,
                group: String::new(),
            },
            ErrorCode::InvalidArgument,
        ),
    ];
    for (frame, code) in cases {
        let what = format!("{frame:?}");
        a.send(client_frame::Frame::Typing(frame)).await.unwrap();
        let (f, _) = recv_until(&mut a, &what, |f| error_code(f).is_some()).await;
        assert_eq!(error_code(&f), Some(code), "{what}");
    }
    // Still connected and working: a good one reaches bob.
    let mut b = node.connect("bob", "phone").await;
    a.typing("bob", TypingState::Typing).await.unwrap();
    notice(&mut b, "alice").await;
}
