//! The `[media]` section: where attachments' bytes are kept, and what an upload may be.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the cluster keeps attachments' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaBackend {
    /// The embedded store: a directory on the disk of the node that took the upload, served by
    /// its HTTP listener. For a laptop and the dev cluster: a blob is lost with its node's disk
    /// and does not move when the ring does.
    Local,
    /// An S3-compatible object store (`[media.s3]`), shared by every node.
    S3,
}

/// Media attachments (`docs/operations.md`, "Media").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// `local` (the embedded store) or `s3`. Every node of a cluster must use the same.
    pub backend: MediaBackend,
    /// The embedded store's directory; empty: `<node.data_dir>/media`.
    pub local_dir: PathBuf,
    /// The largest upload, in bytes; larger slots are refused with MEDIA_TOO_LARGE. 0 turns
    /// uploads off (every slot is refused; files already sent can still be fetched).
    pub max_bytes: u64,
    /// Media types a slot may have: exact (`application/pdf`) or a whole top-level type
    /// (`image/*`); others are refused with MEDIA_TYPE.
    pub types: Vec<String>,
    /// Largest inline thumbnail of an attachment, in bytes (it travels in the message, whose
    /// frame must still fit in `limits.max_frame_bytes`; in JSON a thumbnail is base64, 4/3
    /// of its size).
    pub max_thumbnail_bytes: u32,
    /// How long a signed upload or download URL stays valid, in seconds.
    pub url_ttl_secs: u64,
    /// How long after its slot was given an upload may still be attached to a message, in
    /// seconds. A blob is deleted once this plus `storage.retention_secs` has passed since its
    /// slot was given (every message naming it has expired by then).
    pub attach_window_secs: u64,
    /// The key that signs the embedded store's URLs (at least 32 bytes), the same on every
    /// node; empty: derived from `auth.jwt_secret`.
    pub url_key_file: PathBuf,
    /// How often a node deletes expired blobs, in seconds.
    pub sweep_every_secs: u64,
    pub s3: S3Section,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            backend: MediaBackend::Local,
            local_dir: PathBuf::new(),
            max_bytes: 64 * 1024 * 1024,
            types: [
                "image/*",
                "video/*",
                "audio/*",
                "application/pdf",
                "application/zip",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            max_thumbnail_bytes: 16 * 1024,
            url_ttl_secs: 300,
            attach_window_secs: 24 * 3600,
            url_key_file: PathBuf::new(),
            sweep_every_secs: 3600,
            s3: S3Section::default(),
        }
    }
}

/// An S3-compatible object store (`media.backend = "s3"`). Clients PUT and GET its presigned
/// URLs directly, so `endpoint` must be reachable by clients too.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// The store's URL (`https://s3.example.com`, `http://127.0.0.1:9000`); empty: AWS.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// Prefer the env variable `CHAT_NODE_MEDIA__S3__SECRET_ACCESS_KEY` to the file.
    pub secret_access_key: String,
    /// Path-style URLs (`endpoint/bucket/key`), as most self-hosted stores want; false:
    /// virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Every key starts with this (`chat/media`); empty: the bucket's root.
    pub prefix: String,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            path_style: true,
            prefix: String::new(),
        }
    }
}

/// As the store's options: the secret redacted in one place.
impl std::fmt::Debug for S3Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.options().fmt(f)
    }
}

impl S3Section {
    pub fn options(&self) -> chat_media::S3Options {
        chat_media::S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            path_style: self.path_style,
            prefix: self.prefix.clone(),
        }
    }
}

impl MediaSection {
    pub(super) fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("media.url_ttl_secs", self.url_ttl_secs),
            ("media.attach_window_secs", self.attach_window_secs),
            ("media.sweep_every_secs", self.sweep_every_secs),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.url_ttl_secs > 7 * 24 * 3600 {
            return Err("media.url_ttl_secs must be at most 7 days (S3's limit)".into());
        }
        if self.types.is_empty() && self.max_bytes > 0 {
            return Err(
                "media.types is empty: allow at least one type, or set media.max_bytes = 0".into(),
            );
        }
        if self.backend == MediaBackend::S3 {
            let s = &self.s3;
            if s.bucket.is_empty() || s.access_key_id.is_empty() || s.secret_access_key.is_empty() {
                return Err(
                    "media.backend = \"s3\" needs media.s3.bucket, access_key_id and secret_access_key"
                        .into(),
                );
            }
            let scheme = s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://");
            if !s.endpoint.is_empty() && !scheme {
                return Err(format!(
                    "media.s3.endpoint {:?} must be an http:// or https:// URL",
                    s.endpoint
                ));
            }
        }
        Ok(())
    }

    /// The embedded store's directory for a node whose database is in `data_dir`.
    pub fn local_dir(&self, data_dir: &Path) -> PathBuf {
        if self.local_dir.as_os_str().is_empty() {
            data_dir.join("media")
        } else {
            self.local_dir.clone()
        }
    }

    /// The key of the embedded store's URLs: the file's bytes (trimmed), or one derived from
    /// the token secret, so that a cluster needs no second secret to run.
    pub fn url_key(&self, jwt_secret: &str) -> Result<Vec<u8>, String> {
        if self.url_key_file.as_os_str().is_empty() {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(jwt_secret.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"chat media url key v1");
            return Ok(mac.finalize().into_bytes().to_vec());
        }
        let path = &self.url_key_file;
        let key = std::fs::read_to_string(path)
            .map_err(|e| format!("media.url_key_file {}: {e}", path.display()))?;
        let key = key.trim().as_bytes().to_vec();
        if key.len() < chat_media::signing::MIN_KEY_BYTES {
            return Err(format!(
                "media.url_key_file {}: at least {} bytes",
                path.display(),
                chat_media::signing::MIN_KEY_BYTES
            ));
        }
        Ok(key)
    }

    pub fn policy(&self) -> chat_media::SlotPolicy {
        chat_media::SlotPolicy {
            max_bytes: self.max_bytes,
            types: self.types.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_key_is_long_enough_and_follows_the_secret() {
        let m = MediaSection::default();
        let a = m.url_key("0123456789abcdef").unwrap();
        assert!(a.len() >= chat_media::signing::MIN_KEY_BYTES);
        assert_eq!(a, m.url_key("0123456789abcdef").unwrap());
        assert_ne!(a, m.url_key("0123456789abcdeX").unwrap());
        assert_ne!(a, b"0123456789abcdef".to_vec());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(MediaSection::default().check().is_ok());
        let s3 = MediaSection {
            backend: MediaBackend::S3,
            ..Default::default()
        };
        assert!(s3.check().is_err(), "no bucket");
        let s3 = MediaSection {
            backend: MediaBackend::S3,
            s3: S3Section {
                bucket: "b".into(),
                access_key_id: "k".into(),
                secret_access_key: "s".into(),
                endpoint: "ftp://x".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(s3.check().is_err(), "not an http(s) endpoint");
        let ttl = MediaSection {
            url_ttl_secs: 0,
            ..Default::default()
        };
        assert!(ttl.check().is_err());
    }
}
