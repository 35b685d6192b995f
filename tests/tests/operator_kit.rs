//! The operator kit in `ops/monitoring` and `ops/systemd` holds against the real thing:
//! - the alert rules pass `promtool check rules`, and `promtool test rules` fires each alert on
//!   the series it is for and not on a healthy node;
//! - every dashboard query is valid PromQL (checked by promtool as a recording rule);
//! - every metric the dashboard and the rules name, with every label value they select on,
//!   exists on a live cluster node and router;
//! - the systemd units pass `systemd-analyze verify` and keep their hardening
//!   (`systemd-analyze security`);
//! - the production config example passes `chat-node --check-config`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chat_tests::*;

fn ops(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(sub)
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (ops/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every `expr` of the dashboard, its `$instance` variable given a value.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.replace("$instance", ".*"));
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(ops("monitoring/chat-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dash, &mut out);
    out
}

/// The metrics a text names (`chat_*` and `process_*`), each with the label values it selects
/// on exactly (`name{label="value"}`; the scrape's own `job` and `instance` aside).
fn metric_refs(text: &str) -> BTreeSet<(String, Vec<(String, String)>)> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let start_of_word = i == 0 || !is_word(bytes[i - 1]);
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if !(start_of_word && (rest.starts_with("chat_") || rest.starts_with("process_"))) {
            i += 1;
            continue;
        }
        let len = rest.bytes().take_while(|c| is_word(*c)).count();
        let name = rest[..len].to_string();
        let mut labels = Vec::new();
        if let Some(sel) = rest[len..].strip_prefix('{') {
            let sel = &sel[..sel.find('}').expect("a closed selector")];
            for m in sel.split(',') {
                let Some((k, v)) = m.split_once('=') else {
                    continue;
                };
                let (k, v) = (k.trim(), v.trim());
                if v.starts_with('~') || k.ends_with('!') || k == "job" || k == "instance" {
                    continue;
                }
                labels.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
        out.insert((name, labels));
        i += len;
    }
    out
}

/// Whether the Prometheus text has a series `name` with every one of `labels`.
fn exported(body: &str, name: &str, labels: &[(String, String)]) -> bool {
    body.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.split(' ').next().unwrap_or("");
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
    })
}

#[test]
fn the_alert_rules_pass_promtool_and_its_tests() {
    let dir = ops("monitoring");
    run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "queries not found: {queries:?}");
    // promtool parses a rule file's expressions: one recording rule per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = serde_json::to_string(q).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {q}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file));
}

#[test]
fn every_metric_the_kit_uses_exists_on_a_live_node_and_router() {
    let mut refs = BTreeSet::new();
    for q in dashboard_queries() {
        refs.extend(metric_refs(&q));
    }
    let rules = std::fs::read_to_string(ops("monitoring/alerts.yml")).unwrap();
    refs.extend(metric_refs(&rules));
    assert!(refs.len() >= 25, "metrics not found: {refs:?}");

    let cluster = TestCluster::start_with(&[("n1", 1)], chat_ring::DEFAULT_VNODES_PER_WEIGHT, &[]);
    let router = cluster.start_router();
    // A router's answers are counted from its first one.
    let (st, _) = http_get(&format!("{}/v1/route/someone", router.url)).expect("route");
    assert_eq!(st, 200);
    let node = metrics_text(&cluster.node("n1").admin_url);
    let routers = metrics_text(&router.url);
    for (name, labels) in &refs {
        let body = if name.starts_with("chat_router_") {
            &routers
        } else {
            &node
        };
        assert!(
            exported(body, name, labels),
            "the kit uses {name} {labels:?}, which a live {} does not export:\n{body}",
            if name.starts_with("chat_router_") {
                "router"
            } else {
                "node"
            }
        );
    }
    // The process metrics are the router's too.
    assert!(exported(&routers, "process_cpu_seconds_total", &[]));
}

#[test]
fn the_systemd_units_verify_and_stay_hardened() {
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "chat-node.service",
        "chat-router.service",
        "chat-etcd.service",
    ] {
        let text = std::fs::read_to_string(ops("systemd").join(unit)).unwrap();
        // verify checks that ExecStart exists: point it at the binaries under test.
        let text = text
            .replace(
                "/usr/local/bin/chat-node",
                bin("chat-node").to_str().unwrap(),
            )
            .replace(
                "/usr/local/bin/chat-router",
                bin("chat-router").to_str().unwrap(),
            );
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let out = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path));
        assert!(
            out.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Exposure 0 (locked down) to 10 (unsafe), times ten; the units score under 2.
        run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(&path));
    }
}

#[test]
fn metric_references_are_found_with_their_labels() {
    let refs = metric_refs(
        r#"sum by (instance) (rate(chat_commit_failures_total{job="chat-node", reason="storage_full", instance=~"$i"}[5m])) / process_cpu_seconds_total and xchat_no"#,
    );
    let want: BTreeSet<(String, Vec<(String, String)>)> = [
        (
            "chat_commit_failures_total".to_string(),
            vec![("reason".to_string(), "storage_full".to_string())],
        ),
        ("process_cpu_seconds_total".to_string(), vec![]),
    ]
    .into();
    assert_eq!(refs, want);
    let body = "# TYPE x counter\nchat_commit_failures_total{reason=\"error\"} 0\n";
    assert!(!exported(
        body,
        "chat_commit_failures_total",
        &want.first().unwrap().1
    ));
    assert!(exported(body, "chat_commit_failures_total", &[]));
}

/// `ops/systemd/node.toml`, the production example (TLS on the client listener), passes
/// `chat-node --check-config` with its secrets supplied as an operator would, and the check
/// refuses a `ws://` public URL on a TLS listener.
#[test]
fn the_production_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let check = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(bin("chat-node"));
        cmd.arg("--config")
            .arg(ops("systemd/node.toml"))
            .arg("--check-config")
            .env("CHAT_NODE_AUTH__JWT_SECRET_FILE", &secret)
            .env(
                "CHAT_NODE_MEDIA__S3__SECRET_ACCESS_KEY",
                "from-the-environment",
            )
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let ok = check(&[]);
    let shown = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        shown.contains("tls_cert_file = \"/etc/chat/tls/fullchain.pem\""),
        "{shown}"
    );
    let bad = check(&[(
        "CHAT_NODE_CLIENT__PUBLIC_URL",
        "ws://chat-1.example.com:8443",
    )]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use wss://"));
}
