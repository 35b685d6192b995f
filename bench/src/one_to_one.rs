//! Scenario `one-to-one`: `pairs` senders each send to their own recipient at `rate / pairs`, open
//! loop: message k of sender i is *scheduled* at start + i / rate + k / (rate / pairs) (the
//! senders' schedules interleave, so the node sees one message every 1 / rate, not bursts of
//! `pairs`), sent at that time (or as soon as the sender can, if it is behind), and every latency
//! is counted from the scheduled time, so a stalled node shows up as latency instead of silently
//! lowering the offered load. Recipients acknowledge every message (`--receipts delivered`, the
//! default: each ack is a cursor write and a DELIVERED receipt for the sender), also mark each
//! one read (`read`: a READ receipt too), or neither (`none`: the node only stores and pushes).
//! Several rates run as steps in one go, each with fresh users.

use std::time::{Duration, Instant};

use anyhow::Context;
use chat_client::v1::{client_frame, deliver, server_frame, Ack, ReadMarker, Send};
use chat_client::{Client, ClientReceiver};
use hdrhistogram::Histogram;

use crate::cost::{cpu_between, node_costs, own_cost, procs_between, Cost, Processes};
use crate::plot;

pub struct Options {
    pub url: String,
    pub secret: String,
    pub pairs: usize,
    pub rates: Vec<u64>,
    pub duration: u64,
    /// At least 24.
    pub body_bytes: usize,
    pub receipts: Receipts,
    /// Local processes to split the CPU by (the cluster's pid files).
    pub procs: Processes,
    /// Where to write the run's picture (SVG): latency over time, delivered against offered.
    pub svg: Option<std::path::PathBuf>,
}

/// What recipients do with each message they are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Receipts {
    /// Nothing: no ack, no receipt.
    None,
    /// Acknowledge it (a DELIVERED receipt for the sender).
    Delivered,
    /// Acknowledge it and mark it read (DELIVERED and READ receipts).
    Read,
}

/// Every step in turn, a line each, and a table at the end when there is more than one.
pub async fn run(o: Options, admins: &[(String, String)]) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for (i, rate) in o.rates.iter().enumerate() {
        let (nodes_before, own_before) = (node_costs(admins).await, own_cost());
        let procs_before = o.procs.cpu();
        let (stats, elapsed) = step(&o, *rate, i).await?;
        let (nodes_after, own_after) = (node_costs(admins).await, own_cost());
        let nodes_cpu_s = cpu_between(&nodes_before, &nodes_after);
        let r = StepResult {
            rate: *rate,
            stats,
            elapsed,
            nodes_cpu_s,
            bench_cpu_s: own_after.cpu_s - own_before.cpu_s,
            procs_cpu_s: procs_between(&procs_before, &o.procs.cpu()),
        };
        print_step(&r, admins, &nodes_after);
        results.push(r);
    }
    if results.len() > 1 {
        print_summary(&results, !admins.is_empty());
    }
    if let Some(path) = &o.svg {
        picture(path, &o, &results)?;
        println!("one-to-one picture: {}", path.display());
    }
    if let Some(best) = results
        .iter()
        .map(|r| r.stats.delivered as f64 / r.elapsed)
        .reduce(f64::max)
    {
        println!(
            "one-to-one best delivered/s: {best:.0} ({} pairs, receipts {:?})",
            o.pairs, o.receipts
        );
    }
    Ok(())
}

/// The steps one after the other: ✓ and e2e latency over time, each step shaded, and the
/// delivered rate of each step against the offered one.
fn picture(path: &std::path::Path, o: &Options, results: &[StepResult]) -> anyhow::Result<()> {
    let (mut sent, mut e2e, mut spans, mut rates) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0.0;
    for r in results {
        sent.extend(r.stats.sent_ms.iter().map(|&(t, v)| (offset + t, v)));
        e2e.extend(r.stats.e2e_ms.iter().map(|&(t, v)| (offset + t, v)));
        spans.push(plot::Span {
            label: format!("{}/s", r.rate),
            from: offset,
            to: offset + r.elapsed,
        });
        rates.push((r.rate as f64, r.stats.delivered as f64 / r.elapsed));
        offset += r.elapsed;
    }
    plot::write(
        path,
        &format!(
            "one-to-one: {} pairs, receipts {:?}, {} s per step",
            o.pairs, o.receipts, o.duration
        ),
        &sent,
        &e2e,
        &spans,
        Some(plot::Steps { rates: &rates }),
    )
}

/// Counts and latency histograms (microseconds). Each task keeps its own, merged at the end, so
/// the load generator takes no shared lock per message.
struct Stats {
    sent_us: Histogram<u64>,
    e2e_us: Histogram<u64>,
    /// (seconds since the step's start, ms) of each ✓ and each delivery, kept only for the
    /// picture (`--svg`).
    sent_ms: plot::Samples,
    e2e_ms: plot::Samples,
    keep_samples: bool,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    errors: u64,
}

impl Stats {
    fn new(keep_samples: bool) -> Stats {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        Stats {
            sent_us: h(),
            e2e_us: h(),
            sent_ms: Vec::new(),
            e2e_ms: Vec::new(),
            keep_samples,
            acked: 0,
            delivered: 0,
            duplicates: 0,
            errors: 0,
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.sent_us.add(&other.sent_us).expect("same bounds");
        self.e2e_us.add(&other.e2e_us).expect("same bounds");
        self.sent_ms.extend_from_slice(&other.sent_ms);
        self.e2e_ms.extend_from_slice(&other.e2e_ms);
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.errors += other.errors;
    }
}

/// What one step measured.
struct StepResult {
    rate: u64,
    stats: Stats,
    elapsed: f64,
    nodes_cpu_s: f64,
    bench_cpu_s: f64,
    /// Per local process (with `--pids`), CPU seconds in the step.
    procs_cpu_s: Vec<(String, f64)>,
}

impl StepResult {
    /// Microseconds of CPU per delivered message.
    fn per_msg(&self, cpu_s: f64) -> f64 {
        1e6 * cpu_s / (self.stats.delivered.max(1) as f64)
    }

    /// CPU of every local process but this one (nodes, router, etcd), if any were named.
    fn cluster_cpu_s(&self) -> Option<f64> {
        (!self.procs_cpu_s.is_empty()).then(|| self.procs_cpu_s.iter().map(|(_, c)| c).sum())
    }
}

/// p50, p99, p99.9 and max of a microsecond histogram, in milliseconds.
fn quantiles(h: &Histogram<u64>) -> [f64; 4] {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    [q(0.5), q(0.99), q(0.999), h.max() as f64 / 1000.0]
}

fn print_step(r: &StepResult, admins: &[(String, String)], nodes: &[Cost]) {
    let s = &r.stats;
    let ([s50, s99, s999, smax], [e50, e99, e999, emax]) =
        (quantiles(&s.sent_us), quantiles(&s.e2e_us));
    println!(
        "one-to-one offered={}/s sent_ok={} delivered={} ({:.0}/s) lost={} dup={} errors={} \
         | sent ms p50={s50:.2} p99={s99:.2} p99.9={s999:.2} max={smax:.2} \
         | e2e ms p50={e50:.2} p99={e99:.2} p99.9={e999:.2} max={emax:.2}",
        r.rate,
        s.acked,
        s.delivered,
        s.delivered as f64 / r.elapsed,
        // Acknowledged (✓) but never delivered.
        s.acked.saturating_sub(s.delivered),
        s.duplicates,
        s.errors,
    );
    let own = own_cost();
    let mut cost = format!(
        "  cost: bench cpu {:.2} s ({:.0}% of a core), peak rss {} MiB",
        r.bench_cpu_s,
        100.0 * r.bench_cpu_s / r.elapsed,
        own.max_rss >> 20
    );
    if !admins.is_empty() {
        cost += &format!(
            " | nodes cpu {:.2} s ({:.0} us per delivered msg), peak rss",
            r.nodes_cpu_s,
            r.per_msg(r.nodes_cpu_s)
        );
        for ((id, _), c) in admins.iter().zip(nodes) {
            cost += &format!(" {id}={} MiB", c.max_rss >> 20);
        }
    }
    println!("{cost}");
    if let Some(cluster) = r.cluster_cpu_s() {
        let mut line = format!(
            "  cpu by process: cluster {:.0} us per delivered msg ({:.0}% of a core);",
            r.per_msg(cluster),
            100.0 * cluster / r.elapsed
        );
        for (name, c) in &r.procs_cpu_s {
            line += &format!(" {name} {:.0} us", r.per_msg(*c));
        }
        line += &format!("; bench {:.0} us", r.per_msg(r.bench_cpu_s));
        println!("{line}");
    }
}

fn print_summary(results: &[StepResult], nodes: bool) {
    println!();
    println!("| offered/s | delivered/s | lost | dup | errors | ✓ p50 / p99 / p99.9 / max (ms) | e2e p50 / p99 / p99.9 / max (ms) | bench CPU | nodes CPU per msg | cluster CPU per msg |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let s = &r.stats;
        let per_msg = if nodes {
            format!("{:.0} µs", r.per_msg(r.nodes_cpu_s))
        } else {
            "-".into()
        };
        let cluster = r
            .cluster_cpu_s()
            .map_or("-".into(), |c| format!("{:.0} µs", r.per_msg(c)));
        let fmt = |h: &Histogram<u64>| {
            let [a, b, c, d] = quantiles(h);
            format!("{a:.1} / {b:.1} / {c:.1} / {d:.1}")
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.0}% | {per_msg} | {cluster} |",
            r.rate,
            s.delivered as f64 / r.elapsed,
            s.acked.saturating_sub(s.delivered),
            s.duplicates,
            s.errors,
            fmt(&s.sent_us),
            fmt(&s.e2e_us),
            100.0 * r.bench_cpu_s / r.elapsed,
        );
    }
}

/// One step: fresh users, `rate` msg/s for `duration` s. Returns the merged stats and the
/// seconds from the first scheduled send to the last delivery.
async fn step(o: &Options, rate: u64, step: usize) -> anyhow::Result<(Stats, f64)> {
    let (url, pairs, duration) = (o.url.as_str(), o.pairs, o.duration);
    // Fresh user names per run and step, so earlier inboxes do not count.
    let run = format!(
        "{:x}{step}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let token = |user: &str| chat_auth::issue_token(o.secret.as_bytes(), user, "bench", 3600);
    let per_sender = rate as f64 / pairs as f64;
    let per_sender_total = (per_sender * duration as f64).round() as u64;
    anyhow::ensure!(
        per_sender_total > 0,
        "rate x duration gives no message per pair"
    );

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..pairs {
        let (s, r) = (format!("b{run}-s{i}"), format!("b{run}-r{i}"));
        let sc = Client::connect(url, &token(&s))
            .await
            .context("connect sender")?;
        let rc = Client::connect(url, &token(&r))
            .await
            .context("connect recipient")?;
        senders.push((sc, r));
        receivers.push(rc);
    }
    eprintln!(
        "one-to-one: {pairs} pairs, {rate} msg/s offered for {duration} s ({per_sender_total} per sender)"
    );

    let start = Instant::now() + Duration::from_millis(200);
    let keep = o.svg.is_some();
    let mut tasks = Vec::new();
    for rc in receivers {
        let (tx, rx) = rc.into_split();
        tasks.push(tokio::spawn(receive(
            tx,
            rx,
            start,
            per_sender_total,
            o.receipts,
            Stats::new(keep),
        )));
    }
    for (i, (sc, to)) in senders.into_iter().enumerate() {
        let (tx, rx) = sc.into_split();
        let body_pad = "x".repeat(o.body_bytes - 24);
        let sched = Schedule {
            start,
            offset: Duration::from_secs_f64(i as f64 / rate as f64),
            per_sender,
        };
        tasks.push(tokio::spawn(async move {
            let acks = tokio::spawn(sender_acks(rx, sched, per_sender_total, Stats::new(keep)));
            send_loop(tx, &to, sched, per_sender_total, &body_pad).await;
            acks.await.unwrap_or_else(|_| Stats::new(keep))
        }));
    }
    let mut s = Stats::new(keep);
    for t in tasks {
        if let Ok(part) = t.await {
            s.merge(&part);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((s, elapsed))
}

/// When one sender's messages are due.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    /// This sender's place among the others (i / rate).
    offset: Duration,
    per_sender: f64,
}

impl Schedule {
    fn at(&self, k: u64) -> Instant {
        self.start + self.offset + Duration::from_secs_f64(k as f64 / self.per_sender)
    }
}

async fn send_loop(
    mut tx: chat_client::ClientSender,
    to: &str,
    sched: Schedule,
    total: u64,
    pad: &str,
) {
    let start = sched.start;
    for k in 0..total {
        let at = sched.at(k);
        tokio::time::sleep_until(at.into()).await;
        // The body carries the scheduled time so the recipient can measure end to end.
        let body = format!("{:020}|{pad}", at.duration_since(start).as_nanos());
        let frame = client_frame::Frame::Send(Send {
            client_msg_id: k.to_string(),
            to: to.to_string(),
            body,
            from: String::new(),
            group: String::new(),
            attachment: None,
        });
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

async fn sender_acks(mut rx: ClientReceiver, sched: Schedule, total: u64, mut st: Stats) -> Stats {
    let mut answered = 0;
    while answered < total {
        let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
            break;
        };
        match f.frame {
            Some(server_frame::Frame::Sent(s)) => {
                answered += 1;
                let k: u64 = s.client_msg_id.parse().unwrap_or(0);
                let lat = sched.at(k).elapsed().as_micros() as u64;
                st.acked += 1;
                let _ = st.sent_us.record(lat.max(1));
                if st.keep_samples {
                    let t = sched.start.elapsed().as_secs_f64();
                    st.sent_ms.push((t, lat as f64 / 1000.0));
                }
            }
            Some(server_frame::Frame::Error(_)) => {
                answered += 1;
                st.errors += 1;
            }
            _ => {}
        }
    }
    st
}

async fn receive(
    mut tx: chat_client::ClientSender,
    mut rx: ClientReceiver,
    start: Instant,
    expected: u64,
    receipts: Receipts,
    mut st: Stats,
) -> Stats {
    let mut last_seq = 0;
    let mut got = 0;
    while got < expected {
        // Wait generously for stragglers, but never forever.
        let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await else {
            break;
        };
        let Some(server_frame::Frame::Deliver(d)) = f.frame else {
            continue;
        };
        let Some(deliver::Entry::Message(m)) = d.entry else {
            continue;
        };
        let at_ns: u64 = m.body.get(..20).and_then(|s| s.parse().ok()).unwrap_or(0);
        let lat = (start.elapsed().as_micros() as u64).saturating_sub(at_ns / 1000);
        if d.seq <= last_seq {
            st.duplicates += 1;
        } else {
            st.delivered += 1;
            got += 1;
            let _ = st.e2e_us.record(lat.max(1));
            if st.keep_samples {
                st.e2e_ms
                    .push((start.elapsed().as_secs_f64(), lat as f64 / 1000.0));
            }
        }
        last_seq = last_seq.max(d.seq);
        let up_to_seq = d.seq;
        let answers = match receipts {
            Receipts::None => vec![],
            Receipts::Delivered => vec![client_frame::Frame::Ack(Ack { up_to_seq })],
            Receipts::Read => vec![
                client_frame::Frame::Ack(Ack { up_to_seq }),
                client_frame::Frame::Read(ReadMarker { up_to_seq }),
            ],
        };
        for a in answers {
            if tx.send(a).await.is_err() {
                return st;
            }
        }
    }
    st
}
