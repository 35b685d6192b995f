//! Hostile clients inside the run: malformed and oversize frames, bad tokens, impersonation,
//! lying acknowledgements, floods, connections that stop reading, files that are not theirs, one case after another in
//! a seeded order for the whole fault phase. Each case records what it observed; the checker
//! judges it, and proves (by the marker every hostile body carries) that none of their content
//! reached an honest user. Hostile users are `h-*`; their messages go to hostile sinks only,
//! except the forged sends, which name honest users and must be refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::v1::{client_frame, server_frame, ClientFrame, Hello, ServerFrame};
use chat_client::{Client, ClientError, ConnectOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::history::{Clock, HostileCase, HostileRecord, HOSTILE_MARKER};
use crate::rawws::{Incoming, RawWs, OP_BINARY, OP_TEXT};
use crate::workload::code_name;

mod media;
mod traffic;

use traffic::not_mine;

/// Every case, in the order a cycle is shuffled from.
const CASES: [HostileCase; 15] = [
    HostileCase::MalformedProtobuf,
    HostileCase::MalformedJson,
    HostileCase::OversizeFrame,
    HostileCase::HugeFrame,
    HostileCase::TruncatedFrame,
    HostileCase::InvalidUtf8Text,
    HostileCase::TokenForOtherUser,
    HostileCase::BadSignature,
    HostileCase::ExpiredToken,
    HostileCase::ForgedFrom,
    HostileCase::AckUnreceived,
    HostileCase::Flood,
    HostileCase::StopReading,
    HostileCase::ForeignMedia,
    HostileCase::StealMedia,
];

#[derive(Debug, Clone)]
pub struct HostileConfig {
    pub router_url: String,
    /// Honest users the impersonation cases aim at.
    pub victims: Vec<String>,
    pub seed: u64,
    /// Sends per flood.
    pub flood: u32,
}

pub struct Hostile {
    records: Arc<Mutex<Vec<HostileRecord>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    pub fn start(cfg: HostileConfig, clock: Clock) -> Hostile {
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let out = records.clone();
        let task = tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x4057_11e5);
            let ctx = Ctx { cfg, clock };
            for n in 0u32.. {
                let mut cycle = CASES.to_vec();
                for i in (1..cycle.len()).rev() {
                    cycle.swap(i, rng.random_range(0..=i));
                }
                for case in cycle {
                    if *stopped.borrow() {
                        return;
                    }
                    let at = ctx.clock.now();
                    let rec = match tokio::time::timeout(Duration::from_secs(90), ctx.run(case, n))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => ctx.blank(
                            case,
                            &format!("h-{n}"),
                            at,
                            true,
                            "case timed out after 90 s",
                        ),
                    };
                    out.lock().expect("records lock").push(rec);
                    let pause = Duration::from_millis(rng.random_range(1_000..4_000));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.changed() => return,
                    }
                }
            }
        });
        Hostile {
            records,
            stop,
            task,
        }
    }

    pub async fn stop(self) -> Vec<HostileRecord> {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(100), self.task)
            .await
            .is_err()
        {
            eprintln!("chaos: a hostile case did not finish");
        }
        let r = self.records.lock().expect("records lock").clone();
        r
    }
}

struct Ctx {
    cfg: HostileConfig,
    clock: Clock,
}

fn token(user: &str) -> String {
    chat_auth::issue_token(chat_tests::SECRET.as_bytes(), user, "evil", 24 * 3600)
}

fn error_codes(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match &f.frame {
            Some(server_frame::Frame::Error(e)) => Some(code_name(e.code)),
            _ => None,
        })
        .collect()
}

impl Ctx {
    fn blank(
        &self,
        case: HostileCase,
        user: &str,
        at: u64,
        skipped: bool,
        detail: &str,
    ) -> HostileRecord {
        HostileRecord {
            at,
            case,
            user: user.into(),
            welcomed_as: None,
            errors: Vec::new(),
            acked: 0,
            sent: 0,
            foreign_entries: 0,
            closed: None,
            skipped,
            detail: detail.into(),
        }
    }

    /// Connects through the router, a few tries (the user's home may be down right now).
    async fn connect(&self, user: &str, tok: &str) -> Result<Client, ClientError> {
        let opts = ConnectOptions {
            timeout: Duration::from_secs(5),
            agent: "chaos-hostile".into(),
            ..ConnectOptions::default()
        };
        let mut last = ClientError::Closed;
        for _ in 0..5 {
            match Client::connect_with(&self.cfg.router_url, tok, &opts).await {
                Ok(c) => return Ok(c),
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => last = e,
            }
            let _ = user;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last)
    }

    /// Frames until `until` matches one, the connection ends, or `timeout`; and how it ended.
    async fn collect(
        c: &mut Client,
        timeout: Duration,
        until: impl Fn(&ServerFrame) -> bool,
    ) -> (Vec<ServerFrame>, Option<String>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match c.recv_until(deadline).await {
                Ok(f) => {
                    let stop = until(&f);
                    frames.push(f);
                    if stop {
                        return (frames, None);
                    }
                }
                Err(ClientError::Timeout) => return (frames, None),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }

    async fn run(&self, case: HostileCase, n: u32) -> HostileRecord {
        use HostileCase::*;
        let user = format!("h-{}-{n}", format!("{case:?}").to_lowercase());
        let at = self.clock.now();
        let mut r = self.blank(case, &user, at, false, "");
        let result = match case {
            MalformedProtobuf | MalformedJson | OversizeFrame | HugeFrame => {
                self.bad_frame(&mut r).await
            }
            TruncatedFrame | InvalidUtf8Text => self.raw_frame(&mut r).await,
            TokenForOtherUser | BadSignature | ExpiredToken => self.bad_token(&mut r, n).await,
            ForgedFrom => self.forged_from(&mut r, n).await,
            AckUnreceived => self.ack_unreceived(&mut r, n).await,
            Flood => self.flood(&mut r, n).await,
            StopReading => self.stop_reading(&mut r, n).await,
            ForeignMedia => self.foreign_media(&mut r, n).await,
            StealMedia => self.steal_media(&mut r, n).await,
        };
        if let Err(e) = result {
            r.skipped = true;
            r.detail = format!("could not run: {e}");
        }
        r
    }

    async fn bad_frame(&self, r: &mut HostileRecord) -> Result<(), String> {
        let mut c = self
            .connect(&r.user, &token(&r.user))
            .await
            .map_err(|e| e.to_string())?;
        r.welcomed_as = Some(c.welcome.user.clone());
        let max = c
            .welcome
            .limits
            .as_ref()
            .map_or(64 * 1024, |l| l.max_frame_bytes as usize);
        let msg = match r.case {
            HostileCase::MalformedProtobuf => WsMessage::binary(vec![0x0a, 0x05, 0x01]),
            HostileCase::MalformedJson => {
                WsMessage::text(format!("{{\"send\": {{\"to\": \"{HOSTILE_MARKER}"))
            }
            HostileCase::OversizeFrame => WsMessage::binary(vec![0x0a; max + 1024]),
            _ => WsMessage::binary(vec![0x0a; 4 * max + 4096]),
        };
        c.send_raw(msg).await.map_err(|e| e.to_string())?;
        // A pong proves the connection survived (or the end shows it did not).
        let _ = c.ping(77).await;
        let (frames, closed) = Self::collect(&mut c, Duration::from_secs(5), |f| {
            matches!(f.frame, Some(server_frame::Frame::Pong(_)))
        })
        .await;
        r.errors = error_codes(&frames);
        r.closed = closed;
        r.detail = format!("{} frames back", frames.len());
        Ok(())
    }

    /// Hello over the raw client, then the malformed frame the library would not send.
    async fn raw_frame(&self, r: &mut HostileRecord) -> Result<(), String> {
        let url = format!("{}/v1/connect/{}", self.cfg.router_url, r.user);
        let mut ws = RawWs::connect(&url).await.map_err(|e| e.to_string())?;
        let hello = ClientFrame {
            frame: Some(client_frame::Frame::Hello(Hello {
                token: token(&r.user),
                agent: "raw".into(),
                resume_after: 0,
            })),
            active: false,
        };
        ws.send(
            OP_BINARY,
            &chat_proto::encode(chat_proto::Encoding::Protobuf, &hello),
        )
        .await
        .map_err(|e| e.to_string())?;
        match ws.recv(Duration::from_secs(5)).await {
            Some(Incoming::Frame { payload, .. }) => {
                let f: ServerFrame = chat_proto::decode(chat_proto::Encoding::Protobuf, &payload)
                    .map_err(|e| e.to_string())?;
                match f.frame {
                    Some(server_frame::Frame::Welcome(w)) => r.welcomed_as = Some(w.user),
                    other => return Err(format!("no welcome: {other:?}")),
                }
            }
            other => return Err(format!("no welcome: {other:?}")),
        }
        if r.case == HostileCase::InvalidUtf8Text {
            ws.send(OP_TEXT, &[0xff, 0xfe, 0x80, 0x81])
                .await
                .map_err(|e| e.to_string())?;
        } else {
            ws.send_truncated(OP_BINARY, 1000, &[0x0a; 10])
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = ws.shutdown_write().await;
        }
        for _ in 0..10 {
            match ws.recv(Duration::from_secs(5)).await {
                Some(Incoming::Frame { payload, .. }) => {
                    if let Ok(f) =
                        chat_proto::decode::<ServerFrame>(chat_proto::Encoding::Protobuf, &payload)
                    {
                        r.errors.extend(error_codes(&[f]));
                    }
                }
                Some(Incoming::Close(code)) => {
                    r.closed = Some(format!("close {code}"));
                    break;
                }
                Some(Incoming::Eof(e)) => {
                    r.closed = Some(format!("eof: {e}"));
                    break;
                }
                None => break,
            }
        }
        Ok(())
    }

    async fn bad_token(&self, r: &mut HostileRecord, n: u32) -> Result<(), String> {
        let (url, tok) = match r.case {
            HostileCase::TokenForOtherUser => {
                let victim = &self.cfg.victims[n as usize % self.cfg.victims.len().max(1)];
                r.detail = format!("route of {victim}");
                (
                    format!("{}/v1/connect/{victim}", self.cfg.router_url),
                    token(&r.user),
                )
            }
            HostileCase::BadSignature => {
                let t =
                    chat_auth::issue_token(b"not-the-cluster-secret-at-all", &r.user, "evil", 3600);
                (self.cfg.router_url.clone(), t)
            }
            _ => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let t = chat_auth::issue_token_expiring(
                    chat_tests::SECRET.as_bytes(),
                    &r.user,
                    "evil",
                    now - 7200,
                );
                (self.cfg.router_url.clone(), t)
            }
        };
        let opts = ConnectOptions {
            timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        };
        match Client::connect_with(&url, &tok, &opts).await {
            Ok(mut c) => {
                r.welcomed_as = Some(c.welcome.user.clone());
                let (frames, closed) =
                    Self::collect(&mut c, Duration::from_secs(2), |_| false).await;
                r.foreign_entries = frames.iter().filter(|f| not_mine(f, &r.user)).count() as u32;
                r.closed = closed;
            }
            Err(ClientError::Refused { code, message }) => {
                r.errors.push(
                    code.as_str_name()
                        .trim_start_matches("ERROR_CODE_")
                        .to_string(),
                );
                r.detail = format!("{} refused: {message}", r.detail);
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    }
}
