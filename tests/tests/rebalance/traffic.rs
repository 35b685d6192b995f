//! 1:1 traffic through the router while the ring moves, and the check that every acknowledged
//! message arrived once, in order, with moved users resumed at their new home.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_client::{Device, DeviceConfig, DeviceEvent, Stamped};
use chat_tests::*;

use crate::{status, wait_committed};

/// What one recipient saw: every Deliver of a message, in arrival order.
#[derive(Default, Debug)]
struct Seen {
    deliveries: Vec<(u64, String, String)>, // (seq, msg_id, body)
    reconnects: usize,
    homes: Vec<String>,
}

/// Waits for the ✓ of `cmid` and returns its msg id; panics if the node refuses it for good.
async fn sent_id(device: &mut Device, cmid: &str) -> String {
    loop {
        match device
            .next()
            .await
            .expect("the device runs until stopped")
            .event
        {
            DeviceEvent::Sent(s) if s.client_msg_id == cmid => return s.msg_id,
            DeviceEvent::SendError {
                client_msg_id,
                definitive: true,
                code,
                message,
            } if client_msg_id == cmid => panic!("{cmid} refused for good: {code} {message}"),
            _ => {}
        }
    }
}

/// Sends messages to `to`, one at a time, each until ✓, until `stop` is set (at most 20,000),
/// as a device through the router (which reconnects and re-sends when the session moves or the
/// node refuses). `count` follows the number acknowledged. Returns the msg ids in send order.
async fn send_steadily(
    router: String,
    user: String,
    to: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut device = Device::start(DeviceConfig::new(router, token(&user, "phone")));
    // About 200 messages a second per sender: steady load, not a flood.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ids = Vec::new();
    while ids.len() < 20_000 && !stop.load(Ordering::Acquire) {
        pace.tick().await;
        let k = ids.len();
        let cmid = k.to_string();
        device.send(cmid.as_str(), to.as_str(), format!("{user}:{k}"));
        let id = tokio::time::timeout_at(deadline, sent_id(&mut device, &cmid))
            .await
            .unwrap_or_else(|_| panic!("{user} stuck at {k}"));
        ids.push(id);
        count.store(ids.len(), Ordering::Release);
    }
    device.stop();
    ids
}

/// Receives as a device through the router until `stop` is set and nothing arrived for a
/// while; the device acknowledges everything and resumes after the last seq it processed.
async fn receive_steadily(router: String, user: String, stop: Arc<AtomicBool>) -> Seen {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut device = Device::start(DeviceConfig::new(router, token(&user, "phone")));
    let mut seen = Seen::default();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} receiver ran out of time"
        );
        match tokio::time::timeout(Duration::from_millis(1500), device.next()).await {
            Ok(Some(Stamped { event, .. })) => match event {
                DeviceEvent::Deliver {
                    deliver:
                        chat_proto::v1::Deliver {
                            seq,
                            entry: Some(chat_proto::v1::deliver::Entry::Message(m)),
                        },
                    ..
                } => seen.deliveries.push((seq, m.msg_id, m.body)),
                DeviceEvent::Connected { node, .. } => seen.homes.push(node),
                DeviceEvent::Closed { .. } => seen.reconnects += 1,
                _ => {}
            },
            Ok(None) => panic!("{user}'s device ended"),
            Err(_) => {
                if stop.load(Ordering::Acquire) {
                    device.stop();
                    return seen;
                }
            }
        }
    }
}

/// Runs 1:1 traffic between 12 pairs through the router while `start_move` starts a move, waits
/// for it to commit (to a ring of `members_after`), keeps the traffic going a little longer, and
/// checks that every acknowledged message arrived once, in order, and that moved users resumed
/// at their new home.
pub(crate) async fn move_under_load(
    c: &mut TestCluster,
    start_move: impl FnOnce(&mut TestCluster),
    members_after: &[&str],
) {
    let before = c.ring();
    let router = c.start_router();
    // Pairs whose users are spread over the three nodes.
    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| (format!("s{i}"), format!("r{i}")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (_, r) in &pairs {
        receivers.push(tokio::spawn(receive_steadily(
            router.ws_url(),
            r.clone(),
            stop.clone(),
        )));
    }
    let stop_sending = Arc::new(AtomicBool::new(false));
    let counts: Vec<_> = pairs
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let mut senders = Vec::new();
    for ((s, r), count) in pairs.iter().zip(&counts) {
        senders.push(tokio::spawn(send_steadily(
            router.ws_url(),
            s.clone(),
            r.clone(),
            stop_sending.clone(),
            count.clone(),
        )));
    }
    // Every sender is under way before the move starts, and still sending after it ends.
    let wait_sent = async |at_least: Vec<usize>| {
        wait_until_async(
            "every sender to go on",
            Duration::from_secs(60),
            async || {
                counts
                    .iter()
                    .zip(&at_least)
                    .all(|(c, n)| c.load(Ordering::Acquire) >= *n)
            },
        )
        .await
        .unwrap();
    };
    wait_sent(vec![10; pairs.len()]).await;
    start_move(c);
    // The move commits by itself once every node has seen it and copied.
    wait_committed(c, before.epoch() + 1, Duration::from_secs(60));
    let after = c.ring();
    let mut members: Vec<String> = after.member_list().into_iter().map(|m| m.id).collect();
    members.sort();
    assert_eq!(members, members_after, "the ring after the move");
    let more: Vec<usize> = counts
        .iter()
        .map(|c| c.load(Ordering::Acquire) + 20)
        .collect();
    wait_sent(more).await;
    stop_sending.store(true, Ordering::Release);
    let mut sent = Vec::new();
    for t in senders {
        sent.push(t.await.expect("sender"));
    }
    stop.store(true, Ordering::Release);
    let mut seen = Vec::new();
    for t in receivers {
        seen.push(t.await.expect("receiver"));
    }
    let mut moved = 0;
    for (i, ((s, r), seen)) in pairs.iter().zip(&seen).enumerate() {
        // Every acknowledged message arrived, in send order, each stored once (one seq).
        let mut by_id: std::collections::BTreeMap<&str, u64> = Default::default();
        for (seq, id, _) in &seen.deliveries {
            if let Some(prev) = by_id.insert(id, *seq) {
                assert_eq!(prev, *seq, "{r}: message {id} stored twice");
            }
        }
        let mut firsts: Vec<&(u64, String, String)> = Vec::new();
        let mut last = 0;
        for d in &seen.deliveries {
            if d.0 > last {
                firsts.push(d);
                last = d.0;
            }
        }
        let got: Vec<&str> = firsts.iter().map(|d| d.1.as_str()).collect();
        let want: Vec<&str> = sent[i].iter().map(String::as_str).collect();
        if got != want {
            let at = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(want.len()));
            let missing = want.iter().filter(|w| !got.contains(w)).count();
            let extra = got.iter().filter(|g| !want.contains(g)).count();
            panic!(
                "{s} ({} -> {}) -> {r} ({} -> {}): delivered {} (by seq) vs {} acknowledged; first difference at {at} \
                 (got {:?}, want {:?}); {missing} missing, {extra} never acknowledged; \
                 deliveries around it: {:?}\n{}",
                before.owner(s),
                after.owner(s),
                before.owner(r),
                after.owner(r),
                got.len(),
                want.len(),
                got.get(at),
                want.get(at),
                &seen.deliveries[at.saturating_sub(2)..(at + 3).min(seen.deliveries.len())],
                c.logs()
            );
        }
        // No device is sent a message twice (it says which seq it processed last when it
        // reconnects, as `Hello.resume_after`).
        let resent = seen.deliveries.len() - firsts.len();
        assert_eq!(
            resent, 0,
            "{r}: {resent} deliveries sent twice: {:?}",
            seen.deliveries
        );
        if before.owner(r) != after.owner(r) {
            moved += 1;
            assert_eq!(
                seen.homes.last().map(String::as_str),
                Some(after.owner(r)),
                "{r} resumed at its new home"
            );
        }
    }
    assert!(moved > 0, "some recipients moved");
    // The protocol ran as designed: the new owners were sealed, the old ones copied and then
    // dropped what they gave away.
    let t = chat_ring::transition::Transition::new(before.clone(), after.clone()).unwrap();
    let nodes: Vec<String> = t.nodes().into_iter().map(String::from).collect();
    for n in &nodes {
        let (gives, gets) = (t.copies_of(n).count(), t.receives(n).count());
        wait_until(&format!("{n} to finish its share"), WAIT, || {
            let log = c.node(n).log_text();
            (gives == 0 || log.contains("copy done") && log.contains("dropped moved ranges"))
                && (gets == 0 || log.contains("every old owner sealed"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    // Each node recorded its finished share in etcd, so the next move may start.
    wait_until("every node to record its finished share", WAIT, || {
        let s = status(c);
        let done =
            s["moving"].is_null() && s["unfinished"].as_array().is_some_and(|a| a.is_empty());
        if done {
            Ok(())
        } else {
            Err(s)
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // What each node did, for the test output.
    for n in &c.nodes {
        for line in n
            .log_text()
            .lines()
            .filter(|l| l.contains("move") && !l.contains("user moved") && !l.contains("DEBUG"))
        {
            eprintln!(
                "{}: {}",
                n.id,
                line.get(line.len().saturating_sub(140)..).unwrap_or(line)
            );
        }
    }
    let total: usize = sent.iter().map(Vec::len).sum();
    eprintln!("{total} messages sent and delivered across the move");
    // The old owners dropped what they gave away: n4's users' keys are gone from them.
    eprintln!("{moved} of {} recipients moved", pairs.len());
}
