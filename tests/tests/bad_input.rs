//! Bad input gets its documented error code and leaves the connection, the node and the stored
//! data intact.

use chat_client::{ClientError, ConnectOptions};
use chat_proto::v1::{client_frame, ErrorCode, Hello, Send};
use chat_proto::Encoding;
use chat_tests::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn json() -> ConnectOptions {
    ConnectOptions {
        encoding: Encoding::Json,
        ..Default::default()
    }
}

/// Sends `msg` and returns the error code of the answer.
async fn error_for(c: &mut chat_client::Client, msg: WsMessage) -> ErrorCode {
    c.send_raw(msg).await.unwrap();
    let (f, _) = recv_until(c, "error", |f| error_code(f).is_some()).await;
    error_code(&f).unwrap()
}

/// The connection still works: a message goes through end to end.
async fn still_works(node: &TestNode, c: &mut chat_client::Client, cmid: &str) {
    c.send_message(cmid, "bob", "still here").await.unwrap();
    recv_until(c, "sent", |f| {
        matches!(&f.frame, Some(chat_proto::v1::server_frame::Frame::Sent(s)) if s.client_msg_id == cmid)
    })
    .await;
    let _ = node;
}

#[tokio::test]
async fn malformed_unknown_and_oversize_frames_keep_the_connection() {
    let node = TestNode::start(&[
        ("CHAT_NODE_LIMITS__MAX_FRAME_BYTES", "2048"),
        ("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "1000"),
    ]);
    let mut c = node.connect_with("alice", "web", &json()).await;
    let cases: Vec<(&str, WsMessage, ErrorCode)> = vec![
        ("not json", WsMessage::text("{nope"), ErrorCode::BadFrame),
        (
            "wrong type",
            WsMessage::text(r#"{"send":{"to":42}}"#),
            ErrorCode::BadFrame,
        ),
        (
            "unknown field",
            WsMessage::text(r#"{"send":{"bdy":"x"}}"#),
            ErrorCode::BadFrame,
        ),
        (
            "unknown kind",
            WsMessage::text(r#"{"teleport":{}}"#),
            ErrorCode::UnknownFrame,
        ),
        (
            "empty object",
            WsMessage::text("{}"),
            ErrorCode::UnknownFrame,
        ),
        (
            "bad protobuf",
            WsMessage::binary(vec![0x12, 0xff]),
            ErrorCode::BadFrame,
        ),
        (
            "future protobuf kind",
            WsMessage::binary(vec![0xb8, 0x06, 0x01]),
            ErrorCode::UnknownFrame,
        ),
        (
            "oversize frame",
            WsMessage::text("x".repeat(3000)),
            ErrorCode::FrameTooLarge,
        ),
        (
            "hello again",
            WsMessage::text(r#"{"hello":{"token":"x"}}"#),
            ErrorCode::AlreadyAuthenticated,
        ),
        (
            "history limit",
            WsMessage::text(r#"{"history":{"limit":100000}}"#),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (i, (what, msg, code)) in cases.into_iter().enumerate() {
        assert_eq!(error_for(&mut c, msg).await, code, "{what}");
        still_works(&node, &mut c, &format!("ok-{i}")).await;
    }
}

#[tokio::test]
async fn bad_sends_are_refused_with_their_code_and_store_nothing() {
    let node = TestNode::start(&[
        ("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "100"),
        ("CHAT_NODE_LIMITS__MAX_ID_BYTES", "16"),
    ]);
    let mut c = node.connect("alice", "phone").await;
    let send = |cmid: &str, to: &str, body: &str, from: &str| {
        client_frame::Frame::Send(Send {
            client_msg_id: cmid.into(),
            to: to.into(),
            body: body.into(),
            from: from.into(),
            group: String::new(),
            attachment: None,
        })
    };
    let cases = vec![
        (
            "as another user",
            send("c1", "bob", "hi", "mallory"),
            ErrorCode::PermissionDenied,
        ),
        (
            "empty body",
            send("c2", "bob", "", ""),
            ErrorCode::BodyEmpty,
        ),
        (
            "oversize body",
            send("c3", "bob", &"x".repeat(101), ""),
            ErrorCode::BodyTooLarge,
        ),
        (
            "empty recipient",
            send("c4", "", "hi", ""),
            ErrorCode::InvalidId,
        ),
        (
            "long recipient",
            send("c5", &"b".repeat(17), "hi", ""),
            ErrorCode::InvalidId,
        ),
        (
            "bad recipient",
            send("c6", "bob smith", "hi", ""),
            ErrorCode::InvalidId,
        ),
        (
            "empty client_msg_id",
            send("", "bob", "hi", ""),
            ErrorCode::InvalidId,
        ),
    ];
    for (what, frame, code) in cases {
        let cmid = match &frame {
            client_frame::Frame::Send(s) => s.client_msg_id.clone(),
            _ => unreachable!(),
        };
        c.send(frame).await.unwrap();
        let (f, _) = recv_until(&mut c, "error", |f| error_code(f).is_some()).await;
        assert_eq!(error_code(&f), Some(code), "{what}");
        let Some(chat_proto::v1::server_frame::Frame::Error(e)) = &f.frame else {
            unreachable!()
        };
        assert_eq!(e.r#ref, cmid, "{what}: the error names the request");
        assert!(!e.message.is_empty());
    }
    // Sending as yourself explicitly is fine.
    c.send(send("c7", "bob", "hi", "alice")).await.unwrap();
    still_works(&node, &mut c, "c8").await;
    // Bob's inbox holds exactly the two good messages: nothing was stored for the refused ones.
    let bob = node.connect("bob", "phone").await;
    assert_eq!(bob.welcome.inbox_seq, 2);
}

#[tokio::test]
async fn bad_tokens_and_frames_before_hello_are_refused() {
    let node = TestNode::start(&[]);
    let connect = |token: String| {
        let url = node.url.clone();
        async move { chat_client::Client::connect_with(&url, &token, &json()).await }
    };
    let code_of = |r: Result<chat_client::Client, ClientError>| match r {
        Err(ClientError::Refused { code, .. }) => code,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("accepted"),
    };
    let wrong_secret = chat_auth::issue_token(b"not-the-secret-at-all", "alice", "phone", 60);
    assert_eq!(
        code_of(connect(wrong_secret).await),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        code_of(connect("garbage".into()).await),
        ErrorCode::TokenInvalid
    );
    let an_hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    let expired = chat_auth::issue_token_expiring(SECRET.as_bytes(), "alice", "phone", an_hour_ago);
    assert_eq!(code_of(connect(expired).await), ErrorCode::TokenExpired);
    let bad_user = chat_auth::issue_token(SECRET.as_bytes(), "bad user", "phone", 60);
    assert_eq!(code_of(connect(bad_user).await), ErrorCode::TokenInvalid);

    // Before Hello, other frames get UNAUTHENTICATED; a good Hello afterwards still works.
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(WsMessage::text(
        r#"{"send":{"clientMsgId":"c","to":"bob","body":"x"}}"#,
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let f: chat_proto::v1::ServerFrame =
        chat_proto::decode(Encoding::Json, reply.into_data().as_ref()).unwrap();
    assert_eq!(error_code(&f), Some(ErrorCode::Unauthenticated));
    let hello = chat_proto::v1::ClientFrame {
        frame: Some(client_frame::Frame::Hello(Hello {
            resume_after: 0,
            token: token("alice", "phone"),
            agent: "raw".into(),
        })),
        active: false,
    };
    ws.send(WsMessage::text(
        String::from_utf8(chat_proto::encode(Encoding::Json, &hello)).unwrap(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let text = reply.into_text().unwrap();
    assert!(text.starts_with(r#"{"welcome":"#), "{text}");
}

#[tokio::test]
async fn a_frame_over_the_hard_cap_closes_only_that_connection() {
    let node = TestNode::start(&[
        ("CHAT_NODE_LIMITS__MAX_FRAME_BYTES", "1024"),
        ("CHAT_NODE_LIMITS__MAX_BODY_BYTES", "512"),
    ]);
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
    let hello = chat_proto::v1::ClientFrame {
        frame: Some(client_frame::Frame::Hello(Hello {
            resume_after: 0,
            token: token("alice", "phone"),
            agent: "raw".into(),
        })),
        active: false,
    };
    ws.send(WsMessage::binary(chat_proto::encode(
        Encoding::Protobuf,
        &hello,
    )))
    .await
    .unwrap();
    ws.send(WsMessage::binary(vec![0u8; 64 * 1024]))
        .await
        .unwrap();
    let close_code = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let WsMessage::Close(frame) = msg {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("connection closed in time");
    assert_eq!(close_code, Some(CloseCode::Size), "closed with 1009");
    // The node and the same user are fine.
    let mut again = node.connect("alice", "phone").await;
    still_works(&node, &mut again, "after").await;
}

#[tokio::test]
async fn connections_over_the_limit_get_overloaded_and_others_keep_working() {
    let node = TestNode::start(&[("CHAT_NODE_LIMITS__MAX_CONNECTIONS", "2")]);
    let mut alice = node.connect("alice", "phone").await;
    let _bob = node.connect("bob", "phone").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&node.url).await.unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let f: chat_proto::v1::ServerFrame =
        chat_proto::decode(Encoding::Json, first.into_data().as_ref()).unwrap();
    assert_eq!(error_code(&f), Some(ErrorCode::Overloaded));
    let Some(chat_proto::v1::server_frame::Frame::Error(e)) = &f.frame else {
        unreachable!()
    };
    assert!(e.retry_after_ms > 0, "a retry hint");
    still_works(&node, &mut alice, "c1").await;
}

/// A WebSocket spoken byte by byte, to send what a WebSocket library refuses to (a text frame
/// that is not UTF-8) and to see exactly what the node answers before the TCP connection ends.
mod raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub async fn connect(url: &str) -> TcpStream {
        let hostport = url.trim_start_matches("ws://").trim_end_matches('/');
        let mut s = TcpStream::connect(hostport).await.unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        s
    }

    /// Writes one final, masked client frame.
    pub async fn write(s: &mut TcpStream, opcode: u8, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else {
            f.push(0x80 | 126);
            f.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&f).await.unwrap();
    }

    /// The next server frame as (opcode, payload); `None` at the end of the TCP stream.
    pub async fn read(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let b0 = s.read_u8().await.ok()?;
        let b1 = s.read_u8().await.ok()?;
        let len = match b1 & 0x7f {
            126 => s.read_u16().await.ok()? as usize,
            127 => s.read_u64().await.ok()? as usize,
            n => n as usize,
        };
        let mut payload = vec![0; len];
        s.read_exact(&mut payload).await.ok()?;
        Some((b0 & 0x0f, payload))
    }

    /// Reads until a close frame (its status code) or the end of the stream (`None`).
    pub async fn close_code(s: &mut TcpStream) -> Option<u16> {
        while let Some((op, p)) = read(s).await {
            if op == 8 {
                return Some(u16::from_be_bytes([p[0], p[1]]));
            }
        }
        None
    }

    /// Connects, and authenticates as alice if asked to.
    pub async fn open(url: &str, authenticate: bool) -> TcpStream {
        if authenticate {
            authenticated(url).await
        } else {
            connect(url).await
        }
    }

    /// Connects and authenticates as alice.
    pub async fn authenticated(url: &str) -> TcpStream {
        let mut s = connect(url).await;
        let hello = chat_proto::v1::ClientFrame {
            frame: Some(super::client_frame::Frame::Hello(super::Hello {
                resume_after: 0,
                token: super::token("alice", "phone"),
                agent: "raw".into(),
            })),
            active: false,
        };
        write(
            &mut s,
            2,
            &chat_proto::encode(super::Encoding::Protobuf, &hello),
        )
        .await;
        let (op, p) = read(&mut s).await.expect("welcome");
        assert_eq!(op, 2);
        let f: chat_proto::v1::ServerFrame =
            chat_proto::decode(super::Encoding::Protobuf, &p).unwrap();
        assert!(
            matches!(
                f.frame,
                Some(chat_proto::v1::server_frame::Frame::Welcome(_))
            ),
            "{f:?}"
        );
        s
    }
}

#[tokio::test]
async fn a_clients_close_frame_is_answered() {
    let node = TestNode::start(&[]);
    for authenticate in [false, true] {
        let mut s = raw::open(&node.url, authenticate).await;
        raw::write(&mut s, 8, &1000u16.to_be_bytes()).await;
        let code = tokio::time::timeout(WAIT, raw::close_code(&mut s))
            .await
            .expect("the node ends the connection");
        // RFC 6455 §5.5.1: the endpoint that receives a close frame sends one back.
        assert_eq!(code, Some(1000), "authenticated: {authenticate}");
    }
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_gets_close_1007() {
    let node = TestNode::start(&[]);
    for authenticate in [false, true] {
        let mut s = raw::open(&node.url, authenticate).await;
        raw::write(&mut s, 1, b"{\"ping\":\xff\xfe}").await;
        let code = tokio::time::timeout(WAIT, raw::close_code(&mut s))
            .await
            .expect("the node ends the connection");
        assert_eq!(code, Some(1007), "authenticated: {authenticate}");
    }
    let mut again = node.connect("alice", "phone").await;
    still_works(&node, &mut again, "after").await;
}
