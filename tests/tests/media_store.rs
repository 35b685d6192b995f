//! The blob stores behind media attachments, each through its real HTTP interface: the
//! embedded store (its routes on a loopback listener) and a real S3-compatible server
//! (`s3s-fs`) through presigned SigV4 URLs. One flow for both: an upload URL takes exactly the
//! promised bytes, a download URL gives them back, and wrong, tampered or expired URLs and
//! wrong bytes are refused with nothing stored.

use std::sync::Arc;
use std::time::Duration;

use chat_media::{BlobStore, Check, Digest, LocalBlobs, MediaId, UploadUrl, UrlSigner};
use chat_tests::media::{http, payload};
use chat_tests::{wait_until_async, TestS3, WAIT};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn put(c: &reqwest::Client, u: &UploadUrl, body: Vec<u8>) -> reqwest::StatusCode {
    let mut req = c.put(&u.url).body(body);
    for (k, v) in &u.headers {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status()
}

/// Where the servers differ, and the flow with them.
struct Server {
    /// Stores bytes whose checksum it refused (`s3s-fs` writes the object before it checks;
    /// real S3 and the embedded store do not).
    keeps_refused: bool,
    /// A second PUT of a stored blob with its URL is refused (S3: `if-none-match: *` is
    /// signed); the embedded store takes the same bytes again harmlessly.
    refuses_overwrite: bool,
}

/// The flow every backend must pass.
async fn the_flow(store: &BlobStore, server: Server) {
    let c = http();
    let data = payload(2_000_000, 0);
    let (size, sha) = (data.len() as u64, Digest::of(&data));
    let id = MediaId::generate();
    let ttl = Duration::from_secs(300);
    let up = store
        .upload_url(&id, "image/png", size, sha, ttl, now_ms())
        .await
        .unwrap();

    // Nothing uploaded yet.
    assert_eq!(store.verify(&id, size, sha).await.unwrap(), Check::Missing);
    // Other bytes than promised: refused, and never taken for the blob (a test S3 server may
    // keep them: verify reads them back, finds them wrong, and removes them).
    let mut other = data.clone();
    other[1_000_000] ^= 0xff;
    let st = put(&c, &up, other).await;
    assert!(st.is_client_error(), "other bytes: {st}");
    let after_refusal = if server.keeps_refused {
        Check::Mismatch
    } else {
        Check::Missing
    };
    assert_eq!(store.verify(&id, size, sha).await.unwrap(), after_refusal);
    assert_eq!(store.size(&id).await.unwrap(), None);
    // A URL for another blob does not take this one's bytes.
    let mut forged = up.clone();
    let id2 = MediaId::generate();
    forged.url = forged.url.replace(id.as_str(), id2.as_str());
    // A small body: a server refusing before it reads may close on a large one.
    assert!(put(&c, &forged, b"abc".to_vec()).await.is_client_error());
    assert_eq!(store.size(&id2).await.unwrap(), None);

    assert!(put(&c, &up, data.clone()).await.is_success());
    assert_eq!(store.size(&id).await.unwrap(), Some(size));
    assert_eq!(store.verify(&id, size, sha).await.unwrap(), Check::Good);
    let again = put(&c, &up, data.clone()).await;
    if server.refuses_overwrite {
        assert_eq!(again.as_u16(), 412, "a stored blob is not replaced");
    } else {
        assert!(again.is_success(), "{again}");
    }
    assert_eq!(store.verify(&id, size, sha).await.unwrap(), Check::Good);
    // Verified against other promises, the blob is wrong.
    let id3 = MediaId::generate();
    let up3 = store
        .upload_url(&id3, "image/png", 3, Digest::of(b"abc"), ttl, now_ms())
        .await
        .unwrap();
    assert!(put(&c, &up3, b"abc".to_vec()).await.is_success());
    assert_eq!(
        store.verify(&id3, 4, Digest::of(b"abc")).await.unwrap(),
        Check::Mismatch
    );
    assert_eq!(
        store.size(&id3).await.unwrap(),
        None,
        "a mismatch is removed"
    );

    let down = store
        .download_url(&id, "image/webp", ttl, now_ms())
        .await
        .unwrap();
    let resp = c.get(&down).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    // Served as the download URL says (S3: `response-content-type`), not as uploaded.
    let want = "image/webp";
    assert_eq!(
        resp.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap(),
        want
    );
    let back = resp.bytes().await.unwrap();
    assert!(Digest::of(&back) == sha && back.len() == data.len());

    // Tampered: a changed signature character.
    let tampered = {
        let (head, sig) = down.rsplit_once('=').unwrap();
        let mut sig = sig.to_string();
        let first = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, first);
        format!("{head}={sig}")
    };
    assert!(c
        .get(&tampered)
        .send()
        .await
        .unwrap()
        .status()
        .is_client_error());

    // Expired: a one-second URL is refused once its second has passed.
    let short = store
        .download_url(&id, "image/png", Duration::from_secs(1), now_ms())
        .await
        .unwrap();
    wait_until_async("a one-second URL to expire", WAIT, async || {
        let st = c.get(&short).send().await.unwrap().status();
        assert!(st.is_success() || st.as_u16() == 403, "{st}");
        (st.as_u16() == 403).then_some(())
    })
    .await
    .unwrap();

    store.delete(&id).await.unwrap();
    assert_eq!(store.size(&id).await.unwrap(), None);
    assert!(c
        .get(&down)
        .send()
        .await
        .unwrap()
        .status()
        .is_client_error());
    store.delete(&id).await.unwrap();

    // Expiry removes whole days before the one given, and nothing newer.
    let old = MediaId::parse("m0000000000007000800000000000000b").unwrap();
    let today = MediaId::generate();
    for id in [&old, &today] {
        let up = store
            .upload_url(id, "text/plain", 3, Digest::of(b"abc"), ttl, now_ms())
            .await
            .unwrap();
        assert!(put(&c, &up, b"abc".to_vec()).await.is_success());
    }
    assert_eq!(store.expire_before(today.day()).await.unwrap(), 1);
    assert_eq!(store.size(&old).await.unwrap(), None);
    assert_eq!(store.size(&today).await.unwrap(), Some(3));
    assert_eq!(store.expire_before(today.day()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_takes_and_serves_exactly_the_promised_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = LocalBlobs::open(dir.path()).await.unwrap();
    let signer = UrlSigner::new(b"the cluster's media key, 32 bytes").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let app = chat_media::http::routes(Arc::new(chat_media::http::Embedded {
        blobs: blobs.clone(),
        signer: signer.clone(),
    }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    the_flow(
        &BlobStore::Local {
            blobs,
            signer,
            base_url,
        },
        Server {
            keeps_refused: false,
            refuses_overwrite: false,
        },
    )
    .await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_compatible_store_takes_and_serves_exactly_the_promised_bytes() {
    let s3 = TestS3::start();
    let store = BlobStore::s3(&s3.options("media/")).unwrap();
    let server = Server {
        keeps_refused: true,
        refuses_overwrite: true,
    };
    the_flow(&store, server).await;
    // Blobs live under the configured prefix.
    let id = MediaId::generate();
    let data = payload(10, 0);
    let up = store
        .upload_url(
            &id,
            "image/jpeg",
            10,
            Digest::of(&data),
            Duration::from_secs(60),
            now_ms(),
        )
        .await
        .unwrap();
    assert!(put(&http(), &up, data).await.is_success(), "{}", s3.log());
    let file = s3
        .bucket_dir()
        .join("media")
        .join(id.day().to_string())
        .join(id.as_str());
    assert!(file.exists(), "{file:?}");
}
