//! `TestCluster`: etcd, a cluster CA, member nodes with their certificates, and the ring, with
//! `chatctl` pointed at them.

use std::path::PathBuf;
use std::process::Command;

use crate::etcd::TestEtcd;
use crate::node::TestNode;
use crate::process::{bin, chatctl, try_chatctl};
use crate::router::TestRouter;

/// etcd, a cluster CA, `n` nodes with their certificates, and the first ring.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub etcd: TestEtcd,
    pub prefix: String,
    pub certs: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// `members`: (node id, weight); `env` applies to every node.
    pub fn start_with(
        members: &[(&str, u32)],
        vnodes_per_weight: u32,
        env: &[(&str, &str)],
    ) -> TestCluster {
        Self::start_replicated(members, vnodes_per_weight, 1, env)
    }

    /// Like `start_with`, with `copies` of every key (the ring's replication factor).
    pub fn start_replicated(
        members: &[(&str, u32)],
        vnodes_per_weight: u32,
        copies: u32,
        env: &[(&str, &str)],
    ) -> TestCluster {
        let etcd = TestEtcd::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let certs_s = certs.display().to_string();
        chatctl(&["certs", "init", "--dir", &certs_s]);
        let mut c = TestCluster {
            nodes: Vec::new(),
            etcd,
            prefix: "/test/".to_string(),
            certs,
            dir,
        };
        for (id, weight) in members {
            let w = weight.to_string();
            let mut e: Vec<(&str, &str)> = vec![("CHAT_NODE_CLUSTER__WEIGHT", &w)];
            e.extend_from_slice(env);
            c.add_member(id, &e);
        }
        c.chatctl(&[
            "cluster",
            "init",
            "--vnodes-per-weight",
            &vnodes_per_weight.to_string(),
            "--replication-factor",
            &copies.to_string(),
            "--wait-nodes",
            &members.len().to_string(),
        ]);
        for n in &c.nodes {
            n.wait_ready();
        }
        c
    }

    /// Three nodes n1, n2, n3 of weight 1.
    pub fn start(env: &[(&str, &str)]) -> TestCluster {
        Self::start_with(
            &[("n1", 1), ("n2", 1), ("n3", 1)],
            chat_ring::DEFAULT_VNODES_PER_WEIGHT,
            env,
        )
    }

    /// Issues `id`'s certificate and starts it as a member (not waiting for readiness).
    fn add_member(&mut self, id: &str, env: &[(&str, &str)]) {
        chatctl(&[
            "certs",
            "issue",
            id,
            "--dir",
            &self.certs.display().to_string(),
        ]);
        self.nodes.push(TestNode::start_member(
            id,
            &self.etcd.url,
            &self.prefix,
            &self.certs,
            self.dir.path(),
            env,
        ));
    }

    /// `args` plus this cluster's `--etcd` and `--prefix`.
    fn with_cluster<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend([
            "--etcd",
            self.etcd.url.as_str(),
            "--prefix",
            self.prefix.as_str(),
        ]);
        all
    }

    /// Runs `chatctl args --etcd … --prefix …` and returns its stdout; panics if it fails.
    pub fn chatctl(&self, args: &[&str]) -> String {
        chatctl(&self.with_cluster(args))
    }

    /// `chatctl args --etcd … --prefix …`, to spawn (for one that runs alongside the test).
    pub fn chatctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("chatctl"));
        cmd.args(self.with_cluster(args));
        cmd
    }

    /// Runs `chatctl args --etcd … --prefix …`: `Ok` or `Err` with its stdout and stderr.
    pub fn try_chatctl(&self, args: &[&str]) -> Result<String, String> {
        try_chatctl(&self.with_cluster(args))
    }

    /// The ring document as etcd holds it now (current ring, move in flight, previous ring).
    pub fn ring_doc(&self) -> chat_cluster::RingDoc {
        let out: serde_json::Value =
            serde_json::from_str(&self.chatctl(&["ring", "show", "--json"])).expect("JSON");
        serde_json::from_value(out["ring"].clone()).expect("a ring document")
    }

    /// The current ring as etcd holds it now (so it is right after a move).
    pub fn ring(&self) -> chat_ring::Ring {
        self.ring_doc().current.build().expect("a valid ring")
    }

    pub fn node(&self, id: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).expect("node")
    }

    pub fn node_mut(&mut self, id: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// The first `count` ids `<stem>-<i>` that `node` owns in the current ring.
    pub fn users_on(&self, node: &str, stem: &str, count: usize) -> Vec<String> {
        let ring = self.ring();
        (0..100_000)
            .map(|i| format!("{stem}-{i}"))
            .filter(|u| ring.owner(u) == node)
            .take(count)
            .collect()
    }

    /// Starts one more member node `id` (certificate, registration): it owns nothing until a
    /// move of the ring gives it a share.
    pub fn start_extra_node(&mut self, id: &str) {
        self.add_member(id, &[]);
        self.node(id).wait_ready();
    }

    pub fn start_router(&self) -> TestRouter {
        TestRouter::start(
            &self.etcd.url,
            &self.prefix,
            &self.dir.path().join("router.log"),
        )
    }

    /// A router with more flags (the web client's directory, development tokens).
    pub fn start_router_with(&self, extra: &[&str]) -> TestRouter {
        TestRouter::start_with(
            &self.etcd.url,
            &self.prefix,
            &self.dir.path().join("router.log"),
            extra,
        )
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.id, n.log_text()))
            .collect()
    }
}
