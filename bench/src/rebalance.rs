//! Scenario `rebalance`: steady 1:1 traffic while the ring moves (a node added or removed), with
//! latency, errors and throughput before, during and after the move, and what the move copied.
//!
//! Each sender sends message k at start + offset + k / (rate / pairs) and waits for its ✓ before
//! the next. Senders and receivers are [`chat_client::Device`]s through the router: they
//! reconnect when a session is redirected or refused, and re-send the same client_msg_id.
//! Latency counts from the scheduled time, so time spent reconnecting during the move shows up
//! as latency, not as a lower offered load. Like a real app's, every device acknowledges all it
//! is delivered, the senders' receipts included: one more committed write per message than the
//! hand-written senders this scenario had before (they ignored their receipts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_client::v1::{deliver, Deliver};
use chat_client::{Backoff, Device, DeviceConfig, DeviceEvent, Stamped};
use chat_cluster::rebalance::{self, Change};
use chat_cluster::EtcdConfig;
use hdrhistogram::Histogram;

/// One message as the generator saw it: scheduled at `at` (since start), ✓ after `sent_us`.
struct Sample {
    at: Duration,
    sent_us: u64,
}

#[derive(Default)]
struct SenderLog {
    samples: Vec<Sample>,
    /// Send frames written again for a message (after a reconnection or a retryable refusal).
    retries: u64,
    /// Messages refused for good.
    refused: u64,
    /// Messages without an answer within [`MESSAGE_DEADLINE`].
    unanswered: u64,
}

#[derive(Default)]
struct ReceiverLog {
    /// (scheduled time since start, e2e µs) of each first delivery.
    delivered: Vec<(Duration, u64)>,
    duplicates: u64,
    reconnects: u64,
}

pub struct Options {
    pub url: String,
    pub secret: String,
    pub etcd: EtcdConfig,
    pub change: Change,
    pub pairs: usize,
    pub rate: u64,
    /// Seconds of traffic before the move starts and after it ends.
    pub settle: u64,
    /// Where to write the run's picture (SVG).
    pub svg: Option<std::path::PathBuf>,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let per_sender = o.rate as f64 / o.pairs as f64;
    anyhow::ensure!(per_sender > 0.0, "rate must be at least 1");
    let start = Instant::now() + Duration::from_millis(500);
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..o.pairs {
        let (s, r) = (format!("rb{run_id}-s{i}"), format!("rb{run_id}-r{i}"));
        let token = |u: &str| chat_auth::issue_token(o.secret.as_bytes(), u, "bench", 3600);
        receivers.push(tokio::spawn(receive(
            o.url.clone(),
            token(&r),
            start,
            stop.clone(),
        )));
        let offset = Duration::from_secs_f64(i as f64 / o.rate as f64);
        senders.push(tokio::spawn(send(
            o.url.clone(),
            token(&s),
            r,
            (start, offset),
            per_sender,
            stop.clone(),
        )));
    }
    eprintln!(
        "rebalance: {} pairs at {} msg/s; {} after {} s",
        o.pairs, o.rate, o.change, o.settle
    );
    tokio::time::sleep_until((start + Duration::from_secs(o.settle)).into()).await;

    // The move, driven like `chatctl rebalance start` + `wait`.
    let mut c = chat_cluster::connect(&o.etcd).await.context("etcd")?;
    let move_start = start.elapsed();
    let doc = rebalance::begin(&mut c, &o.etcd.prefix, &o.change).await?;
    let t = doc.transition()?.expect("a move was just started");
    let epoch = t.to().epoch();
    let mut last: BTreeMap<String, rebalance::Progress> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let p = rebalance::read_progress(&mut c, &o.etcd.prefix, epoch).await?;
        if !p.is_empty() {
            last = p;
        }
        let ring = chat_cluster::read_ring(&mut c, &o.etcd.prefix).await?;
        if ring.is_some_and(|d| d.next.is_none()) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the move did not end within an hour"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let move_end = start.elapsed();
    // The nodes' final reports (kept after a commit).
    let p = rebalance::read_progress(&mut c, &o.etcd.prefix, epoch).await?;
    if !p.is_empty() {
        last = p;
    }
    tokio::time::sleep(Duration::from_secs(o.settle)).await;
    stop.store(true, Ordering::Release);
    let traffic_end = start.elapsed();

    let mut sent = Vec::new();
    for s in senders {
        sent.push(s.await?);
    }
    let mut got = Vec::new();
    for r in receivers {
        got.push(r.await?);
    }
    let committed = {
        let d = chat_cluster::read_ring(&mut c, &o.etcd.prefix).await?;
        d.and_then(|d| d.current.build().ok())
            .is_some_and(|r| t.committed_in(&r))
    };

    let phases = [
        ("before", Duration::ZERO, move_start),
        ("during", move_start, move_end),
        ("after", move_end, traffic_end),
    ];
    println!(
        "move to epoch {epoch} ({}): {} in {:.2} s; {:.1}% of users moved in {} segments",
        o.change,
        if committed { "committed" } else { "aborted" },
        (move_end - move_start).as_secs_f64(),
        t.moved_share() * 100.0,
        t.segments().len()
    );
    let (keys, bytes) = last
        .values()
        .fold((0, 0), |(k, b), p| (k + p.keys_copied, b + p.bytes_copied));
    let secs = (move_end - move_start).as_secs_f64().max(1e-3);
    println!(
        "copied {keys} keys, {:.2} MB ({:.0} keys/s, {:.2} MB/s over the move)",
        bytes as f64 / 1e6,
        keys as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    println!("| phase | seconds | ✓ msgs/s | delivered msgs/s | ✓ p50 / p99 / max (ms) | e2e p50 / p99 / max (ms) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, from, to) in phases {
        let secs = to.saturating_sub(from).as_secs_f64().max(1e-3);
        let mut sent_h = hist();
        for s in sent.iter().flat_map(|l| &l.samples) {
            if s.at >= from && s.at < to {
                let _ = sent_h.record(s.sent_us.max(1));
            }
        }
        let mut e2e_h = hist();
        for (at, us) in got.iter().flat_map(|l| &l.delivered) {
            if *at >= from && *at < to {
                let _ = e2e_h.record((*us).max(1));
            }
        }
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {name} | {secs:.1} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |",
            sent_h.len() as f64 / secs,
            e2e_h.len() as f64 / secs,
            ms(&sent_h, 0.5),
            ms(&sent_h, 0.99),
            sent_h.max() as f64 / 1000.0,
            ms(&e2e_h, 0.5),
            ms(&e2e_h, 0.99),
            e2e_h.max() as f64 / 1000.0,
        );
    }
    if let Some(path) = &o.svg {
        let moved = (move_start, move_end, traffic_end, committed);
        picture(path, &o, epoch, &sent, &got, moved)?;
        println!("rebalance picture: {}", path.display());
    }
    let acked: usize = sent.iter().map(|l| l.samples.len()).sum();
    let delivered: usize = got.iter().map(|l| l.delivered.len()).sum();
    let retries: u64 = sent.iter().map(|l| l.retries).sum();
    let dups: u64 = got.iter().map(|l| l.duplicates).sum();
    let reconnects: u64 = got.iter().map(|l| l.reconnects).sum();
    let refused: u64 = sent.iter().map(|l| l.refused).sum();
    let unanswered: u64 = sent.iter().map(|l| l.unanswered).sum();
    println!(
        "acknowledged {acked}, delivered {delivered}, lost {}, re-sent after a redirect or refusal {retries}, recipients reconnected {reconnects}, deliveries repeated after a reconnect {dups}, refused {refused}, unanswered {unanswered}",
        acked.saturating_sub(delivered)
    );
    Ok(())
}

/// ✓ and e2e latency over the whole run, the move shaded: ✓ at the time it came, e2e at the
/// time of the delivery (scheduled + latency).
fn picture(
    path: &std::path::Path,
    o: &Options,
    epoch: u64,
    sent: &[SenderLog],
    got: &[ReceiverLog],
    (move_start, move_end, traffic_end, committed): (Duration, Duration, Duration, bool),
) -> anyhow::Result<()> {
    let secs = |at: Duration, us: u64| (at.as_secs_f64() + us as f64 / 1e6, us as f64 / 1e3);
    let sent_ms: crate::plot::Samples = sent
        .iter()
        .flat_map(|l| &l.samples)
        .map(|s| secs(s.at, s.sent_us))
        .collect();
    let e2e_ms: crate::plot::Samples = got
        .iter()
        .flat_map(|l| &l.delivered)
        .map(|&(at, us)| secs(at, us))
        .collect();
    let span = |label: String, from: Duration, to: Duration| crate::plot::Span {
        label,
        from: from.as_secs_f64(),
        to: to.as_secs_f64(),
    };
    let outcome = if committed { "committed" } else { "aborted" };
    crate::plot::write(
        path,
        &format!(
            "rebalance: {} at {} msg/s over {} pairs; the move to epoch {epoch} shaded",
            o.change, o.rate, o.pairs
        ),
        &sent_ms,
        &e2e_ms,
        &[
            span("before".into(), Duration::ZERO, move_start),
            span(
                format!(
                    "move, {outcome} ({:.1} s)",
                    (move_end - move_start).as_secs_f64()
                ),
                move_start,
                move_end,
            ),
            span("after".into(), move_end, traffic_end),
        ],
        None,
    )
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// How long one message may take to be ✓'d, reconnections included, before it is counted as
/// unanswered and the sender moves on: a bound, far above any healthy move's pause.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(60);

/// A device through the router: reconnects quickly (a reconnection during the move counts in
/// the latency, so waiting longer than needed would inflate it).
fn device(url: &str, token: String) -> Device {
    Device::start(DeviceConfig {
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_secs(1)),
        ..DeviceConfig::new(url, token)
    })
}

/// `(start, offset)`: message k is scheduled at start + offset + k / per_sender.
async fn send(
    url: String,
    token: String,
    to: String,
    (start, offset): (Instant, Duration),
    per_sender: f64,
    stop: Arc<AtomicBool>,
) -> SenderLog {
    let mut log = SenderLog::default();
    let mut device = device(&url, token);
    let mut k: u64 = 0;
    while !stop.load(Ordering::Acquire) {
        let at = start + offset + Duration::from_secs_f64(k as f64 / per_sender);
        tokio::time::sleep_until(at.into()).await;
        let cmid = k.to_string();
        // The body carries the scheduled time (ns since the start), for e2e latency.
        let body = format!("{:020}", at.duration_since(start).as_nanos());
        device.send(cmid.as_str(), to.as_str(), body);
        let waited = tokio::time::timeout(MESSAGE_DEADLINE, answer(&mut device, &cmid, &mut log));
        match waited.await {
            Ok(Some(acked)) => log.samples.push(Sample {
                at: at.duration_since(start),
                sent_us: acked.saturating_duration_since(at).as_micros() as u64,
            }),
            Ok(None) => log.refused += 1,
            Err(_) => log.unanswered += 1,
        }
        k += 1;
    }
    device.stop();
    log
}

/// Waits for the answer to `cmid`: when it was ✓'d, or `None` if it was refused for good. The
/// device writes it again on every new connection meanwhile; `log` counts those re-sends.
async fn answer(device: &mut Device, cmid: &str, log: &mut SenderLog) -> Option<Instant> {
    while let Some(Stamped { at, event }) = device.next().await {
        match event {
            DeviceEvent::Sent(s) if s.client_msg_id == cmid => return Some(at),
            DeviceEvent::SendAttempt { attempt, .. } if attempt > 1 => log.retries += 1,
            DeviceEvent::SendError {
                client_msg_id,
                definitive: true,
                ..
            } if client_msg_id == cmid => return None,
            _ => {}
        }
    }
    None
}

async fn receive(url: String, token: String, start: Instant, stop: Arc<AtomicBool>) -> ReceiverLog {
    let mut log = ReceiverLog::default();
    let mut device = device(&url, token);
    let mut quiet_since: Option<Instant> = None;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), device.next()).await {
            Ok(Some(Stamped { at, event })) => match event {
                DeviceEvent::Deliver {
                    deliver:
                        Deliver {
                            entry: Some(deliver::Entry::Message(m)),
                            ..
                        },
                    repeat,
                } => {
                    quiet_since = None;
                    if repeat {
                        log.duplicates += 1;
                    } else {
                        let sched_ns: u64 =
                            m.body.get(..20).and_then(|s| s.parse().ok()).unwrap_or(0);
                        let sched = Duration::from_nanos(sched_ns);
                        let e2e = at.saturating_duration_since(start).saturating_sub(sched);
                        log.delivered.push((sched, e2e.as_micros() as u64));
                    }
                }
                DeviceEvent::Closed { .. } => log.reconnects += 1,
                _ => {}
            },
            Ok(None) => return log,
            Err(_) => {
                if stop.load(Ordering::Acquire) {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(2) {
                        device.stop();
                        return log;
                    }
                }
            }
        }
    }
}
