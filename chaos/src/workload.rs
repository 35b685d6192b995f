//! Honest users: each device is a task running a [`chat_client::Device`] through the router, as
//! a real app would: it reconnects with capped exponential backoff on any error or close,
//! resumes after the last seq it processed, re-sends every unacknowledged message with the same
//! client_msg_id until ✓ or a definitive refusal, acknowledges every delivery, sends read
//! markers for some, and records everything in its history. A connection that delivers nothing
//! (not even a pong) for a few seconds is given up, as a paused node would otherwise hold it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::v1::ErrorCode;
use chat_client::{Backoff, ConnectOptions, DeviceConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::history::{Clock, DeviceHistory, Event};

mod device;
pub mod groups;

use device::Dev;

/// Liveness: a connection silent this long (pings go out every [`PING_EVERY`]) is dropped.
const SILENT_LIMIT: Duration = Duration::from_secs(8);
const PING_EVERY: Duration = Duration::from_secs(2);
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub router_url: String,
    pub users: usize,
    /// Messages per second over all devices.
    pub rate: f64,
    pub seed: u64,
    /// Share of delivered messages a device marks read.
    pub read_share: f64,
    pub token_ttl_secs: u64,
    /// Groups made before the run ([`groups::make`]), their size, and the share of each
    /// member's messages sent to one of its groups.
    pub groups: usize,
    pub group_size: usize,
    pub group_share: f64,
}

/// The devices' shared switches.
struct Control {
    sending: AtomicBool,
    stop: watch::Receiver<bool>,
}

pub struct Workload {
    histories: Vec<Arc<Mutex<DeviceHistory>>>,
    control: Arc<Control>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn code_name(code: i32) -> String {
    ErrorCode::try_from(code).map_or_else(
        |_| format!("code {code}"),
        |c| {
            c.as_str_name()
                .trim_start_matches("ERROR_CODE_")
                .to_string()
        },
    )
}

/// User ids of the workload (`u0000`...).
pub fn user_id(i: usize) -> String {
    format!("u{i:04}")
}

impl Workload {
    /// Starts every device (connecting, not sending until [`Workload::start_sending`]);
    /// `groups` are the groups made for the run (id → members).
    pub fn start(
        cfg: &WorkloadConfig,
        groups: &std::collections::BTreeMap<String, Vec<String>>,
        clock: Clock,
    ) -> Workload {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_0fde_71ce);
        let mut devices = Vec::new();
        for u in 0..cfg.users {
            let n = match rng.random_range(0..10) {
                0 => 3,
                1 | 2 => 2,
                _ => 1,
            };
            for d in 0..n {
                devices.push((user_id(u), format!("d{d}")));
            }
        }
        let (stop_tx, stop) = watch::channel(false);
        let control = Arc::new(Control {
            sending: AtomicBool::new(false),
            stop,
        });
        let per_device = cfg.rate / devices.len().max(1) as f64;
        let mut histories = Vec::new();
        let mut tasks = Vec::new();
        for (i, (user, device)) in devices.into_iter().enumerate() {
            let h = Arc::new(Mutex::new(DeviceHistory::new(&user, &device)));
            histories.push(h.clone());
            let token = chat_auth::issue_token(
                chat_tests::SECRET.as_bytes(),
                &user,
                &device,
                cfg.token_ttl_secs,
            );
            let seed = cfg.seed.wrapping_add(i as u64 * 7919);
            let config = DeviceConfig {
                connect: ConnectOptions {
                    timeout: Duration::from_secs(5),
                    agent: "chat-chaos".into(),
                    ..ConnectOptions::default()
                },
                backoff: BACKOFF,
                jitter_seed: seed,
                ping_every: PING_EVERY,
                silent_limit: SILENT_LIMIT,
                ..DeviceConfig::new(cfg.router_url.clone(), token)
            };
            let mine = groups
                .iter()
                .filter(|(_, members)| members.contains(&user))
                .map(|(g, _)| g.clone())
                .collect();
            let dev = Dev {
                user,
                device,
                users: cfg.users,
                groups: mine,
                group_share: cfg.group_share,
                per_second: per_device,
                read_share: cfg.read_share,
                rng: ChaCha8Rng::seed_from_u64(seed),
                history: h,
                clock,
                control: control.clone(),
                conn: 0,
                node: None,
                sent: 0,
            };
            tasks.push(tokio::spawn(dev.run(config)));
        }
        Workload {
            histories,
            control,
            stop_tx,
            tasks,
        }
    }

    pub fn devices(&self) -> usize {
        self.histories.len()
    }

    /// Devices that have been welcomed at least once.
    pub fn connected(&self) -> usize {
        self.histories
            .iter()
            .filter(|h| {
                let h = h.lock().expect("history lock");
                h.records
                    .iter()
                    .any(|r| matches!(r.event, Event::Connected { .. }))
            })
            .count()
    }

    pub fn start_sending(&self) {
        self.control.sending.store(true, Ordering::Release);
    }

    pub fn stop_sending(&self) {
        self.control.sending.store(false, Ordering::Release);
    }

    /// A copy of every device's history so far.
    pub fn snapshot(&self) -> Vec<DeviceHistory> {
        self.histories
            .iter()
            .map(|h| h.lock().expect("history lock").clone())
            .collect()
    }

    /// Stops every device and returns the histories.
    pub async fn stop(self) -> Vec<DeviceHistory> {
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.histories
            .iter()
            .map(|h| h.lock().expect("history lock").clone())
            .collect()
    }
}
