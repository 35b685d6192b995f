//! `chat_client::Device` against real nodes: it rides out its node being killed and restarted,
//! sends a message again with the same client_msg_id after a lost ✓ and gets the same msg_id,
//! and its deliveries have no gap and no duplicate.

use chat_client::{CloseReason, Device, DeviceConfig, DeviceEvent};
use chat_proto::v1::deliver;
use chat_tests::*;

/// Takes the device's events until `pred` matches one; returns every event taken, that one last.
async fn until(
    device: &mut Device,
    what: &str,
    mut pred: impl FnMut(&DeviceEvent) -> bool,
) -> Vec<DeviceEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout_at(deadline, device.next())
            .await
            .unwrap_or_else(|_| panic!("waiting for {what}; events so far: {seen:#?}"))
            .unwrap_or_else(|| panic!("the device ended while waiting for {what}"));
        let done = pred(&e.event);
        seen.push(e.event);
        if done {
            return seen;
        }
    }
}

/// Waits for the ✓ of every one of `cmids` (in any order); their msg ids in the order asked.
async fn sent_ids(device: &mut Device, cmids: &[String]) -> Vec<String> {
    let mut ids: Vec<Option<String>> = vec![None; cmids.len()];
    until(device, "every ✓", |e| {
        if let DeviceEvent::Sent(s) = e {
            if let Some(i) = cmids.iter().position(|c| *c == s.client_msg_id) {
                ids[i] = Some(s.msg_id.clone());
            }
        }
        ids.iter().all(Option::is_some)
    })
    .await;
    ids.into_iter().flatten().collect()
}

fn connected(e: &DeviceEvent) -> bool {
    matches!(e, DeviceEvent::Connected { .. })
}

fn send_all(device: &Device, to: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            let cmid = format!("c{i}");
            device.send(cmid.as_str(), to, format!("body {i}"));
            cmid
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_rides_out_its_node_killed_and_restarted_without_gap_or_duplicate() {
    let mut cluster = TestCluster::start_with(
        &[("n1", 1), ("n2", 1)],
        chat_ring::DEFAULT_VNODES_PER_WEIGHT,
        &[],
    );
    let router = cluster.start_router();
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n2", "b", 1).remove(0);
    let mut alice = Device::start(DeviceConfig::new(router.ws_url(), token(&a, "phone")));
    let mut bob = Device::start(DeviceConfig::new(router.ws_url(), token(&b, "phone")));
    until(&mut alice, "alice connected", connected).await;
    until(&mut bob, "bob connected", connected).await;

    let mut cmids = send_all(&alice, &b, 0..10);
    let mut ids = sent_ids(&mut alice, &cmids).await;

    // Alice's node stops taking frames, then dies: ten messages were written to it and never
    // answered. Her device writes them again, same ids, once n1 is back.
    signal(cluster.node("n1").pid(), "STOP");
    let unanswered = send_all(&alice, &b, 10..20);
    until(
        &mut alice,
        "the last of them written",
        |e| matches!(e, DeviceEvent::SendAttempt { client_msg_id, .. } if client_msg_id == "c19"),
    )
    .await;
    cluster.node_mut("n1").kill9();
    cluster.node_mut("n1").restart();
    cluster.node("n1").wait_ready();
    let events = until(&mut alice, "c10 written again", |e| {
        matches!(e, DeviceEvent::SendAttempt { client_msg_id, attempt, .. } if client_msg_id == "c10" && *attempt == 2)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DeviceEvent::Closed { .. }))
            && events.iter().any(connected),
        "a new connection: {events:#?}"
    );
    let again = sent_ids(&mut alice, &unanswered).await;
    cmids.extend(unanswered);
    ids.extend(again);

    // Bob's node dies; Alice's ✓s keep coming (her node keeps them in its outbox), and Bob's
    // device gets them once n2 is back.
    cluster.node_mut("n2").kill9();
    let later = send_all(&alice, &b, 20..30);
    ids.extend(sent_ids(&mut alice, &later).await);
    cmids.extend(later);
    cluster.node_mut("n2").restart();
    cluster.node("n2").wait_ready();

    let mut got: Vec<(u64, String, String, bool)> = Vec::new();
    until(&mut bob, "all 30 messages", |e| {
        if let DeviceEvent::Deliver { deliver, repeat } = e {
            if let Some(deliver::Entry::Message(m)) = &deliver.entry {
                got.push((
                    deliver.seq,
                    m.msg_id.clone(),
                    m.client_msg_id.clone(),
                    *repeat,
                ));
            }
        }
        got.iter().filter(|g| !g.3).count() == 30
    })
    .await;
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>(), "no gap, no repeat");
    let got_ids: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(got_ids, ids, "each ✓'d message once, in send order");
    let got_cmids: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(got_cmids, cmids);
    alice.stop();
    bob.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_again_after_a_lost_answer_gets_the_same_msg_id() {
    let node = TestNode::start(&[]);
    let proxy = TestProxy::start(&node.url).await;
    let mut alice = Device::start(DeviceConfig::new(proxy.ws_url(), token("alice", "phone")));
    until(&mut alice, "alice connected", connected).await;
    let mut bob = node.connect("bob", "phone").await;

    // The node stores the message and answers, but the answer is lost on the way.
    proxy.stall();
    alice.send("c1", "bob", "hello");
    let got = receive_messages(&mut bob, 1).await;
    let stored = got[0].1.msg_id.clone();
    proxy.cut();
    let events = until(&mut alice, "the ✓ of c1", |e| {
        matches!(e, DeviceEvent::Sent(_))
    })
    .await;
    let attempts: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::SendAttempt { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2], "written once per connection: {events:#?}");
    let Some(DeviceEvent::Sent(s)) = events.last() else {
        unreachable!()
    };
    assert_eq!(s.client_msg_id, "c1");
    assert_eq!(s.msg_id, stored, "the same message, not a new one");
    let rest = until_pong(&mut bob, 1).await;
    assert!(
        rest.iter().all(|f| as_message(f).is_none()),
        "bob got it once: {rest:?}"
    );

    // A stop closes the connection and ends the events.
    alice.stop();
    let events = until(&mut alice, "closed", |e| {
        matches!(e, DeviceEvent::Closed { .. })
    })
    .await;
    assert!(matches!(
        events.last(),
        Some(DeviceEvent::Closed {
            reason: CloseReason::Stopped
        })
    ));
    assert!(alice.next().await.is_none());
}
