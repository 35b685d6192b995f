//! Media attachments end to end, on a three-node cluster, with each blob store: the embedded
//! one (each node's disk behind its HTTP listener) and a real S3-compatible server (`s3s-fs`).
//! A 2 MB image goes from alice to bob on another node and to a group spread over the nodes;
//! each recipient downloads exactly the uploaded bytes, and nobody else gets a URL. Every
//! refusal has its code, stores nothing and leaves the connection working.

use std::time::Duration;

use chat_client::Client;
use chat_proto::v1::{
    client_frame, deliver, media_request, server_frame, Attachment, ErrorCode, MediaDownload,
    MediaReply, MediaUpload, Message, Send,
};
use chat_tests::media::{http, payload};
use chat_tests::*;

const MAX_MEDIA: u64 = 4 * 1024 * 1024;

fn sha_hex(bytes: &[u8]) -> String {
    chat_media::Digest::of(bytes).to_hex()
}

/// A media request's answer, or the code it was refused with.
async fn media(c: &mut Client, id: &str, op: media_request::Op) -> Result<MediaReply, ErrorCode> {
    c.media_request(id, op).await.unwrap();
    let (f, _) = recv_until(c, "a media answer", |f| match &f.frame {
        Some(server_frame::Frame::Media(r)) => r.request_id == id,
        Some(server_frame::Frame::Error(e)) => e.r#ref == id,
        _ => false,
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Media(r)) => Ok(r),
        _ => Err(error_code(&f).unwrap()),
    }
}

async fn slot(c: &mut Client, id: &str, mime: &str, bytes: &[u8]) -> Result<MediaReply, ErrorCode> {
    let op = media_request::Op::Upload(MediaUpload {
        mime: mime.into(),
        size: bytes.len() as u64,
        sha256: sha_hex(bytes),
    });
    media(c, id, op).await
}

async fn download_url(
    c: &mut Client,
    id: &str,
    media_id: &str,
    seq: u64,
) -> Result<MediaReply, ErrorCode> {
    let op = media_request::Op::Download(MediaDownload {
        media_id: media_id.into(),
        seq,
    });
    media(c, id, op).await
}

async fn put(r: &MediaReply, body: Vec<u8>) -> reqwest::StatusCode {
    assert_eq!(r.method, "PUT");
    let mut req = http().put(&r.url).body(body);
    for h in &r.headers {
        req = req.header(&h.name, &h.value);
    }
    req.send().await.unwrap().status()
}

async fn get(url: &str) -> (reqwest::StatusCode, Vec<u8>) {
    let resp = http().get(url).send().await.unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// Sends a message with an attachment: its ✓, or the code it was refused with.
async fn send_file(
    c: &mut Client,
    cmid: &str,
    to: &str,
    group: &str,
    attachment: Attachment,
) -> Result<String, ErrorCode> {
    let frame = client_frame::Frame::Send(Send {
        client_msg_id: cmid.into(),
        to: to.into(),
        group: group.into(),
        body: String::new(),
        attachment: Some(attachment),
        ..Default::default()
    });
    c.send(frame).await.unwrap();
    let (f, _) = recv_until(c, "a ✓ or a refusal", |f| match &f.frame {
        Some(server_frame::Frame::Sent(s)) => s.client_msg_id == cmid,
        Some(server_frame::Frame::Error(e)) => e.r#ref == cmid,
        _ => false,
    })
    .await;
    match f.frame {
        Some(server_frame::Frame::Sent(s)) => Ok(s.msg_id),
        _ => Err(error_code(&f).unwrap()),
    }
}

fn named(media_id: &str) -> Attachment {
    Attachment {
        media_id: media_id.into(),
        thumbnail: vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3],
        name: "beach.jpg".into(),
        ..Default::default()
    }
}

/// Waits for the message `msg_id` in `c`'s stream: its seq and the message.
async fn delivered(c: &mut Client, msg_id: &str) -> (u64, Message) {
    let (f, _) = recv_until(c, "the message with the file", |f| {
        as_message(f).is_some_and(|(_, m)| m.msg_id == msg_id)
    })
    .await;
    let (seq, m) = as_message(&f).unwrap();
    (seq, m.clone())
}

/// Fetches the file of the message at `seq` as `c` and checks every byte.
async fn fetch_and_check(c: &mut Client, media_id: &str, seq: u64, want: &[u8]) {
    let r = download_url(c, "dl", media_id, seq)
        .await
        .unwrap_or_else(|e| panic!("download URL for seq {seq}: {e:?}"));
    assert_eq!(r.method, "GET");
    let (status, bytes) = get(&r.url).await;
    assert!(status.is_success(), "GET {}: {status}", r.url);
    assert_eq!(bytes.len(), want.len());
    assert_eq!(sha_hex(&bytes), sha_hex(want), "the bytes alice uploaded");
}

async fn still_works(c: &mut Client, nonce: u64) {
    until_pong(c, nonce).await;
}

/// The whole flow on a cluster started with `env`; `local`: the embedded store.
async fn the_flow(env: &[(&str, &str)], local: bool) {
    let max = MAX_MEDIA.to_string();
    let mut all = vec![
        ("CHAT_NODE_MEDIA__MAX_BYTES", max.as_str()),
        ("CHAT_NODE_RATE__MEDIA_PER_MIN", "0"),
    ];
    all.extend_from_slice(env);
    let cluster = TestCluster::start(&all);
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let carol = cluster.users_on("n3", "carol", 1).remove(0);
    let dave = cluster.users_on("n1", "dave", 1).remove(0);
    let mut a = cluster.node("n1").connect(&alice, "phone").await;
    let mut b = cluster.node("n2").connect(&bob, "phone").await;
    let mut c = cluster.node("n3").connect(&carol, "phone").await;
    let mut d = cluster.node("n1").connect(&dave, "phone").await;
    let limits = a.welcome.limits.unwrap();
    assert_eq!(limits.max_media_bytes, MAX_MEDIA);

    // A 2 MB image from alice to bob, whose home is another node.
    let image = payload(2 * 1024 * 1024, 1);
    let up = slot(&mut a, "s1", "image/jpeg", &image).await.unwrap();
    assert!(up.expires_ms > chat_proto::now_ms());
    assert!(put(&up, image.clone()).await.is_success());
    let msg_id = send_file(&mut a, "c1", &bob, "", named(&up.media_id))
        .await
        .unwrap();
    let (seq, m) = delivered(&mut b, &msg_id).await;
    let att = m.attachment.expect("the attachment");
    assert_eq!(att.media_id, up.media_id);
    assert_eq!(att.mime, "image/jpeg", "the slot's type");
    assert_eq!(att.size, image.len() as u64);
    assert_eq!(att.sha256, sha_hex(&image));
    assert_eq!(att.name, "beach.jpg");
    assert_eq!(att.thumbnail, vec![0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]);
    assert_eq!(att.node, if local { "n1" } else { "" });
    fetch_and_check(&mut b, &up.media_id, seq, &image).await;
    // The uploader may fetch its own file (seq 0).
    fetch_and_check(&mut a, &up.media_id, 0, &image).await;

    // Nobody else gets a URL: not dave (same node as the file), not bob through a seq that is
    // not this message, not bob as if he had uploaded it.
    for (who, s) in [("dave", seq), ("dave", 0), ("bob", seq + 1_000), ("bob", 0)] {
        let cl = if who == "dave" { &mut d } else { &mut b };
        let got = download_url(cl, "steal", &up.media_id, s).await;
        assert_eq!(
            got.unwrap_err(),
            ErrorCode::UnknownMedia,
            "{who} at seq {s}"
        );
    }

    // A tampered download URL is refused by the store.
    let r = download_url(&mut b, "dl2", &up.media_id, seq)
        .await
        .unwrap();
    let (status, _) = get(&r
        .url
        .replace(&up.media_id, "m0190000000000000000000000000000"))
    .await;
    assert!(status.is_client_error(), "tampered: {status}");

    // To a group spread over the three nodes: every member fetches it, dave cannot.
    let group = create_group(&mut a, "beach", &[bob.clone(), carol.clone()]).await;
    let photo = payload(600 * 1024, 2);
    let up2 = slot(&mut a, "s2", "image/png", &photo).await.unwrap();
    assert!(put(&up2, photo.clone()).await.is_success());
    let gmsg = send_file(&mut a, "c2", "", &group, named(&up2.media_id))
        .await
        .unwrap();
    for member in [&mut b, &mut c] {
        let (seq, m) = delivered(member, &gmsg).await;
        assert_eq!(m.group, group);
        assert_eq!(m.attachment.as_ref().unwrap().sha256, sha_hex(&photo));
        fetch_and_check(member, &up2.media_id, seq, &photo).await;
    }
    for seq in [0, 1, 2, 3] {
        let got = download_url(&mut d, "steal2", &up2.media_id, seq).await;
        assert_eq!(got.unwrap_err(), ErrorCode::UnknownMedia);
    }

    // Refused slots: too large, a type not allowed, a malformed hash.
    let big = slot_of(&mut a, "s3", "image/jpeg", MAX_MEDIA + 1).await;
    assert_eq!(big.unwrap_err(), ErrorCode::MediaTooLarge);
    let exe = slot(&mut a, "s4", "application/x-msdownload", b"MZ").await;
    assert_eq!(exe.unwrap_err(), ErrorCode::MediaType);
    let bad_hash = media(
        &mut a,
        "s5",
        media_request::Op::Upload(MediaUpload {
            mime: "image/png".into(),
            size: 10,
            sha256: "xyz".into(),
        }),
    )
    .await;
    assert_eq!(bad_hash.unwrap_err(), ErrorCode::InvalidArgument);

    // Refused attachments: nothing uploaded yet, another user's upload, an id never given, a
    // hash other than the slot's, wrong bytes uploaded.
    let empty = slot(&mut a, "s6", "image/png", &payload(1000, 3))
        .await
        .unwrap();
    let not_yet = send_file(&mut a, "c3", &bob, "", named(&empty.media_id)).await;
    assert_eq!(not_yet.unwrap_err(), ErrorCode::UnknownMedia);
    let theirs = send_file(&mut b, "c4", &alice, "", named(&up.media_id)).await;
    assert_eq!(theirs.unwrap_err(), ErrorCode::UnknownMedia);
    let never = send_file(
        &mut a,
        "c5",
        &bob,
        "",
        named("m0190000000000000000000000000abcd"),
    )
    .await;
    assert_eq!(never.unwrap_err(), ErrorCode::UnknownMedia);
    let mut lying = named(&up.media_id);
    lying.sha256 = sha_hex(b"something else");
    let lie = send_file(&mut a, "c6", &bob, "", lying).await;
    assert_eq!(lie.unwrap_err(), ErrorCode::MediaMismatch);
    let wrong = payload(1000, 4);
    let up3 = slot(&mut a, "s7", "image/png", &payload(1000, 5))
        .await
        .unwrap();
    let status = put(&up3, wrong).await;
    assert!(status.is_client_error(), "wrong bytes: {status}");
    let mismatch = send_file(&mut a, "c7", &bob, "", named(&up3.media_id)).await;
    // The embedded store never kept them; s3s-fs keeps an object whose checksum it refused,
    // which the node reads back, finds wrong and removes.
    let want = if local {
        ErrorCode::UnknownMedia
    } else {
        ErrorCode::MediaMismatch
    };
    assert_eq!(mismatch.unwrap_err(), want);
    let again = send_file(&mut a, "c8", &bob, "", named(&up3.media_id)).await;
    assert_eq!(
        again.unwrap_err(),
        ErrorCode::UnknownMedia,
        "nothing is left"
    );

    // A thumbnail over the limit.
    let mut fat = named(&up.media_id);
    fat.thumbnail = vec![0; limits.max_thumbnail_bytes as usize + 1];
    let fat = send_file(&mut a, "c9", &bob, "", fat).await;
    assert_eq!(fat.unwrap_err(), ErrorCode::InvalidArgument);

    // Every refusal left the connections working, and bob got only the two files.
    for (i, cl) in [&mut a, &mut b, &mut c, &mut d].into_iter().enumerate() {
        still_works(cl, 100 + i as u64).await;
    }
    let page = b.history(0, 50, WAIT, &mut Vec::new()).await.unwrap();
    let files: Vec<String> = page
        .entries
        .iter()
        .filter_map(|d| match &d.entry {
            Some(deliver::Entry::Message(m)) => m.attachment.as_ref().map(|a| a.media_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(files, vec![up2.media_id.clone(), up.media_id.clone()]);
}

async fn slot_of(c: &mut Client, id: &str, mime: &str, size: u64) -> Result<MediaReply, ErrorCode> {
    let op = media_request::Op::Upload(MediaUpload {
        mime: mime.into(),
        size,
        sha256: sha_hex(b""),
    });
    media(c, id, op).await
}

/// A media id made `days_ago` days ago (a UUIDv7's first 48 bits are its time).
fn old_id(days_ago: u64) -> chat_media::MediaId {
    let ms = chat_proto::now_ms() as u64 - days_ago * chat_media::id::DAY_MS;
    chat_media::MediaId::parse(&format!("m{ms:012x}70008000000000000000")).unwrap()
}

/// The node's sweep deletes a blob whose every message has expired (one made longer ago than
/// the retention plus the attach window), and keeps one just sent.
async fn the_sweep(env: &[(&str, &str)], store: chat_media::BlobStore) {
    let mut all = vec![("CHAT_NODE_MEDIA__SWEEP_EVERY_SECS", "1")];
    all.extend_from_slice(env);
    let node = TestNode::start(&all);
    let store = store.at(&node.http_url);
    // 30 days of retention and 1 of attach window: a blob from 33 days ago is past both.
    let old = old_id(33);
    let bytes = payload(5000, 7);
    let sha = chat_media::Digest::of(&bytes);
    let now = chat_proto::now_ms() as u64;
    let ttl = Duration::from_secs(60);
    let up = store
        .upload_url(&old, "image/png", bytes.len() as u64, sha, ttl, now)
        .await
        .unwrap();
    let mut req = http().put(&up.url).body(bytes.clone());
    for (k, v) in &up.headers {
        req = req.header(k, v);
    }
    assert!(req.send().await.unwrap().status().is_success());

    // A live one, in a message.
    let mut a = node.connect("alice", "phone").await;
    let fresh = payload(5000, 8);
    let slot = slot(&mut a, "s", "image/png", &fresh).await.unwrap();
    assert!(put(&slot, fresh.clone()).await.is_success());
    send_file(&mut a, "c", "bob", "", named(&slot.media_id))
        .await
        .unwrap();

    wait_until_async("the old blob to be swept", WAIT, async || {
        let url = store
            .download_url(&old, "image/png", ttl, chat_proto::now_ms() as u64)
            .await
            .unwrap();
        get(&url).await.0 == reqwest::StatusCode::NOT_FOUND
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", node.log_text()));
    let mut b = node.connect("bob", "phone").await;
    let (seq, _) = receive_messages(&mut b, 1).await.remove(0);
    fetch_and_check(&mut b, &slot.media_id, seq, &fresh).await;
}

#[tokio::test]
async fn the_sweep_deletes_expired_blobs_from_the_embedded_store() {
    let key = chat_node::config::MediaSection::default()
        .url_key(SECRET)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = chat_media::BlobStore::Local {
        blobs: chat_media::LocalBlobs::open(dir.path()).await.unwrap(),
        signer: chat_media::UrlSigner::new(&key).unwrap(),
        base_url: String::new(),
    };
    the_sweep(&[], store).await;
}

#[tokio::test]
async fn the_sweep_deletes_expired_blobs_from_s3() {
    let s3 = TestS3::start();
    let env = s3.node_env("sweep");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let store = chat_media::BlobStore::s3(&s3.options("sweep")).unwrap();
    the_sweep(&env, store).await;
}

#[tokio::test]
async fn files_through_the_embedded_store() {
    the_flow(&[], true).await;
}

#[tokio::test]
async fn files_through_an_s3_compatible_store() {
    let s3 = TestS3::start();
    let env = s3.node_env("cluster-a");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    the_flow(&env, false).await;
    // The blobs are in the bucket, under the prefix.
    let stored = walk(&s3.bucket_dir().join("cluster-a"));
    assert!(stored >= 2, "{stored} objects under the prefix");
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
