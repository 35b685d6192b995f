//! A deliberately minimal WebSocket client over a raw TCP stream, for what a well-behaved library
//! refuses to send: text frames that are not UTF-8, frame headers announcing bytes that never
//! come. Client frames are masked as RFC 6455 requires (a zero mask: the server must accept any).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What arrived: a data frame, or the end of the connection.
#[derive(Debug)]
pub enum Incoming {
    Frame {
        opcode: u8,
        payload: Vec<u8>,
    },
    /// A close frame with its code (0 if none).
    Close(u16),
    /// TCP closed or reset without a close frame.
    Eof(String),
}

impl RawWs {
    /// Opens `ws://host:port/path`, following one HTTP redirect (the router's 307 to the node).
    pub async fn connect(url: &str) -> std::io::Result<RawWs> {
        let mut url = url.to_string();
        for _ in 0..3 {
            let rest = url
                .trim_start_matches("ws://")
                .trim_start_matches("http://");
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            let mut stream = TcpStream::connect(host).await?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            stream.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await? == 0 || head.len() > 16_384 {
                    return Err(std::io::Error::other("handshake: connection closed"));
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let status = head.split_whitespace().nth(1).unwrap_or("");
            if status == "101" {
                return Ok(RawWs {
                    stream,
                    buf: Vec::new(),
                });
            }
            let location = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("location")
                    .then(|| v.trim().to_string())
            });
            match location {
                Some(l) => url = l,
                None => {
                    return Err(std::io::Error::other(format!(
                        "handshake answered {status}"
                    )))
                }
            }
        }
        Err(std::io::Error::other("too many redirects"))
    }

    fn header(opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![0x80 | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xFFFF => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    /// One complete frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut f = Self::header(opcode, payload.len() as u64);
        f.extend_from_slice(payload);
        self.stream.write_all(&f).await
    }

    /// A frame header announcing `announced` bytes followed by only `partial`.
    pub async fn send_truncated(
        &mut self,
        opcode: u8,
        announced: u64,
        partial: &[u8],
    ) -> std::io::Result<()> {
        let mut f = Self::header(opcode, announced);
        f.extend_from_slice(partial);
        self.stream.write_all(&f).await
    }

    /// Closes our sending side (FIN), leaving the node to notice.
    pub async fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }

    /// The next data frame or the end; answers pings. `None` on timeout.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((opcode, payload)) = self.parse() {
                match opcode {
                    OP_PING => {
                        let _ = self.send(OP_PONG, &payload).await;
                    }
                    OP_PONG => {}
                    OP_CLOSE => {
                        let code = payload
                            .get(..2)
                            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                        return Some(Incoming::Close(code));
                    }
                    _ => return Some(Incoming::Frame { opcode, payload }),
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) => return Some(Incoming::Eof("closed".into())),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Some(Incoming::Eof(e.to_string())),
            }
        }
    }

    /// Takes one complete (unmasked, server) frame from the buffer.
    fn parse(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().ok()?) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b[1] & 0x80 != 0 {
            at += 4;
        }
        if b.len() < at + len {
            return None;
        }
        let payload = b[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some((opcode, payload))
    }
}
