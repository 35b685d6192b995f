//! A real cluster: etcd on free ports, three node processes, QUIC between them, a router.

use chat_client::Client;
use chat_proto::v1::{deliver, server_frame, ErrorCode, ReceiptKind};
use chat_tests::*;

async fn sent_id(c: &mut Client, cmid: &str) -> String {
    let (f, _) = recv_until(c, "sent", |f| {
        matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid)
            || error_code(f).is_some()
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Sent(s)) => s.msg_id,
        other => panic!("expected Sent for {cmid}, got {other:?}"),
    }
}

async fn receipt(c: &mut Client, kind: ReceiptKind, msg_id: &str) {
    recv_until(c, "receipt", |f| {
        as_receipt(f)
            .is_some_and(|(_, r)| r.kind == kind as i32 && r.msg_ids.iter().any(|m| m == msg_id))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_messages_carry_sent_delivered_and_read() {
    let cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    // One user on each node; every pair talks across nodes.
    let users: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| cluster.users_on(n, "u", 1).remove(0))
        .collect();
    let ring = cluster.ring();
    let mut clients = Vec::new();
    for u in &users {
        let c = Client::connect(&router.ws_url(), &token(u, "phone"))
            .await
            .unwrap();
        assert_eq!(c.welcome.node, ring.owner(u), "router sent {u} home");
        clients.push(c);
    }
    for i in 0..3 {
        let j = (i + 1) % 3;
        let (from, to) = (users[i].clone(), users[j].clone());
        let cmid = format!("m{i}");
        clients[i]
            .send_message(&cmid, &to, &format!("hi from {from}"))
            .await
            .unwrap();
        let msg_id = sent_id(&mut clients[i], &cmid).await;
        // The recipient on another node gets it, acknowledges and reads it.
        let got = receive_messages(&mut clients[j], 1).await;
        assert_eq!(got[0].1.msg_id, msg_id);
        assert_eq!(got[0].1.from, from);
        clients[j].read(got[0].0).await.unwrap();
        receipt(&mut clients[i], ReceiptKind::Delivered, &msg_id).await;
        receipt(&mut clients[i], ReceiptKind::Read, &msg_id).await;
    }
    // Metrics show the traffic that crossed nodes.
    let (st, body) = http_get(&format!("{}/metrics", cluster.node("n1").admin_url)).unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("chat_forwarded_entries_total"), "{body}");
    assert!(body.contains("chat_etcd_up 1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_keep_per_sender_order_across_nodes() {
    let cluster = TestCluster::start(&[]);
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n2", "b", 1).remove(0);
    let mut alice = cluster.node("n1").connect(&a, "phone").await;
    let mut bob = cluster.node("n2").connect(&b, "phone").await;
    const N: usize = 300;
    for i in 0..N {
        alice
            .send_message(&format!("c{i}"), &b, &format!("{i}"))
            .await
            .unwrap();
    }
    let got = receive_messages(&mut bob, N).await;
    let bodies: Vec<usize> = got.iter().map(|(_, m)| m.body.parse().unwrap()).collect();
    assert_eq!(bodies, (0..N).collect::<Vec<_>>(), "send order kept");
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one seq each, no gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_node_redirects_and_router_answers_as_the_ring_says() {
    let cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    let user = cluster.users_on("n2", "r", 1).remove(0);
    // Straight to n1: redirected to n2 and served there.
    let c = cluster.node("n1").connect(&user, "phone").await;
    assert_eq!(c.welcome.node, "n2");
    assert_eq!(c.url.split("/v1/").next().unwrap(), cluster.node("n2").url);
    let ring = cluster.ring();
    for i in 0..200 {
        let u = format!("someone-{i}");
        let owner = ring.owner(&u);
        let (st, body) = http_get(&format!("{}/v1/route/{u}", router.url)).unwrap();
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node"], owner, "{u}");
        assert_eq!(v["url"], cluster.node(owner).url.as_str());
        assert_eq!(v["epoch"], 1);
    }
    let (st, loc) = http_location(&format!("{}/v1/connect/{user}", router.url)).unwrap();
    assert_eq!(st, 307);
    assert_eq!(loc.as_deref(), Some(cluster.node("n2").url.as_str()));
    let (st, body) = http_get(&format!("{}/v1/route/bad%20id", router.url)).unwrap();
    assert_eq!(st, 400, "{body}");
    // The router and the nodes refuse the same ids: 64 bytes is the longest both accept.
    let longest = "u".repeat(64);
    let (st, body) = http_get(&format!("{}/v1/route/{longest}", router.url)).unwrap();
    assert_eq!(st, 200, "{body}");
    let too_long = "u".repeat(65);
    let (st, body) = http_get(&format!("{}/v1/route/{too_long}", router.url)).unwrap();
    assert_eq!(st, 400, "{body}");
    let (st, _) = http_location(&format!("{}/v1/connect/{too_long}", router.url)).unwrap();
    assert_eq!(st, 400);
    let refused = Client::connect(
        &cluster.node(ring.owner(&too_long)).url,
        &token(&too_long, "phone"),
    )
    .await;
    assert!(refused.is_err(), "a node accepted a 65-byte user id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_golden_vectors_agree_between_nodes_router_and_chatctl() {
    let members = chat_ring::golden::MEMBERS;
    let cluster = TestCluster::start_with(&members, chat_ring::golden::VNODES_PER_WEIGHT, &[]);
    let router = cluster.start_router();
    let mut args = vec!["ring", "show", "--json"];
    for (u, _) in chat_ring::golden::PLACEMENT {
        args.push("--user");
        args.push(u);
    }
    let out: serde_json::Value = serde_json::from_str(&cluster.chatctl(&args)).unwrap();
    for (user, owner) in chat_ring::golden::PLACEMENT {
        assert_eq!(out["owners"][user], *owner, "chatctl: {user:?}");
        // The router and the nodes take only valid user ids.
        if user.is_empty() || !user.is_ascii() {
            continue;
        }
        let (st, body) = http_get(&format!(
            "{}/v1/route/{}",
            router.url,
            chat_client::path_escape(user)
        ))
        .unwrap();
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["node"], *owner, "router: {user:?}");
        let c = cluster.node("node-a").connect(user, "d").await;
        assert_eq!(c.welcome.node, *owner, "node: {user:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_node_down_then_back_gets_the_message() {
    let mut cluster = TestCluster::start(&[]);
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n2", "b", 1).remove(0);
    let mut alice = cluster.node("n1").connect(&a, "phone").await;
    // b has a device with a cursor before n2 goes away.
    drop(cluster.node("n2").connect(&b, "phone").await);
    assert!(cluster.node_mut("n2").terminate(), "n2 drains and exits 0");
    // A graceful stop deregisters at once (not after the lease TTL).
    let mut etcd = chat_cluster::connect(&cluster.etcd.config(&cluster.prefix))
        .await
        .unwrap();
    let ids: Vec<String> = chat_cluster::list_nodes(&mut etcd, &cluster.prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["n1", "n3"]);
    // ✓ comes at once: the message is in n1's outbox.
    for i in 0..5 {
        alice
            .send_message(&format!("c{i}"), &b, &format!("{i}"))
            .await
            .unwrap();
        sent_id(&mut alice, &format!("c{i}")).await;
    }
    cluster.node_mut("n2").restart();
    cluster.node("n2").wait_ready();
    let mut bob = cluster.node("n2").connect(&b, "phone").await;
    let got = receive_messages(&mut bob, 5).await;
    let bodies: Vec<&str> = got.iter().map(|(_, m)| m.body.as_str()).collect();
    assert_eq!(bodies, ["0", "1", "2", "3", "4"]);
    for (_, m) in &got {
        receipt(&mut alice, ReceiptKind::Delivered, &m.msg_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_recipient_node_past_give_up_time_reports_failed() {
    let mut cluster = TestCluster::start(&[("CHAT_NODE_FORWARD__GIVE_UP_MS", "1500")]);
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n3", "b", 1).remove(0);
    let mut alice = cluster.node("n1").connect(&a, "phone").await;
    assert!(cluster.node_mut("n3").terminate());
    alice
        .send_message("lost-1", &b, "anyone there?")
        .await
        .unwrap();
    let msg_id = sent_id(&mut alice, "lost-1").await;
    let (f, _) = recv_until(
        &mut alice,
        "failed",
        |f| matches!(as_deliver(f), Some(d) if matches!(&d.entry, Some(deliver::Entry::Failed(_)))),
    )
    .await;
    let Some(deliver::Entry::Failed(failed)) = as_deliver(&f).unwrap().entry.clone() else {
        unreachable!()
    };
    assert_eq!(failed.msg_id, msg_id);
    assert_eq!(failed.client_msg_id, "lost-1");
    assert_eq!(failed.to, b);
    // Given up means gone: when n3 is back, b does not get it.
    cluster.node_mut("n3").restart();
    cluster.node("n3").wait_ready();
    alice.send_message("after", &b, "now?").await.unwrap();
    sent_id(&mut alice, "after").await;
    let mut bob = cluster.node("n3").connect(&b, "phone").await;
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!(got[0].1.body, "now?");
    let rest = until_pong(&mut bob, 7).await;
    assert!(rest.iter().all(|f| as_message(f).is_none()), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_nodes_keep_serving_and_register_again() {
    let mut cluster = TestCluster::start(&[]);
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n3", "b", 1).remove(0);
    cluster.etcd.stop();
    // Nodes notice (readyz stays up: they have a ring; etcd_up goes to 0).
    let n1 = cluster.node("n1").admin_url.clone();
    wait_until("n1 to notice etcd is gone", WAIT, || {
        metrics_contain(&n1, "chat_etcd_up 0")
    })
    .unwrap();
    // With the last ring: redirects, cross-node messages and receipts all work.
    let mut alice = cluster.node("n3").connect(&a, "phone").await;
    assert_eq!(alice.welcome.node, "n1");
    let mut bob = cluster.node("n3").connect(&b, "phone").await;
    alice
        .send_message("x", &b, "during the outage")
        .await
        .unwrap();
    let msg_id = sent_id(&mut alice, "x").await;
    let got = receive_messages(&mut bob, 1).await;
    assert_eq!(got[0].1.msg_id, msg_id);
    receipt(&mut alice, ReceiptKind::Delivered, &msg_id).await;

    // etcd returns with the registrations gone (their leases revoked, as after a long outage).
    cluster.etcd.restart();
    let mut c = chat_cluster::connect(&cluster.etcd.config(&cluster.prefix))
        .await
        .unwrap();
    let leases = c.lease_client().leases().await.unwrap();
    for l in leases.leases() {
        // A lease may expire between the listing and the revoke; either way it is gone.
        let _ = c.lease_revoke(l.id()).await;
    }
    wait_until_async("the nodes to register again", WAIT, async || {
        let nodes = chat_cluster::list_nodes(&mut c, &cluster.prefix)
            .await
            .unwrap();
        if nodes.len() == 3 {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_clients_until_the_ring_exists() {
    let etcd = TestEtcd::start();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let c = certs.display().to_string();
    chatctl(&["certs", "init", "--dir", &c]);
    chatctl(&["certs", "issue", "n1", "--dir", &c]);
    let node = TestNode::start_member("n1", &etcd.url, "/x/", &certs, dir.path(), &[]);
    let (st, body) = http_get(&format!("{}/readyz", node.admin_url)).unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("no ring"), "{body}");
    let (st, _) = http_get(&format!("{}/healthz", node.admin_url)).unwrap();
    assert_eq!(st, 200, "alive, only not ready");
    match Client::connect(&node.url, &token("u", "d")).await {
        Err(chat_client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::Unavailable)
        }
        other => panic!("expected UNAVAILABLE, got {:?}", other.map(|c| c.welcome)),
    }
    chatctl(&["cluster", "init", "--etcd", &etcd.url, "--prefix", "/x/"]);
    node.wait_ready();
    let c = Client::connect(&node.url, &token("u", "d")).await.unwrap();
    assert_eq!(c.welcome.node, "n1");
    // A second init is refused: the ring is changed only by compare-and-swap.
    let out =
        try_chatctl(&["cluster", "init", "--etcd", &etcd.url, "--prefix", "/x/"]).unwrap_err();
    assert!(out.contains("already exists"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_crash_of_the_senders_node() {
    let mut cluster = TestCluster::start(&[]);
    let a = cluster.users_on("n1", "a", 1).remove(0);
    let b = cluster.users_on("n2", "b", 1).remove(0);
    assert!(cluster.node_mut("n2").terminate());
    let mut alice = cluster.node("n1").connect(&a, "phone").await;
    for i in 0..20 {
        alice
            .send_message(&format!("c{i}"), &b, &format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..20 {
        sent_id(&mut alice, &format!("c{i}")).await;
    }
    drop(alice);
    // Every ✓'d message is only in n1's outbox now; n1 dies without a chance to flush.
    cluster.node_mut("n1").kill9();
    cluster.node_mut("n1").restart();
    cluster.node_mut("n2").restart();
    cluster.node("n1").wait_ready();
    cluster.node("n2").wait_ready();
    let mut bob = cluster.node("n2").connect(&b, "phone").await;
    let got = receive_messages(&mut bob, 20).await;
    let bodies: Vec<usize> = got.iter().map(|(_, m)| m.body.parse().unwrap()).collect();
    assert_eq!(
        bodies,
        (0..20).collect::<Vec<_>>(),
        "all of them, once, in order"
    );
    let rest = until_pong(&mut bob, 1).await;
    assert!(
        rest.iter().all(|f| as_message(f).is_none()),
        "no duplicates: {rest:?}"
    );
}
