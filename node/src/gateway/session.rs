//! One authenticated connection: attach, then one loop over what can happen next (a frame from
//! the client, a live entry, a page of backlog, a ✓, a signal from the hub, a ring change, the
//! node stopping, a keepalive or idle deadline).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::tls::ClientStream;
use chat_auth::Identity;
use chat_proto::store::InboxEntry;
use chat_proto::v1::{server_frame, Redirect, ServerFrame, Welcome};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::WebSocketStream;

use super::conn::{Conn, Gone};
use super::delivery::Cursor;
use super::{to_deliver, End};
use crate::admin;
use crate::context::NodeContext;
use crate::error::ChatError;
use crate::hub::{Push, Subscription};
use crate::routing::Route;
use crate::store::StoredEntry;

/// Entries read from storage per catch-up page.
const PAGE: usize = 512;
/// How long a draining session waits for its pending ✓ before closing.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How often held-back acks are tried again while the node is overloaded.
const ACK_RETRY: Duration = Duration::from_millis(100);
/// At most this many already-queued frames are written after an event before the flush, so a
/// burst leaves in one socket write and a flood cannot keep the loop from its other branches.
const WRITE_BATCH: usize = 64;

type SendResult = (String, Result<chat_proto::v1::Sent, ChatError>);
type PendingSend = Pin<Box<dyn std::future::Future<Output = SendResult> + Send>>;

pub(super) struct Session {
    pub conn: Conn,
    pub ctx: Arc<NodeContext>,
}

/// The state of an authenticated connection.
pub(super) struct Live {
    pub who: Identity,
    pub sub: Subscription,
    pub cursor: Cursor,
    page: Option<JoinHandle<Result<Vec<StoredEntry>, ChatError>>>,
    pub inflight: FuturesOrdered<PendingSend>,
    /// Highest seq acknowledged / marked read on this connection.
    pub acked: u64,
    pub read: u64,
    /// This connection in the presence service (its watch list); ends with it.
    pub presence: PresenceGuard,
    /// Acks and reads held back while the node is overloaded.
    pub deferred: Deferred,
}

/// Held-back acknowledgements: the highest read and the highest plain ack (0: none).
#[derive(Default)]
pub(super) struct Deferred {
    pub ack: u64,
    pub read: u64,
}

impl Deferred {
    pub fn is_empty(&self) -> bool {
        self.ack == 0 && self.read == 0
    }
}

/// A connected device as presence sees it: counted while the session lives.
pub(super) struct PresenceGuard {
    presence: Arc<crate::presence::Presence>,
    user: String,
    pub conn: u64,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.disconnected(&self.user, self.conn);
    }
}

impl Live {
    /// The newest entry the live queue dropped since last asked, if it dropped any.
    fn dropped(&self) -> Option<u64> {
        let signals = &self.sub.signals;
        signals
            .lagged
            .swap(false, Ordering::AcqRel)
            .then(|| signals.max_dropped.load(Ordering::Acquire))
    }
}

/// Runs a connection from its Hello to its end; hands back the socket to close as `End` says.
pub(super) async fn run(
    ws: Box<WebSocketStream<ClientStream>>,
    ctx: Arc<NodeContext>,
    mut shutdown: broadcast::Receiver<()>,
) -> (Conn, End) {
    let c = &ctx.cfg;
    let conn = Conn::new(
        ws,
        Duration::from_millis(c.client.write_timeout_ms),
        c.limits.max_frame_bytes as usize,
    );
    let mut s = Session { conn, ctx };
    let end = s.serve(&mut shutdown).await;
    (s.conn, end)
}

impl Session {
    async fn serve(&mut self, shutdown: &mut broadcast::Receiver<()>) -> End {
        let timeout = Duration::from_millis(self.ctx.cfg.client.hello_timeout_ms);
        // Everything before the live loop is boxed (see `serve_live`).
        let (who, resume_after) = match Box::pin(super::hello::hello(
            &mut self.conn,
            &self.ctx.verifier,
            timeout,
            shutdown,
        ))
        .await
        {
            Ok(hello) => hello,
            Err(end) => return end,
        };
        let span = tracing::Span::current();
        span.record("user", who.user.as_str());
        span.record("device", who.device.as_str());
        if let Err(end) = Box::pin(self.redirect_unless_here(&who.user, "redirect")).await {
            return end;
        }
        // Subscribe before reading the cursor: see `delivery`.
        let sub = self.ctx.hub.subscribe(&who.user, &who.device);
        // Once subscribed, a ring change is signalled (`moved`); one that came between the
        // check above and the subscription is seen here.
        if let Err(end) = Box::pin(self.redirect_unless_here(&who.user, "redirect")).await {
            return end;
        }
        let max = self.ctx.cfg.limits.max_devices_per_user;
        let attached = match Box::pin(self.ctx.writer.attach(who.clone(), max)).await {
            Ok(a) => a,
            Err(e) => {
                let _ = Box::pin(self.conn.send(&e.to_frame(""))).await;
                return End::Close(CloseCode::Policy, "attach refused");
            }
        };
        let welcome = ServerFrame {
            frame: Some(server_frame::Frame::Welcome(Welcome {
                user: who.user.clone(),
                device: who.device.clone(),
                node: self.ctx.cfg.node.id.clone(),
                cursor: attached.cursor,
                inbox_seq: attached.inbox_seq,
                read_seq: attached.read_seq,
                limits: Some(self.ctx.limits()),
                server_time_ms: chat_proto::now_ms(),
            })),
        };
        if Box::pin(self.conn.send(&welcome)).await.is_err()
            || Box::pin(self.conn.flush()).await.is_err()
        {
            return End::Gone;
        }
        tracing::debug!(
            cursor = attached.cursor,
            inbox_seq = attached.inbox_seq,
            "attached"
        );
        let presence = PresenceGuard {
            presence: self.ctx.presence.clone(),
            user: who.user.clone(),
            conn: self.ctx.presence.connected(&who.user),
        };
        let mut live = Live {
            deferred: Deferred::default(),
            presence,
            who,
            sub,
            // What the device says it has processed is not sent again (but not acknowledged
            // for it either: its next cumulative ack covers it).
            cursor: Cursor::new(attached.cursor.max(resume_after.min(attached.inbox_seq))),
            page: None,
            inflight: FuturesOrdered::new(),
            acked: attached.cursor,
            read: 0,
        };
        let end = self.serve_live(&mut live, shutdown).await;
        if matches!(end, End::Close(CloseCode::Away, _)) {
            Box::pin(self.drain_inflight(&mut live)).await;
        }
        Box::pin(self.hand_over_acks(&mut live)).await;
        end
    }

    /// A user served elsewhere gets a Redirect to its home (or UNAVAILABLE) and the session
    /// ends.
    async fn redirect_unless_here(&mut self, user: &str, why: &'static str) -> Result<(), End> {
        match self.ctx.routing.route(user) {
            Route::Here => Ok(()),
            Route::Elsewhere { url, epoch, .. } => {
                tracing::info!(%url, epoch, why, "not this user's home: redirecting");
                metrics::counter!(admin::REDIRECTS).increment(1);
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Redirect(Redirect { url, epoch })),
                };
                let _ = self.conn.send(&frame).await;
                Err(End::Close(CloseCode::Normal, why))
            }
            Route::Unavailable(why) => {
                let _ = self
                    .conn
                    .send(&ChatError::Unavailable(why).to_frame(""))
                    .await;
                Err(End::Close(CloseCode::Again, "try again later"))
            }
        }
    }

    /// The loop an idle connection waits in. A future is as large as the largest thing it
    /// awaits, and this one is in every connection's task for its whole life, so what is awaited
    /// rarely (a request's handling, a backlog page, a redirect, and everything before the loop)
    /// is boxed; only the per-message path is inline. A connection's task is about 2.9 KB
    /// (7.3 KB with everything inline, measured with heaptrack).
    async fn serve_live(&mut self, live: &mut Live, shutdown: &mut broadcast::Receiver<()>) -> End {
        let idle = Duration::from_millis(self.ctx.cfg.client.idle_timeout_ms);
        let max_inflight = self.ctx.cfg.limits.max_inflight_sends as usize;
        let mut idle_deadline = Instant::now() + idle;
        // Ping a quiet client well before the idle deadline: any answer (its WebSocket layer
        // pongs by itself) keeps the connection; only a dead or stuck peer is closed.
        let keepalive = idle / 3;
        let mut ping_at = Instant::now() + keepalive;
        loop {
            if live.page.is_none() {
                if let Some(from) = live.cursor.page_to_read() {
                    let (store, user) = (self.ctx.store.clone(), live.who.user.clone());
                    live.page = Some(tokio::task::spawn_blocking(move || {
                        store.inbox_from(&user, from, PAGE).map_err(ChatError::from)
                    }));
                }
            }
            // Not biased: among ready branches one is picked at random, so neither a flood of
            // deliveries nor a client sending without pause can starve the other.
            let step = tokio::select! {
                _ = shutdown.recv() => {
                    // Tell the client why, with a retry hint, before the close frame.
                    let _ = Box::pin(self.conn.send(&ChatError::ShuttingDown.to_frame(""))).await;
                    Err(End::Close(CloseCode::Away, "node shutting down"))
                }
                _ = live.sub.signals.notify.notified() => match self.on_signal(live) {
                    // The ring changed and this node no longer owns the user (a committed
                    // move): it is sent to its new home, where it resumes from its cursor.
                    Ok(true) => match self.ctx.routing.route(&live.who.user) {
                        Route::Here | Route::Unavailable(_) => Ok(()),
                        Route::Elsewhere { .. } => {
                            Box::pin(self.redirect_unless_here(&live.who.user, "moved to another node")).await
                        }
                    },
                    Ok(false) => Ok(()),
                    Err(end) => Err(end),
                },
                Some((cmid, res)) = live.inflight.next(), if !live.inflight.is_empty() => {
                    self.on_sent(&cmid, res).await.map_err(End::from)
                }
                page = async { live.page.as_mut().expect("guarded").await }, if live.page.is_some() => {
                    live.page = None;
                    match page {
                        Ok(Ok(entries)) => Box::pin(self.on_page(live, entries)).await,
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "reading backlog failed");
                            Err(End::Close(CloseCode::Error, "storage error"))
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "backlog task failed");
                            Err(End::Close(CloseCode::Error, "internal error"))
                        }
                    }
                }
                msg = self.conn.next(), if live.inflight.len() < max_inflight => {
                    idle_deadline = Instant::now() + idle;
                    ping_at = Instant::now() + keepalive;
                    match msg {
                        Some(Ok(m)) => Box::pin(self.on_message(live, m)).await,
                        Some(Err(end)) => Err(end),
                        None => Err(End::Gone),
                    }
                }
                // Held-back acks are retried while the node sheds them.
                _ = tokio::time::sleep(ACK_RETRY), if !live.deferred.is_empty() => {
                    self.flush_acks(live).map_err(|_| End::Gone)
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    ping_at = Instant::now() + keepalive;
                    self.conn.ping().await.map_err(End::from)
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    Err(End::Close(CloseCode::Away, "idle timeout"))
                }
            };
            if let Err(end) = step {
                return end;
            }
            if let Err(end) = self.write_queued(live).await {
                return end;
            }
            if self.conn.flush().await.is_err() {
                return End::Gone;
            }
        }
    }

    /// Writes what is waiting (✓s whose commit is done, live entries, notices) without flushing
    /// in between: one socket write for a burst instead of one per frame. This is also where the
    /// hub's queues are drained, after every event of the loop (the hub's `Notify` wakes the
    /// loop when they fill). Each queue is taken in order, and the cursor still decides what is
    /// sent.
    async fn write_queued(&mut self, live: &mut Live) -> Result<(), End> {
        for _ in 0..WRITE_BATCH {
            // `now_or_never` polls with a no-op waker; the loop's next `select!` registers the
            // task's waker again before it waits, and a completion in between is still queued.
            if let Some(Some((cmid, res))) = live.inflight.next().now_or_never() {
                self.on_sent(&cmid, res).await?;
            } else if let Some(push) = live.sub.signals.pop_entry() {
                self.on_push(live, push).await?;
            } else if let Some(notice) = live.sub.signals.pop_notice() {
                self.conn.send(&notice).await?;
            } else {
                return Ok(());
            }
        }
        // More is waiting: come back to it after the other branches had their turn.
        live.sub.signals.notify.notify_one();
        Ok(())
    }

    /// The connection ends with acks still held back: queue them, waiting a bounded time, so
    /// their receipts are not lost (the device would otherwise have to acknowledge again).
    async fn hand_over_acks(&mut self, live: &mut Live) {
        let d = std::mem::take(&mut live.deferred);
        for (up_to, read) in [(d.read, true), (d.ack, false)] {
            if up_to > 0 {
                let ack = self.ctx.writer.ack(live.who.clone(), up_to, read);
                if !matches!(tokio::time::timeout(DRAIN_WAIT, ack).await, Ok(Ok(()))) {
                    tracing::warn!(
                        up_to,
                        read,
                        "held-back ack not handed over before the session ended"
                    );
                }
            }
        }
    }

    /// On shutdown: stop reading, but give pending sends their ✓ (they are being committed).
    async fn drain_inflight(&mut self, live: &mut Live) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while let Ok(Some((cmid, res))) =
            tokio::time::timeout_at(deadline, live.inflight.next()).await
        {
            if self.on_sent(&cmid, res).await.is_err() {
                return;
            }
        }
    }

    /// The hub's signals; `Ok(true)` when the user may have moved to another node.
    fn on_signal(&mut self, live: &mut Live) -> Result<bool, End> {
        if live.sub.signals.replaced.load(Ordering::Acquire) {
            return Err(End::Close(
                CloseCode::Policy,
                "replaced by a newer connection of this device",
            ));
        }
        if let Some(d) = live.dropped() {
            live.cursor.lagged(d);
        }
        Ok(live.sub.signals.moved.swap(false, Ordering::AcqRel))
    }

    async fn on_push(&mut self, live: &mut Live, push: Push) -> Result<(), End> {
        if live.cursor.live(push.seq) {
            self.deliver(push.seq, &push.entry).await?;
        }
        Ok(())
    }

    async fn on_page(&mut self, live: &mut Live, entries: Vec<StoredEntry>) -> Result<(), End> {
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        let fresh = live
            .cursor
            .page(&seqs, entries.len() == PAGE, live.dropped());
        for e in &entries[entries.len() - fresh..] {
            self.deliver(e.seq, &e.entry).await?;
        }
        Ok(())
    }

    async fn on_sent(
        &mut self,
        cmid: &str,
        res: Result<chat_proto::v1::Sent, ChatError>,
    ) -> Result<(), Gone> {
        let frame = match res {
            Ok(sent) => {
                metrics::counter!(admin::MESSAGES_IN).increment(1);
                ServerFrame {
                    frame: Some(server_frame::Frame::Sent(sent)),
                }
            }
            Err(e) => {
                // Refusals the client retries (a full disk, a move) are logged where they arise,
                // once per interval; one line per send would flood the log.
                if e.is_internal() {
                    tracing::warn!(error = %e, client_msg_id = cmid, "send failed");
                } else {
                    tracing::debug!(error = %e, client_msg_id = cmid, "send refused");
                }
                e.to_frame(cmid)
            }
        };
        self.conn.send(&frame).await
    }

    async fn deliver(&mut self, seq: u64, entry: &InboxEntry) -> Result<(), Gone> {
        metrics::counter!(admin::MESSAGES_OUT).increment(1);
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Deliver(to_deliver(seq, entry))),
        };
        self.conn.send(&frame).await
    }
}
