//! One client connection: authentication, then frames in and entries out.
//!
//! Delivery without gaps or duplicates: the session subscribes to the hub *before* it learns its
//! cursor, then reads its backlog from storage ("catching up") while live entries queue. A live
//! entry is sent only if it is exactly the next seq; anything older was already sent, anything
//! newer means entries were missed and the session catches up from storage again. Storage is the
//! truth; the live queue is only a shortcut.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::store::{inbox_entry, InboxEntry};
use chat_proto::v1::Redirect;
use chat_proto::v1::{
    client_frame, deliver, server_frame, ClientFrame, Deliver, HistoryPage, Limits, Pong,
    ServerFrame, Welcome,
};
use chat_proto::Encoding;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::admin;
use crate::config::NodeConfig;
use crate::error::ChatError;
use crate::hub::{Hub, Push, Subscription};
use crate::routing::Routing;
use crate::store::{Store, StoredEntry};
use crate::validate::{check_body, check_id, IdKind};
use crate::writer::{Attached, WriterHandle};
use chat_auth::{Identity, Verifier};

/// Entries read from storage per catch-up page.
const PAGE: usize = 512;
/// Failed Hello frames before the connection is closed.
const MAX_HELLO_ATTEMPTS: u32 = 3;
/// How long a draining session waits for its pending ✓ before closing.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// What every session of a node shares.
pub struct Shared {
    pub cfg: NodeConfig,
    pub client_url: String,
    pub admin_url: String,
    pub verifier: Verifier,
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub writer: WriterHandle,
    pub routing: Routing,
}

/// Where a user is served.
enum Route {
    Here,
    Elsewhere { url: String, epoch: u64 },
    Unavailable(String),
}

impl Shared {
    fn route(&self, user: &str) -> Route {
        let v = self.routing.view.borrow();
        match v.owner(user) {
            None => Route::Unavailable("the cluster has no ring yet".into()),
            Some(o) if o == self.routing.self_id => Route::Here,
            Some(o) => match v.node(o) {
                Some(n) => Route::Elsewhere {
                    url: n.client_url.clone(),
                    epoch: v.epoch(),
                },
                None => Route::Unavailable(format!("home node {o} is not available")),
            },
        }
    }

    fn limits(&self) -> Limits {
        let l = &self.cfg.limits;
        Limits {
            max_frame_bytes: l.max_frame_bytes,
            max_body_bytes: l.max_body_bytes,
            max_id_bytes: l.max_id_bytes,
            max_history_page: l.max_history_page,
            max_devices_per_user: l.max_devices_per_user,
            max_inflight_sends: l.max_inflight_sends,
        }
    }
}

type SendResult = (String, Result<chat_proto::v1::Sent, ChatError>);
type Pending = Pin<Box<dyn std::future::Future<Output = SendResult> + Send>>;

/// Why the connection ended.
enum End {
    /// The socket failed or the client vanished without a close frame.
    Gone,
    /// The client sent a close frame: it gets the echo the protocol asks for (RFC 6455 §5.5.1),
    /// which the WebSocket layer queued when it read the client's frame.
    PeerClosed,
    /// We close it with this code and reason.
    Close(CloseCode, &'static str),
}

pub struct Session {
    ws: WebSocketStream<TcpStream>,
    ctx: Arc<Shared>,
    enc: Encoding,
    /// Frames fed to the socket since the last flush.
    unflushed: bool,
}

/// Serves one connection until it ends or the node shuts down.
pub async fn serve(
    ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    ctx: Arc<Shared>,
    shutdown: broadcast::Receiver<()>,
) {
    let span = tracing::info_span!(
        "conn",
        %peer,
        user = tracing::field::Empty,
        device = tracing::field::Empty
    );
    let mut s = Session {
        ws,
        ctx,
        enc: Encoding::Json,
        unflushed: false,
    };
    async move {
        metrics::gauge!(admin::CONNECTIONS).increment(1.0);
        let end = s.run(shutdown).await;
        metrics::gauge!(admin::CONNECTIONS).decrement(1.0);
        let timeout = s.write_timeout();
        match end {
            End::Close(code, reason) => {
                let _ = s.flush().await;
                let close = s.ws.close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let _ = tokio::time::timeout(timeout, close).await;
            }
            End::PeerClosed => {
                // The echo is queued already; only a flush sends it (sending a close frame of
                // our own would fail: the peer has closed).
                let _ = tokio::time::timeout(timeout, SinkExt::flush(&mut s.ws)).await;
            }
            End::Gone => {}
        }
        tracing::debug!("connection closed");
    }
    .instrument(span)
    .await
}

/// The state of an authenticated connection.
struct Live {
    who: Identity,
    /// The cluster view, to notice when this user moves to another node. `None` once its
    /// sender is gone (a standalone node never has one; a stopping node drops it): nothing
    /// more will change, and a closed channel must not be polled again (it is always ready).
    view: Option<tokio::sync::watch::Receiver<chat_cluster::ClusterView>>,
    sub: Subscription,
    /// Highest seq sent on this connection (starts at the device's cursor).
    last_sent: u64,
    catching_up: bool,
    /// Highest live seq seen while catching up: catch-up ends only once it has been sent.
    max_seen: u64,
    page: Option<JoinHandle<Result<Vec<StoredEntry>, ChatError>>>,
    /// `max_seen` when the page in flight was requested.
    page_seen: u64,
    inflight: FuturesOrdered<Pending>,
    /// Highest seq acknowledged / marked read on this connection.
    acked: u64,
    read: u64,
}

impl Live {
    /// If live entries were dropped, go back to storage until the newest dropped one is sent.
    fn take_lag(&mut self) {
        let signals = &self.sub.signals;
        if signals.lagged.swap(false, Ordering::AcqRel) {
            self.catching_up = true;
            self.max_seen = self
                .max_seen
                .max(signals.max_dropped.load(Ordering::Acquire));
        }
    }
}

impl Session {
    async fn run(&mut self, mut shutdown: broadcast::Receiver<()>) -> End {
        let (who, resume_after) = match self.hello(&mut shutdown).await {
            Ok(hello) => hello,
            Err(end) => return end,
        };
        let span = tracing::Span::current();
        span.record("user", who.user.as_str());
        span.record("device", who.device.as_str());
        match self.ctx.route(&who.user) {
            Route::Here => {}
            Route::Elsewhere { url, epoch } => {
                tracing::debug!(%url, "not this user's home: redirecting");
                metrics::counter!(admin::REDIRECTS).increment(1);
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Redirect(Redirect { url, epoch })),
                };
                let _ = self.send(&frame).await;
                return End::Close(CloseCode::Normal, "redirect");
            }
            Route::Unavailable(why) => {
                let _ = self.send(&ChatError::Unavailable(why).to_frame("")).await;
                return End::Close(CloseCode::Again, "try again later");
            }
        }

        // Subscribe before reading the cursor: see the module comment.
        let sub = self.ctx.hub.subscribe(&who.user, &who.device);
        let attached = match self.attach(&who).await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.send(&e.to_frame("")).await;
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
                limits: Some(self.ctx.limits()),
                server_time_ms: chat_proto::now_ms(),
            })),
        };
        if self.send(&welcome).await.is_err() || self.flush().await.is_err() {
            return End::Gone;
        }
        tracing::debug!(
            cursor = attached.cursor,
            inbox_seq = attached.inbox_seq,
            "attached"
        );
        let mut live = Live {
            view: Some(self.ctx.routing.view.clone()),
            who,
            sub,
            // What the device says it has processed is not sent again (but not acknowledged
            // for it either: its next cumulative ack covers it).
            last_sent: attached.cursor.max(resume_after.min(attached.inbox_seq)),
            catching_up: true,
            max_seen: 0,
            page: None,
            page_seen: 0,
            inflight: FuturesOrdered::new(),
            acked: attached.cursor,
            read: 0,
        };
        let end = self.serve_live(&mut live, &mut shutdown).await;
        if matches!(end, End::Close(CloseCode::Away, _)) {
            self.drain_inflight(&mut live).await;
        }
        end
    }

    async fn attach(&self, who: &Identity) -> Result<Attached, ChatError> {
        let max = self.ctx.cfg.limits.max_devices_per_user;
        self.ctx.writer.attach(who.clone(), max).await
    }

    /// Waits for a valid Hello. Other frames are answered with UNAUTHENTICATED.
    /// The identity of a good hello, and the seq the device says it has processed.
    async fn hello(
        &mut self,
        shutdown: &mut broadcast::Receiver<()>,
    ) -> Result<(Identity, u64), End> {
        let deadline = Instant::now() + Duration::from_millis(self.ctx.cfg.client.hello_timeout_ms);
        let mut attempts = 0;
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout_at(deadline, self.ws.next()) => m,
                _ = shutdown.recv() => {
                    let _ = self.send(&ChatError::ShuttingDown.to_frame("")).await;
                    return Err(End::Close(CloseCode::Away, "node shutting down"));
                }
            };
            let msg = match msg {
                Err(_) => {
                    let _ = self.send(&ChatError::Unauthenticated.to_frame("")).await;
                    return Err(End::Close(CloseCode::Policy, "no hello in time"));
                }
                Ok(None) => return Err(End::Gone),
                Ok(Some(Err(e))) => return Err(read_error(e)),
                Ok(Some(Ok(m))) => m,
            };
            let frame = match self.decode(msg) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(None) => return Err(End::PeerClosed),
                Err(Some(e)) => {
                    self.reply_error(&e, "").await.map_err(|_| End::Gone)?;
                    self.flush().await.map_err(|_| End::Gone)?;
                    continue;
                }
            };
            match frame.frame {
                Some(client_frame::Frame::Hello(h)) => {
                    match self.ctx.verifier.verify(&h.token).map_err(ChatError::from) {
                        Ok(who) => return Ok((who, h.resume_after)),
                        Err(e) => {
                            tracing::debug!(error = %e, "hello refused");
                            self.reply_error(&e, "").await.map_err(|_| End::Gone)?;
                            attempts += 1;
                            if attempts >= MAX_HELLO_ATTEMPTS {
                                return Err(End::Close(CloseCode::Policy, "authentication failed"));
                            }
                        }
                    }
                }
                _ => self
                    .reply_error(&ChatError::Unauthenticated, "")
                    .await
                    .map_err(|_| End::Gone)?,
            }
            self.flush().await.map_err(|_| End::Gone)?;
        }
    }

    async fn serve_live(&mut self, live: &mut Live, shutdown: &mut broadcast::Receiver<()>) -> End {
        let idle = Duration::from_millis(self.ctx.cfg.client.idle_timeout_ms);
        let max_inflight = self.ctx.cfg.limits.max_inflight_sends as usize;
        let mut idle_deadline = Instant::now() + idle;
        // Ping a quiet client well before the idle deadline: any answer (its WebSocket layer
        // pongs by itself) keeps the connection; only a dead or stuck peer is closed.
        let keepalive = idle / 3;
        let mut ping_at = Instant::now() + keepalive;
        loop {
            if live.catching_up && live.page.is_none() {
                let store = self.ctx.store.clone();
                let (user, from) = (live.who.user.clone(), live.last_sent + 1);
                live.page_seen = live.max_seen;
                live.page = Some(tokio::task::spawn_blocking(move || {
                    store.inbox_from(&user, from, PAGE)
                }));
            }
            // Not biased: among ready branches one is picked at random, so neither a flood of
            // deliveries nor a client sending without pause can starve the other.
            let step = tokio::select! {
                _ = shutdown.recv() => {
                    // Tell the client why, with a retry hint, before the close frame.
                    let _ = self.send(&ChatError::ShuttingDown.to_frame("")).await;
                    Err(End::Close(CloseCode::Away, "node shutting down"))
                }
                _ = live.sub.signals.notify.notified() => self.on_signal(live),
                changed = async { live.view.as_mut().expect("guarded").changed().await },
                    if live.view.is_some() => match changed {
                    Ok(()) => self.on_view_change(live).await,
                    Err(_) => {
                        live.view = None;
                        Ok(())
                    }
                },
                Some((cmid, res)) = live.inflight.next(), if !live.inflight.is_empty() => {
                    self.on_sent(&cmid, res).await
                }
                Some(push) = live.sub.rx.recv() => self.on_push(live, push).await,
                page = async { live.page.as_mut().expect("guarded").await }, if live.page.is_some() => {
                    live.page = None;
                    match page {
                        Ok(Ok(entries)) => self.on_page(live, entries).await,
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
                msg = self.ws.next(), if live.inflight.len() < max_inflight => {
                    idle_deadline = Instant::now() + idle;
                    ping_at = Instant::now() + keepalive;
                    match msg {
                        Some(Ok(m)) => self.on_message(live, m).await,
                        Some(Err(e)) => Err(read_error(e)),
                        None => Err(End::Gone),
                    }
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    ping_at = Instant::now() + keepalive;
                    self.feed_ws(WsMessage::Ping(Default::default()))
                        .await
                        .map_err(|_| End::Gone)
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    Err(End::Close(CloseCode::Away, "idle timeout"))
                }
            };
            if let Err(end) = step {
                return end;
            }
            if self.flush().await.is_err() {
                return End::Gone;
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

    /// The ring changed: a user this node no longer owns (a committed move) is sent to its new
    /// home, where it resumes from its cursor.
    async fn on_view_change(&mut self, live: &mut Live) -> Result<(), End> {
        match self.ctx.route(&live.who.user) {
            Route::Elsewhere { url, epoch } => {
                tracing::info!(%url, epoch, "user moved: redirecting the session");
                metrics::counter!(admin::REDIRECTS).increment(1);
                let frame = ServerFrame {
                    frame: Some(server_frame::Frame::Redirect(Redirect { url, epoch })),
                };
                let _ = self.send(&frame).await;
                Err(End::Close(CloseCode::Normal, "moved to another node"))
            }
            Route::Here | Route::Unavailable(_) => Ok(()),
        }
    }

    fn on_signal(&mut self, live: &mut Live) -> Result<(), End> {
        if live.sub.signals.replaced.load(Ordering::Acquire) {
            return Err(End::Close(
                CloseCode::Policy,
                "replaced by a newer connection of this device",
            ));
        }
        live.take_lag();
        Ok(())
    }

    async fn on_push(&mut self, live: &mut Live, push: Push) -> Result<(), End> {
        if push.seq <= live.last_sent {
            return Ok(());
        }
        if live.catching_up || push.seq != live.last_sent + 1 {
            // Storage has it; catch up from there.
            live.catching_up = true;
            live.max_seen = live.max_seen.max(push.seq);
            return Ok(());
        }
        live.last_sent = push.seq;
        self.deliver(push.seq, &push.entry).await
    }

    async fn on_page(&mut self, live: &mut Live, entries: Vec<StoredEntry>) -> Result<(), End> {
        let full = entries.len() == PAGE;
        for e in entries {
            if e.seq > live.last_sent {
                live.last_sent = e.seq;
                self.deliver(e.seq, &e.entry).await?;
            }
        }
        // Entries dropped from the live queue while this page was being read may be newer than
        // the page: account for them before deciding that storage has been read to the end.
        live.take_lag();
        // A page that is not full reached the end of storage. Catching up is done once it covers
        // everything seen live. An entry seen live before the read started was committed before
        // it (publish follows commit), so if such an entry is missing it has expired: waiting for
        // it would spin. One seen only during the read may be newer than the read: read again.
        if !full && (live.last_sent >= live.max_seen || live.max_seen <= live.page_seen) {
            live.catching_up = false;
        }
        Ok(())
    }

    async fn on_sent(
        &mut self,
        cmid: &str,
        res: Result<chat_proto::v1::Sent, ChatError>,
    ) -> Result<(), End> {
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
        self.send(&frame).await.map_err(|_| End::Gone)
    }

    async fn on_message(&mut self, live: &mut Live, msg: WsMessage) -> Result<(), End> {
        let frame = match self.decode(msg) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(None) => return Err(End::PeerClosed),
            Err(Some(e)) => return self.reply_error(&e, "").await.map_err(|_| End::Gone),
        };
        let Some(frame) = frame.frame else {
            return Ok(());
        };
        let lim = &self.ctx.cfg.limits;
        match frame {
            client_frame::Frame::Hello(_) => {
                self.reply_error(&ChatError::AlreadyAuthenticated, "").await
            }
            client_frame::Frame::Send(s) => {
                let checked = (|| {
                    check_id(
                        IdKind::ClientMsgId,
                        &s.client_msg_id,
                        lim.max_id_bytes as usize,
                    )?;
                    if !s.from.is_empty() && s.from != live.who.user {
                        return Err(ChatError::PermissionDenied(format!(
                            "authenticated as {:?}, cannot send as {:?}",
                            live.who.user, s.from
                        )));
                    }
                    check_id(IdKind::Recipient, &s.to, lim.max_id_bytes as usize)?;
                    check_body(&s.body, lim.max_body_bytes as usize)
                })();
                if let Err(e) = checked {
                    return self.reply_error(&e, &s.client_msg_id).await;
                }
                let cmid = s.client_msg_id.clone();
                let queued = self
                    .ctx
                    .writer
                    .send(live.who.clone(), s.client_msg_id, s.to, s.body)
                    .await;
                let pending = match queued {
                    Ok(p) => p,
                    Err(e) => return self.reply_error(&e, &cmid).await,
                };
                live.inflight
                    .push_back(Box::pin(async move { (cmid, pending.await) }));
                Ok(())
            }
            client_frame::Frame::Ack(a) => self.ack(live, a.up_to_seq, false).await,
            client_frame::Frame::Read(r) => self.ack(live, r.up_to_seq, true).await,
            client_frame::Frame::History(h) => self.history(live, h).await,
            client_frame::Frame::Ping(p) => {
                let pong = ServerFrame {
                    frame: Some(server_frame::Frame::Pong(Pong {
                        nonce: p.nonce,
                        server_time_ms: chat_proto::now_ms(),
                    })),
                };
                self.send(&pong).await.map_err(|_| End::Gone)
            }
        }
    }

    async fn ack(&mut self, live: &mut Live, up_to: u64, read: bool) -> Result<(), End> {
        // A device can acknowledge only what it was sent; an ack that advances nothing costs
        // the writer nothing.
        let up_to = up_to.min(live.last_sent);
        let advances = up_to > live.acked || (read && up_to > live.read);
        if up_to == 0 || !advances {
            return Ok(());
        }
        live.acked = live.acked.max(up_to);
        if read {
            live.read = live.read.max(up_to);
        }
        match self.ctx.writer.ack(live.who.clone(), up_to, read).await {
            Ok(()) => Ok(()),
            Err(e) => self.reply_error(&e, "").await,
        }
    }

    async fn history(
        &mut self,
        live: &mut Live,
        h: chat_proto::v1::HistoryRequest,
    ) -> Result<(), End> {
        let max = self.ctx.cfg.limits.max_history_page;
        if h.limit > max {
            let e = ChatError::InvalidArgument(format!("history limit {} is over {max}", h.limit));
            return self.reply_error(&e, &h.request_id).await;
        }
        let limit = if h.limit == 0 { max } else { h.limit } as usize;
        let store = self.ctx.store.clone();
        let user = live.who.user.clone();
        let before = h.before_seq;
        let res = tokio::task::spawn_blocking(move || store.inbox_before(&user, before, limit))
            .await
            .unwrap_or_else(|e| Err(ChatError::Internal(e.to_string())));
        let (entries, more) = match res {
            Ok(r) => r,
            Err(e) => return self.reply_error(&e, &h.request_id).await,
        };
        let page = ServerFrame {
            frame: Some(server_frame::Frame::History(HistoryPage {
                request_id: h.request_id,
                entries: entries
                    .iter()
                    .map(|e| to_deliver(e.seq, &e.entry))
                    .collect(),
                more,
            })),
        };
        self.send(&page).await.map_err(|_| End::Gone)
    }

    async fn deliver(&mut self, seq: u64, entry: &InboxEntry) -> Result<(), End> {
        metrics::counter!(admin::MESSAGES_OUT).increment(1);
        let frame = ServerFrame {
            frame: Some(server_frame::Frame::Deliver(to_deliver(seq, entry))),
        };
        self.send(&frame).await.map_err(|_| End::Gone)
    }

    /// Decodes a data frame. `Ok(None)`: a control frame, nothing to do. `Err(None)`: the client
    /// closed. `Err(Some(e))`: a bad frame to answer with `e`.
    fn decode(&mut self, msg: WsMessage) -> Result<Option<ClientFrame>, Option<ChatError>> {
        let (enc, data): (Encoding, &[u8]) = match &msg {
            WsMessage::Text(t) => (Encoding::Json, t.as_bytes()),
            WsMessage::Binary(b) => (Encoding::Protobuf, b),
            WsMessage::Close(_) => return Err(None),
            _ => return Ok(None),
        };
        self.enc = enc;
        let max = self.ctx.cfg.limits.max_frame_bytes as usize;
        if data.len() > max {
            return Err(Some(ChatError::FrameTooLarge {
                size: data.len(),
                max,
            }));
        }
        chat_proto::decode::<ClientFrame>(enc, data)
            .map(Some)
            .map_err(|e| Some(e.into()))
    }

    async fn reply_error(&mut self, e: &ChatError, reference: &str) -> Result<(), End> {
        tracing::debug!(error = %e, "request refused");
        self.send(&e.to_frame(reference))
            .await
            .map_err(|_| End::Gone)
    }

    /// Queues a frame; `flush` sends what is queued.
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), ()> {
        let bytes = chat_proto::encode(self.enc, frame);
        let msg = match self.enc {
            Encoding::Protobuf => WsMessage::binary(bytes),
            Encoding::Json => {
                WsMessage::text(String::from_utf8(bytes).expect("serde_json writes UTF-8"))
            }
        };
        self.feed_ws(msg).await
    }

    async fn feed_ws(&mut self, msg: WsMessage) -> Result<(), ()> {
        self.unflushed = true;
        match tokio::time::timeout(self.write_timeout(), self.ws.feed(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// A client that does not take what the node writes within `client.write_timeout_ms` is
    /// dropped: it must not hold a session (or the node's shutdown) hostage.
    async fn flush(&mut self) -> Result<(), ()> {
        if !self.unflushed {
            return Ok(());
        }
        self.unflushed = false;
        match tokio::time::timeout(self.write_timeout(), self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.ctx.cfg.client.write_timeout_ms)
    }
}

/// How a failed read ends the connection: a frame over the hard cap gets 1009 (message too
/// big), a text frame that is not UTF-8 gets 1007 (invalid frame payload data, RFC 6455 §8.1).
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => End::Close(CloseCode::Size, "frame too large"),
        Error::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not valid UTF-8"),
        _ => End::Gone,
    }
}

pub fn to_deliver(seq: u64, entry: &InboxEntry) -> Deliver {
    Deliver {
        seq,
        entry: entry.entry.clone().map(|e| match e {
            inbox_entry::Entry::Message(m) => deliver::Entry::Message(m),
            inbox_entry::Entry::Receipt(r) => deliver::Entry::Receipt(r),
            inbox_entry::Entry::Failed(f) => deliver::Entry::Failed(f),
        }),
    }
}
