//! The node process: opens storage, joins the cluster (etcd registration, ring watch, QUIC
//! endpoint, outbox forwarder), accepts WebSocket clients, serves the client HTTP listener
//! (media) and the admin HTTP listener, and
//! shuts down gracefully (stop accepting, deregister, let sessions finish their pending ✓, stop
//! peers, drain the writer, flush storage).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_cluster::{EtcdConfig, NodeInfo, Registration};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::admin::{self, Health};
use crate::config::NodeConfig;
use crate::context::NodeContext;
use crate::ephemeral::Ephemeral;
use crate::error::ChatError;
use crate::gateway;
use crate::gateway::tls::ClientStream;
use crate::hub::Hub;
use crate::media::Media;
use crate::overload::Load;
use crate::peer::forwarder::Forwarder;
use crate::peer::transport::Peers;
use crate::peer::{self, tls};
use crate::presence::Presence;
use crate::rate::{Limit, Limiter};
use crate::routing::Routing;
use crate::store::{Store, StoreOptions};
use crate::writer::{Writer, WriterOptions};
use chat_auth::Verifier;

/// How long shutdown waits for sessions to end before giving up on them.
const SESSION_DRAIN: Duration = Duration::from_secs(10);

/// The cluster side of a node (absent when standalone).
struct ClusterParts {
    peers: Arc<Peers>,
    forwarder: Forwarder,
    outbox_rx: mpsc::UnboundedReceiver<crate::writer::Outboxed>,
    registration: Registration,
    streams_rx: mpsc::UnboundedReceiver<crate::stream::StreamItem>,
    events_rx: mpsc::UnboundedReceiver<crate::rebalance::MoveEvent>,
    fills_rx: mpsc::UnboundedReceiver<crate::replication::Fill>,
    etcd: EtcdConfig,
}

/// A node with its storage open and its listeners bound, ready to serve.
pub struct Node {
    listener: TcpListener,
    /// TLS on the client listener, when configured.
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin: TcpListener,
    http: TcpListener,
    /// TLS on the client HTTP listener, when configured.
    http_tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<NodeContext>,
    writer: std::thread::JoinHandle<()>,
    store: Arc<Store>,
    health: Arc<Health>,
    cluster: Option<ClusterParts>,
}

impl Node {
    pub async fn bind(cfg: NodeConfig) -> anyhow::Result<Node> {
        let metrics = admin::metrics_handle();
        admin::register_all(cfg.node.standalone);
        let store = Store::open(
            &cfg.node.data_dir,
            &StoreOptions {
                retention: cfg.retention(),
                block_cache_mib: cfg.storage.block_cache_mib,
                min_free_bytes: cfg.storage.min_free_mib * 1024 * 1024,
                compaction_headroom_bytes: cfg.storage.compaction_headroom_mib * 1024 * 1024,
            },
        )?;
        let hub = Hub::new(
            cfg.limits.session_queue as usize,
            cfg.ephemeral.device_queue,
        );
        let etcd = EtcdConfig {
            endpoints: cfg.cluster.etcd_endpoints.clone(),
            prefix: cfg.cluster.prefix.clone(),
        };
        if !cfg.node.standalone && store.created() && !cfg.cluster.accept_empty_store {
            refuse_empty_holder(&etcd, &cfg.node.id).await?;
        }
        store.keep_incarnation()?;
        let (routing, peers, outbox) = if cfg.node.standalone {
            (Routing::standalone(&cfg.node.id), None, None)
        } else {
            let c = &cfg.cluster;
            let identity = tls::Credentials::load(&c.ca_file, &c.cert_file, &c.key_file)?;
            let routing = Routing {
                self_id: cfg.node.id.clone(),
                view: chat_cluster::watch(etcd.clone()),
            };
            let view = routing.view.clone();
            let peers = Peers::bind(c.quic_listen, &identity, &cfg.node.id, view, &cfg.peer)?;
            (routing, Some(peers), Some(mpsc::unbounded_channel()))
        };
        let (outbox_tx, outbox_rx) = match outbox {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        // The writer's ordered streams to new owners and followers, the move driver's events,
        // and the followers to fill.
        let (streams_tx, streams_rx, events_tx, events_rx, fills_tx, fills_rx) =
            if cfg.node.standalone {
                (None, None, None, None, None, None)
            } else {
                let (mtx, mrx) = mpsc::unbounded_channel();
                let (etx, erx) = mpsc::unbounded_channel();
                let (ftx, frx) = mpsc::unbounded_channel();
                (
                    Some(mtx),
                    Some(mrx),
                    Some(etx),
                    Some(erx),
                    Some(ftx),
                    Some(frx),
                )
            };
        let (writer_handle, writer) = Writer::start(
            store.clone(),
            hub.clone(),
            WriterOptions {
                sync: cfg.storage.sync,
                max_batch: cfg.storage.max_batch,
                queue_depth: cfg.storage.queue_depth,
                retention_ms: cfg.retention().as_millis() as i64,
                routing: routing.clone(),
                env: Default::default(),
                outbox_tx,
                streams_tx,
                events_tx,
                fills_tx,
            },
        )?;
        let tls = if cfg.client_tls() {
            let acceptor = crate::gateway::tls::acceptor(
                Path::new(&cfg.client.tls_cert_file),
                Path::new(&cfg.client.tls_key_file),
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            Some(acceptor)
        } else {
            None
        };
        let http_tls = if cfg.http.tls_cert_file.is_empty() {
            None
        } else {
            let acceptor = chat_service::tls::acceptor(
                Path::new(&cfg.http.tls_cert_file),
                Path::new(&cfg.http.tls_key_file),
                "http.tls",
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            Some(acceptor)
        };
        let listener = TcpListener::bind(cfg.client.listen).await?;
        let client_url = cfg.client_url(listener.local_addr()?);
        let admin = TcpListener::bind(cfg.admin.listen).await?;
        let admin_url = format!("http://{}", admin.local_addr()?);
        let http = TcpListener::bind(cfg.http.listen).await?;
        let http_url = cfg.http_url(http.local_addr()?);
        let media = Arc::new(Media::open(&cfg, &http_url, routing.clone(), store.clone()).await?);
        let cluster = match (peers, outbox_rx) {
            (Some(peers), Some(outbox_rx)) => {
                let quic_addr = if cfg.cluster.quic_public_addr.is_empty() {
                    peers.local_addr()?.to_string()
                } else {
                    cfg.cluster.quic_public_addr.clone()
                };
                let info = NodeInfo {
                    id: cfg.node.id.clone(),
                    client_url: client_url.clone(),
                    quic_addr,
                    admin_url: admin_url.clone(),
                    http_url: http_url.clone(),
                    weight: cfg.cluster.weight,
                    version: env!("CARGO_PKG_VERSION").into(),
                };
                let registration = chat_cluster::register(
                    etcd.clone(),
                    info,
                    Duration::from_secs(cfg.cluster.lease_ttl_secs),
                );
                let forwarder = Forwarder::new(
                    store.clone(),
                    writer_handle.clone(),
                    peers.clone(),
                    routing.clone(),
                    cfg.forward.clone(),
                );
                Some(ClusterParts {
                    peers,
                    forwarder,
                    outbox_rx,
                    registration,
                    streams_rx: streams_rx.expect("cluster mode"),
                    events_rx: events_rx.expect("cluster mode"),
                    fills_rx: fills_rx.expect("cluster mode"),
                    etcd,
                })
            }
            _ => None,
        };
        let health = Arc::new(Health {
            registered: cluster.as_ref().map(|c| c.registration.registered.clone()),
            view: routing.view.clone(),
            shutting_down: false.into(),
            metrics,
        });
        let verifier = Verifier::new(
            cfg.auth.jwt_secret.as_bytes(),
            cfg.auth.leeway_secs,
            cfg.limits.max_id_bytes as usize,
        );
        let load = Load {
            writer: writer_handle.clone(),
            thresholds: cfg.overload.thresholds(),
        };
        let ephemeral = Ephemeral::new(
            routing.clone(),
            hub.clone(),
            store.clone(),
            load.clone(),
            cluster.as_ref().map(|c| c.peers.clone()),
            cfg.ephemeral.clone(),
        );
        let presence = Presence::new(
            routing.clone(),
            cfg.presence.clone(),
            store.clone(),
            writer_handle.clone(),
            ephemeral.clone(),
            cluster.as_ref().map(|c| c.peers.clone()),
            load.clone(),
        );
        let groups = crate::groups::Groups::new(
            routing.clone(),
            writer_handle.clone(),
            cluster.as_ref().map(|c| c.peers.clone()),
            cfg.groups.clone(),
            cfg.limits.max_id_bytes,
        );
        let shared = Arc::new(NodeContext {
            presence,
            groups,
            media,
            load,
            user_limits: Limiter::new(cfg.rate.per_user()),
            addr_limits: Limiter::new(cfg.rate.per_addr()),
            ephemeral,
            cfg,
            client_url,
            admin_url,
            http_url,
            verifier,
            store: store.clone(),
            hub,
            writer: writer_handle,
            routing,
        });
        Ok(Node {
            listener,
            tls,
            admin,
            http,
            http_tls,
            shared,
            writer,
            store,
            health,
            cluster,
        })
    }

    pub fn http_url(&self) -> &str {
        &self.shared.http_url
    }

    pub fn client_url(&self) -> &str {
        &self.shared.client_url
    }

    pub fn admin_url(&self) -> &str {
        &self.shared.admin_url
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Node {
            listener,
            tls,
            admin,
            http,
            http_tls,
            shared,
            writer,
            store,
            health,
            cluster,
        } = self;
        let (notify_shutdown, _) = broadcast::channel::<()>(1);
        let mut admin_stop = notify_shutdown.subscribe();
        let admin_task = tokio::spawn(admin::serve(admin, health.clone(), async move {
            let _ = admin_stop.recv().await;
        }));
        let mut http_stop = notify_shutdown.subscribe();
        let http_task = tokio::spawn(crate::http::serve(
            http,
            http_tls,
            shared.clone(),
            async move {
                let _ = http_stop.recv().await;
            },
        ));
        tokio::spawn(shared.media.clone().run_sweep(
            shared.cfg.retention().as_millis() as i64,
            notify_shutdown.subscribe(),
        ));
        tokio::spawn(
            shared
                .presence
                .clone()
                .run_expiry(notify_shutdown.subscribe()),
        );
        let mut peer_parts = None;
        let mut rebalance_tasks = None;
        if let Some(c) = cluster {
            // Weak: the context holds the peers (presence, ephemeral events), and the peers hold
            // this handler; a strong reference would keep the writer from ever stopping.
            let ctx = Arc::downgrade(&shared);
            c.peers.set_handler(Arc::new(move |req| {
                Box::pin(peer::handle_weak(req, ctx.clone()))
            }));
            tokio::spawn(
                shared
                    .presence
                    .clone()
                    .run_renew(notify_shutdown.subscribe()),
            );
            let server = tokio::spawn(c.peers.clone().serve());
            // Standalone, the ring never changes: no one to move.
            tokio::spawn(crate::gateway::signal_moved(
                shared.hub.clone(),
                shared.routing.clone(),
                notify_shutdown.subscribe(),
            ));
            let forwarder = tokio::spawn(c.forwarder.run(c.outbox_rx, notify_shutdown.subscribe()));
            let maintain = tokio::spawn(c.peers.clone().maintain());
            let id = shared.cfg.node.id.clone();
            let view = shared.routing.view.clone();
            let tuning = shared.cfg.rebalance.clone();
            let (lost_tx, lost_rx) = mpsc::unbounded_channel();
            let streams = tokio::spawn(crate::stream::send::run_streams(
                c.streams_rx,
                c.peers.clone(),
                id.clone(),
                view.clone(),
                tuning.clone(),
                lost_tx,
            ));
            tokio::spawn(crate::replication::fill::run_fills(
                c.fills_rx,
                lost_rx,
                shared.writer.clone(),
                tuning.clone(),
                notify_shutdown.subscribe(),
            ));
            let driver = tokio::spawn(crate::rebalance::driver::run_driver(
                c.events_rx,
                shared.writer.clone(),
                c.etcd,
                id,
                view,
                tuning,
            ));
            peer_parts = Some((c.peers, server, forwarder, c.registration, maintain));
            rebalance_tasks = Some((streams, driver));
        }
        // Every session holds a clone; when all are dropped, recv() returns None.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(shared.cfg.limits.max_connections as usize));
        tracing::info!(url = %shared.client_url, http = %shared.http_url, admin = %shared.admin_url, node = %shared.cfg.node.id, "serving clients");

        tokio::select! {
            res = accept_loop(&listener, tls.as_ref(), &shared, &notify_shutdown, &done_tx, &slots) => {
                res?;
            }
            _ = shutdown => tracing::info!("shutdown requested: draining"),
        }
        health.shutting_down.store(true, Ordering::Relaxed);
        drop(listener);
        // Routers stop sending clients here, and peers stop forwarding here (they keep the
        // entries in their outboxes until the node is back).
        let mut peer_tasks = None;
        if let Some((peers, server, forwarder, registration, maintain)) = peer_parts {
            registration.deregister().await;
            maintain.abort();
            peer_tasks = Some((peers, server, forwarder));
        }
        // The driver holds a writer handle; the writer cannot stop while it runs.
        if let Some((streams, driver)) = rebalance_tasks {
            driver.abort();
            streams.abort();
        }
        drop(notify_shutdown);
        drop(done_tx);
        if tokio::time::timeout(SESSION_DRAIN, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the drain period; closing anyway");
        }
        if let Some((peers, server, forwarder)) = peer_tasks {
            peers.close();
            let _ = tokio::time::timeout(SESSION_DRAIN, server).await;
            let _ = tokio::time::timeout(SESSION_DRAIN, forwarder).await;
        }
        let _ = tokio::time::timeout(SESSION_DRAIN, admin_task).await;
        let _ = tokio::time::timeout(SESSION_DRAIN, http_task).await;
        // The writer stops once the last handle (held by `shared`, sessions, the peer server
        // and the forwarder) is gone and its queue is empty: every submitted command is committed
        // first.
        drop(shared);
        let joined = tokio::time::timeout(
            SESSION_DRAIN,
            tokio::task::spawn_blocking(move || writer.join()),
        )
        .await;
        match joined {
            Ok(Ok(Ok(()))) => {
                store.flush()?;
                tracing::info!("storage flushed; bye");
            }
            Ok(_) => anyhow::bail!("writer thread panicked"),
            // A session that ignored the drain still holds a handle. Everything acknowledged is
            // already in the WAL, so exiting without the memtable flush loses nothing.
            Err(_) => tracing::warn!("writer still busy after the drain period; exiting"),
        }
        Ok(())
    }
}

/// A node whose store is new must not join a replicated ring that already names it a holder:
/// as owner it would replace its followers' copies (the only ones left) with its empty store.
async fn refuse_empty_holder(etcd: &EtcdConfig, me: &str) -> anyhow::Result<()> {
    let mut client = chat_cluster::connect(etcd).await?;
    let Some(doc) = chat_cluster::read_ring(&mut client, &etcd.prefix).await? else {
        return Ok(());
    };
    let ring = &doc.current;
    if ring.replication_factor > 1 && ring.members.iter().any(|m| m.id == me) {
        anyhow::bail!(
            "this node's store is new, but ring epoch {} already names {me} a holder of {} \
             copies: its data is on its followers, and starting would replace their copies with \
             nothing. Recovery from followers is not built yet (docs/replication.md); if the data \
             is lost anyway, set cluster.accept_empty_store = true",
            ring.epoch,
            ring.replication_factor
        );
    }
    Ok(())
}

async fn accept_loop(
    listener: &TcpListener,
    tls: Option<&tokio_rustls::TlsAcceptor>,
    shared: &Arc<NodeContext>,
    notify_shutdown: &broadcast::Sender<()>,
    done_tx: &mpsc::Sender<()>,
    slots: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = notify_shutdown.subscribe();
        let done = done_tx.clone();
        // Refused (after the handshake, so the client can read why): an address over its rate
        // of new connections, then a node at its connection limit.
        let mut slot = None;
        let admitted = shared
            .addr_limits
            .check(&peer.ip(), Limit::Connections)
            .and_then(|()| {
                slot = slots.clone().try_acquire_owned().ok();
                slot.as_ref()
                    .map(|_| ())
                    .ok_or_else(|| ChatError::Overloaded("too many connections".into()))
            });
        let tls = tls.cloned();
        tokio::spawn(async move {
            connection(stream, tls, peer, shared, shutdown, admitted).await;
            drop(slot);
            drop(done);
        });
    }
}

async fn connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
    shared: Arc<NodeContext>,
    shutdown: broadcast::Receiver<()>,
    admitted: Result<(), ChatError>,
) {
    let l = &shared.cfg.limits;
    // Frames between max_frame_bytes and this hard cap are answered with FRAME_TOO_LARGE and the
    // connection stays up; beyond it tungstenite closes the connection (1009) without buffering.
    let hard_cap = l.max_frame_bytes as usize * 4;
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap))
        .read_buffer_size(shared.cfg.client.read_buffer_bytes);
    let timeout = Duration::from_millis(shared.cfg.client.hello_timeout_ms);
    let stream = match tls {
        None => ClientStream::Plain(stream),
        // Boxed like the WebSocket handshake below: awaited once.
        Some(tls) => match tokio::time::timeout(timeout, Box::pin(tls.accept(stream))).await {
            Ok(Ok(s)) => ClientStream::Tls(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
    };
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(ws_cfg));
    // Boxed, like everything a connection awaits only once: the task keeps only what its idle
    // state needs (see `gateway::session`).
    let mut ws = match tokio::time::timeout(timeout, Box::pin(handshake)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    if let Err(e) = admitted {
        use futures_util::SinkExt;
        tracing::debug!(%peer, error = %e, "connection refused");
        let text = chat_proto::encode(chat_proto::Encoding::Json, &e.to_frame(""));
        let text = String::from_utf8(text).expect("JSON is UTF-8");
        // Bounded: a refused client must not hold a task either.
        let refuse = async {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await?;
            ws.close(None).await
        };
        let _ = tokio::time::timeout(timeout, Box::pin(refuse)).await;
        return;
    }
    gateway::serve(Box::new(ws), peer, shared, shutdown).await;
}
