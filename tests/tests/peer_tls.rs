//! Node-to-node QUIC only admits peers with a certificate from the cluster CA.

use std::net::SocketAddr;

use chat_node::testing::tls;
use chat_proto::cluster::{peer_request, peer_response, PeerPing, PeerRequest, PeerResponse};
use chat_tests::*;
use prost::Message as _;

async fn ping(
    addr: SocketAddr,
    server_name: &str,
    cfg: quinn::ClientConfig,
) -> Result<PeerResponse, String> {
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(cfg);
    let run = async {
        let conn = ep
            .connect(addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let req = PeerRequest {
            from_node: "probe".into(),
            epoch: 0,
            request: Some(peer_request::Request::Ping(PeerPing {})),
        };
        send.write_all(&req.encode_to_vec())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let buf = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        PeerResponse::decode(buf.as_slice()).map_err(|e| e.to_string())
    };
    let r = tokio::time::timeout(WAIT, run)
        .await
        .map_err(|_| "timed out".to_string())?;
    ep.close(0u32.into(), b"");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_cluster_certificate_are_refused() {
    let cluster = TestCluster::start_with(&[("n1", 1), ("n2", 1)], 16, &[]);
    let mut etcd = chat_cluster::connect(&cluster.etcd.config(&cluster.prefix))
        .await
        .unwrap();
    let nodes = chat_cluster::list_nodes(&mut etcd, &cluster.prefix)
        .await
        .unwrap();
    let n1: SocketAddr = nodes
        .iter()
        .find(|n| n.id == "n1")
        .unwrap()
        .quic_addr
        .parse()
        .unwrap();
    let certs = &cluster.certs;
    let ca = tls::Credentials::load(
        &certs.join("ca.pem"),
        &certs.join("n2.pem"),
        &certs.join("n2.key"),
    )
    .unwrap();

    // A member's certificate: answered.
    let good = tls::client_config(&ca.ca, Some((&ca.chain, &ca.key))).unwrap();
    let resp = ping(n1, "n1", good)
        .await
        .expect("a cluster member is served");
    match resp.response {
        Some(peer_response::Response::Pong(p)) => assert_eq!(p.node, "n1"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // No client certificate at all.
    let none = tls::client_config(&ca.ca, None).unwrap();
    let err = ping(n1, "n1", none)
        .await
        .expect_err("no certificate must be refused");
    assert!(!err.is_empty());

    // A certificate from another CA (the server's own certificate still checks out).
    let other = cluster.dir.path().join("other-ca");
    let o = other.display().to_string();
    chatctl(&["certs", "init", "--dir", &o]);
    chatctl(&["certs", "issue", "n2", "--dir", &o]);
    let foreign = tls::Credentials::load(
        &other.join("ca.pem"),
        &other.join("n2.pem"),
        &other.join("n2.key"),
    )
    .unwrap();
    let cfg = tls::client_config(&ca.ca, Some((&foreign.chain, &foreign.key))).unwrap();
    let err = ping(n1, "n1", cfg)
        .await
        .expect_err("a foreign certificate must be refused");
    assert!(!err.is_empty());

    // And a node does not trust a server outside the cluster either: the cluster's n1 seen
    // through the foreign CA's eyes.
    let cfg = tls::client_config(&foreign.ca, Some((&foreign.chain, &foreign.key))).unwrap();
    assert!(ping(n1, "n1", cfg).await.is_err());

    let (_, metrics) = http_get(&format!("{}/metrics", cluster.node("n1").admin_url)).unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_peer_handshake_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "refused handshakes are counted: {metrics}");
}
