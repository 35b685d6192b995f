//! The node process: opens storage, starts the committer, accepts WebSocket clients, and shuts
//! down gracefully (stop accepting, let sessions finish their pending ✓, drain the committer,
//! flush storage).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Verifier;
use crate::commit::Committer;
use crate::config::NodeConfig;
use crate::error::ChatError;
use crate::hub::Hub;
use crate::session::{self, Shared};
use crate::store::{Store, StoreOptions};

/// How long shutdown waits for sessions to end before giving up on them.
const SESSION_DRAIN: Duration = Duration::from_secs(10);

/// A node with its storage open and its listener bound, ready to serve.
pub struct Node {
    listener: TcpListener,
    shared: Arc<Shared>,
    committer: std::thread::JoinHandle<()>,
    store: Arc<Store>,
}

impl Node {
    pub async fn bind(cfg: NodeConfig) -> anyhow::Result<Node> {
        let store = Store::open(
            &cfg.node.data_dir,
            &StoreOptions {
                retention: cfg.retention(),
                block_cache_mib: cfg.storage.block_cache_mib,
            },
        )?;
        let hub = Hub::new(cfg.limits.session_queue as usize);
        let (committer_handle, committer) = Committer::start(
            store.clone(),
            hub.clone(),
            cfg.storage.sync,
            cfg.storage.max_batch,
            cfg.storage.queue_depth,
            cfg.retention().as_millis() as i64,
        );
        let listener = TcpListener::bind(cfg.client.listen).await?;
        let client_url = cfg.client_url(listener.local_addr()?);
        let verifier = Verifier::new(
            cfg.auth.jwt_secret.as_bytes(),
            cfg.auth.leeway_secs,
            cfg.limits.max_id_bytes as usize,
        );
        let shared = Arc::new(Shared {
            cfg,
            client_url,
            verifier,
            store: store.clone(),
            hub,
            committer: committer_handle,
        });
        Ok(Node {
            listener,
            shared,
            committer,
            store,
        })
    }

    pub fn client_url(&self) -> &str {
        &self.shared.client_url
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Node {
            listener,
            shared,
            committer,
            store,
        } = self;
        let (notify_shutdown, _) = broadcast::channel::<()>(1);
        // Every session holds a clone; when all are dropped, recv() returns None.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(shared.cfg.limits.max_connections as usize));
        tracing::info!(url = %shared.client_url, node = %shared.cfg.node.id, "serving clients");

        tokio::select! {
            res = accept_loop(&listener, &shared, &notify_shutdown, &done_tx, &slots) => {
                res?;
            }
            _ = shutdown => tracing::info!("shutdown requested: draining"),
        }
        drop(listener);
        drop(notify_shutdown);
        drop(done_tx);
        if tokio::time::timeout(SESSION_DRAIN, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the drain period; closing anyway");
        }
        // The committer stops once the last handle (held by `shared` and by sessions) is gone
        // and its queue is empty: every command a session submitted is committed first.
        drop(shared);
        let joined = tokio::time::timeout(
            SESSION_DRAIN,
            tokio::task::spawn_blocking(move || committer.join()),
        )
        .await;
        match joined {
            Ok(Ok(Ok(()))) => {
                store.flush()?;
                tracing::info!("storage flushed; bye");
            }
            Ok(_) => anyhow::bail!("committer thread panicked"),
            // A session that ignored the drain still holds a handle. Everything acknowledged is
            // already in the WAL, so exiting without the memtable flush loses nothing.
            Err(_) => tracing::warn!("committer still busy after the drain period; exiting"),
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
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
        let slot = slots.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            connection(stream, peer, shared, shutdown, slot.is_some()).await;
            drop(slot);
            drop(done);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: broadcast::Receiver<()>,
    admitted: bool,
) {
    let l = &shared.cfg.limits;
    // Frames between max_frame_bytes and this hard cap are answered with FRAME_TOO_LARGE and the
    // connection stays up; beyond it tungstenite closes the connection (1009) without buffering.
    let hard_cap = l.max_frame_bytes as usize * 4;
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(hard_cap))
        .max_frame_size(Some(hard_cap));
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(ws_cfg));
    let timeout = Duration::from_millis(shared.cfg.client.hello_timeout_ms);
    let mut ws = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            return;
        }
        Err(_) => return,
    };
    if !admitted {
        use futures_util::SinkExt;
        let e = ChatError::Overloaded("too many connections".into());
        let text = chat_proto::encode(chat_proto::Encoding::Json, &e.to_frame(""));
        let text = String::from_utf8(text).expect("JSON is UTF-8");
        // Bounded: a refused client must not hold a task either.
        let refuse = async {
            ws.send(tokio_tungstenite::tungstenite::Message::text(text))
                .await?;
            ws.close(None).await
        };
        let _ = tokio::time::timeout(timeout, refuse).await;
        return;
    }
    session::serve(ws, peer, shared, shutdown).await;
}
