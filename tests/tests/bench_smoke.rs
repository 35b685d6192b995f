//! A tiny run of each `chat-bench` scenario, so the tool keeps working. Figures are printed by
//! benchmarks, never asserted here; only that nothing was lost and the report is complete.

use chat_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_through_the_router_reports_every_step_and_its_cost() {
    let cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    // The nodes' pid files, as ops/dev-cluster.sh keeps them: the CPU is split by process.
    let pids = tempfile::tempdir().expect("temp dir");
    for n in &cluster.nodes {
        std::fs::write(pids.path().join(&n.id), n.pid().to_string()).expect("pid file");
    }
    let out = std::process::Command::new(bin("chat-bench"))
        .args([
            "--url",
            &router.ws_url(),
            "--etcd",
            &cluster.etcd.url,
            "--prefix",
            &cluster.prefix,
            "--pids",
        ])
        .arg(pids.path())
        .args([
            "one-to-one",
            "--pairs",
            "3",
            "--rates",
            "30,60",
            "--duration",
            "1",
            // Recipients acknowledge and mark read: every receipt path runs.
            "--receipts",
            "read",
        ])
        .env("CHAT_NODE_AUTH__JWT_SECRET", SECRET)
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("one-to-one offered="))
        .collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    for s in &steps {
        assert!(s.contains("lost=0 dup=0 errors=0"), "{s}");
    }
    let costs: Vec<&str> = stdout.lines().filter(|l| l.contains("nodes cpu")).collect();
    assert_eq!(costs.len(), 2, "{stdout}");
    for n in ["n1=", "n2=", "n3="] {
        assert!(costs[0].contains(n), "{}", costs[0]);
    }
    assert!(stdout.contains("| offered/s |"), "summary table: {stdout}");
    let split: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("cpu by process: cluster"))
        .collect();
    assert_eq!(split.len(), 2, "{stdout}");
    for n in ["n1 ", "n2 ", "n3 "] {
        assert!(split[0].contains(n), "{}", split[0]);
    }
    assert!(
        stdout.contains("one-to-one best delivered/s:") && stdout.contains("receipts Read"),
        "{stdout}"
    );
}

fn bench(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("chat-bench"))
        .args(args)
        .env("CHAT_NODE_AUTH__JWT_SECRET", SECRET)
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_presence_and_offline_drain_scenarios_run_and_report() {
    let cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    let url = router.ws_url();
    let common = [
        "--url",
        &url,
        "--etcd",
        &cluster.etcd.url,
        "--prefix",
        &cluster.prefix,
    ];

    let mut args = common.to_vec();
    args.extend(["idle", "--connections", "30", "--sources", "3"]);
    let out = bench(&args);
    assert!(out.contains("idle connections=30 failed=0"), "{out}");
    for n in ["n1:", "n2:", "n3:"] {
        assert!(out.contains(n), "a line per node: {out}");
    }
    assert!(out.contains("KiB per idle connection"), "{out}");

    let mut args = common.to_vec();
    args.extend([
        "presence",
        "--watchers",
        "6",
        "--actors",
        "3",
        "--watch",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
    ]);
    let out = bench(&args);
    let row = out
        .lines()
        .find(|l| l.starts_with("| ") && !l.starts_with("| changes") && !l.contains("---"))
        .unwrap_or_else(|| panic!("a result row: {out}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    let (made, delivered): (u64, u64) = (cells[1].parse().unwrap(), cells[2].parse().unwrap());
    // Every change reaches the watchers watching that actor (each actor is watched by 4 of the
    // 6 watchers here): some updates, and never more than were owed.
    assert!(
        made >= 10 && delivered > 0 && delivered <= made * 4,
        "{out}"
    );
    assert!(out.contains(" µs |"), "CPU per update: {out}");

    let mut args = common.to_vec();
    args.extend(["offline-drain", "--users", "3", "--messages", "300"]);
    let out = bench(&args);
    assert!(
        out.contains("offline-drain users=3 messages=300 drained"),
        "{out}"
    );

    // Files through the embedded store: every file uploaded, then fetched and checked.
    let mut args = common.to_vec();
    args.extend(["media", "--pairs", "2", "--files", "3", "--size", "100000"]);
    let out = bench(&args);
    for phase in ["| upload | 6 | 0.6 |", "| download | 6 | 0.6 |"] {
        assert!(out.contains(phase), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_reports_the_move_and_its_phases() {
    let mut cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    cluster.start_extra_node("n4");
    let out = bench(&[
        "--url",
        &router.ws_url(),
        "--etcd",
        &cluster.etcd.url,
        "--prefix",
        &cluster.prefix,
        "rebalance",
        "--add",
        "n4",
        "--pairs",
        "3",
        "--rate",
        "30",
        "--settle",
        "1",
    ]);
    assert!(out.contains("(add n4 (weight 1)): committed"), "{out}");
    for phase in ["| before |", "| during |", "| after |"] {
        assert!(out.contains(phase), "{out}");
    }
    assert!(out.contains(", lost 0,"), "{out}");
}
