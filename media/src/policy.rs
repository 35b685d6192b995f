//! What an upload slot may be: the checks a node runs on a client's request for one, before it
//! makes an id or signs anything. No I/O.

use crate::id::Digest;

/// The cluster's rules for uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPolicy {
    /// The largest blob, in bytes.
    pub max_bytes: u64,
    /// Allowed media types: exact (`image/png`) or a whole top-level type (`image/*`).
    pub types: Vec<String>,
}

/// A slot request that passed the checks: its type in canonical form (lowercase, no
/// parameters), its size and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    pub mime: String,
    pub size: u64,
    pub sha256: Digest,
}

/// Why a slot is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("an upload must have at least one byte")]
    Empty,
    #[error("{size} bytes is over the limit of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("not a media type: {0:?}")]
    BadType(String),
    #[error("media type {0} is not allowed")]
    TypeNotAllowed(String),
    #[error("sha256 must be 64 hex digits")]
    BadDigest,
}

/// A token of RFC 9110 (the characters a media type's two parts may use).
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 127
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl SlotPolicy {
    /// Checks a client's `mime`, `size` and `sha256` (hex) for a slot.
    pub fn check(&self, mime: &str, size: u64, sha256: &str) -> Result<SlotRequest, SlotError> {
        if size == 0 {
            return Err(SlotError::Empty);
        }
        if size > self.max_bytes {
            return Err(SlotError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        // Parameters (`; charset=...`) are not kept: the type is served as the slot names it.
        let bare = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let (top, sub) = bare
            .split_once('/')
            .filter(|(t, s)| token(t) && token(s) && *s != "*")
            .ok_or_else(|| SlotError::BadType(mime.chars().take(64).collect()))?;
        let allowed = self.types.iter().any(|t| {
            let t = t.to_ascii_lowercase();
            t == bare || t.strip_suffix("/*").is_some_and(|tt| tt == top)
        });
        if !allowed {
            return Err(SlotError::TypeNotAllowed(format!("{top}/{sub}")));
        }
        let sha256 = Digest::from_hex(sha256).ok_or(SlotError::BadDigest)?;
        Ok(SlotRequest {
            mime: bare,
            size,
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SlotPolicy {
        SlotPolicy {
            max_bytes: 16 << 20,
            types: vec!["image/*".into(), "application/pdf".into()],
        }
    }

    #[test]
    fn allowed_types_and_sizes_pass_in_canonical_form() {
        let sha = Digest::of(b"x").to_hex();
        let r = policy()
            .check("Image/PNG; charset=binary", 1, &sha)
            .unwrap();
        assert_eq!(r.mime, "image/png");
        assert_eq!(r.sha256, Digest::of(b"x"));
        assert!(policy().check("application/pdf", 16 << 20, &sha).is_ok());
        assert!(policy()
            .check("image/svg+xml", 10, &sha.to_uppercase())
            .is_ok());
    }

    #[test]
    fn each_refusal_says_why() {
        let sha = Digest::of(b"x").to_hex();
        let p = policy();
        assert_eq!(p.check("image/png", 0, &sha), Err(SlotError::Empty));
        assert_eq!(
            p.check("image/png", (16 << 20) + 1, &sha),
            Err(SlotError::TooLarge {
                size: (16 << 20) + 1,
                max: 16 << 20
            })
        );
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "image/*",
            "im age/png",
            "image/p\u{e9}g",
            "a/b/c",
        ] {
            assert!(
                matches!(p.check(bad, 1, &sha), Err(SlotError::BadType(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            p.check("text/html", 1, &sha),
            Err(SlotError::TypeNotAllowed("text/html".into()))
        );
        assert_eq!(
            p.check("application/pdfx", 1, &sha),
            Err(SlotError::TypeNotAllowed("application/pdfx".into()))
        );
        assert_eq!(p.check("image/png", 1, "abc"), Err(SlotError::BadDigest));
    }
}
