//! Signed, expiring URLs of the embedded blob store. A node hands a client the query string
//! of a URL; the node serving the blob checks it and needs nothing else: no session, no lookup.
//! Every node of a cluster shares the key, so a node can sign a URL that points at the node
//! holding the blob (the node that took its upload).
//!
//! The signature is HMAC-SHA256 over a canonical text naming the action, the media id, the
//! expiry and, for an upload, the exact size and SHA-256 the bytes must have (the store refuses
//! anything else), or, for a download, the content type to serve. No I/O; time is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::{Digest, MediaId};

/// What a URL lets its holder do with one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put exactly `size` bytes whose SHA-256 is `sha256`.
    Put { size: u64, sha256: Digest },
    /// Get the blob, served as `content_type`.
    Get { content_type: String },
}

/// A signed URL's content: the action on `media`, valid until `expires_ms` (Unix epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub media: MediaId,
    pub action: Action,
    pub expires_ms: u64,
}

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is malformed: {0}")]
    Malformed(&'static str),
    #[error("the URL's signature does not match")]
    BadSignature,
    #[error("the URL has expired")]
    Expired,
}

/// Signs and checks URLs with the cluster's media key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

/// The text a signature covers: one field per line, so no two claims share it.
fn canonical(c: &Claim) -> String {
    match &c.action {
        Action::Put { size, sha256 } => format!(
            "chat-media-v1\nPUT\n{}\n{}\n{size}\n{}",
            c.media,
            c.expires_ms,
            sha256.to_hex()
        ),
        Action::Get { content_type } => format!(
            "chat-media-v1\nGET\n{}\n{}\n{content_type}",
            c.media, c.expires_ms
        ),
    }
}

/// The cluster's media key is shorter than [`MIN_KEY_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the media URL key must have at least {MIN_KEY_BYTES} bytes")]
pub struct KeyTooShort;

/// A key shorter than this is refused: a short (or empty) key would let anyone forge URLs.
pub const MIN_KEY_BYTES: usize = 32;

impl UrlSigner {
    pub fn new(key: &[u8]) -> Result<UrlSigner, KeyTooShort> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort);
        }
        Ok(UrlSigner { key: key.to_vec() })
    }

    fn mac(&self, c: &Claim) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(canonical(c).as_bytes());
        mac
    }

    /// The query string (without `?`) of a URL granting `c`. Every value is URL-safe as is.
    pub fn query(&self, c: &Claim) -> String {
        let sig = URL_SAFE_NO_PAD.encode(self.mac(c).finalize().into_bytes());
        match &c.action {
            Action::Put { size, sha256 } => format!(
                "exp={}&size={size}&sha256={}&sig={sig}",
                c.expires_ms,
                sha256.to_hex()
            ),
            Action::Get { content_type } => format!(
                "exp={}&ct={}&sig={sig}",
                c.expires_ms,
                URL_SAFE_NO_PAD.encode(content_type)
            ),
        }
    }

    /// The claim of a URL for `media` with query `query`, used as `put` (or get) at `now_ms`:
    /// refused if any parameter is missing, repeated, unknown or malformed, if the signature
    /// does not cover exactly these values, or if it has expired.
    pub fn verify(
        &self,
        media: &MediaId,
        put: bool,
        query: &str,
        now_ms: u64,
    ) -> Result<Claim, UrlError> {
        let mut exp = None;
        let mut size = None;
        let mut sha = None;
        let mut ct = None;
        let mut sig = None;
        for pair in query.split('&') {
            let (k, v) = pair
                .split_once('=')
                .ok_or(UrlError::Malformed("a bare key"))?;
            let slot = match (k, put) {
                ("exp", _) => &mut exp,
                ("sig", _) => &mut sig,
                ("size", true) => &mut size,
                ("sha256", true) => &mut sha,
                ("ct", false) => &mut ct,
                _ => return Err(UrlError::Malformed("an unknown parameter")),
            };
            if slot.replace(v).is_some() {
                return Err(UrlError::Malformed("a repeated parameter"));
            }
        }
        // Every value must be in the one form `query` writes (no leading zeros, lowercase
        // hex): a URL has exactly one spelling, so no one can mint variants of it.
        let number = |v: Option<&str>, what| {
            v.and_then(|v| v.parse::<u64>().ok().filter(|n| n.to_string() == v))
                .ok_or(UrlError::Malformed(what))
        };
        let expires_ms = number(exp, "exp")?;
        let action = if put {
            Action::Put {
                size: number(size, "size")?,
                sha256: sha
                    .and_then(|v| Digest::from_hex(v).filter(|d| d.to_hex() == v))
                    .ok_or(UrlError::Malformed("sha256"))?,
            }
        } else {
            let ct = ct
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(UrlError::Malformed("ct"))?;
            Action::Get { content_type: ct }
        };
        let sig = sig
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(UrlError::Malformed("sig"))?;
        let claim = Claim {
            media: media.clone(),
            action,
            expires_ms,
        };
        // Constant time: a forger learns nothing from how long a refusal takes.
        self.mac(&claim)
            .verify_slice(&sig)
            .map_err(|_| UrlError::BadSignature)?;
        if now_ms >= expires_ms {
            return Err(UrlError::Expired);
        }
        Ok(claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(b"a test key of thirty-two bytes!!").unwrap()
    }

    fn put(media: &MediaId) -> Claim {
        Claim {
            media: media.clone(),
            action: Action::Put {
                size: 2_000_000,
                sha256: Digest::of(b"bytes"),
            },
            expires_ms: 10_000,
        }
    }

    fn get(media: &MediaId) -> Claim {
        Claim {
            media: media.clone(),
            action: Action::Get {
                content_type: "image/svg+xml".into(),
            },
            expires_ms: 10_000,
        }
    }

    #[test]
    fn a_url_is_good_until_it_expires_and_only_for_its_action_and_blob() {
        let s = signer();
        let m = MediaId::generate();
        let (p, g) = (put(&m), get(&m));
        assert_eq!(s.verify(&m, true, &s.query(&p), 9_999), Ok(p.clone()));
        assert_eq!(s.verify(&m, false, &s.query(&g), 0), Ok(g.clone()));
        assert_eq!(
            s.verify(&m, true, &s.query(&p), 10_000),
            Err(UrlError::Expired)
        );
        // A download URL does not upload, an upload URL does not download.
        assert!(s.verify(&m, true, &s.query(&g), 0).is_err());
        assert!(s.verify(&m, false, &s.query(&p), 0).is_err());
        // Another blob, another key.
        let other = MediaId::generate();
        assert_eq!(
            s.verify(&other, true, &s.query(&p), 0),
            Err(UrlError::BadSignature)
        );
        assert_eq!(
            UrlSigner::new(&[7u8; 32])
                .unwrap()
                .verify(&m, true, &s.query(&p), 0),
            Err(UrlError::BadSignature)
        );
    }

    #[test]
    fn tampered_values_are_refused() {
        let s = signer();
        let m = MediaId::generate();
        let q = s.query(&put(&m));
        let bigger = q.replace("size=2000000", "size=2000001");
        assert_eq!(s.verify(&m, true, &bigger, 0), Err(UrlError::BadSignature));
        let later = q.replace("exp=10000", "exp=99999999");
        assert_eq!(s.verify(&m, true, &later, 0), Err(UrlError::BadSignature));
        let other_hash = q.replace(&Digest::of(b"bytes").to_hex(), &Digest::of(b"x").to_hex());
        assert_eq!(
            s.verify(&m, true, &other_hash, 0),
            Err(UrlError::BadSignature)
        );
        let q = s.query(&get(&m));
        let html = q.replace(
            &URL_SAFE_NO_PAD.encode("image/svg+xml"),
            &URL_SAFE_NO_PAD.encode("text/html"),
        );
        assert_eq!(s.verify(&m, false, &html, 0), Err(UrlError::BadSignature));
    }

    #[test]
    fn a_short_key_is_refused() {
        assert_eq!(UrlSigner::new(b"").unwrap_err(), KeyTooShort);
        assert!(UrlSigner::new(&[1u8; MIN_KEY_BYTES - 1]).is_err());
        assert!(UrlSigner::new(&[1u8; MIN_KEY_BYTES]).is_ok());
    }

    #[test]
    fn malformed_queries_are_refused_as_such() {
        let s = signer();
        let m = MediaId::generate();
        let q = s.query(&put(&m));
        for bad in [
            String::new(),
            "exp".to_string(),
            format!("{q}&exp=1"),
            format!("{q}&x=1"),
            q.replace("exp=10000", "exp=-1"),
            q.replace("exp=10000", "exp="),
            q.replace("size=2000000", "size=99999999999999999999999"),
            q.replace("sig=", "sig=!"),
            // Other spellings of the same values.
            q.replace("exp=10000", "exp=010000"),
            q.replace(
                &Digest::of(b"bytes").to_hex(),
                &Digest::of(b"bytes").to_hex().to_uppercase(),
            ),
        ] {
            assert!(
                matches!(s.verify(&m, true, &bad, 0), Err(UrlError::Malformed(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        /// Any single changed byte of a good query makes it fail.
        #[test]
        fn any_flipped_byte_is_refused(at in 0usize..200, to in 0u8..128) {
            let s = signer();
            let m = MediaId::generate();
            let q = s.query(&put(&m));
            let mut b = q.clone().into_bytes();
            let i = at % b.len();
            prop_assume!(b[i] != to);
            b[i] = to;
            let changed = String::from_utf8(b).unwrap();
            // A change inside the base64 signature's unused low bits can decode to the same
            // bytes; anything else must fail.
            let same_sig = URL_SAFE_NO_PAD.decode(changed.rsplit_once("sig=").map_or("", |x| x.1)).ok()
                == URL_SAFE_NO_PAD.decode(q.rsplit_once("sig=").unwrap().1).ok()
                && changed.rsplit_once("sig=").map(|x| x.0) == q.rsplit_once("sig=").map(|x| x.0);
            prop_assume!(!same_sig);
            prop_assert!(s.verify(&m, true, &changed, 0).is_err());
        }
    }
}
