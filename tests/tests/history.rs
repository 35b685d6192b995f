//! Per-user server-side history through a real node: a user sets it with the HTTP API; with
//! device-only history its entries vanish once both its devices have them and it read them;
//! with 7 days, history pages over everything within them.

use chat_tests::media::http;
use chat_tests::*;
use serde_json::{json, Value};

async fn put_settings(base: &str, token: &str, v: Value) -> (reqwest::StatusCode, Value) {
    let resp = http()
        .put(format!("{base}/v1/settings"))
        .bearer_auth(token)
        .json(&v)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

/// The seqs of a history page, and whether there are more.
async fn page(base: &str, token: &str, query: &str) -> (Vec<u64>, bool) {
    let v: Value = http()
        .get(format!("{base}/v1/history{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs = v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["seq"].as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    (seqs, v["more"] == true)
}

#[tokio::test]
async fn device_only_history_forgets_what_every_device_has_and_seven_days_pages() {
    let node = TestNode::start(&[]);
    let base = node.http_url.clone();
    let tb = token("bob", "laptop");
    let (s, v) = put_settings(&base, &tb, json!({ "historyDays": 400 })).await;
    assert_eq!(
        (s.as_u16(), v["code"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    let (s, _) = put_settings(&base, &tb, json!({ "historyDays": 0 })).await;
    assert!(s.is_success());

    let mut alice = node.connect("alice", "phone").await;
    let mut phone = node.connect("bob", "phone").await;
    let mut laptop = node.connect("bob", "laptop").await;
    for i in 0..3 {
        alice
            .send_message(&format!("c{i}"), "bob", "hi")
            .await
            .unwrap();
    }
    let got = receive_messages(&mut phone, 3).await;
    let last = got.last().unwrap().0;
    phone.read(last).await.unwrap();
    until_pong(&mut phone, 1).await;
    // The laptop has not received them: all kept.
    let (seqs, _) = page(&base, &tb, "").await;
    assert_eq!(seqs.len(), 3, "{seqs:?}");
    receive_messages(&mut laptop, 3).await;
    wait_until_async("bob's entries to be forgotten", WAIT, async || {
        page(&base, &tb, "").await.0.is_empty()
    })
    .await
    .unwrap();

    // Seven days: everything within them pages, newest first.
    let (s, v) = put_settings(&base, &tb, json!({ "historyDays": 7 })).await;
    assert!(s.is_success());
    assert_eq!(v["historyDays"], 7);
    for i in 3..8 {
        alice
            .send_message(&format!("c{i}"), "bob", "hi")
            .await
            .unwrap();
    }
    let got = receive_messages(&mut phone, 5).await;
    receive_messages(&mut laptop, 5).await;
    phone.read(got.last().unwrap().0).await.unwrap();
    until_pong(&mut phone, 2).await;
    let mut all: Vec<u64> = Vec::new();
    let mut query = "?limit=2".to_string();
    for _ in 0..10 {
        let (seqs, more) = page(&base, &tb, &query).await;
        all.extend(&seqs);
        if !more {
            break;
        }
        query = format!("?limit=2&beforeSeq={}", seqs.last().unwrap());
    }
    let want: Vec<u64> = got.iter().rev().map(|(s, _)| *s).collect();
    assert_eq!(all, want);
}
