//! Client library for chat nodes: connect and authenticate, send, receive, acknowledge, page
//! history. Used by the `chat` CLI, the integration tests, the benchmarks and the chaos suite.
//!
//! A [`Client`] is one WebSocket connection speaking protobuf (or JSON, for tests of the JSON
//! form). It does not hide the protocol: `recv` returns every server frame, so callers see
//! deliveries, receipts and errors exactly as a node sends them.
//!
//! A [`Device`] is what an app runs on top: connections one after another through a router,
//! resuming, re-sending unanswered messages and acknowledging deliveries, with every step
//! reported as a [`DeviceEvent`].

use std::sync::Arc;
use std::time::Duration;

use chat_proto::v1::{
    client_frame, group_request, media_request, presence_request, server_frame, Ack, ClientFrame,
    ErrorCode, GroupRequest, Hello, HistoryPage, HistoryRequest, MediaReply, MediaRequest, Ping,
    PresenceRequest, ReadMarker, Send, ServerFrame, Typing, TypingState, Welcome,
};
use chat_proto::Encoding;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use chat_proto::v1;

mod device;

pub use chat_retry::Backoff;
pub use device::{is_definitive, CloseReason, Device, DeviceConfig, DeviceEvent, Stamped};

pub use chat_auth::token_subject;

/// `url` with `/v1/connect/<user>` appended when it has no path (and the user is known).
pub fn connect_url(url: &str, user: Option<&str>) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let has_path = after_scheme
        .find('/')
        .is_some_and(|i| after_scheme[i..].len() > 1);
    match user {
        Some(u) if !has_path => format!(
            "{}/v1/connect/{}",
            url.trim_end_matches('/'),
            path_escape(u)
        ),
        _ => url.to_string(),
    }
}

/// Opens the WebSocket (`ws://`, or `wss://` with `tls`, by default the system's roots), from
/// `local_ip` if given. Nagle is off: chat frames are small and latency-bound.
async fn open(
    url: &str,
    local_ip: Option<std::net::IpAddr>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> std::result::Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::Connector;
    let req = url.into_client_request()?;
    let secure = req.uri().scheme_str() == Some("wss");
    let host = req.uri().host().unwrap_or("127.0.0.1");
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = req
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    // Each address of the name in turn (`localhost` may be ::1 first, the node on 127.0.0.1).
    let mut last = std::io::Error::other(format!("no address for {host}"));
    let mut connected = None;
    for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = local_ip {
            if ip.is_ipv4() != addr.is_ipv4() {
                continue;
            }
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        match socket.connect(addr).await {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = connected.ok_or(last)?;
    stream.set_nodelay(true)?;
    let connector = if secure {
        Connector::Rustls(tls.cloned().unwrap_or_else(system_tls))
    } else {
        Connector::Plain
    };
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(req, stream, None, Some(connector)).await?;
    Ok(ws)
}

/// A TLS client configuration trusting the CA certificates (PEM) in `ca_file`: for a cluster
/// whose client listener has a certificate from a private CA.
pub fn tls_trusting(ca_file: &std::path::Path) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", ca_file.display())))?;
    for c in certs {
        let c = c.map_err(|e| std::io::Error::other(format!("{}: {e}", ca_file.display())))?;
        roots.add(c).map_err(std::io::Error::other)?;
    }
    if roots.is_empty() {
        let why = format!("{}: no certificate in it", ca_file.display());
        return Err(std::io::Error::other(why));
    }
    Ok(tls_config(roots))
}

/// The system's trusted roots, read once.
fn system_tls() -> Arc<rustls::ClientConfig> {
    static SYSTEM: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            tls_config(roots)
        })
        .clone()
}

fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Percent-encodes everything but letters, digits and `-_.` (user ids may contain `/`).
pub fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for the node")]
    Timeout,
    #[error("the node refused: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected frame from the node: {0}")]
    Unexpected(String),
    #[error("too many redirects")]
    TooManyRedirects,
}

pub type Result<T> = std::result::Result<T, ClientError>;

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    encoding: Encoding,
    /// The node's answer to our Hello.
    pub welcome: Welcome,
    /// The URL this connection ended up at (after redirects).
    pub url: String,
}

/// Options for [`Client::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub encoding: Encoding,
    pub timeout: Duration,
    pub agent: String,
    /// Local address to connect from (a load generator spreads connections over several
    /// 127.0.0.x so that one source address does not run out of ports).
    pub local_ip: Option<std::net::IpAddr>,
    /// The highest seq this device has processed (`Hello.resume_after`).
    pub resume_after: u64,
    /// Whom to trust for `wss://` URLs ([`tls_trusting`] a private CA); `None`: the system's
    /// roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            encoding: Encoding::Protobuf,
            timeout: Duration::from_secs(10),
            agent: format!("chat-client/{}", env!("CARGO_PKG_VERSION")),
            local_ip: None,
            resume_after: 0,
            tls: None,
        }
    }
}

impl Client {
    /// Connects to `url`, authenticates with `token`, and follows redirects to the user's home.
    pub async fn connect(url: &str, token: &str) -> Result<Client> {
        Self::connect_with(url, token, &ConnectOptions::default()).await
    }

    /// `url` is a router or any node (`ws://host:port`): a URL without a path gets
    /// `/v1/connect/<user>` (the user from the token), which a router answers with an HTTP
    /// redirect to the user's home node. A node that is not the home answers with a `Redirect`
    /// frame. Both are followed, up to a few hops.
    pub async fn connect_with(url: &str, token: &str, opts: &ConnectOptions) -> Result<Client> {
        let user = token_subject(token);
        let mut url = connect_url(url, user.as_deref());
        for _ in 0..=MAX_REDIRECTS {
            let connect = open(&url, opts.local_ip, opts.tls.as_ref());
            let ws = match tokio::time::timeout(opts.timeout, connect)
                .await
                .map_err(|_| ClientError::Timeout)?
            {
                Ok(ws) => ws,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp))
                    if resp.status().is_redirection() =>
                {
                    let location = resp
                        .headers()
                        .get("location")
                        .and_then(|l| l.to_str().ok())
                        .ok_or_else(|| {
                            ClientError::Unexpected("redirect without a location".into())
                        })?;
                    url = connect_url(location, user.as_deref());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut c = Client {
                ws,
                encoding: opts.encoding,
                welcome: Welcome::default(),
                url: url.clone(),
            };
            c.send(client_frame::Frame::Hello(Hello {
                token: token.to_string(),
                agent: opts.agent.clone(),
                resume_after: opts.resume_after,
            }))
            .await?;
            match c.recv_timeout(opts.timeout).await?.frame {
                Some(server_frame::Frame::Welcome(w)) => {
                    c.welcome = w;
                    return Ok(c);
                }
                Some(server_frame::Frame::Redirect(r)) => {
                    url = connect_url(&r.url, user.as_deref())
                }
                Some(server_frame::Frame::Error(e)) => return Err(refused(e)),
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            }
        }
        Err(ClientError::TooManyRedirects)
    }

    /// Sends one client frame.
    pub async fn send(&mut self, frame: client_frame::Frame) -> Result<()> {
        self.ws
            .send(encode_client(self.encoding, frame, false))
            .await?;
        Ok(())
    }

    /// Sends one client frame marked as the user's activity (it moves the user's last seen and
    /// keeps it online; a send, typing or read counts as activity by itself).
    pub async fn send_active(&mut self, frame: client_frame::Frame) -> Result<()> {
        self.ws
            .send(encode_client(self.encoding, frame, true))
            .await?;
        Ok(())
    }

    /// Asks about presence; the answer (`PresenceList` with `request_id`) comes via `recv`.
    pub async fn presence(&mut self, request_id: &str, op: presence_request::Op) -> Result<()> {
        self.send(client_frame::Frame::Presence(PresenceRequest {
            request_id: request_id.to_string(),
            op: Some(op),
        }))
        .await
    }

    /// Sends raw WebSocket data as is (for testing how a node treats bad input).
    pub async fn send_raw(&mut self, msg: WsMessage) -> Result<()> {
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends a message; the answer (Sent or Error with `ref` = client_msg_id) comes via `recv`.
    pub async fn send_message(&mut self, client_msg_id: &str, to: &str, body: &str) -> Result<()> {
        self.send(client_frame::Frame::Send(Send {
            client_msg_id: client_msg_id.to_string(),
            to: to.to_string(),
            body: body.to_string(),
            from: String::new(),
            group: String::new(),
            attachment: None,
        }))
        .await
    }

    /// Sends a message to a group; answered like `send_message`.
    pub async fn send_group_message(
        &mut self,
        client_msg_id: &str,
        group: &str,
        body: &str,
    ) -> Result<()> {
        self.send(client_frame::Frame::Send(Send {
            client_msg_id: client_msg_id.to_string(),
            group: group.to_string(),
            body: body.to_string(),
            ..Default::default()
        }))
        .await
    }

    /// A media request (an upload slot, a download URL); the answer (`MediaReply` with
    /// `request_id`, or Error with that `ref`) comes via `recv`.
    pub async fn media_request(&mut self, request_id: &str, op: media_request::Op) -> Result<()> {
        self.send(client_frame::Frame::Media(MediaRequest {
            request_id: request_id.to_string(),
            op: Some(op),
        }))
        .await
    }

    /// A group request; the answer (`GroupReply` with `request_id`) comes via `recv`.
    pub async fn group_request(&mut self, request_id: &str, op: group_request::Op) -> Result<()> {
        self.send(client_frame::Frame::Group(GroupRequest {
            request_id: request_id.to_string(),
            op: Some(op),
        }))
        .await
    }

    /// Tells a group's online members this user is typing (or stopped).
    pub async fn typing_group(&mut self, group: &str, state: TypingState) -> Result<()> {
        self.send(client_frame::Frame::Typing(Typing {
            group: group.to_string(),
            state: state as i32,
            ..Default::default()
        }))
        .await
    }

    /// Tells `to` this user is typing (or stopped). Nothing comes back unless it is refused.
    pub async fn typing(&mut self, to: &str, state: TypingState) -> Result<()> {
        self.send(client_frame::Frame::Typing(Typing {
            to: to.to_string(),
            state: state as i32,
            group: String::new(),
        }))
        .await
    }

    pub async fn ack(&mut self, up_to_seq: u64) -> Result<()> {
        self.send(client_frame::Frame::Ack(Ack { up_to_seq })).await
    }

    pub async fn read(&mut self, up_to_seq: u64) -> Result<()> {
        self.send(client_frame::Frame::Read(ReadMarker { up_to_seq }))
            .await
    }

    pub async fn ping(&mut self, nonce: u64) -> Result<()> {
        self.send(client_frame::Frame::Ping(Ping { nonce })).await
    }

    /// Asks for a history page and waits for it (other frames arriving meanwhile are returned in
    /// `skipped` so the caller loses nothing).
    pub async fn history(
        &mut self,
        before_seq: u64,
        limit: u32,
        timeout: Duration,
        skipped: &mut Vec<ServerFrame>,
    ) -> Result<HistoryPage> {
        let request_id = uuid::Uuid::now_v7().to_string();
        self.send(client_frame::Frame::History(HistoryRequest {
            before_seq,
            limit,
            request_id: request_id.clone(),
        }))
        .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = self.recv_until(deadline).await?;
            match f.frame {
                Some(server_frame::Frame::History(p)) if p.request_id == request_id => {
                    return Ok(p)
                }
                Some(server_frame::Frame::Error(e)) if e.r#ref == request_id => {
                    return Err(refused(e))
                }
                _ => skipped.push(f),
            }
        }
    }

    /// A media request (an upload slot, a download URL) and its answer; other frames that
    /// arrive first go to `skipped`.
    pub async fn media(
        &mut self,
        op: media_request::Op,
        timeout: Duration,
        skipped: &mut Vec<ServerFrame>,
    ) -> Result<MediaReply> {
        let request_id = uuid::Uuid::now_v7().to_string();
        self.media_request(&request_id, op).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = self.recv_until(deadline).await?;
            match f.frame {
                Some(server_frame::Frame::Media(r)) if r.request_id == request_id => return Ok(r),
                Some(server_frame::Frame::Error(e)) if e.r#ref == request_id => {
                    return Err(refused(e))
                }
                _ => skipped.push(f),
            }
        }
    }

    /// The next server frame.
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        loop {
            let msg = self.ws.next().await.ok_or(ClientError::Closed)??;
            if let Some(r) = decode_server(msg) {
                return r;
            }
        }
    }

    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<ServerFrame> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    pub async fn recv_until(&mut self, deadline: tokio::time::Instant) -> Result<ServerFrame> {
        tokio::time::timeout_at(deadline, self.recv())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Splits the connection so one task can send while another receives.
    pub fn into_split(self) -> (ClientSender, ClientReceiver) {
        let (sink, stream) = self.ws.split();
        (
            ClientSender {
                sink,
                encoding: self.encoding,
            },
            ClientReceiver { stream },
        )
    }

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a split [`Client`].
pub struct ClientSender {
    sink: futures_util::stream::SplitSink<Ws, WsMessage>,
    encoding: Encoding,
}

impl ClientSender {
    /// Queues a frame without flushing; call [`ClientSender::flush`] after a burst.
    pub async fn feed(&mut self, frame: client_frame::Frame) -> Result<()> {
        let msg = encode_client(self.encoding, frame, false);
        self.sink.feed(msg).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.sink.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, frame: client_frame::Frame) -> Result<()> {
        self.feed(frame).await?;
        self.flush().await
    }
}

/// The receiving half of a split [`Client`].
pub struct ClientReceiver {
    stream: futures_util::stream::SplitStream<Ws>,
}

impl ClientReceiver {
    pub async fn recv(&mut self) -> Result<ServerFrame> {
        loop {
            let msg = self.stream.next().await.ok_or(ClientError::Closed)??;
            if let Some(r) = decode_server(msg) {
                return r;
            }
        }
    }
}

fn encode_client(encoding: Encoding, frame: client_frame::Frame, active: bool) -> WsMessage {
    let frame = ClientFrame {
        frame: Some(frame),
        active,
    };
    let bytes = chat_proto::encode(encoding, &frame);
    match encoding {
        Encoding::Protobuf => WsMessage::binary(bytes),
        Encoding::Json => WsMessage::text(String::from_utf8(bytes).expect("JSON is UTF-8")),
    }
}

/// Decodes a data message; `None` for control frames.
fn decode_server(msg: WsMessage) -> Option<Result<ServerFrame>> {
    let (enc, data): (Encoding, &[u8]) = match &msg {
        WsMessage::Binary(b) => (Encoding::Protobuf, b),
        WsMessage::Text(t) => (Encoding::Json, t.as_bytes()),
        WsMessage::Close(_) => return Some(Err(ClientError::Closed)),
        _ => return None,
    };
    Some(
        chat_proto::decode::<ServerFrame>(enc, data)
            .map_err(|e| ClientError::Unexpected(e.to_string())),
    )
}

fn refused(e: chat_proto::v1::Error) -> ClientError {
    ClientError::Refused {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_urls() {
        assert_eq!(
            connect_url("ws://r:7000", Some("a/b")),
            "ws://r:7000/v1/connect/a%2Fb"
        );
        assert_eq!(
            connect_url("ws://r:7000/", Some("bob")),
            "ws://r:7000/v1/connect/bob"
        );
        assert_eq!(connect_url("ws://n:1/x", Some("bob")), "ws://n:1/x");
        assert_eq!(connect_url("ws://n:1", None), "ws://n:1");
    }
}
