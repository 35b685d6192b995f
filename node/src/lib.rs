//! chat-node: the chat server.
//!
//! A request's path through the modules:
//! `server` accepts a WebSocket → `session` authenticates it (`auth`), decodes frames
//! (`chat_proto`), checks them (`validate`) → `commit` applies writes to `store` in group-committed
//! batches → `hub` pushes committed entries to connected devices → `session` encodes them out.
//! `error` is the one place errors become wire error codes; `config` is the typed TOML config.

pub mod auth;
pub mod commit;
pub mod config;
pub mod error;
pub mod hub;
pub mod server;
pub mod session;
pub mod store;
pub mod validate;
