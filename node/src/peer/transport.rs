//! QUIC between nodes: one endpoint per node that both accepts peers and dials them, one
//! connection per pair of nodes, and one bidirectional stream per request (the requester writes
//! one `PeerRequest` and finishes; the answer is one `PeerResponse`).
//!
//! One connection per pair without races: of two nodes, the one with the smaller id dials (and
//! keeps dialing while the other is registered); the other uses the connection it accepted, and
//! knows whose it is from the node id its certificate names.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chat_cluster::ClusterView;
use chat_proto::cluster::{PeerRequest, PeerResponse};
use chat_retry::Backoff;
use prost::Message as _;
use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use tokio::sync::watch;

use super::tls::{self, TlsError};
use crate::config::PeerSection;

/// Largest request or response accepted on a stream.
pub const MAX_FRAME: usize = 64 << 20;

/// Whether the certificate `conn`'s peer presented names node `node` (node certificates carry
/// their node id as DNS name; the chain was already checked against the cluster CA).
fn names(conn: &quinn::Connection, node: &str) -> bool {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return false;
    };
    let Some(cert) = certs
        .first()
        .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
    else {
        return false;
    };
    DnsName::try_from(node).is_ok_and(|name| {
        cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name))
            .is_ok()
    })
}

/// Answers one request from a peer.
pub type Handler =
    Arc<dyn Fn(PeerRequest) -> Pin<Box<dyn Future<Output = PeerResponse> + Send>> + Send + Sync>;

/// Why a request got no answer. The difference matters to the forwarder: only a request that
/// never reached the peer can be counted as not delivered.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nothing was handed to the peer (no connection, or the request was not finished).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The peer may have processed the request; only its answer is missing.
    #[error("no answer: {0}")]
    Unknown(String),
}

pub struct Peers {
    endpoint: quinn::Endpoint,
    self_id: String,
    view: watch::Receiver<ClusterView>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
    /// Connections peers dialed to us, not yet matched to a node id.
    inbound: Mutex<Vec<quinn::Connection>>,
    /// Bumped whenever a connection is added, so requests waiting for one wake up.
    added: watch::Sender<u64>,
    dialing: Mutex<HashSet<String>>,
    /// Serves the streams a peer opens, on connections in either direction.
    handler: OnceLock<Handler>,
    /// How often links to the peers this node dials are checked, and the longest wait before
    /// dialing an unreachable one again.
    dial_every: Duration,
    dial_backoff_max: Duration,
}

impl Peers {
    /// Binds the node's QUIC endpoint with its cluster identity.
    pub fn bind(
        listen: SocketAddr,
        id: &tls::Credentials,
        self_id: &str,
        view: watch::Receiver<ClusterView>,
        opts: &PeerSection,
    ) -> Result<Arc<Peers>, TlsError> {
        let link = tls::transport(opts.keep_alive(), opts.idle_timeout());
        let mut server = tls::server_config(id)?;
        server.transport_config(link.clone());
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|e| TlsError::Quic(format!("bind {listen}: {e}")))?;
        let mut client = tls::client_config(&id.ca, Some((&id.chain, &id.key)))?;
        client.transport_config(link);
        endpoint.set_default_client_config(client);
        Ok(Arc::new(Peers {
            endpoint,
            self_id: self_id.to_string(),
            view,
            conns: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Vec::new()),
            added: watch::channel(0).0,
            dialing: Mutex::new(HashSet::new()),
            handler: OnceLock::new(),
            dial_every: opts.dial_every(),
            dial_backoff_max: opts.dial_backoff_max(),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Whether this node dials `peer` (rather than waiting for `peer` to dial it).
    fn dials(&self, peer: &str) -> bool {
        self.self_id.as_str() < peer
    }

    fn live(&self, node: &str) -> Option<quinn::Connection> {
        // A peer that re-registered at another address (restarted after kill -9) is dialed
        // again at once rather than after the old connection's idle timeout.
        let registered: Option<SocketAddr> = self
            .view
            .borrow()
            .node(node)
            .and_then(|n| n.quic_addr.parse().ok());
        if let Some(c) = self
            .conns
            .lock()
            .unwrap()
            .get(node)
            .filter(|c| c.close_reason().is_none())
            .filter(|c| !self.dials(node) || registered.is_none_or(|a| a == c.remote_address()))
        {
            return Some(c.clone());
        }
        if self.dials(node) {
            return None;
        }
        // A connection the peer dialed: the one whose certificate names `node`.
        let found = {
            let mut inbound = self.inbound.lock().unwrap();
            inbound.retain(|c| c.close_reason().is_none());
            // The newest first: an older one may be from before the peer restarted.
            let i = inbound.iter().rposition(|c| names(c, node))?;
            inbound.swap_remove(i)
        };
        self.conns
            .lock()
            .unwrap()
            .insert(node.to_string(), found.clone());
        Some(found)
    }

    fn add(&self, node: &str, conn: quinn::Connection) {
        let old = self
            .conns
            .lock()
            .unwrap()
            .insert(node.to_string(), conn.clone());
        if let Some(old) = old.filter(|o| o.stable_id() != conn.stable_id()) {
            old.close(0u32.into(), b"replaced");
        }
        self.added.send_modify(|n| *n += 1);
    }

    async fn dial(&self, node: &str, addr: &str) -> Result<quinn::Connection, String> {
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("resolve {addr}: no address"))?;
        let conn = self
            .endpoint
            .connect(resolved, node)
            .map_err(|e| format!("connect {node} at {addr}: {e}"))?
            .await
            .map_err(|e| format!("connect {node} at {addr}: {e}"))?;
        tracing::info!(peer = %node, %addr, "connected to peer");
        self.add(node, conn.clone());
        // The peer sends to us on this connection too.
        self.serve_conn(conn.clone());
        Ok(conn)
    }

    /// The connection to `node`: dialed by us, or accepted from it; waits up to `wait` for one.
    async fn connection(
        &self,
        node: &str,
        wait: Duration,
    ) -> Result<quinn::Connection, RequestError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut added = self.added.subscribe();
        loop {
            if let Some(c) = self.live(node) {
                return Ok(c);
            }
            if self.dials(node) {
                let addr = self.view.borrow().node(node).map(|n| n.quic_addr.clone());
                let Some(addr) = addr else {
                    return Err(RequestError::NotSent(format!("{node} is not registered")));
                };
                return self.dial(node, &addr).await.map_err(RequestError::NotSent);
            }
            // The peer dials us: wait for its connection (it may be starting, or down).
            if tokio::time::timeout_at(deadline, added.changed())
                .await
                .is_err()
            {
                return Err(RequestError::NotSent(format!(
                    "no connection from {node} (is it running?)"
                )));
            }
        }
    }

    /// Sends one request to `node` and waits for its answer, all within `timeout`.
    pub async fn request(
        &self,
        node: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RequestError> {
        // Set once bytes may be on their way. A stream dropped by the timeout below is finished
        // implicitly, so from then on the peer may get the whole request and act on it.
        let opened = std::sync::atomic::AtomicBool::new(false);
        let run = async {
            let conn = self.connection(node, timeout / 2).await?;
            let not_sent = |e: String| RequestError::NotSent(format!("{node}: {e}"));
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| not_sent(e.to_string()))?;
            opened.store(true, std::sync::atomic::Ordering::Relaxed);
            // A failed write or finish means the stream is broken: the request never got its end,
            // and the peer acts only on complete requests.
            send.write_all(&req.encode_to_vec())
                .await
                .map_err(|e| not_sent(e.to_string()))?;
            send.finish().map_err(|e| not_sent(e.to_string()))?;
            let unknown = |e: String| RequestError::Unknown(format!("{node}: {e}"));
            let buf = recv
                .read_to_end(MAX_FRAME)
                .await
                .map_err(|e| unknown(e.to_string()))?;
            PeerResponse::decode(buf.as_slice()).map_err(|e| unknown(format!("bad response: {e}")))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) if opened.load(std::sync::atomic::Ordering::Relaxed) => Err(
                RequestError::Unknown(format!("{node}: no answer within {timeout:?}")),
            ),
            Err(_) => Err(RequestError::NotSent(format!(
                "{node}: not sent within {timeout:?}"
            ))),
        }
    }

    /// Keeps a connection to every registered peer this node dials, so that peers which only
    /// receive from it can also send to it.
    pub async fn maintain(self: Arc<Self>) {
        // Per peer address: when to try again after a failed dial, and the backoff that led
        // there. A peer that registers again (a new address) is dialed at once.
        let retry: Arc<Mutex<HashMap<String, (tokio::time::Instant, Backoff)>>> = Arc::default();
        let mut tick = tokio::time::interval(self.dial_every);
        loop {
            tick.tick().await;
            let wanted: Vec<(String, String)> = self
                .view
                .borrow()
                .nodes
                .values()
                .filter(|n| self.dials(&n.id))
                .map(|n| (n.id.clone(), n.quic_addr.clone()))
                .collect();
            let now = tokio::time::Instant::now();
            {
                let keys: HashSet<String> =
                    wanted.iter().map(|(n, a)| format!("{n}@{a}")).collect();
                retry.lock().unwrap().retain(|k, _| keys.contains(k));
            }
            for (node, addr) in wanted {
                let key = format!("{node}@{addr}");
                let waiting = retry
                    .lock()
                    .unwrap()
                    .get(&key)
                    .is_some_and(|(at, _)| *at > now);
                if waiting
                    || self.live(&node).is_some()
                    || !self.dialing.lock().unwrap().insert(node.clone())
                {
                    continue;
                }
                let (me, retry) = (self.clone(), retry.clone());
                let (every, max) = (self.dial_every, self.dial_backoff_max);
                tokio::spawn(async move {
                    match me.dial(&node, &addr).await {
                        Ok(_) => {
                            retry.lock().unwrap().remove(&key);
                        }
                        Err(e) => {
                            let mut r = retry.lock().unwrap();
                            let (at, backoff) = r.entry(key).or_insert_with(|| {
                                let b = Backoff::new(every, max);
                                (tokio::time::Instant::now(), b)
                            });
                            let wait = backoff.fail();
                            *at = tokio::time::Instant::now() + wait;
                            tracing::debug!(peer = %node, error = %e, retry_in = ?wait, "peer not reachable");
                        }
                    }
                    me.dialing.lock().unwrap().remove(&node);
                });
            }
        }
    }

    /// Sets what answers peers' requests; call once, before `serve` and `maintain`.
    pub fn set_handler(&self, handler: Handler) {
        if self.handler.set(handler).is_err() {
            tracing::error!("peer handler set twice; keeping the first");
        }
    }

    /// Accepts peers until the endpoint closes.
    pub async fn serve(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // A peer without a valid cluster certificate ends here.
                        tracing::warn!(error = %e, "peer handshake failed");
                        metrics::counter!(crate::admin::PEER_HANDSHAKE_FAILURES).increment(1);
                        return;
                    }
                };
                tracing::debug!(remote = %conn.remote_address(), "peer connected");
                // A peer that dials us is also our way to send to it. A restarted peer's new
                // connection replaces the one it had (which may not have timed out yet).
                let mut known: Vec<String> = me.conns.lock().unwrap().keys().cloned().collect();
                known.extend(me.view.borrow().nodes.keys().cloned());
                known.retain(|k| !me.dials(k));
                match known.into_iter().find(|k| names(&conn, k)) {
                    Some(peer) => me.add(&peer, conn.clone()),
                    None => {
                        let mut inbound = me.inbound.lock().unwrap();
                        inbound.retain(|c| c.close_reason().is_none());
                        inbound.push(conn.clone());
                        drop(inbound);
                        me.added.send_modify(|n| *n += 1);
                    }
                }
                me.serve_conn(conn);
            });
        }
    }

    /// Serves the requests a peer opens on `conn` until it closes.
    fn serve_conn(&self, conn: quinn::Connection) {
        let Some(handle) = self.handler.get().cloned() else {
            tracing::error!("no peer handler set; not serving a peer connection");
            return;
        };
        tokio::spawn(async move {
            let remote = conn.remote_address();
            loop {
                let (mut send, mut recv) = match conn.accept_bi().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%remote, error = %e, "peer connection ended");
                        return;
                    }
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let buf = match recv.read_to_end(MAX_FRAME).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::debug!(%remote, error = %e, "peer request not read");
                            return;
                        }
                    };
                    let resp = match PeerRequest::decode(buf.as_slice()) {
                        Ok(req) => handle(req).await,
                        Err(e) => super::error_response(
                            0,
                            &crate::error::ChatError::BadFrame(format!("bad request: {e}")),
                        ),
                    };
                    if send.write_all(&resp.encode_to_vec()).await.is_ok() {
                        let _ = send.finish();
                    }
                });
            }
        });
    }

    /// Closes every connection (peers see it at once rather than after their idle timeout).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
    }
}
