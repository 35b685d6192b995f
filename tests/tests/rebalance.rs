//! Moves of the ring as the operator drives them: starting (one at a time), status, abort,
//! commit refused until every node is done. Real etcd, real nodes, real `chatctl`.

use std::time::Duration;

use chat_proto::v1::server_frame;
use chat_tests::*;

#[path = "rebalance/traffic.rs"]
mod traffic;
use traffic::move_under_load;

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
    let store = chat_node::testing::Store::open(
        &n3.data_dir,
        &chat_node::testing::StoreOptions {
            retention: Duration::from_secs(3600),
            block_cache_mib: 8,
            min_free_bytes: 0,
            compaction_headroom_bytes: 0,
        },
    )
    .unwrap();
    for cf in chat_node::testing::Cf::ALL {
        // The node's own records: its store's incarnation stays, the move marker is gone.
        let left = usize::from(cf == chat_node::testing::Cf::Node);
        assert_eq!(
            store.count_keys(cf).unwrap(),
            left,
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

/// Once a move commits, a connected device of a moved user is sent a Redirect to its new home
/// (its session is signalled through the hub); a device of a user who stays keeps its
/// connection and is served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_moved_users_are_redirected_when_a_move_commits() {
    let c = TestCluster::start(&[]);
    let mover = c.users_on("n3", "mover", 1).remove(0);
    let stayer = c.users_on("n1", "stayer", 1).remove(0);
    let mut cm = c.node("n3").connect(&mover, "phone").await;
    let mut cs = c.node("n1").connect(&stayer, "phone").await;
    c.chatctl(&["rebalance", "start", "--remove", "n3"]);
    wait_committed(&c, 2, Duration::from_secs(60));
    let home = c.ring().owner(&mover).to_string();
    assert_ne!(home, "n3");
    let (redirect, _) = recv_until(&mut cm, "the mover's redirect", |f| {
        matches!(f.frame, Some(server_frame::Frame::Redirect(_)))
    })
    .await;
    let Some(server_frame::Frame::Redirect(r)) = redirect.frame else {
        unreachable!()
    };
    assert_eq!(r.epoch, 2);
    assert_eq!(r.url, c.node(&home).url, "to the mover's new home");
    // The stayer's connection was left alone: it still answers, with no redirect before.
    let before = until_pong(&mut cs, 7).await;
    assert!(
        !before
            .iter()
            .any(|f| matches!(f.frame, Some(server_frame::Frame::Redirect(_)))),
        "{before:?}"
    );
    cs.send_message("after", &stayer, "still home")
        .await
        .unwrap();
    let got = receive_messages(&mut cs, 1).await;
    assert_eq!(got[0].1.body, "still home");
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
