//! Connection lifetime: quiet but healthy clients stay connected (the node pings them); clients
//! that never authenticate are told why and closed.

use std::time::Duration;

use chat_client::ClientError;
use chat_proto::v1::ErrorCode;
use chat_tests::*;
use futures_util::StreamExt;

#[tokio::test]
async fn a_quiet_client_outlives_the_idle_timeout_thanks_to_pings() {
    // Pings every second; a connection is dropped after 3 s with nothing from the client. The
    // margins leave room for a loaded machine starving this test process for a while.
    let node = TestNode::start(&[("CHAT_NODE_CLIENT__IDLE_TIMEOUT_MS", "3000")]);
    let mut bob = node.connect("bob", "phone").await;
    // Bob sends nothing for several idle periods; reading lets his WebSocket layer answer pings.
    match bob.recv_timeout(Duration::from_secs(8)).await {
        Err(ClientError::Timeout) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    let mut alice = node.connect("alice", "phone").await;
    alice
        .send_message("c1", "bob", "still there?")
        .await
        .unwrap();
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!(got[0].1.body, "still there?");
}

#[tokio::test]
async fn a_connection_without_hello_is_told_and_closed() {
    let node = TestNode::start(&[("CHAT_NODE_CLIENT__HELLO_TIMEOUT_MS", "500")]);
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
    let mut codes = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                let f: chat_proto::v1::ServerFrame =
                    chat_proto::decode(chat_proto::Encoding::Json, msg.into_data().as_ref())
                        .unwrap();
                codes.push(error_code(&f));
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection closed");
    assert_eq!(codes, [Some(ErrorCode::Unauthenticated)]);
}
