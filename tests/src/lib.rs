//! Test harness: real `chat-node`, `chat-router` and etcd processes on loopback with their data
//! in temp dirs, and clients that talk to them. Every wait has a deadline ([`wait_until`]);
//! nothing sleeps for a fixed time.
//!
//! One module per job: [`process`] (binaries, child processes, `chatctl`), [`node`], [`etcd`],
//! [`router`], [`cluster`], [`proxy`] (a TCP relay that can stall or cut connections),
//! [`s3`] (a real S3-compatible server), [`browser`] (headless Chromium for the web client),
//! [`frames`] (waiting for and picking apart server
//! frames), [`http`] and [`wait`].

use std::time::Duration;

pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod frames;
pub mod http;
pub mod media;
pub mod node;
pub mod openapi;
pub mod process;
pub mod proxy;
pub mod router;
pub mod s3;
pub mod wait;

pub use chat_client;
pub use chat_proto;

pub use cluster::TestCluster;
pub use etcd::TestEtcd;
pub use frames::*;
pub use http::{http_get, http_location, is_ok, metrics_contain, metrics_text};
pub use node::TestNode;
pub use process::{bin, chat_cli, chatctl, signal, try_chatctl};
pub use proxy::TestProxy;
pub use router::TestRouter;
pub use s3::TestS3;
pub use wait::{wait_until, wait_until_async, TimedOut};

/// The secret every test node and token uses.
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// Generous: the suite must pass on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// A token for `user`'s `device`, valid for an hour.
pub fn token(user: &str, device: &str) -> String {
    chat_auth::issue_token(SECRET.as_bytes(), user, device, 3600)
}
