//! `TestProxy`: a TCP relay between clients and a node that a test can stall or cut, to lose
//! answers at a chosen moment (a ✓ the node sent that never reaches the client) without timing
//! tricks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One relayed connection: its task, and whether the node's bytes still reach the client.
struct Relay {
    stalled: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// Relays every connection to `target`. Needs a tokio runtime; stops relaying when dropped.
pub struct TestProxy {
    addr: SocketAddr,
    relays: Arc<Mutex<Vec<Relay>>>,
    accept: JoinHandle<()>,
}

impl TestProxy {
    /// Relays to `target`, a `ws://host:port` or `host:port`.
    pub async fn start(target: &str) -> TestProxy {
        let target = target
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let relays: Arc<Mutex<Vec<Relay>>> = Arc::default();
        let list = relays.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stalled = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(relay(client, target.clone(), stalled.clone()));
                list.lock().expect("relays").push(Relay { stalled, task });
            }
        });
        TestProxy {
            addr,
            relays,
            accept,
        }
    }

    /// The URL a WebSocket client connects to.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// From now on, what the node sends on the connections open now is dropped: the client
    /// hears nothing more on them, while its own frames still reach the node. One way: such a
    /// connection is never healthy again. New connections are relayed normally.
    pub fn stall(&self) {
        for r in self.relays.lock().expect("relays").iter() {
            r.stalled.store(true, Ordering::Release);
        }
    }

    /// Closes every connection open now (both sides).
    pub fn cut(&self) {
        for r in self.relays.lock().expect("relays").drain(..) {
            r.task.abort();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, target: String, stalled: Arc<AtomicBool>) {
    let Ok(node) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = node.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut node_rd, mut node_wr) = node.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_rd, &mut node_wr).await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match node_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // Dropped, not held: a stalled connection is never resumed.
                Ok(_) if stalled.load(Ordering::Acquire) => {}
                Ok(n) => {
                    if client_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    // Either direction ending ends the relay, as a dead connection would.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}
