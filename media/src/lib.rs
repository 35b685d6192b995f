//! Media attachments' bytes, never through the WebSocket: a client asks its home node for a
//! signed upload URL, puts the bytes straight to a blob store, then sends a message that names
//! the media; recipients ask their home node for a signed download URL.
//!
//! - [`id`]: media ids and SHA-256 digests as they appear on the wire.
//! - [`signing`]: the embedded store's signed, expiring URLs (HMAC-SHA256; no I/O, time passed in).
//! - [`local`]: the embedded store, a directory on the node's disk.
//! - [`policy`]: what an upload slot may be (size, type, hash), checked before one is given.
//! - [`http`]: the embedded store's PUT and GET routes, served by the node's HTTP listener.
//! - [`store`]: one interface over the embedded store and S3-compatible object stores.

pub mod http;
pub mod id;
pub mod local;
pub mod policy;
pub mod signing;
pub mod store;

pub use id::{Digest, MediaId};
pub use local::LocalBlobs;
pub use policy::{SlotError, SlotPolicy, SlotRequest};
pub use signing::{Action, Claim, UrlError, UrlSigner};
pub use store::{BlobStore, Check, S3Options, StoreError, UploadUrl};

/// Why a blob could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// More bytes arrived than the upload slot allows.
    #[error("the upload is larger than its slot ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// The upload ended short of the size its slot names.
    #[error("the upload has {got} bytes, its slot says {want}")]
    SizeMismatch { got: u64, want: u64 },
    /// The bytes do not hash to the SHA-256 the slot names.
    #[error("the upload's SHA-256 does not match its slot")]
    DigestMismatch,
    /// The upload's body could not be read to its end.
    #[error("the upload was cut off: {0}")]
    Body(String),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}
