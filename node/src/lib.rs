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
//! owner, whose `peer` handler applies them through its own writer. `rebalance` is this node's
//! part in a move of the ring. `admin` serves health and metrics.

pub mod admin;
pub mod config;
pub mod context;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod peer;
pub mod rebalance;
pub mod routing;
pub mod server;
pub mod store;
pub mod throttle;
pub mod validate;
pub mod writer;
