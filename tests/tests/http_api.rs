//! The HTTP API on a three-node cluster with its router, held against the OpenAPI description
//! the node serves: every answer's status must be documented for its operation and its body must
//! validate against the documented schema. Every route, its refusals (with the WebSocket's error
//! codes), the redirects to the user's home node (from the router and from another node), and
//! the token checks.

use std::collections::BTreeSet;

use chat_proto::v1::server_frame;
use chat_tests::openapi::{http, Api};
use chat_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn every_route_answers_as_its_description_says() {
    let cluster = TestCluster::start(&[("CHAT_NODE_RATE__MEDIA_PER_MIN", "0")]);
    let router = cluster.start_router();
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let (n1, n2) = (
        cluster.node("n1").http_url.clone(),
        cluster.node("n2").http_url.clone(),
    );
    let (ta, tb, tc) = (
        token(&alice, "laptop"),
        token(&bob, "laptop"),
        token(&carol, "laptop"),
    );
    let mut api = Api::load(&n1).await;

    // Three messages from alice to bob, and a group of alice and bob.
    let mut a = cluster.node("n1").connect(&alice, "phone").await;
    for i in 0..3 {
        a.send_message(&format!("c{i}"), &bob, &format!("hi {i}"))
            .await
            .unwrap();
        recv_until(&mut a, "✓", |f| {
            matches!(&f.frame, Some(server_frame::Frame::Sent(s)) if s.client_msg_id == format!("c{i}"))
        })
        .await;
    }
    let group = create_group(&mut a, "lunch", std::slice::from_ref(&bob)).await;

    // History, through the router: a redirect to bob's home, then pages there.
    let (s, _, to) = api
        .call(
            &router.url,
            Method::GET,
            "/v1/history",
            "/v1/history?limit=2",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        to.as_deref(),
        Some(format!("{n2}/v1/history?limit=2").as_str())
    );
    // Another node redirects too.
    let (s, _, to) = api
        .call(
            &n1,
            Method::GET,
            "/v1/history",
            "/v1/history?limit=2",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        to.as_deref(),
        Some(format!("{n2}/v1/history?limit=2").as_str())
    );
    // Bob's inbox: the group's creation event and three messages, newest first. The messages
    // come through the outbox: wait until all are there.
    let page = wait_until_async("bob's four entries", WAIT, async || {
        let resp = http()
            .get(format!("{n2}/v1/history"))
            .bearer_auth(&tb)
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        (v["entries"].as_array().map_or(0, Vec::len) == 4).then_some(v)
    })
    .await
    .unwrap();
    let (s, v, _) = api
        .call(
            &n2,
            Method::GET,
            "/v1/history",
            "/v1/history",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!((s, &v), (StatusCode::OK, &page));
    let entries = page["entries"].as_array().unwrap();
    let newest = entries[0]["seq"].as_str().unwrap().parse::<u64>().unwrap();
    let (s, v, _) = api
        .call(
            &n2,
            Method::GET,
            "/v1/history",
            "/v1/history?limit=2",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert_eq!(v["more"], true);
    let before = v["entries"][1]["seq"].as_str().unwrap().to_string();
    let path = format!("/v1/history?beforeSeq={before}&limit=2");
    let (s, v, _) = api
        .call(&n2, Method::GET, "/v1/history", &path, Some(&tb), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert!(v.get("more").is_none(), "no older entries: {v}");
    assert!(newest >= 4);
    for bad in [
        "/v1/history?limit=100000",
        "/v1/history?limit=abc",
        "/v1/history?bogus=1",
    ] {
        let (s, v, _) = api
            .call(&n2, Method::GET, "/v1/history", bad, Some(&tb), None)
            .await;
        assert_eq!(
            (s, code(&v)),
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            "{bad}"
        );
    }

    // Tokens: none, malformed, signed with another secret, expired.
    let expired = chat_auth::issue_token_expiring(SECRET.as_bytes(), &bob, "x", 1_000);
    let forged = chat_auth::issue_token(b"another-secret-0123456789", &bob, "x", 3600);
    for (t, want) in [
        (None, "UNAUTHENTICATED"),
        (Some("nonsense"), "TOKEN_INVALID"),
        (Some(forged.as_str()), "TOKEN_INVALID"),
        (Some(expired.as_str()), "TOKEN_EXPIRED"),
    ] {
        let (s, v, _) = api
            .call(&n2, Method::GET, "/v1/history", "/v1/history", t, None)
            .await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, want));
    }
    // The router reads the token's user only to redirect: no token (or none it can read), no
    // redirect.
    let (s, v, _) = api
        .call(
            &router.url,
            Method::GET,
            "/v1/history",
            "/v1/history",
            None,
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"));
    let (s, v, _) = api
        .call(
            &router.url,
            Method::GET,
            "/v1/history",
            "/v1/history",
            Some("nonsense"),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "TOKEN_INVALID"));

    // Presence.
    let path = format!("/v1/presence?users={alice},{carol}");
    let (s, v, _) = api
        .call(&n2, Method::GET, "/v1/presence", &path, Some(&tb), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let statuses = v["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 2);
    assert!(statuses
        .iter()
        .any(|st| st["user"] == alice.as_str() && st["online"] == true));
    for bad in [
        "/v1/presence",
        "/v1/presence?users=",
        "/v1/presence?users=a%20b",
    ] {
        let (s, v, _) = api
            .call(&n2, Method::GET, "/v1/presence", bad, Some(&tb), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    // Groups: bob's list and the group's members; carol is no member; an unknown group.
    let (s, v, _) = api
        .call(
            &n2,
            Method::GET,
            "/v1/groups",
            "/v1/groups",
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["groups"][0]["group"], group.as_str());
    assert_eq!(v["groups"][0]["name"], "lunch");
    let path = format!("/v1/groups/{group}");
    let (s, v, _) = api
        .call(
            &n2,
            Method::GET,
            "/v1/groups/{group}",
            &path,
            Some(&tb),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let members: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    let mut want = vec![alice.as_str(), bob.as_str()];
    want.sort();
    assert_eq!(members, want);
    let n3 = cluster.node("n3").http_url.clone();
    let (s, v, _) = api
        .call(
            &n3,
            Method::GET,
            "/v1/groups/{group}",
            &path,
            Some(&tc),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "NOT_A_MEMBER"));
    let unknown = "/v1/groups/g-019aa1b2-7c3d-7e00-8000-000000000000";
    let (s, v, _) = api
        .call(
            &n3,
            Method::GET,
            "/v1/groups/{group}",
            unknown,
            Some(&tc),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "UNKNOWN_GROUP"));

    // Settings: replaced, read back, a bad document refused.
    let (s, v, _) = api
        .call(
            &n1,
            Method::GET,
            "/v1/settings",
            "/v1/settings",
            Some(&ta),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    let on = json!({ "hideLastSeen": true });
    let (s, v, _) = api
        .call(
            &n1,
            Method::PUT,
            "/v1/settings",
            "/v1/settings",
            Some(&ta),
            Some(on.clone()),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, on.clone()));
    let (s, v, _) = api
        .call(
            &n1,
            Method::GET,
            "/v1/settings",
            "/v1/settings",
            Some(&ta),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, on));
    let (s, v, _) = api
        .call(
            &n1,
            Method::PUT,
            "/v1/settings",
            "/v1/settings",
            Some(&ta),
            Some(json!({"bogus": 1})),
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"));

    // Media: a slot, the bytes, a download URL for the uploader only.
    let bytes = b"%PDF-1.7 a small document".to_vec();
    let sha = chat_media::Digest::of(&bytes).to_hex();
    let slot = json!({ "mime": "application/pdf", "size": bytes.len(), "sha256": sha });
    let (s, up, _) = api
        .call(
            &n1,
            Method::POST,
            "/v1/media/uploads",
            "/v1/media/uploads",
            Some(&ta),
            Some(slot),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut put = http().put(up["url"].as_str().unwrap()).body(bytes.clone());
    for h in up["headers"].as_array().unwrap() {
        put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
    }
    assert!(put.send().await.unwrap().status().is_success());
    let media_id = up["mediaId"].as_str().unwrap();
    let path = format!("/v1/media/{media_id}");
    let (s, down, _) = api
        .call(
            &n1,
            Method::GET,
            "/v1/media/{mediaId}",
            &path,
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = http()
        .get(down["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    let (s, v, _) = api
        .call(
            &n2,
            Method::GET,
            "/v1/media/{mediaId}",
            &format!("{path}?seq=1"),
            Some(&tb),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "UNKNOWN_MEDIA"));
    for (slot, status, want) in [
        (
            json!({ "mime": "application/pdf", "size": 1u64 << 40, "sha256": sha }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "MEDIA_TOO_LARGE",
        ),
        (
            json!({ "mime": "application/x-sh", "size": 3, "sha256": sha }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "MEDIA_TYPE",
        ),
        (
            json!({ "mime": "image/png", "size": 3, "sha256": "nothex" }),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        (
            json!({ "mime": "image/png" }),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
    ] {
        let (s, v, _) = api
            .call(
                &n1,
                Method::POST,
                "/v1/media/uploads",
                "/v1/media/uploads",
                Some(&ta),
                Some(slot),
            )
            .await;
        assert_eq!((s, code(&v)), (status, want));
    }

    // The embedded store's routes: a tampered URL.
    let tampered = down["url"].as_str().unwrap().replace("sig=", "sig=A");
    let path = tampered.strip_prefix(&n1).unwrap().to_string();
    let (s, v, _) = api
        .call(&n1, Method::GET, "/media/{mediaId}", &path, None, None)
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::BAD_REQUEST,
        "{s} {v}"
    );
    assert_eq!(code(&v), "URL_INVALID");

    // Anything else: a JSON 404.
    let resp = http().get(format!("{n1}/v1/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(code(&v), "NOT_FOUND");

    // Every documented operation was called (the embedded store's PUT through its URL above,
    // outside `call`).
    api.seen.insert(("put".into(), "/media/{mediaId}".into()));
    api.seen.insert(("get".into(), "/v1/openapi.json".into()));
    let mut documented = BTreeSet::new();
    for (path, ops) in api.doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            documented.insert((m.clone(), path.clone()));
        }
    }
    assert_eq!(api.seen, documented);
}
