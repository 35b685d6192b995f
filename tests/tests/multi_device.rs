//! Several devices per user across nodes: a message sent from one device shows on the user's
//! other devices (marked as its own), and reading on one device marks it read on the others.

use chat_proto::v1::server_frame;
use chat_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_messages_and_reads_reach_every_device() {
    let cluster = TestCluster::start(&[]);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let mut phone = cluster.node("n1").connect(&alice, "phone").await;
    let mut laptop = cluster.node("n1").connect(&alice, "laptop").await;
    let mut b_phone = cluster.node("n2").connect(&bob, "phone").await;
    let mut b_tablet = cluster.node("n2").connect(&bob, "tablet").await;

    phone
        .send_message("c1", &bob, "from my phone")
        .await
        .unwrap();
    // The laptop shows it as alice's own message, with the id bob gets.
    let own = receive_messages(&mut laptop, 1).await;
    let (m_own, m_bob) = (&own[0].1, receive_messages(&mut b_phone, 1).await);
    assert_eq!(
        (m_own.from.as_str(), m_own.to.as_str()),
        (alice.as_str(), bob.as_str())
    );
    assert_eq!(m_own.from_device, "phone");
    assert_eq!(m_own.msg_id, m_bob[0].1.msg_id);
    assert_eq!(m_own.body, "from my phone");
    // The sending device gets it too (its inbox has no gaps), and bob's tablet gets bob's copy.
    let echo = receive_messages(&mut phone, 1).await;
    assert_eq!(echo[0].1.msg_id, m_own.msg_id);
    let t = receive_messages(&mut b_tablet, 1).await;
    assert_eq!(t[0].1.msg_id, m_own.msg_id);

    // Bob reads on his phone: his tablet is told, and alice gets one READ receipt.
    b_phone.read(m_bob[0].0).await.unwrap();
    let (f, _) = recv_until(&mut b_tablet, "read state", |f| {
        matches!(&f.frame, Some(server_frame::Frame::ReadState(_)))
    })
    .await;
    let Some(server_frame::Frame::ReadState(r)) = f.frame else {
        unreachable!()
    };
    assert_eq!((r.up_to_seq, r.device.as_str()), (m_bob[0].0, "phone"));
    // Reconnected later, the tablet learns it from its welcome.
    drop(b_tablet);
    let b_tablet = cluster.node("n2").connect(&bob, "tablet").await;
    assert_eq!(b_tablet.welcome.read_seq, m_bob[0].0);
}
