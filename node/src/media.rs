//! Media attachments on the node. The bytes go straight between clients and the blob store
//! (`chat_media`); the node decides who may move which bytes:
//!
//! - an upload slot is checked against `[media]`, recorded for the user (`UploadRecord`,
//!   through the writer, by the caller) and signed;
//! - a message may name only a slot of its sender, within the attach window, whose bytes are
//!   in the store and are exactly the slot's; the node then writes the slot's type, size and
//!   hash into the message, never the client's;
//! - a download URL is signed only for a file of a message in the user's own inbox (or one it
//!   uploaded): every other id gets the same UNKNOWN_MEDIA;
//! - expired blobs are deleted a day at a time, once every message naming them has expired.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_media::http::Embedded;
use chat_media::id::DAY_MS;
use chat_media::{BlobStore, Check, Digest, LocalBlobs, MediaId, SlotPolicy, UrlSigner};
use chat_proto::store::{inbox_entry, UploadRecord};
use chat_proto::v1::{Attachment, HttpHeader, MediaDownload, MediaReply, MediaUpload};
use tokio::sync::broadcast;

use crate::admin;
use crate::config::{MediaBackend, MediaSection, NodeConfig};
use crate::error::ChatError;
use crate::routing::Routing;
use crate::store::Store;

/// Attachments whose bytes were read back and found right, remembered so that a file sent to
/// several chats is read from the store once (bounded; forgotten on restart).
const VERIFIED_MEMORY: usize = 4_096;
/// The longest file name an attachment may carry.
const MAX_NAME_BYTES: usize = 255;

pub struct Media {
    /// URLs point at this node (another node's blobs: [`BlobStore::at`]).
    store: BlobStore,
    policy: SlotPolicy,
    cfg: MediaSection,
    node_id: String,
    http_url: String,
    routing: Routing,
    storage: Arc<Store>,
    /// The embedded store's routes (with the `local` backend).
    pub embedded: Option<Arc<Embedded>>,
    verified: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Media {
    pub async fn open(
        cfg: &NodeConfig,
        http_url: &str,
        routing: Routing,
        storage: Arc<Store>,
    ) -> anyhow::Result<Media> {
        let m = &cfg.media;
        let (store, embedded) = match m.backend {
            MediaBackend::Local => {
                let blobs = LocalBlobs::open(m.local_dir(&cfg.node.data_dir)).await?;
                let key = m
                    .url_key(&cfg.auth.jwt_secret)
                    .map_err(anyhow::Error::msg)?;
                let signer = UrlSigner::new(&key)?;
                let embedded = Arc::new(Embedded {
                    blobs: blobs.clone(),
                    signer: signer.clone(),
                });
                let store = BlobStore::Local {
                    blobs,
                    signer,
                    base_url: http_url.to_string(),
                };
                (store, Some(embedded))
            }
            MediaBackend::S3 => (BlobStore::s3(&m.s3.options())?, None),
        };
        Ok(Media {
            store,
            policy: m.policy(),
            cfg: m.clone(),
            node_id: cfg.node.id.clone(),
            http_url: http_url.to_string(),
            routing,
            storage,
            embedded,
            verified: Mutex::new((HashSet::new(), VecDeque::new())),
        })
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.url_ttl_secs)
    }

    /// A new upload slot: its id, the record to store for the user before the URL is handed
    /// out, and the answer (without its request id).
    pub async fn slot(
        &self,
        req: &MediaUpload,
        now_ms: i64,
    ) -> Result<(MediaId, UploadRecord, MediaReply), ChatError> {
        if self.policy.max_bytes == 0 {
            return Err(ChatError::MediaTooLarge(
                "this cluster takes no media (media.max_bytes = 0)".into(),
            ));
        }
        let slot = self.policy.check(&req.mime, req.size, &req.sha256)?;
        let id = MediaId::generate();
        let now = now_ms.max(0) as u64;
        let url = self
            .store
            .upload_url(&id, &slot.mime, slot.size, slot.sha256, self.ttl(), now)
            .await?;
        let record = UploadRecord {
            mime: slot.mime,
            size: slot.size,
            sha256: slot.sha256.0.to_vec(),
            node: match self.store {
                BlobStore::Local { .. } => self.node_id.clone(),
                BlobStore::S3 { .. } => String::new(),
            },
        };
        let reply = MediaReply {
            request_id: String::new(),
            media_id: id.to_string(),
            method: "PUT".into(),
            url: url.url,
            headers: url
                .headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            expires_ms: now_ms + self.ttl().as_millis() as i64,
        };
        Ok((id, record, reply))
    }

    /// The attachment of a message `user` sends, as the recipients will see it: its slot's
    /// type, size and hash, once the bytes are known to be right.
    pub async fn attachment(
        &self,
        user: &str,
        att: Attachment,
        now_ms: i64,
    ) -> Result<Attachment, ChatError> {
        let unknown = || {
            ChatError::UnknownMedia(format!(
                "{:?} is not a file you uploaded (or its slot expired): upload it again",
                att.media_id
            ))
        };
        if att.thumbnail.len() > self.cfg.max_thumbnail_bytes as usize {
            return Err(ChatError::InvalidArgument(format!(
                "a thumbnail of {} bytes is over the limit of {}",
                att.thumbnail.len(),
                self.cfg.max_thumbnail_bytes
            )));
        }
        if att.name.len() > MAX_NAME_BYTES || att.name.chars().any(char::is_control) {
            return Err(ChatError::InvalidArgument(format!(
                "a file name is at most {MAX_NAME_BYTES} bytes, without control characters"
            )));
        }
        let id = MediaId::parse(&att.media_id).ok_or_else(unknown)?;
        let (ts, rec) = self.record(user, &id).await?.ok_or_else(unknown)?;
        if now_ms - ts > (self.cfg.attach_window_secs * 1000) as i64 {
            return Err(unknown());
        }
        let sha =
            Digest(rec.sha256.as_slice().try_into().map_err(|_| {
                ChatError::Internal(format!("upload record {id} has a bad digest"))
            })?);
        let differs = (!att.mime.is_empty() && !att.mime.eq_ignore_ascii_case(&rec.mime))
            || (att.size != 0 && att.size != rec.size)
            || (!att.sha256.is_empty() && !att.sha256.eq_ignore_ascii_case(&sha.to_hex()));
        if differs {
            return Err(ChatError::MediaMismatch(format!(
                "the attachment's type, size or sha256 differ from its upload slot ({}, {} bytes, {})",
                rec.mime,
                rec.size,
                sha.to_hex()
            )));
        }
        if let BlobStore::Local { .. } = self.store {
            // The embedded store's blobs stay on the disk that took them; this user's uploads
            // come here (its home), unless the ring moved it since.
            if rec.node != self.node_id {
                return Err(ChatError::UnknownMedia(format!(
                    "{id} was uploaded to node {:?}, which no longer serves you: upload it again",
                    rec.node
                )));
            }
        }
        if !self.was_verified(id.as_str()) {
            match self.store.verify(&id, rec.size, sha).await? {
                Check::Good => self.remember_verified(id.as_str()),
                Check::Missing => {
                    return Err(ChatError::UnknownMedia(format!(
                        "nothing was uploaded to {id} yet: PUT the bytes first"
                    )))
                }
                Check::Mismatch => {
                    return Err(ChatError::MediaMismatch(format!(
                        "the bytes uploaded to {id} are not the slot's ({} bytes, sha256 {}); they were discarded",
                        rec.size,
                        sha.to_hex()
                    )))
                }
            }
        }
        Ok(Attachment {
            media_id: id.to_string(),
            mime: rec.mime,
            size: rec.size,
            sha256: sha.to_hex(),
            thumbnail: att.thumbnail,
            name: att.name,
            node: rec.node,
        })
    }

    /// A download URL for `user`: only for the attachment of the message at `seq` in its own
    /// inbox, or (seq 0) for a file it uploaded.
    pub async fn download(
        &self,
        user: &str,
        req: &MediaDownload,
        now_ms: i64,
    ) -> Result<MediaReply, ChatError> {
        // One answer for every reason, so that nobody learns which ids exist.
        let unknown = || {
            ChatError::UnknownMedia(format!(
                "no file {:?} in the entry at seq {}",
                req.media_id, req.seq
            ))
        };
        let id = MediaId::parse(&req.media_id).ok_or_else(unknown)?;
        let (mime, node) = if req.seq == 0 {
            let (_, rec) = self.record(user, &id).await?.ok_or_else(unknown)?;
            (rec.mime, rec.node)
        } else {
            let (storage, u, seq) = (self.storage.clone(), user.to_string(), req.seq);
            let entry = blocking(move || storage.inbox_entry(&u, seq)).await?;
            match entry.and_then(|e| match e.entry.entry {
                Some(inbox_entry::Entry::Message(m)) => m.attachment,
                _ => None,
            }) {
                Some(a) if a.media_id == req.media_id => (a.mime, a.node),
                _ => return Err(unknown()),
            }
        };
        let store = match &self.store {
            BlobStore::Local { .. } => self.store.at(&self.url_of(&node)?),
            s3 => s3.clone(),
        };
        let now = now_ms.max(0) as u64;
        let url = store.download_url(&id, &mime, self.ttl(), now).await?;
        Ok(MediaReply {
            request_id: String::new(),
            media_id: id.to_string(),
            method: "GET".into(),
            url,
            headers: Vec::new(),
            expires_ms: now_ms + self.ttl().as_millis() as i64,
        })
    }

    /// The HTTP listener of the node holding an embedded store's blob.
    fn url_of(&self, node: &str) -> Result<String, ChatError> {
        if node.is_empty() || node == self.node_id {
            return Ok(self.http_url.clone());
        }
        let view = self.routing.view.borrow();
        match view.nodes.get(node) {
            Some(n) if !n.http_url.is_empty() => Ok(n.http_url.clone()),
            _ => Err(ChatError::Unavailable(format!(
                "node {node:?}, which holds this file, is not in the cluster now"
            ))),
        }
    }

    async fn record(
        &self,
        user: &str,
        id: &MediaId,
    ) -> Result<Option<(i64, UploadRecord)>, ChatError> {
        let (storage, u, id) = (self.storage.clone(), user.to_string(), id.to_string());
        blocking(move || storage.upload_record(&u, &id)).await
    }

    fn was_verified(&self, id: &str) -> bool {
        self.verified.lock().expect("verified lock").0.contains(id)
    }

    fn remember_verified(&self, id: &str) {
        let mut g = self.verified.lock().expect("verified lock");
        let (set, order) = &mut *g;
        if set.insert(id.to_string()) {
            order.push_back(id.to_string());
            if order.len() > VERIFIED_MEMORY {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    /// Deletes, every `media.sweep_every_secs`, the blobs whose every message has expired:
    /// made before the day `retention + attach window` ago began.
    pub async fn run_sweep(self: Arc<Self>, retention_ms: i64, mut stop: broadcast::Receiver<()>) {
        let every = Duration::from_secs(self.cfg.sweep_every_secs);
        loop {
            let keep_ms = retention_ms + (self.cfg.attach_window_secs * 1000) as i64;
            let floor = (chat_proto::now_ms() - keep_ms).max(0) as u64 / DAY_MS;
            match self.store.expire_before(floor).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!(admin::MEDIA_SWEPT).increment(n);
                    tracing::info!(blobs = n, before_day = floor, "expired media deleted")
                }
                Err(e) => tracing::warn!(error = %e, "media sweep failed; trying again later"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.recv() => return,
            }
        }
    }
}

/// Counts a media request's outcome (`admin::MEDIA_REQUESTS`).
pub(crate) fn count<T>(kind: &'static str, r: &Result<T, ChatError>) {
    let result = if r.is_ok() { "ok" } else { "refused" };
    metrics::counter!(admin::MEDIA_REQUESTS, "kind" => kind, "result" => result).increment(1);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::engine::StorageError> + Send + 'static,
) -> Result<T, ChatError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChatError::Internal(e.to_string()))?
        .map_err(ChatError::from)
}
