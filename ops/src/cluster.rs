//! Cluster commands: the first ring, the ring as it stands, the registered nodes.

use std::time::Duration;

use anyhow::{bail, Context};
use chat_cluster::{EtcdConfig, NodeInfo, RingDoc, RingVersion};
use chat_ring::{Member, Ring};

pub async fn client(cfg: &EtcdConfig) -> anyhow::Result<chat_cluster::etcd_client::Client> {
    chat_cluster::connect(cfg)
        .await
        .with_context(|| format!("connecting to etcd at {}", cfg.endpoints.join(",")))
}

/// Builds the first ring from the registered nodes (each with the weight it registered).
pub async fn init(
    cfg: &EtcdConfig,
    vnodes_per_weight: u32,
    replication_factor: u32,
    wait_nodes: usize,
    timeout: Duration,
) -> anyhow::Result<RingDoc> {
    if replication_factor == 0 {
        bail!("--replication-factor must be at least 1");
    }
    let mut c = client(cfg).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let nodes = loop {
        let nodes = chat_cluster::list_nodes(&mut c, &cfg.prefix).await?;
        if !nodes.is_empty() && nodes.len() >= wait_nodes {
            break nodes;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} node(s) registered under {}nodes/ after {timeout:?}; wanted {}",
                nodes.len(),
                cfg.prefix,
                wait_nodes.max(1)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let doc = RingDoc {
        current: RingVersion {
            epoch: 1,
            vnodes_per_weight,
            members: nodes.iter().map(|n| Member::new(&n.id, n.weight)).collect(),
            replication_factor,
        },
        next: None,
        previous: None,
    };
    chat_cluster::init_ring(&mut c, &cfg.prefix, &doc).await?;
    Ok(doc)
}

pub async fn ring(cfg: &EtcdConfig) -> anyhow::Result<(RingDoc, Ring, Vec<NodeInfo>)> {
    let mut c = client(cfg).await?;
    let Some(doc) = chat_cluster::read_ring(&mut c, &cfg.prefix).await? else {
        bail!(
            "no ring under {} yet: run `chatctl cluster init`",
            cfg.prefix
        );
    };
    let ring = doc.current.build()?;
    let nodes = chat_cluster::list_nodes(&mut c, &cfg.prefix).await?;
    Ok((doc, ring, nodes))
}

pub async fn nodes(cfg: &EtcdConfig) -> anyhow::Result<Vec<NodeInfo>> {
    let mut c = client(cfg).await?;
    Ok(chat_cluster::list_nodes(&mut c, &cfg.prefix).await?)
}

/// The share of the circle each member holds as a follower (exact, from the placed segments);
/// every member is listed, at 0 with one copy.
pub fn follows(ring: &Ring) -> std::collections::BTreeMap<String, f64> {
    let mut out: std::collections::BTreeMap<String, f64> = ring
        .members()
        .map(|(id, _)| (id.to_string(), 0.0))
        .collect();
    for s in ring.placed_segments() {
        for f in &s.replicas.followers {
            *out.entry(f.clone()).or_default() += chat_ring::replicas::share(s.start, s.end);
        }
    }
    out
}

/// Each member's share of users, estimated from a fixed sample of ids.
pub fn shares(ring: &Ring) -> Vec<(String, f64)> {
    const SAMPLE: u32 = 100_000;
    let mut counts = std::collections::BTreeMap::new();
    for (id, _) in ring.members() {
        counts.insert(id.to_string(), 0u32);
    }
    for i in 0..SAMPLE {
        *counts
            .get_mut(ring.owner(&format!("user-{i}")))
            .expect("owner is a member") += 1;
    }
    counts
        .into_iter()
        .map(|(id, n)| (id, n as f64 / SAMPLE as f64))
        .collect()
}
