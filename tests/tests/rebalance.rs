//! Moves of the ring as the operator drives them: starting (one at a time), status, abort,
//! commit refused until every node is done. Real etcd, real nodes, real `chatctl`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_client::{Device, DeviceConfig, DeviceEvent, Stamped};
use chat_proto::v1::server_frame;
use chat_tests::*;

fn status(c: &TestCluster) -> serde_json::Value {
    let out = c.chatctl(&["rebalance", "status", "--json"]);
    serde_json::from_str(&out).expect("status is JSON")
}

/// Waits until every node reports `chat_ring_epoch` = `epoch`.
fn wait_epoch(c: &TestCluster, epoch: u64) {
    let want = format!("chat_ring_epoch {epoch}");
    wait_until(&format!("every node at epoch {epoch}"), WAIT, || {
        match c
            .nodes
            .iter()
            .find(|n| !metrics_contain(&n.admin_url, &want))
        {
            Some(n) => Err(format!("{} is not", n.id)),
            None => Ok(()),
        }
    })
    .unwrap();
}

/// Waits until no move is in flight and the current ring is `epoch`.
fn wait_committed(c: &TestCluster, epoch: u64, timeout: Duration) {
    wait_until(
        &format!("the move to epoch {epoch} to commit"),
        timeout,
        || {
            let s = status(c);
            if s["moving"].is_null() && s["current_epoch"] == epoch {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_starting_moves_at_once_one_is_refused() {
    let c = TestCluster::start(&[]);
    // Both start at the same moment, each for a different node.
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = ["n1", "n2"]
            .into_iter()
            .map(|n| {
                let c = &c;
                scope.spawn(move || c.try_chatctl(&["rebalance", "start", "--remove", n]))
            })
            .collect();
        runs.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one move starts: {results:?}");
    let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(refused.contains("in flight"), "{refused}");
    // The nodes carry the one move out by themselves: epoch 2, two members.
    wait_committed(&c, 2, Duration::from_secs(60));
    assert_eq!(c.ring().member_list().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keeps_the_old_ring_and_spends_the_epoch() {
    let mut c = TestCluster::start(&[]);
    // Adding a node that is not running is refused before anything is written.
    let out = c
        .try_chatctl(&["rebalance", "start", "--add", "n9"])
        .unwrap_err();
    assert!(out.contains("not registered"), "{out}");
    assert!(status(&c)["moving"].is_null());

    // n3 is down: the move to remove it cannot copy, so it stalls, visibly.
    c.node_mut("n3").kill9();
    c.try_chatctl(&["rebalance", "start", "--remove", "n3"])
        .unwrap();
    let s = status(&c);
    let share = s["moving"]["moved_share"].as_f64().unwrap();
    assert!(
        (0.2..0.45).contains(&share),
        "n3's third of the users moves: {share}"
    );
    assert_eq!(s["moving"]["nodes"]["n3"]["receives"], 0);
    assert!(s["moving"]["nodes"]["n3"]["gives"].as_u64().unwrap() > 0);
    // The live nodes report that they have seen it; n3 never copies, so a commit is refused.
    let s = wait_until("n1 and n2 to see the move", WAIT, || {
        let s = status(&c);
        let seen = |n: &str| s["moving"]["nodes"][n]["progress"]["seen"] == true;
        if seen("n1") && seen("n2") {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .unwrap();
    assert!(s["moving"]["nodes"]["n3"]["progress"].is_null(), "{s}");
    assert_eq!(s["moving"]["may_commit"], false);
    let out = c.try_chatctl(&["rebalance", "commit"]).unwrap_err();
    assert!(out.contains("may not commit"), "{out}");

    let out = c.try_chatctl(&["rebalance", "abort"]).unwrap();
    assert!(out.contains("epoch 2"), "{out}");
    assert!(status(&c)["moving"].is_null());
    let out = c.try_chatctl(&["rebalance", "abort"]).unwrap_err();
    assert!(out.contains("no move"), "{out}");
    // n3 comes back; every node holds the old members under the spent epoch and serves: a
    // message from a user on n3 reaches a user on n1.
    c.node_mut("n3").restart();
    c.node("n3").wait_ready();
    wait_epoch(&c, 2);
    let (a, b) = (
        c.users_on("n3", "a", 1).remove(0),
        c.users_on("n1", "b", 1).remove(0),
    );
    let mut ca = c.node("n3").connect(&a, "phone").await;
    let mut cb = c.node("n1").connect(&b, "phone").await;
    ca.send_message("m1", &b, "still here").await.unwrap();
    recv_until(&mut ca, "sent", |f| {
        matches!(f.frame, Some(server_frame::Frame::Sent(_)))
    })
    .await;
    let got = receive_messages(&mut cb, 1).await;
    assert_eq!(got[0].1.body, "still here");
    // The next move gets a new epoch.
    let out = c
        .try_chatctl(&["rebalance", "start", "--remove", "n2"])
        .unwrap();
    assert!(out.contains("epoch 3"), "{out}");
}

/// What one recipient saw: every Deliver of a message, in arrival order.
#[derive(Default, Debug)]
struct Seen {
    deliveries: Vec<(u64, String, String)>, // (seq, msg_id, body)
    reconnects: usize,
    homes: Vec<String>,
}

/// Waits for the ✓ of `cmid` and returns its msg id; panics if the node refuses it for good.
async fn sent_id(device: &mut Device, cmid: &str) -> String {
    loop {
        match device
            .next()
            .await
            .expect("the device runs until stopped")
            .event
        {
            DeviceEvent::Sent(s) if s.client_msg_id == cmid => return s.msg_id,
            DeviceEvent::SendError {
                client_msg_id,
                definitive: true,
                code,
                message,
            } if client_msg_id == cmid => panic!("{cmid} refused for good: {code} {message}"),
            _ => {}
        }
    }
}

/// Sends messages to `to`, one at a time, each until ✓, until `stop` is set (at most 20,000),
/// as a device through the router (which reconnects and re-sends when the session moves or the
/// node refuses). `count` follows the number acknowledged. Returns the msg ids in send order.
async fn send_steadily(
    router: String,
    user: String,
    to: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut device = Device::start(DeviceConfig::new(router, token(&user, "phone")));
    // About 200 messages a second per sender: steady load, not a flood.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ids = Vec::new();
    while ids.len() < 20_000 && !stop.load(Ordering::Acquire) {
        pace.tick().await;
        let k = ids.len();
        let cmid = k.to_string();
        device.send(cmid.as_str(), to.as_str(), format!("{user}:{k}"));
        let id = tokio::time::timeout_at(deadline, sent_id(&mut device, &cmid))
            .await
            .unwrap_or_else(|_| panic!("{user} stuck at {k}"));
        ids.push(id);
        count.store(ids.len(), Ordering::Release);
    }
    device.stop();
    ids
}

/// Receives as a device through the router until `stop` is set and nothing arrived for a
/// while; the device acknowledges everything and resumes after the last seq it processed.
async fn receive_steadily(router: String, user: String, stop: Arc<AtomicBool>) -> Seen {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut device = Device::start(DeviceConfig::new(router, token(&user, "phone")));
    let mut seen = Seen::default();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} receiver ran out of time"
        );
        match tokio::time::timeout(Duration::from_millis(1500), device.next()).await {
            Ok(Some(Stamped { event, .. })) => match event {
                DeviceEvent::Deliver {
                    deliver:
                        chat_proto::v1::Deliver {
                            seq,
                            entry: Some(chat_proto::v1::deliver::Entry::Message(m)),
                        },
                    ..
                } => seen.deliveries.push((seq, m.msg_id, m.body)),
                DeviceEvent::Connected { node, .. } => seen.homes.push(node),
                DeviceEvent::Closed { .. } => seen.reconnects += 1,
                _ => {}
            },
            Ok(None) => panic!("{user}'s device ended"),
            Err(_) => {
                if stop.load(Ordering::Acquire) {
                    device.stop();
                    return seen;
                }
            }
        }
    }
}

/// Runs 1:1 traffic between 12 pairs through the router while `start_move` starts a move, waits
/// for it to commit (to a ring of `members_after`), keeps the traffic going a little longer, and
/// checks that every acknowledged message arrived once, in order, and that moved users resumed
/// at their new home.
async fn move_under_load(
    c: &mut TestCluster,
    start_move: impl FnOnce(&mut TestCluster),
    members_after: &[&str],
) {
    let before = c.ring();
    let router = c.start_router();
    // Pairs whose users are spread over the three nodes.
    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| (format!("s{i}"), format!("r{i}")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (_, r) in &pairs {
        receivers.push(tokio::spawn(receive_steadily(
            router.ws_url(),
            r.clone(),
            stop.clone(),
        )));
    }
    let stop_sending = Arc::new(AtomicBool::new(false));
    let counts: Vec<_> = pairs
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let mut senders = Vec::new();
    for ((s, r), count) in pairs.iter().zip(&counts) {
        senders.push(tokio::spawn(send_steadily(
            router.ws_url(),
            s.clone(),
            r.clone(),
            stop_sending.clone(),
            count.clone(),
        )));
    }
    // Every sender is under way before the move starts, and still sending after it ends.
    let wait_sent = async |at_least: Vec<usize>| {
        wait_until_async(
            "every sender to go on",
            Duration::from_secs(60),
            async || {
                counts
                    .iter()
                    .zip(&at_least)
                    .all(|(c, n)| c.load(Ordering::Acquire) >= *n)
            },
        )
        .await
        .unwrap();
    };
    wait_sent(vec![10; pairs.len()]).await;
    start_move(c);
    // The move commits by itself once every node has seen it and copied.
    wait_committed(c, before.epoch() + 1, Duration::from_secs(60));
    let after = c.ring();
    let mut members: Vec<String> = after.member_list().into_iter().map(|m| m.id).collect();
    members.sort();
    assert_eq!(members, members_after, "the ring after the move");
    let more: Vec<usize> = counts
        .iter()
        .map(|c| c.load(Ordering::Acquire) + 20)
        .collect();
    wait_sent(more).await;
    stop_sending.store(true, Ordering::Release);
    let mut sent = Vec::new();
    for t in senders {
        sent.push(t.await.expect("sender"));
    }
    stop.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for t in receivers {
        seen.push(t.await.expect("receiver"));
    }
    let mut moved = 0;
    for (i, ((s, r), seen)) in pairs.iter().zip(&seen).enumerate() {
        // Every acknowledged message arrived, in send order, each stored once (one seq).
        let mut by_id: std::collections::BTreeMap<&str, u64> = Default::default();
        for (seq, id, _) in &seen.deliveries {
            if let Some(prev) = by_id.insert(id, *seq) {
                assert_eq!(prev, *seq, "{r}: message {id} stored twice");
            }
        }
        let mut firsts: Vec<&(u64, String, String)> = Vec::new();
        let mut last = 0;
        for d in &seen.deliveries {
            if d.0 > last {
                firsts.push(d);
                last = d.0;
            }
        }
        let got: Vec<&str> = firsts.iter().map(|d| d.1.as_str()).collect();
        let want: Vec<&str> = sent[i].iter().map(String::as_str).collect();
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            let missing = want.iter().filter(|w| !got.contains(w)).count();
            let extra = got.iter().filter(|g| !want.contains(g)).count();
            panic!(
                "{s} ({} -> {}) -> {r} ({} -> {}): delivered {} (by seq) vs {} acknowledged; first difference at {at} \
                 (got {:?}, want {:?}); {missing} missing, {extra} never acknowledged; \
                 deliveries around it: {:?}\n{}",
                before.owner(s),
                after.owner(s),
                before.owner(r),
                after.owner(r),
                got.len(),
                want.len(),
                got.get(at),
                want.get(at),
                &seen.deliveries[at.saturating_sub(2)..(at + 3).min(seen.deliveries.len())],
                c.logs()
            );
        }
        // No device is sent a message twice (it says which seq it processed last when it
        // reconnects, as `Hello.resume_after`).
        let resent = seen.deliveries.len() - firsts.len();
        assert_eq!(
            resent, 0,
            "{r}: {resent} deliveries sent twice: {:?}",
            seen.deliveries
        );
        if before.owner(r) != after.owner(r) {
            moved += 1;
            assert_eq!(
                seen.homes.last().map(String::as_str),
                Some(after.owner(r)),
                "{r} resumed at its new home"
            );
        }
    }
    assert!(moved > 0, "some recipients moved");
    // The protocol ran as designed: the new owners were sealed, the old ones copied and then
    // dropped what they gave away.
    let t = chat_ring::transition::Transition::new(before.clone(), after.clone()).unwrap();
    let nodes: Vec<String> = t.nodes().into_iter().map(String::from).collect();
    for n in &nodes {
        let (gives, gets) = (t.copies_of(n).count(), t.receives(n).count());
        wait_until(&format!("{n} to finish its share"), WAIT, || {
            let log = c.node(n).log_text();
            (gives == 0 || log.contains("copy done") && log.contains("dropped moved ranges"))
                && (gets == 0 || log.contains("every old owner sealed"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    // Each node recorded its finished share in etcd, so the next move may start.
    wait_until("every node to record its finished share", WAIT, || {
        let s = status(c);
        let done =
            s["moving"].is_null() && s["unfinished"].as_array().is_some_and(|a| a.is_empty());
        if done {
            Ok(())
        } else {
            Err(s)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // What each node did, for the test output.
    for n in &c.nodes {
        for line in n
            .log_text()
            .lines()
            .filter(|l| l.contains("move") && !l.contains("user moved") && !l.contains("DEBUG"))
        {
            eprintln!(
                "{}: {}",
                n.id,
                line.get(line.len().saturating_sub(140)..).unwrap_or(line)
            );
        }
    }
    let total: usize = sent.iter().map(Vec::len).sum();
    eprintln!("{total} messages sent and delivered across the move");
    // The old owners dropped what they gave away: n4's users' keys are gone from them.
    eprintln!("{moved} of {} recipients moved", pairs.len());
}

const FOUR: &[&str] = &["n1", "n2", "n3", "n4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_under_load_loses_and_duplicates_nothing() {
    let mut c = TestCluster::start(&[]);
    // Traffic is flowing: bring up n4 and move a quarter of the users to it.
    move_under_load(&mut c, add_n4, FOUR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_under_load_loses_nothing_and_leaves_it_empty() {
    let mut c = TestCluster::start(&[]);
    move_under_load(
        &mut c,
        |c| {
            let out = c.chatctl(&["rebalance", "start", "--remove", "n3"]);
            assert!(out.contains("epoch 2"), "{out}");
        },
        &["n1", "n2"],
    )
    .await;
    // n3 forwards what its outbox still holds, then stops; it holds no user data afterwards.
    let admin = c.node("n3").admin_url.clone();
    wait_until("n3's outbox to empty", WAIT, || {
        metrics_contain(&admin, "chat_outbox_depth 0")
    })
    .unwrap();
    let n3 = c.node_mut("n3");
    assert!(n3.terminate(), "n3 stops cleanly");
    let store = chat_node::store::Store::open(
        &n3.data_dir,
        &chat_node::store::StoreOptions {
            retention: Duration::from_secs(3600),
            block_cache_mib: 8,
            min_free_bytes: 0,
        },
    )
    .unwrap();
    for cf in chat_node::store::Cf::ALL {
        assert_eq!(
            store.count_keys(cf).unwrap(),
            0,
            "n3 still holds {cf:?} keys"
        );
    }
}

/// Starts n4 and the move that adds it.
fn add_n4(c: &mut TestCluster) {
    c.start_extra_node("n4");
    let out = c.chatctl(&["rebalance", "start", "--add", "n4"]);
    assert!(out.contains("epoch 2"), "{out}");
}

/// Waits until the move in flight has been seen by `node`.
fn wait_seen(c: &TestCluster, node: &str) {
    wait_until(&format!("{node} to see the move"), WAIT, || {
        let s = status(c);
        if s["moving"]["nodes"][node]["progress"]["seen"] == true || s["moving"].is_null() {
            Ok(())
        } else {
            Err(s)
        }
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_node_killed_during_the_move_stalls_it_until_it_returns() {
    let mut c = TestCluster::start(&[]);
    move_under_load(
        &mut c,
        |c| {
            add_n4(c);
            wait_seen(c, "n4");
            c.node_mut("n4").kill9();
            // While n4 is down the old owners cannot copy to it: the move does not commit.
            let s = status(c);
            assert!(
                s["moving"]["may_commit"] != true || s["moving"].is_null(),
                "{s}"
            );
            c.node_mut("n4").restart();
            c.node("n4").wait_ready();
        },
        FOUR,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_owner_killed_during_the_move_finishes_it_after_a_restart() {
    let mut c = TestCluster::start(&[]);
    move_under_load(
        &mut c,
        |c| {
            add_n4(c);
            wait_seen(c, "n1");
            // n1 gives segments to n4; it dies mid-move and comes back with its data.
            c.node_mut("n1").kill9();
            c.node_mut("n1").restart();
            c.node("n1").wait_ready();
        },
        FOUR,
    )
    .await;
}

/// `chatctl rebalance wait` (and so `ops/add-node.sh`) must ride out an etcd outage: the move
/// goes on without it, and a script that gave up would report a failure for a move that commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_wait_rides_out_an_etcd_outage() {
    let mut c = TestCluster::start_with(
        &[("n1", 1), ("n2", 1)],
        chat_ring::DEFAULT_VNODES_PER_WEIGHT,
        &[],
    );
    c.start_extra_node("n3");
    // Paused, n3 stays registered (until its lease runs out) but cannot take part: the move
    // cannot commit before etcd goes away.
    let n3 = c.node("n3").pid();
    signal(n3, "STOP");
    c.chatctl(&["rebalance", "start", "--add", "n3"]);
    let out_path = c.dir.path().join("wait.out");
    let err_path = c.dir.path().join("wait.err");
    let mut wait = c
        .chatctl_command(&["rebalance", "wait", "--timeout-secs", "120"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("chatctl rebalance wait");
    c.etcd.stop();
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    wait_until("wait to notice the outage", Duration::from_secs(60), || {
        assert!(
            wait.try_wait().unwrap().is_none(),
            "wait exited during the outage: {}",
            stderr()
        );
        stderr().contains("retrying until the deadline")
    })
    .unwrap();
    c.etcd.restart();
    signal(n3, "CONT");
    let exit = wait_until("wait to end", Duration::from_secs(120), || {
        wait.try_wait().unwrap()
    })
    .unwrap_or_else(|e| {
        let _ = wait.kill();
        panic!("{e}; logs:\n{}", c.logs())
    });
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(exit.success(), "wait failed:\n{out}{err}");
    assert!(err.contains("etcd answers again"), "{err}");
    // Once etcd and n3 are back the move may end within wait's retry interval, before wait has
    // read it once: then it finds no move in flight. Either way the move committed.
    assert!(
        out.contains("committed") || out.contains("no move in flight (ring epoch 2)"),
        "{out}{err}"
    );
    let s = status(&c);
    assert!(s["moving"].is_null() && s["current_epoch"] == 2, "{s}");
    let ring = c.chatctl(&["ring", "show"]);
    assert!(ring.contains("n3"), "n3 is a member after the move: {ring}");
}

/// Nodes follow one move at a time: once a move commits, the next may start only after every
/// node with a share in it has finished (old owners sealed and dropped, new owners got every
/// seal) and said so in etcd. Real etcd; the nodes' part is played by the library calls they use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_move_waits_until_every_node_finished_the_last_one() {
    use chat_cluster::rebalance::{self, Change, Progress};
    use chat_cluster::ClusterError;
    let etcd = TestEtcd::start();
    let cfg = etcd.config("/gate/");
    let mut client = chat_cluster::connect(&cfg).await.unwrap();
    let p = cfg.prefix.as_str();
    let first =
        chat_ring::Ring::equal(1, &["n1", "n2", "n3"], chat_ring::DEFAULT_VNODES_PER_WEIGHT)
            .unwrap();
    let doc = chat_cluster::RingDoc {
        current: chat_cluster::RingVersion::of(&first),
        next: None,
        previous: None,
    };
    chat_cluster::init_ring(&mut client, p, &doc).await.unwrap();
    let remove = |n: &str| Change::Remove { node: n.into() };
    rebalance::begin(&mut client, p, &remove("n3"))
        .await
        .unwrap();
    for n in ["n1", "n2", "n3"] {
        let progress = Progress {
            seen: true,
            copied: true,
            ..Progress::default()
        };
        assert!(rebalance::report(&mut client, p, 2, n, &progress)
            .await
            .unwrap());
    }
    assert!(rebalance::commit(&mut client, p).await.unwrap().is_some());
    // n3 gave its users to n1 and n2; none of them has finished yet.
    let next = rebalance::begin(&mut client, p, &remove("n2")).await;
    match next {
        Err(ClusterError::PreviousMoveUnfinished { epoch: 2, nodes }) => {
            assert_eq!(nodes, ["n1", "n2", "n3"])
        }
        other => panic!("the next move started: {other:?}"),
    }
    let etcd_args = ["--etcd", etcd.url.as_str(), "--prefix", p];
    let status = |c: &[&str]| {
        let args: Vec<&str> = c.iter().chain(etcd_args.iter()).copied().collect();
        chatctl(&args)
    };
    let s: serde_json::Value =
        serde_json::from_str(&status(&["rebalance", "status", "--json"])).unwrap();
    assert_eq!(s["unfinished"], serde_json::json!(["n1", "n2", "n3"]));
    rebalance::report_finished(&mut client, p, 2, "n1")
        .await
        .unwrap();
    rebalance::report_finished(&mut client, p, 2, "n2")
        .await
        .unwrap();
    let next = rebalance::begin(&mut client, p, &remove("n2")).await;
    assert!(
        matches!(&next, Err(ClusterError::PreviousMoveUnfinished { nodes, .. }) if nodes == &["n3"]),
        "{next:?}"
    );
    assert!(
        status(&["rebalance", "status"]).contains("still finishing their share (seal, drop): n3")
    );
    // A finished report for an epoch that is not the last committed move changes nothing.
    rebalance::report_finished(&mut client, p, 1, "n3")
        .await
        .unwrap();
    assert!(rebalance::begin(&mut client, p, &remove("n2"))
        .await
        .is_err());
    rebalance::report_finished(&mut client, p, 2, "n3")
        .await
        .unwrap();
    let started = rebalance::begin(&mut client, p, &remove("n2"))
        .await
        .unwrap();
    assert_eq!(started.next.unwrap().ring.epoch, 3);
    // An abort leaves nothing to finish: the move after it starts at once.
    rebalance::abort(&mut client, p).await.unwrap();
    let again = rebalance::begin(&mut client, p, &remove("n2"))
        .await
        .unwrap();
    assert_eq!(again.next.unwrap().ring.epoch, 4);
}
