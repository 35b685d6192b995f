//! TLS on the client listener (`client.tls_cert_file`, `client.tls_key_file`): a browser-like
//! client speaks JSON frames over `wss://` and is served; the node says `wss://` in its URL; a
//! plain `ws://` client, a client that does not trust the certificate and a client that sends
//! garbage instead of a TLS handshake are turned away and leave the node serving.

use std::time::Duration;

use chat_client::v1::{client_frame, deliver, server_frame, ClientFrame, Hello, Send, ServerFrame};
use chat_tests::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// A TLS client trusting `ca` (PEM): the Rust client library's own configuration.
fn connector(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(chat_client::tls_trusting(ca).unwrap())
}

/// A CA and a certificate for `localhost` from it, in a temp dir: the dir (keep it), and the
/// certificate's and key's paths as text (for env variables).
fn localhost_certs() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().display().to_string();
    chatctl(&["certs", "init", "--dir", &certs]);
    chatctl(&["certs", "issue", "localhost", "--dir", &certs]);
    let path = |f: &str| dir.path().join(f).display().to_string();
    let (cert, key) = (path("localhost.pem"), path("localhost.key"));
    (dir, cert, key)
}

fn addr(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

fn json(frame: client_frame::Frame) -> Message {
    let f = ClientFrame {
        frame: Some(frame),
        ..Default::default()
    };
    let bytes = chat_proto::encode(chat_proto::Encoding::Json, &f);
    Message::text(String::from_utf8(bytes).unwrap())
}

#[tokio::test]
async fn a_browser_like_client_is_served_over_wss_and_plain_clients_are_turned_away() {
    let (dir, cert, key) = localhost_certs();
    let node = TestNode::start(&[
        ("CHAT_NODE_CLIENT__TLS_CERT_FILE", &cert),
        ("CHAT_NODE_CLIENT__TLS_KEY_FILE", &key),
    ]);
    assert!(node.url.starts_with("wss://127.0.0.1:"), "{}", node.url);
    let addr = addr(&node.url);
    let tls = connector(&dir.path().join("ca.pem"));

    // Someone sending garbage instead of a handshake, and a plain WebSocket client.
    let mut junk = TcpStream::connect(&addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let plain = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await;
    assert!(plain.is_err(), "a plain client was served");

    // A client that does not trust the certificate: the cluster CA of another cluster.
    let other = tempfile::tempdir().unwrap();
    let other_s = other.path().display().to_string();
    chatctl(&["certs", "init", "--dir", &other_s]);
    let stranger = connector(&other.path().join("ca.pem"));
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    assert!(
        stranger.connect(name.clone(), tcp).await.is_err(),
        "a certificate from another CA was accepted"
    );

    // The browser: JSON frames over wss, Hello, then a message to itself on another device.
    let open = |device: &'static str| {
        let (tls, name, addr) = (tls.clone(), name.clone(), addr.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let stream = tokio::time::timeout(T, tls.connect(name, tcp))
                .await
                .expect("TLS handshake in time")
                .expect("TLS handshake");
            let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/"), stream)
                .await
                .expect("WebSocket over TLS");
            ws.send(json(client_frame::Frame::Hello(Hello {
                token: token("alice", device),
                ..Default::default()
            })))
            .await
            .unwrap();
            ws
        }
    };
    let mut phone = open("phone").await;
    let mut laptop = open("laptop").await;
    for ws in [&mut phone, &mut laptop] {
        let f = recv_json(ws).await;
        assert!(
            matches!(f.frame, Some(server_frame::Frame::Welcome(_))),
            "{f:?}"
        );
    }
    phone
        .send(json(client_frame::Frame::Send(Send {
            client_msg_id: "m1".into(),
            to: "bob".into(),
            body: "over TLS".into(),
            ..Default::default()
        })))
        .await
        .unwrap();
    let sent = loop {
        let f = recv_json(&mut phone).await;
        if let Some(server_frame::Frame::Sent(s)) = f.frame {
            break s;
        }
    };
    assert_eq!(sent.client_msg_id, "m1");
    // The other device of the sender gets its own copy, live, over its TLS connection.
    let copy = loop {
        let f = recv_json(&mut laptop).await;
        if let Some(server_frame::Frame::Deliver(d)) = f.frame {
            break d;
        }
    };
    let Some(deliver::Entry::Message(m)) = copy.entry else {
        panic!("not a message: {copy:?}");
    };
    assert_eq!(
        (m.msg_id.as_str(), m.body.as_str()),
        (sent.msg_id.as_str(), "over TLS")
    );

    // After all that, a plain-speaking client still fails and the node still serves.
    drop(junk);
    assert!(tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .is_err());
    let mut again = open("tablet").await;
    let f = recv_json(&mut again).await;
    assert!(matches!(f.frame, Some(server_frame::Frame::Welcome(_))));
}

async fn recv_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> ServerFrame
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection is open")
            .expect("a WebSocket message");
        if let Message::Text(t) = msg {
            return chat_proto::decode(chat_proto::Encoding::Json, t.as_bytes()).expect("JSON");
        }
    }
}

/// The Rust library and the `chat` CLI reach a `wss://` node given the CA that issued its
/// certificate, and refuse it otherwise (the system's roots do not know a private CA).
#[tokio::test]
async fn the_rust_client_and_the_cli_speak_wss_trusting_a_private_ca() {
    let (dir, cert, key) = localhost_certs();
    let node = TestNode::start(&[
        ("CHAT_NODE_CLIENT__TLS_CERT_FILE", &cert),
        ("CHAT_NODE_CLIENT__TLS_KEY_FILE", &key),
    ]);
    let port = addr(&node.url).rsplit(':').next().unwrap().to_string();
    let url = format!("wss://localhost:{port}");
    let ca = dir.path().join("ca.pem");

    let opts = chat_client::ConnectOptions {
        tls: Some(chat_client::tls_trusting(&ca).unwrap()),
        ..Default::default()
    };
    let mut alice = chat_client::Client::connect_with(&url, &token("alice", "phone"), &opts)
        .await
        .expect("wss with the cluster's CA");
    alice.send_message("t1", "bob", "over wss").await.unwrap();
    let sent = loop {
        let f = alice.recv_timeout(T).await.expect("the ✓ over wss");
        if let Some(server_frame::Frame::Sent(s)) = f.frame {
            break s;
        }
    };
    assert_eq!(sent.client_msg_id, "t1");
    let untrusted = chat_client::ConnectOptions::default();
    let refused = chat_client::Client::connect_with(&url, &token("alice", "phone"), &untrusted)
        .await
        .err()
        .expect("a private CA's certificate is not trusted by default");
    assert!(refused.to_string().contains("certificate"), "{refused}");

    let ca_s = ca.display().to_string();
    let bob = token("bob", "cli");
    let (ok, out, err) = chat_cli(
        &bob,
        &[
            "--url",
            &url,
            "--ca-file",
            &ca_s,
            "send",
            "--to",
            "alice",
            "hi over wss",
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = chat_cli(&bob, &["--url", &url, "send", "--to", "alice", "x"]);
    assert!(!ok && err.contains("certificate"), "{err}");
}

/// `https://` on the node's HTTP listener and on the router, for pages served over https: both
/// answer a client that trusts the CA, refuse plain HTTP, and a client that connects and says
/// nothing does not hold up the others.
#[tokio::test]
async fn the_http_listener_and_the_router_speak_https() {
    let (dir, cert, key) = localhost_certs();
    let node = TestNode::start(&[
        ("CHAT_NODE_HTTP__TLS_CERT_FILE", &cert),
        ("CHAT_NODE_HTTP__TLS_KEY_FILE", &key),
    ]);
    assert!(node.http_url.starts_with("https://"), "{}", node.http_url);
    let etcd = TestEtcd::start();
    let mut router = std::process::Command::new(bin("chat-router"))
        .args(["--listen", "127.0.0.1:0", "--etcd", &etcd.url])
        .env("CHAT_ROUTER_ROUTER__TLS_CERT_FILE", &cert)
        .env("CHAT_ROUTER_ROUTER__TLS_KEY_FILE", &key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = chat_tests::process::first_line(&mut router)
        .recv_timeout(WAIT)
        .expect("the router's ready line");
    let router_addr = line
        .strip_prefix("chat-router ready https://")
        .expect(&line)
        .to_string();

    let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(T)
        .build()
        .unwrap();
    let port = |a: &str| {
        a.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    let node_port = port(&node.http_url);
    let router_port = port(&router_addr);

    // A client that opens a connection and never says a word.
    let _silent = TcpStream::connect(format!("127.0.0.1:{router_port}"))
        .await
        .unwrap();
    for url in [
        format!("https://localhost:{node_port}/v1/openapi.json"),
        format!("https://localhost:{router_port}/healthz"),
    ] {
        let r = http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(r.status(), 200, "{url}");
        let plain = url.replacen("https://", "http://", 1);
        assert!(
            http.get(&plain).send().await.is_err(),
            "{plain} answered in plain HTTP"
        );
    }
    let _ = router.kill();
    let _ = router.wait();
}

#[test]
fn a_certificate_without_its_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().display().to_string();
    chatctl(&["certs", "init", "--dir", &certs]);
    let out = std::process::Command::new(bin("chat-node"))
        .args(["--standalone", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("CHAT_NODE_AUTH__JWT_SECRET", SECRET)
        .env(
            "CHAT_NODE_CLIENT__TLS_CERT_FILE",
            dir.path().join("ca.pem").to_str().unwrap(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client.tls_cert_file and client.tls_key_file go together"),
        "{err}"
    );
}
