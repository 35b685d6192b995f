//! The web client (`web/app`, served by the router) in real headless Chromium browsers against a
//! real three-node cluster: people on different home nodes chat and see each other's ticks,
//! typing and presence; a group of three; an image attachment through the signed media URLs; a
//! node stopped under a page, which reconnects and loses nothing. A failed wait saves
//! screenshots of every page (`target/debug/browser-screenshots/`); each test also saves its
//! pages at the end.
//!
//! Needs the built web client (`cd web && npm ci && npm run build`; `ops/test.sh` does it).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use chat_tests::browser::{Browsers, Page};
use chat_tests::{TestCluster, TestRouter, SECRET};
use serde_json::Value;

/// The web client's built files.
fn web_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web/app/dist");
    assert!(
        dir.join("index.html").is_file() && dir.join("app.js").is_file(),
        "{} has no built web client: run `cd web && npm ci && npm run build` (ops/test.sh does)",
        dir.display()
    );
    dir
}

/// A cluster of three and a router serving the web client with development tokens.
fn cluster() -> (TestCluster, TestRouter) {
    let c = TestCluster::start(&[]);
    let secret = c.dir.path().join("dev-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let web = web_dir();
    let router = c.start_router_with(&[
        "--web-dir",
        &web.display().to_string(),
        "--dev-token-secret-file",
        &secret.display().to_string(),
    ]);
    (c, router)
}

/// Opens the page, signs in as `user` with a development token, and waits for the connection.
async fn sign_in(b: &mut Browsers, router: &TestRouter, user: &str) -> Page {
    let p = b.open(user, &router.url).await;
    p.type_in("#user", user).await;
    p.click("#dev-signin").await;
    connected(b, &p).await;
    p
}

async fn connected(b: &Browsers, p: &Page) {
    let wait = Duration::from_secs(60);
    let script = "return document.getElementById('conn').dataset.state";
    b.wait_for(p, "the page to be connected", wait, script, |v| v == "open")
        .await;
}

/// Starts (or opens) the conversation with `peer`.
async fn chat_with(p: &Page, peer: &str) {
    p.type_in("#new-chat", peer).await;
    p.click("#new-chat-go").await;
}

async fn send(p: &Page, text: &str) {
    p.type_in("#text", text).await;
    p.click("#send").await;
}

const BODIES: &str =
    "return [...document.querySelectorAll('#messages .msg:not(.system) .body')].map(e => e.textContent)";

/// `[body, tick]` of this page's own messages in the open conversation.
const MY_TICKS: &str = "return [...document.querySelectorAll('#messages .msg.mine')]
    .map(li => [li.querySelector('.body').textContent, li.querySelector('.tick')?.dataset.tick ?? null])";

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn tick_of(v: &Value, body: &str) -> Option<String> {
    v.as_array()?.iter().find_map(|pair| {
        let p = pair.as_array()?;
        (p.first()?.as_str()? == body).then(|| p.get(1)?.as_str().map(str::to_string))?
    })
}

/// Waits until the open conversation shows exactly `want` (in order, each once).
async fn shows_exactly(b: &Browsers, p: &Page, what: &str, want: &[&str]) {
    b.wait(p, what, BODIES, |v| strings(v) == want).await;
}

/// Without a browser: what the router serves with `[web]` and without it, what a development
/// token is, and the CORS answers the page relies on (router route lookup, node uploads).
#[tokio::test]
async fn the_router_serves_the_page_and_dev_tokens_only_when_configured() {
    let (c, router) = cluster();
    let plain = c.start_router();
    let http = chat_tests::media::http();

    let page = http.get(format!("{}/", router.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("<script type=\"module\" src=\"app.js\">"));
    let js = http
        .get(format!("{}/app.js", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));

    // A token for the asked user and device, which the nodes accept.
    let t = http
        .post(format!("{}/dev/token", router.url))
        .json(&serde_json::json!({ "user": "dora", "device": "web-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(t.status(), 200);
    let body: Value = t.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    let who = chat_auth::Verifier::new(SECRET.as_bytes(), 0, 64)
        .verify(token)
        .unwrap();
    assert_eq!((who.user.as_str(), who.device.as_str()), ("dora", "web-1"));

    // Bad requests are refused with a reason; nothing is issued.
    for bad in [
        serde_json::json!({ "user": "no spaces", "device": "d" }),
        serde_json::json!({ "user": "dora" }),
        serde_json::json!({ "user": "dora", "device": "d", "admin": true }),
    ] {
        let r = http
            .post(format!("{}/dev/token", router.url))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    }

    // A router without [web] serves neither.
    let r = http.get(format!("{}/", plain.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("{}/dev/token", plain.url))
        .json(&serde_json::json!({ "user": "dora", "device": "d" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // CORS: any page may look a user up; a page may PUT to a node's signed media URL.
    let r = http
        .get(format!("{}/v1/route/dora", plain.url))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let node = &c.nodes[0];
    let r = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/media/m0123", node.http_url),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let methods = r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("PUT"), "{methods}");

    // A web directory without the page, or a secret too short, stop the router at start.
    let empty = c.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let short = c.dir.path().join("short-secret");
    std::fs::write(&short, "tiny").unwrap();
    for (flag, path, why) in [
        ("--web-dir", &empty, "no index.html"),
        ("--dev-token-secret-file", &short, "at least 16 bytes"),
    ] {
        let out = std::process::Command::new(chat_tests::bin("chat-router"))
            .args(["--check-config", flag, &path.display().to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{flag}: {err}");
    }
}

#[tokio::test]
async fn two_people_chat_with_ticks_typing_presence_and_an_image() {
    let (c, router) = cluster();
    let alice = c.users_on("n1", "alice", 1).remove(0);
    let bob = c.users_on("n2", "bob", 1).remove(0);
    let mut b = Browsers::start("two-people");
    let pa = sign_in(&mut b, &router, &alice).await;
    let pb = sign_in(&mut b, &router, &bob).await;
    chat_with(&pa, &bob).await;
    chat_with(&pb, &alice).await;

    // Typing: bob's page shows it while alice types (her node forwards it to bob's).
    pa.type_in("#text", "hello").await;
    let typing = format!("{alice} is typing");
    let script = "return document.getElementById('typing').textContent";
    b.wait(&pb, "alice's typing notice", script, |v| {
        v.as_str().is_some_and(|s| s.contains(&typing))
    })
    .await;
    // Presence: typing is activity, so alice is online to bob.
    let sub = "return document.getElementById('conv-sub').textContent";
    b.wait(&pb, "alice shown online", sub, |v| v == "online")
        .await;

    // The message: bob sees it; alice's tick goes to read (bob has the conversation open).
    pa.type_in("#text", " bob").await;
    pa.click("#send").await;
    shows_exactly(&b, &pb, "alice's message on bob's page", &["hello bob"]).await;
    b.wait(&pa, "alice's message read", MY_TICKS, |v| {
        tick_of(v, "hello bob").as_deref() == Some("read")
    })
    .await;
    b.wait(&pb, "the typing notice to end", script, |v| v == "")
        .await;

    send(&pb, "hi alice").await;
    shows_exactly(&b, &pa, "bob's reply", &["hello bob", "hi alice"]).await;
    b.wait(&pa, "bob shown online", sub, |v| v == "online")
        .await;

    // An image: uploaded from alice's browser to the signed URL, shown full size on bob's.
    let png = base64::engine::general_purpose::STANDARD
        .decode("iVBORw0KGgoAAAANSUhEUgAAABgAAAAQCAIAAACDRijCAAAAHklEQVR4nGM4oaFBEBGh5ATDqEGjBo0aNGoQZQYBAFyypBAxpgWqAAAAAElFTkSuQmCC")
        .unwrap();
    let file = c.dir.path().join("flag.png");
    std::fs::write(&file, png).unwrap();
    pa.type_in("#text", "a flag").await;
    pa.find("#attach")
        .await
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    let images = "return [...document.querySelectorAll('#messages img.full')]
        .map(i => [i.complete, i.naturalWidth, i.naturalHeight])";
    let loaded = |v: &Value| {
        v.as_array()
            .is_some_and(|a| a.len() == 1 && a[0] == serde_json::json!([true, 24, 16]))
    };
    b.wait(&pb, "the image on bob's page", images, loaded).await;
    b.wait(&pa, "the image on alice's page", images, loaded)
        .await;
    shows_exactly(&b, &pb, "the caption", &["hello bob", "hi alice", "a flag"]).await;
    b.wait(&pa, "the image's ✓", MY_TICKS, |v| {
        tick_of(v, "a flag").is_some_and(|t| t != "pending")
    })
    .await;
    b.screenshots("done").await;
    b.close().await;
}

#[tokio::test]
async fn a_group_of_three_on_three_nodes() {
    let (c, router) = cluster();
    let alice = c.users_on("n1", "alice", 1).remove(0);
    let bob = c.users_on("n2", "bob", 1).remove(0);
    let carol = c.users_on("n3", "carol", 1).remove(0);
    let mut b = Browsers::start("group");
    let pa = sign_in(&mut b, &router, &alice).await;
    let pb = sign_in(&mut b, &router, &bob).await;
    let pc = sign_in(&mut b, &router, &carol).await;

    pa.type_in("#group-name", "team").await;
    pa.type_in("#group-members", &format!("{bob}, {carol}"))
        .await;
    pa.click("#create-group").await;
    let title = "return document.getElementById('conv-title').textContent";
    b.wait(&pa, "the group open", title, |v| v == "team").await;

    // The others find it in their list (from the CREATED event) and open it.
    let group = "return [...document.querySelectorAll('#conversations li')]
        .filter(li => li.dataset.conv.startsWith('g-')).map(li => li.dataset.conv)";
    for p in [&pb, &pc] {
        let g = b
            .wait(p, "the group in the list", group, |v| strings(v).len() == 1)
            .await;
        let id = strings(&g).remove(0);
        p.click(&format!("#conversations li[data-conv='{id}'] button"))
            .await;
        b.wait(p, "the group open", title, |v| v == "team").await;
    }

    send(&pa, "hi team").await;
    for p in [&pb, &pc] {
        shows_exactly(&b, p, "alice's group message", &["hi team"]).await;
    }
    send(&pc, "hi from carol").await;
    for p in [&pa, &pb] {
        shows_exactly(
            &b,
            p,
            "carol's group message",
            &["hi team", "hi from carol"],
        )
        .await;
    }
    // An admin adds a fourth member (not signed in): every page shows it, and the member list.
    let dave = c.users_on("n3", "dave", 1).remove(0);
    pa.type_in("#add-member", &dave).await;
    pa.click("#add-member-go").await;
    let members = "return document.getElementById('conv-sub').textContent";
    b.wait(&pa, "dave in the member list", members, |v| {
        v.as_str().is_some_and(|s| s.split(", ").any(|m| m == dave))
    })
    .await;
    let lines = "return [...document.querySelectorAll('#messages .msg.system .body')].map(e => e.textContent)";
    let added = format!("{alice} added {dave}");
    b.wait(&pc, "the added line", lines, |v| {
        strings(v).contains(&added)
    })
    .await;

    // Bob's page names the senders of group messages.
    let senders =
        "return [...document.querySelectorAll('#messages .msg .from')].map(e => e.textContent)";
    b.wait(&pb, "senders named", senders, |v| {
        strings(v) == [alice.clone(), carol.clone()]
    })
    .await;
    b.screenshots("done").await;
    b.close().await;
}

#[tokio::test]
async fn a_page_reconnects_after_its_node_is_stopped_and_loses_nothing() {
    let (mut c, router) = cluster();
    let alice = c.users_on("n1", "alice", 1).remove(0);
    let bob = c.users_on("n2", "bob", 1).remove(0);
    let mut b = Browsers::start("node-stopped");
    let pa = sign_in(&mut b, &router, &alice).await;
    let pb = sign_in(&mut b, &router, &bob).await;
    chat_with(&pa, &bob).await;
    chat_with(&pb, &alice).await;
    send(&pa, "before").await;
    shows_exactly(&b, &pb, "the first message", &["before"]).await;

    // Bob's home node dies. His page notices and keeps trying.
    c.node_mut("n2").kill9();
    let state = "return document.getElementById('conn').dataset.state";
    b.wait(&pb, "bob's page to notice", state, |v| v != "open")
        .await;

    // Meanwhile alice sends (stored on her node: ✓), and bob writes one (kept on his page).
    for text in ["while down 1", "while down 2", "while down 3"] {
        send(&pa, text).await;
    }
    b.wait(&pa, "✓ for alice's messages", MY_TICKS, |v| {
        (1..=3).all(|i| tick_of(v, &format!("while down {i}")).is_some_and(|t| t != "pending"))
    })
    .await;
    send(&pb, "written offline").await;
    b.wait(&pb, "bob's message waiting", MY_TICKS, |v| {
        tick_of(v, "written offline").as_deref() == Some("pending")
    })
    .await;

    c.node_mut("n2").restart();
    connected(&b, &pb).await;
    let all = [
        "before",
        "while down 1",
        "while down 2",
        "while down 3",
        "written offline",
    ];
    shows_exactly(&b, &pb, "everything, once, in order, on bob's page", &all).await;
    shows_exactly(&b, &pa, "everything, once, in order, on alice's page", &all).await;
    b.wait(&pb, "✓ for bob's message", MY_TICKS, |v| {
        tick_of(v, "written offline").is_some_and(|t| t != "pending")
    })
    .await;
    b.screenshots("done").await;
    b.close().await;
}

#[tokio::test]
async fn pages_follow_their_users_when_the_ring_moves() {
    let (mut c, router) = cluster();
    // Alice moves to n4 when it joins; bob stays on n2.
    let after = chat_ring::plan::plan_add(&c.ring(), "n4", 1).unwrap();
    let pick = |stem: &str, now: &str, then: &str| {
        let ring = c.ring();
        (0..100_000)
            .map(|i| format!("{stem}-{i}"))
            .find(|u| ring.owner(u) == now && after.owner(u) == then)
            .expect("a user that moves so")
    };
    let alice = pick("alice", "n1", "n4");
    let bob = pick("bob", "n2", "n2");
    let mut b = Browsers::start("ring-moves");
    let pa = sign_in(&mut b, &router, &alice).await;
    let pb = sign_in(&mut b, &router, &bob).await;
    chat_with(&pa, &bob).await;
    chat_with(&pb, &alice).await;
    send(&pa, "before the move").await;
    shows_exactly(&b, &pb, "the first message", &["before the move"]).await;

    c.start_extra_node("n4");
    c.chatctl(&["rebalance", "start", "--add", "n4"]);
    c.chatctl(&["rebalance", "wait", "--timeout-secs", "120"]);
    assert_eq!(c.ring().owner(&alice), "n4");

    // Alice's page is now served by n4 (it was sent there), and both ways work.
    let node =
        "const c = document.getElementById('conn'); return [c.dataset.state, c.dataset.node]";
    let on_n4 = serde_json::json!(["open", "n4"]);
    b.wait(&pa, "alice's page on n4", node, |v| *v == on_n4)
        .await;
    send(&pa, "after the move").await;
    send(&pb, "welcome to n4").await;
    let all = ["before the move", "after the move", "welcome to n4"];
    for p in [&pa, &pb] {
        b.wait(p, "all three, once", BODIES, |v| {
            let got = strings(v);
            got.len() == 3
                && all
                    .iter()
                    .all(|m| got.iter().filter(|g| g == m).count() == 1)
        })
        .await;
    }
    b.wait(&pa, "alice's message read on n4's watch", MY_TICKS, |v| {
        tick_of(v, "after the move").as_deref() == Some("read")
    })
    .await;
    b.screenshots("done").await;
    b.close().await;
}

/// A new browser of a user whose phone already has everything starts with no backlog: the page
/// shows the newest page of history, and "Load older messages" brings the rest, in order.
#[tokio::test]
async fn older_messages_are_paged_in_from_history() {
    let (c, router) = cluster();
    let alice = c.users_on("n1", "alice", 1).remove(0);
    let bob = c.users_on("n2", "bob", 1).remove(0);
    let mut phone = c.node("n2").connect(&bob, "phone").await;
    let mut sender = c.node("n1").connect(&alice, "cli").await;
    let bodies: Vec<String> = (0..60).map(|i| format!("old {i:02}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        sender
            .send_message(&format!("h{i}"), &bob, body)
            .await
            .unwrap();
    }
    let got = chat_tests::receive_messages(&mut phone, 60).await;
    let last = got.last().unwrap().0;
    // The phone's cursor is durable at the last message (a new device starts there).
    drop(phone);
    chat_tests::wait_until_async(
        "the phone's cursor at the end",
        chat_tests::WAIT,
        async || c.node("n2").connect(&bob, "phone").await.welcome.cursor == last,
    )
    .await
    .unwrap();

    let mut b = Browsers::start("history");
    let pb = sign_in(&mut b, &router, &bob).await;
    let conv = format!("#conversations li[data-conv='{alice}'] button");
    pb.click(&conv).await;
    let newest: Vec<&str> = bodies[10..].iter().map(String::as_str).collect();
    shows_exactly(&b, &pb, "the newest fifty", &newest).await;
    pb.click("#older").await;
    let all: Vec<&str> = bodies.iter().map(String::as_str).collect();
    shows_exactly(&b, &pb, "all sixty, in order", &all).await;
    let hidden = "return document.getElementById('older').hidden";
    b.wait(&pb, "no older page left", hidden, |v| v == true)
        .await;
    b.close().await;
}
