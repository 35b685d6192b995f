//! Scenario `offline-drain`: messages stored for offline users, then the users connect: the
//! time to drain them.

use std::time::{Duration, Instant};

use anyhow::Context;
use chat_client::v1::{client_frame, server_frame, Ack, Send};
use chat_client::Client;

use crate::run_id;

pub async fn offline_drain(
    url: &str,
    secret: &str,
    users: usize,
    messages: usize,
    body_bytes: usize,
) -> anyhow::Result<()> {
    let run = run_id();
    let per_user = messages / users;
    anyhow::ensure!(per_user > 0, "fewer messages than users");
    let token = |u: &str| chat_auth::issue_token(secret.as_bytes(), u, "drain", 3600);
    let body = "x".repeat(body_bytes.max(1));
    // Fill: one sender per recipient, every message acknowledged (stored) before the drain.
    let fill_start = Instant::now();
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..users {
        let (s, r) = (format!("d{run}-s{i}"), format!("d{run}-r{i}"));
        let c = Client::connect(url, &token(&s))
            .await
            .context("connect sender")?;
        let body = body.clone();
        fills.spawn(async move {
            let (mut tx, mut rx) = c.into_split();
            let sending = tokio::spawn(async move {
                for k in 0..per_user {
                    let frame = client_frame::Frame::Send(Send {
                        client_msg_id: k.to_string(),
                        to: r.clone(),
                        body: body.clone(),
                        from: String::new(),
                        group: String::new(),
                        attachment: None,
                    });
                    if tx.feed(frame).await.is_err() {
                        return;
                    }
                    if k % 64 == 63 && tx.flush().await.is_err() {
                        return;
                    }
                }
                let _ = tx.flush().await;
            });
            let mut acked = 0;
            while acked < per_user {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Ok(f)) => match f.frame {
                        Some(server_frame::Frame::Sent(_)) => acked += 1,
                        Some(server_frame::Frame::Error(e)) => {
                            return Err(anyhow::anyhow!("send refused: {}", e.message))
                        }
                        _ => {}
                    },
                    _ => return Err(anyhow::anyhow!("sender stalled at {acked}/{per_user}")),
                }
            }
            let _ = sending.await;
            Ok(())
        });
    }
    while let Some(r) = fills.join_next().await {
        r??;
    }
    let fill = fill_start.elapsed().as_secs_f64();
    eprintln!(
        "offline-drain: {} messages stored for {users} offline users in {fill:.1} s",
        per_user * users
    );
    // Drain: every recipient connects at once; time from connect to its last message.
    let start = Instant::now();
    let mut drains = tokio::task::JoinSet::new();
    for i in 0..users {
        let r = format!("d{run}-r{i}");
        let (url, t) = (url.to_string(), token(&r));
        drains.spawn(async move {
            let c = Client::connect(&url, &t).await?;
            let (mut tx, mut rx) = c.into_split();
            let mut got = 0;
            while got < per_user {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Ok(f)) => {
                        if let Some(server_frame::Frame::Deliver(d)) = f.frame {
                            got += 1;
                            // Acknowledge in strides, as a real client batching acks would.
                            if got % 256 == 0 || got == per_user {
                                tx.send(client_frame::Frame::Ack(Ack { up_to_seq: d.seq }))
                                    .await?;
                            }
                        }
                    }
                    _ => anyhow::bail!("drain stalled at {got}/{per_user}"),
                }
            }
            Ok::<_, anyhow::Error>(start.elapsed())
        });
    }
    let mut times = Vec::new();
    while let Some(r) = drains.join_next().await {
        times.push(r??.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let total = start.elapsed().as_secs_f64();
    println!(
        "offline-drain users={users} messages={} drained in {total:.2} s = {:.0} msgs/s | per user: p50 {:.2} s, max {:.2} s",
        per_user * users,
        (per_user * users) as f64 / total,
        times[times.len() / 2],
        times[times.len() - 1],
    );
    Ok(())
}
