//! Scenario `media`: files through the cluster's blob store. Each uploader asks its home node
//! for slots, PUTs the bytes and sends each file to its recipient; then each recipient asks its
//! home node for download URLs and GETs the bytes (checked against their SHA-256). Prints the
//! aggregate MB/s of each phase, per-file latency, and the nodes' CPU per MB.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_client::v1::{
    client_frame, media_request, server_frame, Attachment, MediaDownload, MediaUpload, Send,
};
use chat_client::Client;
use hdrhistogram::Histogram;
use sha2::Digest as _;

use crate::cost::{cpu_between, node_costs};
use crate::run_id;

pub struct Options {
    pub url: String,
    pub secret: String,
    /// Uploader/recipient pairs, all at once.
    pub pairs: usize,
    /// Files each uploader sends.
    pub files: usize,
    pub size: usize,
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("an HTTP client")
}

/// How long a media request may wait for its answer.
const MEDIA_WAIT: Duration = Duration::from_secs(60);

/// Distinct bytes per file (a server must not be able to skip work on repeats).
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One uploader: its files' upload latencies (µs).
async fn upload_all(
    mut c: Client,
    to: String,
    files: usize,
    size: usize,
    seed: u64,
) -> anyhow::Result<Vec<u64>> {
    let http = http();
    let mut took = Vec::new();
    for k in 0..files {
        let bytes = payload(size, seed * 1_000 + k as u64);
        let sha = hex(&sha2::Sha256::digest(&bytes));
        let started = Instant::now();
        let slot = c
            .media(
                media_request::Op::Upload(MediaUpload {
                    mime: "application/zip".into(),
                    size: size as u64,
                    sha256: sha.clone(),
                }),
                MEDIA_WAIT,
                &mut Vec::new(),
            )
            .await?;
        let mut req = http.put(&slot.url).body(bytes);
        for h in &slot.headers {
            req = req.header(&h.name, &h.value);
        }
        let resp = req.send().await.context("PUT")?;
        anyhow::ensure!(resp.status().is_success(), "PUT: {}", resp.status());
        took.push(started.elapsed().as_micros() as u64);
        let cmid = format!("f{k}");
        c.send(client_frame::Frame::Send(Send {
            client_msg_id: cmid.clone(),
            to: to.clone(),
            attachment: Some(Attachment {
                media_id: slot.media_id,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match c.recv_until(deadline).await?.frame {
                Some(server_frame::Frame::Sent(s)) if s.client_msg_id == cmid => break,
                Some(server_frame::Frame::Error(e)) if e.r#ref == cmid => bail!("{}", e.message),
                _ => {}
            }
        }
    }
    Ok(took)
}

/// One recipient: every file in its inbox fetched and checked; the download latencies (µs).
async fn download_all(mut c: Client, files: usize) -> anyhow::Result<Vec<u64>> {
    // The deliveries first: a media request's answer is awaited past other frames.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while got.len() < files {
        let f = c.recv_until(deadline).await?;
        if let Some(server_frame::Frame::Deliver(d)) = f.frame {
            if let Some(chat_client::v1::deliver::Entry::Message(m)) = d.entry {
                if let Some(att) = m.attachment {
                    got.push((d.seq, att));
                }
            }
        }
    }
    let http = http();
    let mut took = Vec::new();
    for (seq, att) in got {
        let started = Instant::now();
        let url = c
            .media(
                media_request::Op::Download(MediaDownload {
                    media_id: att.media_id.clone(),
                    seq,
                }),
                MEDIA_WAIT,
                &mut Vec::new(),
            )
            .await?;
        let mut resp = http.get(&url.url).send().await.context("GET")?;
        anyhow::ensure!(resp.status().is_success(), "GET: {}", resp.status());
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = resp.chunk().await? {
            h.update(&chunk);
        }
        anyhow::ensure!(
            hex(&h.finalize()) == att.sha256,
            "bytes differ from the sha256"
        );
        took.push(started.elapsed().as_micros() as u64);
        c.ack(seq).await?;
    }
    Ok(took)
}

fn line(phase: &str, bytes: usize, wall: Duration, lat: &[u64], cpu: f64) {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for v in lat {
        h.record(*v).ok();
    }
    let mb = bytes as f64 / 1e6;
    println!(
        "| {phase} | {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
        lat.len(),
        mb,
        mb / wall.as_secs_f64(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        cpu * 1000.0 / mb.max(1e-9),
    );
}

pub async fn run(o: Options, admins: &[(String, String)]) -> anyhow::Result<()> {
    let run = run_id();
    let token = |u: &str| chat_auth::issue_token(o.secret.as_bytes(), u, "bench", 3600);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..o.pairs {
        let (s, r) = (format!("m{run}-s{i}"), format!("m{run}-r{i}"));
        senders.push((Client::connect(&o.url, &token(&s)).await?, r.clone()));
        receivers.push(Client::connect(&o.url, &token(&r)).await?);
    }
    let total = o.pairs * o.files * o.size;
    println!(
        "media: {} pairs, {} files of {} bytes each ({:.1} MB in all)",
        o.pairs,
        o.files,
        o.size,
        total as f64 / 1e6
    );
    println!("| phase | files | MB | MB/s | per file p50 / p99 (ms) | nodes CPU ms per MB |");
    println!("| --- | --- | --- | --- | --- | --- |");

    let before = node_costs(admins).await;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, (c, to)) in senders.into_iter().enumerate() {
        set.spawn(upload_all(c, to, o.files, o.size, i as u64));
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r??);
    }
    let wall = started.elapsed();
    let mid = node_costs(admins).await;
    line("upload", total, wall, &lat, cpu_between(&before, &mid));

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for c in receivers {
        set.spawn(download_all(c, o.files));
    }
    let mut lat = Vec::new();
    while let Some(r) = set.join_next().await {
        lat.extend(r??);
    }
    let wall = started.elapsed();
    let after = node_costs(admins).await;
    line("download", total, wall, &lat, cpu_between(&mid, &after));
    Ok(())
}
