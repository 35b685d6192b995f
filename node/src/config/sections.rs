//! The sections of the node's config that say what the node is and where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// This node's id in the cluster: lowercase letters, digits and `-` (it is also the DNS name
    /// in the node's certificate).
    pub id: String,
    /// Where the RocksDB database lives.
    pub data_dir: PathBuf,
    /// Run as a cluster of one with no etcd: this node owns every user.
    pub standalone: bool,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: "node-1".into(),
            data_dir: PathBuf::from("data/node-1"),
            standalone: false,
        }
    }
}

/// Membership, and the endpoint for node-to-node traffic. Ignored by a standalone node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// etcd client URLs (checked as the router's: `chat_service::config::EtcdSection`).
    pub etcd_endpoints: Vec<String>,
    /// Every etcd key of the cluster starts with this.
    pub prefix: String,
    /// This node's weight when `chatctl cluster init` builds the ring (share of users).
    pub weight: u32,
    /// TTL of the node's registration lease, in seconds: a node that stops keeping it alive
    /// disappears from `nodes/` after this long.
    pub lease_ttl_secs: u64,
    /// UDP address of the QUIC endpoint for node-to-node traffic.
    pub quic_listen: SocketAddr,
    /// `host:port` other nodes use to reach the QUIC endpoint; empty: the bound address.
    pub quic_public_addr: String,
    /// The cluster CA certificate (PEM) that peers' certificates must chain to.
    pub ca_file: PathBuf,
    /// This node's certificate (PEM); empty: `<dir of ca_file>/<node.id>.pem`.
    pub cert_file: PathBuf,
    /// This node's private key (PEM); empty: `<dir of ca_file>/<node.id>.key`.
    pub key_file: PathBuf,
    /// Start with a new (empty) store although a replicated ring already names this node a
    /// holder. Its followers' copies of its keys are then replaced by its empty store: only for
    /// a node whose data is lost anyway (recovery from followers is not built yet,
    /// docs/replication.md). Without it such a node refuses to start.
    pub accept_empty_store: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            etcd_endpoints: vec![chat_service::config::DEFAULT_ETCD_ENDPOINT.into()],
            prefix: chat_service::config::DEFAULT_PREFIX.into(),
            weight: 1,
            lease_ttl_secs: 10,
            quic_listen: "127.0.0.1:7500".parse().expect("valid address"),
            quic_public_addr: String::new(),
            ca_file: PathBuf::from("certs/ca.pem"),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            accept_empty_store: false,
        }
    }
}

/// The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address the admin HTTP listener binds (port 0 picks a free port).
    pub listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: "127.0.0.1:7600".parse().expect("valid address"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSection {
    /// Address the client WebSocket listener binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// URL clients use to reach this node (given in redirects); empty: `ws://<listen address>`,
    /// or `wss://` with TLS.
    pub public_url: String,
    /// A connection that has not authenticated within this many milliseconds is closed.
    pub hello_timeout_ms: u64,
    /// A connection that sends nothing (not even a pong to the node's pings) for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A client that does not take what the node writes for this long is disconnected.
    pub write_timeout_ms: u64,
    /// Bytes each connection reads from its socket at a time. The buffer is allocated per
    /// connection for its whole life, so it is a large part of an idle connection's memory;
    /// larger frames are still read whole.
    pub read_buffer_bytes: usize,
    /// PEM certificate chain for TLS on this listener, so that browsers can use `wss://`;
    /// set with `tls_key_file`. Empty: plain WebSocket (no TLS, or TLS ended in front of the
    /// node).
    pub tls_cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: String,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            listen: "127.0.0.1:7400".parse().expect("valid address"),
            public_url: String::new(),
            hello_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 1024,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// The client HTTP listener: the media routes of the embedded blob store (and the HTTP API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address the client HTTP listener binds (port 0 picks a free port).
    pub listen: SocketAddr,
    /// URL clients use to reach it (signed media URLs point here); empty:
    /// `http://<listen address>`.
    pub public_url: String,
    /// Web origins (`scheme://host[:port]`) whose pages may call this listener from the browser
    /// (CORS): the web client uploads files to the signed media URLs and may call the API. `*`
    /// allows every origin, which is safe here: requests carry a bearer token or a signed URL,
    /// never a cookie. Empty: no CORS headers (browsers then refuse cross-origin calls).
    pub allow_origins: Vec<String>,
    /// PEM certificate chain for TLS on this listener (`https://`: the API and the embedded
    /// store's signed URLs for pages served over https); empty: plain HTTP. Needs
    /// `tls_key_file`.
    pub tls_cert_file: String,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: String,
}

impl HttpSection {
    pub fn check(&self) -> Result<(), String> {
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err("http.tls_cert_file and http.tls_key_file go together".into());
        }
        if !self.tls_cert_file.is_empty() && self.public_url.starts_with("http://") {
            return Err(format!(
                "http.public_url {} is http:// but the listener speaks TLS: use https://",
                self.public_url
            ));
        }
        let o = &self.allow_origins;
        if o.iter().any(|x| x == "*") && o.len() > 1 {
            return Err("http.allow_origins: \"*\" allows every origin; list no others".into());
        }
        for x in o.iter().filter(|x| *x != "*") {
            let rest = x
                .strip_prefix("https://")
                .or_else(|| x.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty() && !r.contains('/') && r.chars().all(|c| c.is_ascii_graphic())
            });
            if !ok {
                return Err(format!(
                    "http.allow_origins: {x:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(())
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:7700".parse().expect("valid address"),
            public_url: String::new(),
            allow_origins: vec!["*".into()],
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 secret shared with whoever issues tokens. Required; prefer the env variable
    /// `CHAT_NODE_AUTH__JWT_SECRET` or `jwt_secret_file` to writing it in the file.
    pub jwt_secret: String,
    /// Read the secret from this file instead (surrounding white space is trimmed).
    pub jwt_secret_file: Option<PathBuf>,
    /// Clock skew allowed when checking `exp`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            jwt_secret: String::new(),
            jwt_secret_file: None,
            leeway_secs: 30,
        }
    }
}

impl std::fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSection")
            .field("jwt_secret", &"<redacted>")
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// fsync the write-ahead log before acknowledging (✓). Turn off only for throwaway data.
    pub sync: bool,
    /// Inbox entries and dedup records older than this are dropped by compaction: how long an
    /// entry not yet received or read by all of its user's devices is kept, and the longest
    /// history a user may ask for (in whole days). At most a year.
    pub retention_secs: u64,
    /// Most commands committed in one write batch (one fsync).
    pub max_batch: usize,
    /// Commands that may wait for the committer before senders are slowed down.
    pub queue_depth: usize,
    /// RocksDB block cache, in MiB.
    pub block_cache_mib: usize,
    /// Writes are refused with STORAGE_FULL (nothing stored, no ✓) while the data directory's
    /// filesystem has less free space than this, in MiB, plus what RocksDB still has to write
    /// out for writes it took (its memtables, flushed early when the space above this floor
    /// runs short), so that RocksDB itself never runs out: a write that fails for lack of
    /// space puts it in a read-only state it leaves slowly, if at all, without a restart.
    /// Writes resume as soon as space returns. 0 turns the check off.
    pub min_free_mib: u64,
    /// RocksDB's compactions are paused while the free space above `min_free_mib` is under
    /// this, in MiB, and resumed once it is 1.5 times this: a compaction writes its output
    /// before it deletes its input, and on a nearly full disk that would take the space the
    /// memtables' flush needs. Paused, nothing expires from disk and reads slow down as files
    /// pile up: keep it under the free space a healthy node has. Only with `min_free_mib` > 0.
    pub compaction_headroom_mib: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            sync: true,
            retention_secs: 30 * 24 * 3600,
            max_batch: 1024,
            queue_depth: 16_384,
            block_cache_mib: 128,
            min_free_mib: 64,
            compaction_headroom_mib: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest client frame answered normally; a larger one gets FRAME_TOO_LARGE and is dropped.
    /// Frames over 4x this close the connection (WebSocket code 1009) without being read.
    pub max_frame_bytes: u32,
    /// Largest message body, in bytes of UTF-8.
    pub max_body_bytes: u32,
    /// Longest user, device, recipient or client_msg_id, in bytes.
    pub max_id_bytes: u32,
    /// Devices a user may have (seen within the retention).
    pub max_devices_per_user: u32,
    /// Most entries in one history page.
    pub max_history_page: u32,
    /// Sends a connection may have waiting for ✓ before the node stops reading from it.
    pub max_inflight_sends: u32,
    /// Open client connections; more are refused with OVERLOADED.
    pub max_connections: u32,
    /// Live entries buffered per connection before it falls back to reading from storage.
    pub session_queue: u32,
    /// Users one user may have blocked at once; more are refused with LIMIT_REACHED.
    pub max_blocked: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 32 * 1024,
            max_id_bytes: chat_proto::ids::DEFAULT_MAX_ID_BYTES as u32,
            max_devices_per_user: 8,
            max_history_page: 200,
            max_inflight_sends: 256,
            max_connections: 100_000,
            session_queue: 1024,
            max_blocked: 1_000,
        }
    }
}
