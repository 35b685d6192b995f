//! chat-node: the chat server.
//!
//! A request's path through the modules:
//! `server` accepts a WebSocket → `gateway` authenticates it (`chat_auth`), decodes frames
//! (`chat_proto`), checks them (`validate`) → `writer` applies writes to `store` in group-committed
//! batches → `hub` pushes committed entries to connected devices → `gateway` encodes them out.
//! `error` is the one place errors become wire error codes; `config` is the typed TOML config.
//!
//! Across nodes: a user's home is its owner on the ring (`chat_cluster` keeps the view from
//! etcd; `routing`). The `writer` puts entries for users owned elsewhere in the outbox;
//! `peer::forwarder` hands them over QUIC (`peer::transport`, mutual TLS in `peer::tls`) to the
//! owner, whose `peer` handler applies them through its own writer. `groups` takes a group
//! call to the group's home node (its writer fans messages out to the members' inboxes). `rebalance` is this node's
//! part in a move of the ring. `admin` serves health and metrics. `media` decides who may put
//! and get which attachment bytes (the bytes go straight to the blob store, or to the embedded
//! store's routes on `http`, the client HTTP listener).

//!
//! Only what the `chat-node` binary and the other crates need is public; everything else is
//! `pub(crate)`. The `testing` feature opens what the integration tests reach into (`testing`).

pub mod config;
pub mod server;

pub(crate) mod admin;
pub(crate) mod context;
pub(crate) mod ephemeral;
pub(crate) mod error;
pub(crate) mod gateway;
pub(crate) mod groups;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod media;
pub(crate) mod overload;
pub(crate) mod peer;
pub(crate) mod presence;
pub(crate) mod rate;
pub(crate) mod rebalance;
pub(crate) mod replication;
pub(crate) mod routing;
pub(crate) mod store;
pub(crate) mod stream;
pub(crate) mod throttle;
pub(crate) mod validate;
pub(crate) mod writer;

pub use error::EXIT_STORAGE_FAILED;
pub use store::free_bytes;

/// What the integration tests reach into: a node's store (to look at what a node holds after a
/// move) and the cluster's TLS (to dial a node as a stranger would).
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::peer::tls;
    pub use crate::store::keys::{owner_hash, owner_prefix};
    pub use crate::store::{Cf, Store, StoreOptions};
}
