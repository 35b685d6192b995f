//! Every metric `docs/operations.md` lists for nodes is on `/metrics` from the start (at 0), so
//! that alerts on absence or on rates see a value, not "no data".

use chat_tests::*;

/// The node metrics the operations guide documents: its table rows `| `name` | kind | ... |`,
/// without the router's, the process ones (rendered at scrape time anyway) and the ones with a
/// series per peer.
fn documented() -> Vec<(String, bool)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .expect("docs/operations.md");
    doc.lines()
        .filter_map(|l| {
            let name = l.strip_prefix("| `")?.split('`').next()?;
            let name = name.split('{').next()?.to_string();
            // Series labelled by a peer exist once that peer is used: none at the start.
            if !name.starts_with("chat_")
                || l.contains("router only")
                || l.contains("one series per peer")
            {
                return None;
            }
            Some((
                name,
                l.contains("cluster mode only") || l.contains("in etcd"),
            ))
        })
        .collect()
}

fn present(body: &str, name: &str) -> bool {
    body.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
    })
}

#[test]
fn every_documented_node_metric_is_exported_from_the_start() {
    let names = documented();
    assert!(names.len() >= 12, "the table was not found: {names:?}");
    let standalone = TestNode::start(&[]);
    let body = metrics_text(&standalone.admin_url);
    for (name, cluster_only) in &names {
        if !cluster_only {
            assert!(present(&body, name), "standalone: {name} missing:\n{body}");
        }
    }
    let c = TestCluster::start_with(&[("n1", 1)], chat_ring::DEFAULT_VNODES_PER_WEIGHT, &[]);
    let body = metrics_text(&c.node("n1").admin_url);
    for (name, _) in &names {
        assert!(present(&body, name), "cluster: {name} missing:\n{body}");
    }
    // Labelled counters show every outcome at 0.
    for r in ["stored", "invalid", "not_owner", "failed", "given_up"] {
        let series = format!("chat_forwarded_entries_total{{result=\"{r}\"}}");
        assert!(body.contains(&series), "{series} missing:\n{body}");
    }
    for (limit, kind) in [("messages", "typing"), ("connections", "presence")] {
        let series = format!("chat_rate_limited_total{{limit=\"{limit}\"}} 0");
        assert!(body.contains(&series), "{series} missing:\n{body}");
        let series = format!("chat_shed_total{{kind=\"{kind}\",reason=\"peer_failed\"}} 0");
        assert!(body.contains(&series), "{series} missing:\n{body}");
    }
    // And the other way round: nothing is exported that the guide does not explain.
    for line in body.lines().filter(|l| l.starts_with("chat_")) {
        let name = line.split([' ', '{']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            names.iter().any(|(n, _)| n == name || n == base),
            "{name} is exported but not in docs/operations.md"
        );
    }
}
