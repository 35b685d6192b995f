//! Scenario `group`: one group of `members` users (spread over the nodes by the ring), every
//! member connected and acknowledging what it receives; `senders` of them send to the group at
//! `rate` messages a second in all. Prints the group sends per second, ✓ latency, the time
//! from a send to each member's copy and to the last member's copy (p50/p99), and the nodes'
//! CPU per delivered copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::v1::{
    client_frame, group_reply, group_request, server_frame, Ack, GroupCreate, Send,
};
use chat_client::Client;
use hdrhistogram::Histogram;

use crate::cost::{cpu_between, node_costs, own_cost};
use crate::run_id;

pub struct Options {
    pub url: String,
    pub secret: String,
    pub members: usize,
    pub senders: usize,
    pub rate: u64,
    pub duration: u64,
    pub body_bytes: usize,
}

/// Per message (by body): when it was sent, and how many members have it.
type Sends = Arc<Mutex<HashMap<String, (Instant, usize)>>>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

pub async fn run(o: Options, admins: &[(String, String)]) -> anyhow::Result<()> {
    let run = run_id();
    let user = |i: usize| format!("gm{run}-{i}");
    let mut clients = Vec::with_capacity(o.members);
    for chunk in (0..o.members).collect::<Vec<_>>().chunks(64) {
        let connects = chunk.iter().map(|&i| {
            let token = chat_auth::issue_token(o.secret.as_bytes(), &user(i), "d", 3600);
            let url = o.url.clone();
            async move { Client::connect(&url, &token).await }
        });
        for c in futures_util::future::join_all(connects).await {
            clients.push(c?);
        }
    }
    let members: Vec<String> = (1..o.members).map(user).collect();
    clients[0]
        .group_request(
            "create",
            group_request::Op::Create(GroupCreate {
                name: "bench".into(),
                members,
                group: String::new(),
            }),
        )
        .await?;
    let group = loop {
        let f = clients[0].recv_timeout(Duration::from_secs(30)).await?;
        match f.frame {
            Some(server_frame::Frame::Group(r)) => match r.reply {
                Some(group_reply::Reply::Info(i)) => break i.group,
                other => anyhow::bail!("creating the group: {other:?}"),
            },
            Some(server_frame::Frame::Error(e)) => anyhow::bail!("creating the group: {e:?}"),
            _ => {}
        }
    };

    let sends: Sends = Arc::new(Mutex::new(HashMap::new()));
    let (copy_tx, mut copy_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Option<u64>)>();
    for c in clients {
        let (tx, mut rx) = c.into_split();
        let (sends, copy_tx) = (sends.clone(), copy_tx.clone());
        let members = o.members;
        // Receives: each copy's latency, and the last member's; acknowledges every entry.
        let mut acker = tx;
        tokio::spawn(async move {
            while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                let Some(server_frame::Frame::Deliver(d)) = f.frame else {
                    continue;
                };
                if let Some(chat_client::v1::deliver::Entry::Message(m)) = &d.entry {
                    let mut s = sends.lock().unwrap();
                    if let Some((at, n)) = s.get_mut(&m.body) {
                        *n += 1;
                        let us = at.elapsed().as_micros() as u64;
                        let last = (*n == members).then_some(us);
                        let _ = copy_tx.send((us, last));
                    }
                }
                let ack = client_frame::Frame::Ack(Ack { up_to_seq: d.seq });
                if acker.send(ack).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(copy_tx);
    // The senders write on their own connections: a second device of each sending member (the
    // first one receives and acknowledges). Each writer's ✓s are read as they come.
    // Per writer: the sends still waiting for their ✓, by client_msg_id.
    let mut pending: Vec<Arc<Mutex<HashMap<String, Instant>>>> = Vec::new();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    let mut tick_tasks = Vec::new();
    for i in 0..o.senders.clamp(1, o.members) {
        let token = chat_auth::issue_token(o.secret.as_bytes(), &user(i), "w", 3600);
        let (tx, rx) = Client::connect(&o.url, &token).await?.into_split();
        writers.push(tx);
        let waiting = Arc::<Mutex<HashMap<String, Instant>>>::default();
        pending.push(waiting.clone());
        tick_tasks.push(tokio::spawn(ticks(rx, waiting, done_rx.clone())));
    }
    let pad = "x".repeat(o.body_bytes.saturating_sub(24));
    let (nodes_before, own_before) = (node_costs(admins).await, own_cost());
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / o.rate.max(1) as f64);
    let mut made = 0usize;
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(o.duration) {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let w = made % writers.len();
        let cmid = format!("{made}");
        let body = format!("{made:020}|{pad}");
        let now = Instant::now();
        sends.lock().unwrap().insert(body.clone(), (now, 0));
        pending[w].lock().unwrap().insert(cmid.clone(), now);
        let frame = client_frame::Frame::Send(Send {
            client_msg_id: cmid,
            group: group.clone(),
            body,
            ..Default::default()
        });
        writers[w].send(frame).await?;
        made += 1;
    }
    let _ = done_tx.send(true);
    // ✓ latencies, from the writers' connections.
    let mut tick = histogram();
    for t in tick_tasks {
        let (h, refused) = t.await?;
        if let Some(e) = refused {
            anyhow::bail!("send refused: {e}");
        }
        tick.add(&h)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Copies until every member has every message, or nothing more comes for a while.
    let (mut copy, mut all) = (histogram(), histogram());
    let want = made * o.members;
    while (copy.len() as usize) < want {
        match tokio::time::timeout(Duration::from_secs(10), copy_rx.recv()).await {
            Ok(Some((us, last))) => {
                let _ = copy.record(us.max(1));
                if let Some(us) = last {
                    let _ = all.record(us.max(1));
                }
            }
            _ => break,
        }
    }
    let (nodes_after, own_after) = (node_costs(admins).await, own_cost());
    let nodes_cpu = cpu_between(&nodes_before, &nodes_after);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "## group: {} members, {} senders, {} group sends/s offered for {:.0} s",
        o.members, o.senders, o.rate, elapsed
    );
    println!();
    println!("| sends | sends/s | ✓ p50 / p99 (ms) | copies delivered | copies/s | send → a member's copy p50 / p99 (ms) | send → every member p50 / p99 (ms) | nodes CPU per copy | bench CPU |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {made} | {:.0} | {:.1} / {:.1} | {} of {want} | {:.0} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {:.1} s |",
        made as f64 / elapsed,
        ms(&tick, 0.5),
        ms(&tick, 0.99),
        copy.len(),
        copy.len() as f64 / elapsed,
        ms(&copy, 0.5),
        ms(&copy, 0.99),
        ms(&all, 0.5),
        ms(&all, 0.99),
        if admins.is_empty() || copy.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.1} µs", nodes_cpu * 1e6 / copy.len() as f64)
        },
        own_after.cpu_s - own_before.cpu_s,
    );
    Ok(())
}

/// One writer's ✓ latencies (or the error that refused a send): reads until sending is over and
/// every send has its ✓, or nothing comes for 30 s.
async fn ticks(
    mut rx: chat_client::ClientReceiver,
    waiting: Arc<Mutex<HashMap<String, Instant>>>,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> (Histogram<u64>, Option<String>) {
    let mut tick = histogram();
    loop {
        if *done.borrow() && waiting.lock().unwrap().is_empty() {
            return (tick, None);
        }
        let f = tokio::select! {
            f = tokio::time::timeout(Duration::from_secs(30), rx.recv()) => f,
            r = done.changed() => match r {
                Ok(()) => continue,
                Err(_) => return (tick, None),
            },
        };
        let Ok(Ok(f)) = f else {
            return (tick, None);
        };
        match f.frame {
            Some(server_frame::Frame::Sent(s)) => {
                let at = waiting.lock().unwrap().remove(&s.client_msg_id);
                if let Some(at) = at {
                    let _ = tick.record((at.elapsed().as_micros() as u64).max(1));
                }
            }
            Some(server_frame::Frame::Error(e)) => return (tick, Some(format!("{e:?}"))),
            _ => {}
        }
    }
}
