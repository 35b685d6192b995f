//! One interface over the blob stores a node can use: the embedded directory (its bytes served
//! by a node's HTTP listener) or an S3-compatible object store (bytes straight to and from it).
//! The node asks for upload and download URLs, a blob's size and its removal; a client's flow
//! is the same with either.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::{HeaderName, HeaderValue, Method};
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::id::{Digest, MediaId};
use crate::local::LocalBlobs;
use crate::signing::{Action, Claim, UrlSigner};

/// Where an S3-compatible store is and how to reach it.
#[derive(Clone)]
pub struct S3Options {
    /// Path style: the server's URL, `http://127.0.0.1:9000` or `https://s3.example.com`.
    /// Virtual-hosted style: the bucket's own URL (`https://chat.s3.eu-west-1.amazonaws.com`),
    /// used as it is. Empty: AWS S3, the URL made from the region and the bucket.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `host/bucket/key` (true) or `bucket.host/key` (false).
    pub path_style: bool,
    /// Blobs go under this key prefix (`chat` and `chat/` alike); empty for the bucket's root.
    pub prefix: String,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// An upload URL and the headers the client must send with its PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadUrl {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// What [`BlobStore::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The blob is there and is exactly the promised bytes.
    Good,
    /// Nothing was uploaded (yet).
    Missing,
    /// Other bytes were stored; they have been removed.
    Mismatch,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// A cluster's blob store.
#[derive(Debug, Clone)]
pub enum BlobStore {
    /// The embedded store: blobs on the disk of the node that took the upload, behind that
    /// node's HTTP listener at `base_url` (`http://host:port`), which every URL points at. A
    /// blob held by another node is signed for with that node's URL as `base_url` (the signing
    /// key is the cluster's).
    Local {
        blobs: LocalBlobs,
        signer: UrlSigner,
        base_url: String,
    },
    S3 {
        store: AmazonS3,
        prefix: String,
    },
}

impl BlobStore {
    pub fn s3(o: &S3Options) -> Result<BlobStore, StoreError> {
        // The HTTP client's TLS uses the process's default crypto provider: make it ring, as
        // everywhere else in the cluster (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::new();
        if !o.endpoint.is_empty() {
            builder = builder
                .with_endpoint(&o.endpoint)
                .with_allow_http(o.endpoint.starts_with("http://"));
        }
        let store = builder
            .with_region(&o.region)
            .with_bucket_name(&o.bucket)
            .with_access_key_id(&o.access_key_id)
            .with_secret_access_key(&o.secret_access_key)
            .with_virtual_hosted_style_request(!o.path_style)
            .build()?;
        let prefix = o.prefix.trim_matches('/');
        Ok(BlobStore::S3 {
            store,
            // Always empty or ending in one '/', so keys and the expiry listing agree.
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// The same store, its URLs pointing at the node whose HTTP listener is `base_url`: the
    /// embedded store's blobs are on the disk of the node that took them. S3 is unchanged.
    pub fn at(&self, base_url: &str) -> BlobStore {
        match self {
            BlobStore::Local { blobs, signer, .. } => BlobStore::Local {
                blobs: blobs.clone(),
                signer: signer.clone(),
                base_url: base_url.to_string(),
            },
            s3 => s3.clone(),
        }
    }

    /// `<prefix><day>/<id>`: one key prefix per day, as the embedded store has one folder.
    fn key(prefix: &str, id: &MediaId) -> ObjectPath {
        ObjectPath::from(format!("{prefix}{}/{id}", id.day()))
    }

    /// A URL that takes exactly `size` bytes hashing to `sha256` as blob `id`, for `ttl`, and
    /// the headers the PUT must carry. The embedded store refuses anything else while the bytes
    /// stream in. S3 checks the hash (the signed `x-amz-checksum-sha256` header) and keeps the
    /// signed `content-type`, but cannot be told the size: the node checks it with
    /// [`BlobStore::size`] before a message may name the blob.
    pub async fn upload_url(
        &self,
        id: &MediaId,
        mime: &str,
        size: u64,
        sha256: Digest,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<UploadUrl, StoreError> {
        match self {
            BlobStore::Local {
                signer, base_url, ..
            } => Ok(UploadUrl {
                url: local_url(
                    signer,
                    base_url,
                    id,
                    Action::Put { size, sha256 },
                    ttl,
                    now_ms,
                ),
                headers: vec![("content-type".into(), mime.to_string())],
            }),
            BlobStore::S3 { store, prefix } => {
                let checksum = STANDARD.encode(sha256.0);
                let value = |v: &str| {
                    HeaderValue::from_str(v).map_err(|_| object_store::Error::Generic {
                        store: "S3",
                        source: format!("not a header value: {v:?}").into(),
                    })
                };
                let opts = SignedUrlOptions::default()
                    .with_signed_header(
                        HeaderName::from_static("x-amz-checksum-sha256"),
                        value(&checksum)?,
                    )
                    .with_signed_header(HeaderName::from_static("content-type"), value(mime)?)
                    // Once stored, a blob cannot be replaced with the same URL.
                    .with_signed_header(HeaderName::from_static("if-none-match"), value("*")?);
                let url = store
                    .signed_url_opts(Method::PUT, &Self::key(prefix, id), s3_ttl(ttl), &opts)
                    .await?;
                Ok(UploadUrl {
                    url: url.to_string(),
                    headers: vec![
                        ("x-amz-checksum-sha256".into(), checksum),
                        ("content-type".into(), mime.to_string()),
                        ("if-none-match".into(), "*".into()),
                    ],
                })
            }
        }
    }

    /// A URL that serves blob `id` as `content_type`, for `ttl` (S3 is also asked to, with
    /// `response-content-type`; servers that ignore it serve the type signed at upload).
    pub async fn download_url(
        &self,
        id: &MediaId,
        content_type: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        match self {
            BlobStore::Local {
                signer, base_url, ..
            } => {
                let action = Action::Get {
                    content_type: content_type.to_string(),
                };
                Ok(local_url(signer, base_url, id, action, ttl, now_ms))
            }
            BlobStore::S3 { store, prefix } => {
                let opts = SignedUrlOptions::default()
                    .with_query([("response-content-type", content_type)]);
                let url = store
                    .signed_url_opts(Method::GET, &Self::key(prefix, id), s3_ttl(ttl), &opts)
                    .await?;
                Ok(url.to_string())
            }
        }
    }

    /// The stored blob's size, or `None` if nothing was uploaded (yet).
    pub async fn size(&self, id: &MediaId) -> Result<Option<u64>, StoreError> {
        match self {
            BlobStore::Local { blobs, .. } => Ok(blobs.size(id).await?),
            BlobStore::S3 { store, prefix } => match store.head(&Self::key(prefix, id)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Removes blob `id` (nothing if it is not there).
    pub async fn delete(&self, id: &MediaId) -> Result<(), StoreError> {
        match self {
            BlobStore::Local { blobs, .. } => {
                blobs.delete(id).await?;
                Ok(())
            }
            BlobStore::S3 { store, prefix } => match store.delete(&Self::key(prefix, id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
        }
    }
    /// Removes every blob made before `day` (see [`MediaId::day`]), a day at a time: only the
    /// expired days are listed, never the live ones. Returns the blobs removed.
    pub async fn expire_before(&self, day: u64) -> Result<u64, StoreError> {
        match self {
            BlobStore::Local { blobs, .. } => Ok(blobs.expire_before(day).await?),
            BlobStore::S3 { store, prefix } => {
                let root = prefix.trim_end_matches('/');
                let root = (!root.is_empty()).then(|| ObjectPath::from(root));
                let days = store
                    .list_with_delimiter(root.as_ref())
                    .await?
                    .common_prefixes;
                let mut removed = 0;
                for d in days {
                    let old = d
                        .filename()
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n < day);
                    if !old {
                        continue;
                    }
                    let locations = store.list(Some(&d)).map_ok(|m| m.location).boxed();
                    let mut deleted = store.delete_stream(locations);
                    while let Some(r) = deleted.next().await {
                        match r {
                            Ok(_) => removed += 1,
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(removed)
            }
        }
    }

    /// Whether blob `id` is exactly `size` bytes hashing to `sha256`, before a message may name
    /// it; other bytes are removed. Call it with the size and SHA-256 of the blob's upload slot
    /// (the node's record), never with values a client sent: a blob matching its slot is never
    /// removed. The embedded store took only bytes matching the slot's signed size and hash,
    /// so the blob being there says enough. An S3 store is read back and hashed once: a
    /// presigned PUT cannot bind the size, and a server may keep an object whose checksum it
    /// refused (`s3s-fs` does), so the node trusts only what it has read.
    pub async fn verify(
        &self,
        id: &MediaId,
        size: u64,
        sha256: Digest,
    ) -> Result<Check, StoreError> {
        use sha2::Digest as _;
        let (store, key) = match self {
            BlobStore::Local { blobs, .. } => {
                return Ok(match blobs.size(id).await? {
                    None => Check::Missing,
                    Some(n) if n == size => Check::Good,
                    Some(_) => {
                        blobs.delete(id).await?;
                        Check::Mismatch
                    }
                });
            }
            BlobStore::S3 { store, prefix } => (store, Self::key(prefix, id)),
        };
        let got = match store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(Check::Missing),
            Err(e) => return Err(e.into()),
        };
        if got.meta.size != size {
            self.delete(id).await?;
            return Ok(Check::Mismatch);
        }
        let mut hasher = sha2::Sha256::new();
        let mut read = 0u64;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            if read > size {
                break;
            }
            hasher.update(&chunk);
        }
        if read != size || Digest(hasher.finalize().into()) != sha256 {
            self.delete(id).await?;
            return Ok(Check::Mismatch);
        }
        Ok(Check::Good)
    }
}

/// S3 URLs live whole seconds: at least one (a shorter TTL would sign `X-Amz-Expires=0`).
fn s3_ttl(ttl: Duration) -> Duration {
    ttl.max(Duration::from_secs(1))
}

/// An embedded store's URL granting `action` on blob `id` for `ttl`.
fn local_url(
    signer: &UrlSigner,
    base_url: &str,
    id: &MediaId,
    action: Action,
    ttl: Duration,
    now_ms: u64,
) -> String {
    let claim = Claim {
        media: id.clone(),
        action,
        expires_ms: now_ms + ttl.as_millis() as u64,
    };
    format!("{base_url}/media/{id}?{}", signer.query(&claim))
}
