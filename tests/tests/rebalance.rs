//! Moves of the ring as the operator drives them: starting (one at a time), status, abort,
//! commit refused until every node is done. Real etcd, real nodes, real `chatctl`.

use std::process::Command;
use std::time::{Duration, Instant};

use chat_proto::v1::server_frame;
use chat_tests::*;

/// Runs `chatctl` and returns whether it succeeded, and its stdout + stderr.
fn chatctl_try(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("chatctl"))
        .args(args)
        .output()
        .expect("run chatctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn status(c: &TestCluster) -> serde_json::Value {
    let out = chatctl(&[
        "rebalance",
        "status",
        "--json",
        "--etcd",
        &c.etcd.url,
        "--prefix",
        &c.prefix,
    ]);
    serde_json::from_str(&out).expect("status is JSON")
}

/// Waits until every node reports `chat_ring_epoch` = `epoch`.
fn wait_epoch(c: &TestCluster, epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("chat_ring_epoch {epoch}");
    for n in &c.nodes {
        loop {
            let body = http_get(&format!("{}/metrics", n.admin_url)).map(|(_, b)| b);
            if body.as_deref().is_some_and(|b| b.contains(&want)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached epoch {epoch}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_starting_moves_at_once_one_is_refused() {
    let c = TestCluster::start(&[]);
    let (etcd, prefix) = (c.etcd.url.clone(), c.prefix.clone());
    // Both start at the same moment, each for a different node.
    let runs: Vec<_> = ["n1", "n2"]
        .into_iter()
        .map(|n| {
            let (etcd, prefix) = (etcd.clone(), prefix.clone());
            std::thread::spawn(move || {
                chatctl_try(&[
                    "rebalance",
                    "start",
                    "--remove",
                    n,
                    "--etcd",
                    &etcd,
                    "--prefix",
                    &prefix,
                ])
            })
        })
        .collect();
    let results: Vec<(bool, String)> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<&(bool, String)> = results.iter().filter(|r| r.0).collect();
    assert_eq!(ok.len(), 1, "exactly one move starts: {results:?}");
    let refused = results.iter().find(|r| !r.0).unwrap();
    assert!(refused.1.contains("in flight"), "{}", refused.1);
    // The nodes carry the one move out by themselves: epoch 2, two members.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&c);
        if s["moving"].is_null() && s["current_epoch"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the move never committed: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ring = chatctl(&[
        "ring", "show", "--json", "--etcd", &etcd, "--prefix", &prefix,
    ]);
    let ring: serde_json::Value = serde_json::from_str(&ring).unwrap();
    assert_eq!(
        ring["ring"]["current"]["members"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keeps_the_old_ring_and_spends_the_epoch() {
    let mut c = TestCluster::start(&[]);
    let (etcd, prefix) = (c.etcd.url.clone(), c.prefix.clone());
    let args = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--etcd".into(),
            etcd.clone(),
            "--prefix".into(),
            prefix.clone(),
        ]);
        v
    };
    let run = |cmd: &[&str]| {
        let a = args(cmd);
        chatctl_try(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Adding a node that is not running is refused before anything is written.
    let (ok, out) = run(&["rebalance", "start", "--add", "n9"]);
    assert!(!ok && out.contains("not registered"), "{out}");
    assert!(status(&c)["moving"].is_null());

    // n3 is down: the move to remove it cannot copy, so it stalls, visibly.
    c.node_mut("n3").kill9();
    let (ok, out) = run(&["rebalance", "start", "--remove", "n3"]);
    assert!(ok, "{out}");
    let s = status(&c);
    let share = s["moving"]["moved_share"].as_f64().unwrap();
    assert!(
        (0.2..0.45).contains(&share),
        "n3's third of the users moves: {share}"
    );
    assert_eq!(s["moving"]["nodes"]["n3"]["receives"], 0);
    assert!(s["moving"]["nodes"]["n3"]["gives"].as_u64().unwrap() > 0);
    // The live nodes report that they have seen it; n3 never copies, so a commit is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&c);
        let seen = |n: &str| s["moving"]["nodes"][n]["progress"]["seen"] == true;
        if seen("n1") && seen("n2") {
            assert!(s["moving"]["nodes"]["n3"]["progress"].is_null(), "{s}");
            assert_eq!(s["moving"]["may_commit"], false);
            break;
        }
        assert!(Instant::now() < deadline, "nodes never saw the move: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, out) = run(&["rebalance", "commit"]);
    assert!(!ok && out.contains("may not commit"), "{out}");

    let (ok, out) = run(&["rebalance", "abort"]);
    assert!(ok && out.contains("epoch 2"), "{out}");
    assert!(status(&c)["moving"].is_null());
    let (ok, out) = run(&["rebalance", "abort"]);
    assert!(!ok && out.contains("no move"), "{out}");
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
    let (ok, out) = run(&["rebalance", "start", "--remove", "n2"]);
    assert!(ok && out.contains("epoch 3"), "{out}");
}

/// What one recipient saw: every Deliver of a message, in arrival order.
#[derive(Default, Debug)]
struct Seen {
    deliveries: Vec<(u64, String, String)>, // (seq, msg_id, body)
    reconnects: usize,
    homes: Vec<String>,
}

/// Sends messages to `to`, one at a time, each until ✓, until `stop` is set (at most 20,000);
/// reconnects through the router when the session moves or the node refuses. `count` follows
/// the number acknowledged. Returns the msg ids in send order.
async fn send_steadily(
    router: String,
    user: String,
    to: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<String> {
    let n = 20_000;
    use chat_client::Client;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut client: Option<Client> = None;
    let mut ids = Vec::new();
    let mut k = 0;
    while k < n && !stop.load(std::sync::atomic::Ordering::Acquire) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} stuck at {k}"
        );
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect(&router, &token(&user, "phone")).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let cmid = k.to_string();
        if c.send_message(&cmid, &to, &format!("{user}:{k}"))
            .await
            .is_err()
        {
            client = None;
            continue;
        }
        let got = loop {
            match c.recv_timeout(Duration::from_secs(10)).await {
                Ok(f) => match f.frame {
                    Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid => {
                        break Some(s.msg_id)
                    }
                    Some(server_frame::Frame::Error(_))
                    | Some(server_frame::Frame::Redirect(_)) => break None,
                    _ => {}
                },
                Err(_) => break None,
            }
        };
        match got {
            Some(id) => {
                ids.push(id);
                k += 1;
                count.store(k, std::sync::atomic::Ordering::Release);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None => {
                client = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    ids
}

/// Receives until `stop` is set and nothing arrived for a while; acknowledges everything.
async fn receive_steadily(
    router: String,
    user: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Seen {
    use chat_client::Client;
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut client: Option<Client> = None;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} receiver ran out of time"
        );
        let c = match &mut client {
            Some(c) => c,
            None => {
                // Like a real app: say which seq was processed last, so nothing is sent twice.
                let opts = chat_client::ConnectOptions {
                    resume_after: seen.deliveries.iter().map(|d| d.0).max().unwrap_or(0),
                    ..Default::default()
                };
                match Client::connect_with(&router, &token(&user, "phone"), &opts).await {
                    Ok(c) => {
                        seen.homes.push(c.welcome.node.clone());
                        client.insert(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
        };
        match c.recv_timeout(Duration::from_millis(1500)).await {
            Ok(f) => {
                if let Some((seq, m)) = as_message(&f) {
                    seen.deliveries
                        .push((seq, m.msg_id.clone(), m.body.clone()));
                    if c.ack(seq).await.is_err() {
                        client = None;
                        seen.reconnects += 1;
                    }
                } else if matches!(f.frame, Some(server_frame::Frame::Redirect(_))) {
                    client = None;
                    seen.reconnects += 1;
                }
            }
            Err(chat_client::ClientError::Timeout) => {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    return seen;
                }
            }
            Err(_) => {
                client = None;
                seen.reconnects += 1;
            }
        }
    }
}

/// Runs 1:1 traffic between 12 pairs through the router while `start_move` starts a move, waits
/// for it to commit, keeps the traffic going a little longer, and checks that every
/// acknowledged message arrived once, in order, and that moved users resumed at their new home.
async fn move_under_load(
    c: &mut TestCluster,
    start_move: impl FnOnce(&mut TestCluster),
    after: &chat_ring::Ring,
) {
    let router = c.start_router();
    // Pairs whose users are spread over the three nodes.
    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| (format!("s{i}"), format!("r{i}")))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (_, r) in &pairs {
        receivers.push(tokio::spawn(receive_steadily(
            router.ws_url(),
            r.clone(),
            stop.clone(),
        )));
    }
    let stop_sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts: Vec<_> = pairs
        .iter()
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)))
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
    let sent_by_each = |at_least: &[usize]| {
        counts
            .iter()
            .zip(at_least)
            .all(|(c, n)| c.load(std::sync::atomic::Ordering::Acquire) >= *n)
    };
    let wait_sent = |at_least: Vec<usize>| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sent_by_each(&at_least) {
            assert!(Instant::now() < deadline, "senders stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_sent(vec![10; pairs.len()]);
    start_move(c);
    // The move commits by itself once every node has seen it and copied.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(c);
        if s["moving"].is_null() && s["current_epoch"] == after.epoch() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move did not commit: {s}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let more: Vec<usize> = counts
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Acquire) + 20)
        .collect();
    wait_sent(more);
    stop_sending.store(true, std::sync::atomic::Ordering::Release);
    let mut sent = Vec::new();
    for t in senders {
        sent.push(t.await.expect("sender"));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
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
                c.ring.owner(s),
                after.owner(s),
                c.ring.owner(r),
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
        if c.ring.owner(r) != after.owner(r) {
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
    let t = chat_ring::transition::Transition::new(c.ring.clone(), after.clone()).unwrap();
    let nodes: Vec<String> = t.nodes().into_iter().map(String::from).collect();
    for n in &nodes {
        let (gives, gets) = (t.copies_of(n).count(), t.receives(n).count());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = c.node(n).log_text();
            let done = (gives == 0
                || log.contains("copy done") && log.contains("dropped moved ranges"))
                && (gets == 0 || log.contains("every old owner sealed"));
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{n} did not finish its share:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each node recorded its finished share in etcd, so the next move may start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c);
        if s["moving"].is_null() && s["unfinished"].as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every node recorded its finished share: {s}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

fn ring_of(epoch: u64, ids: &[&str]) -> chat_ring::Ring {
    let members: Vec<chat_ring::Member> = ids
        .iter()
        .map(|id| chat_ring::Member {
            id: id.to_string(),
            weight: 1,
        })
        .collect();
    chat_ring::Ring::new(epoch, &members, chat_ring::DEFAULT_VNODES_PER_WEIGHT).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_node_under_load_loses_and_duplicates_nothing() {
    let mut c = TestCluster::start(&[]);
    let after = ring_of(2, &["n1", "n2", "n3", "n4"]);
    move_under_load(
        &mut c,
        |c| {
            // Traffic is flowing: bring up n4 and move a quarter of the users to it.
            add_n4(c);
        },
        &after,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_node_under_load_loses_nothing_and_leaves_it_empty() {
    let mut c = TestCluster::start(&[]);
    let after = ring_of(2, &["n1", "n2"]);
    move_under_load(
        &mut c,
        |c| {
            let out = chatctl(&[
                "rebalance",
                "start",
                "--remove",
                "n3",
                "--etcd",
                &c.etcd.url,
                "--prefix",
                &c.prefix,
            ]);
            assert!(out.contains("epoch 2"), "{out}");
        },
        &after,
    )
    .await;
    // n3 forwards what its outbox still holds, then stops; it holds no user data afterwards.
    let admin = c.node("n3").admin_url.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&format!("{admin}/metrics"))
        .is_some_and(|(_, b)| b.contains("chat_outbox_depth 0"))
    {
        assert!(Instant::now() < deadline, "n3's outbox never emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let out = chatctl(&[
        "rebalance",
        "start",
        "--add",
        "n4",
        "--etcd",
        &c.etcd.url,
        "--prefix",
        &c.prefix,
    ]);
    assert!(out.contains("epoch 2"), "{out}");
}

/// Waits until the move in flight has been seen by `node`.
fn wait_seen(c: &TestCluster, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c);
        if s["moving"]["nodes"][node]["progress"]["seen"] == true || s["moving"].is_null() {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never saw the move: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_node_killed_during_the_move_stalls_it_until_it_returns() {
    let mut c = TestCluster::start(&[]);
    let after = ring_of(2, &["n1", "n2", "n3", "n4"]);
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
        &after,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_owner_killed_during_the_move_finishes_it_after_a_restart() {
    let mut c = TestCluster::start(&[]);
    let after = ring_of(2, &["n1", "n2", "n3", "n4"]);
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
        &after,
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
    let n3 = c.node("n3").pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &n3])
        .status()
        .unwrap()
        .success());
    let (etcd, prefix) = (c.etcd.url.clone(), c.prefix.clone());
    chatctl(&[
        "rebalance",
        "start",
        "--add",
        "n3",
        "--etcd",
        &etcd,
        "--prefix",
        &prefix,
    ]);
    let out_path = c.dir.path().join("wait.out");
    let err_path = c.dir.path().join("wait.err");
    let mut wait = Command::new(bin("chatctl"))
        .args(["rebalance", "wait", "--timeout-secs", "120"])
        .args(["--etcd", &etcd, "--prefix", &prefix])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("chatctl rebalance wait");
    c.etcd.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&err_path)
        .unwrap_or_default()
        .contains("retrying until the deadline")
    {
        assert!(
            wait.try_wait().unwrap().is_none(),
            "wait exited during the outage: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "wait never noticed the outage");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.etcd.restart();
    assert!(Command::new("kill")
        .args(["-CONT", &n3])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(st) = wait.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = wait.kill();
            panic!("wait did not end; logs:\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
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
    let ring = chatctl(&["ring", "show", "--etcd", &etcd, "--prefix", &prefix]);
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
    let first = ring_of(1, &["n1", "n2", "n3"]);
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
