//! Node configuration: one typed TOML document. Every field has a default; unknown keys are
//! refused. Precedence, lowest first: defaults, the TOML file, `CHAT_NODE_<SECTION>__<KEY>`
//! environment variables (for example `CHAT_NODE_STORAGE__SYNC=false`), command-line flags.
//! `docs/operations.md` and `node/chat-node.example.toml` list every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub client: ClientSection,
    pub auth: AuthSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    pub cluster: ClusterSection,
    pub admin: AdminSection,
}

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

/// Membership and node-to-node traffic. Ignored by a standalone node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// etcd client URLs.
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
    /// Most entries in one forward request.
    pub forward_batch: u32,
    /// How long one forward request may take before it counts as failed, in milliseconds.
    pub forward_timeout_ms: u64,
    /// A message that could not be handed to the recipient's node for this long after it was
    /// accepted is given up: the sender receives `Failed`. In milliseconds.
    pub forward_give_up_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/chat/".into(),
            weight: 1,
            lease_ttl_secs: 10,
            quic_listen: "127.0.0.1:7500".parse().expect("valid address"),
            quic_public_addr: String::new(),
            ca_file: PathBuf::from("certs/ca.pem"),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            forward_batch: 512,
            forward_timeout_ms: 10_000,
            forward_give_up_ms: 24 * 3600 * 1000,
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
    /// URL clients use to reach this node (given in redirects); empty: `ws://<listen address>`.
    pub public_url: String,
    /// A connection that has not authenticated within this many milliseconds is closed.
    pub hello_timeout_ms: u64,
    /// A connection that sends nothing (not even a pong to the node's pings) for this long is
    /// closed.
    pub idle_timeout_ms: u64,
    /// A client that does not take what the node writes for this long is disconnected.
    pub write_timeout_ms: u64,
    /// Bytes each connection reads from its socket at a time. The buffer is allocated per
    /// connection for its whole life, so it dominates an idle connection's memory; larger frames
    /// are still read whole (in several reads).
    pub read_buffer_bytes: usize,
}

impl Default for ClientSection {
    fn default() -> Self {
        ClientSection {
            listen: "127.0.0.1:7400".parse().expect("valid address"),
            public_url: String::new(),
            hello_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 4096,
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
    /// Inbox entries and dedup records older than this are dropped by compaction.
    pub retention_secs: u64,
    /// Most commands committed in one write batch (one fsync).
    pub max_batch: usize,
    /// Commands that may wait for the committer before senders are slowed down.
    pub queue_depth: usize,
    /// RocksDB block cache, in MiB.
    pub block_cache_mib: usize,
    /// Writes are refused with STORAGE_FULL (nothing stored, no ✓) while the data directory's
    /// filesystem has less free space than this, in MiB, so that RocksDB itself never runs out:
    /// a write that fails for lack of space puts it in a read-only state it leaves slowly, if at
    /// all, without a restart. Writes resume as soon as space returns. 0 turns the check off.
    pub min_free_mib: u64,
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
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// tracing env-filter directives; `RUST_LOG` overrides.
    pub filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// Overrides given on the command line; `None` leaves the value as the file and env set it.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub standalone: bool,
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    pub log_format: Option<String>,
    pub etcd: Option<Vec<String>>,
    pub quic_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Defaults, then the file (if any), then the environment, then `overrides`; then validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(Env::prefixed("CHAT_NODE_").split("__").ignore(&["config"]));
        let mut cfg: NodeConfig = fig.extract().map_err(Box::new)?;
        cfg.apply(overrides);
        cfg.resolve()?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.id {
            self.node.id = v.clone();
        }
        if let Some(v) = &o.data_dir {
            self.node.data_dir = v.clone();
        }
        if o.standalone {
            self.node.standalone = true;
        }
        if let Some(v) = o.listen {
            self.client.listen = v;
        }
        if let Some(v) = &o.public_url {
            self.client.public_url = v.clone();
        }
        if let Some(v) = &o.log_format {
            self.log.format = v.clone();
        }
        if let Some(v) = &o.etcd {
            self.cluster.etcd_endpoints = v.clone();
        }
        if let Some(v) = o.quic_listen {
            self.cluster.quic_listen = v;
        }
        if let Some(v) = o.admin_listen {
            self.admin.listen = v;
        }
    }

    /// Reads the secret file, and checks what serde cannot.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(path) = &self.auth.jwt_secret_file {
            let s = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("auth.jwt_secret_file {}: {e}", path.display()))
            })?;
            self.auth.jwt_secret = s.trim().to_string();
        }
        if self.auth.jwt_secret.len() < 16 {
            return bad("auth.jwt_secret must be set, at least 16 bytes (env CHAT_NODE_AUTH__JWT_SECRET or auth.jwt_secret_file)".into());
        }
        let id = &self.node.id;
        if id.is_empty()
            || id.len() > 63
            || id.starts_with('-')
            || id.ends_with('-')
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad(format!(
                "node.id {id:?}: 1-63 lowercase letters, digits and '-' (a DNS label)"
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(format!("log.format {:?}: text or json", self.log.format));
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_body_bytes >= l.max_frame_bytes {
            return bad(
                "limits.max_body_bytes must be > 0 and below limits.max_frame_bytes".into(),
            );
        }
        for (name, v) in [
            ("limits.max_id_bytes", l.max_id_bytes),
            ("limits.max_devices_per_user", l.max_devices_per_user),
            ("limits.max_history_page", l.max_history_page),
            ("limits.max_inflight_sends", l.max_inflight_sends),
            ("limits.max_connections", l.max_connections),
            ("limits.session_queue", l.session_queue),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if l.max_id_bytes > 1024 {
            return bad("limits.max_id_bytes must be at most 1024".into());
        }
        if !(256..=1 << 20).contains(&self.client.read_buffer_bytes) {
            return bad("client.read_buffer_bytes must be 256 to 1048576".into());
        }
        if self.storage.retention_secs == 0 {
            return bad("storage.retention_secs must be at least 1".into());
        }
        if self.storage.max_batch == 0 || self.storage.queue_depth == 0 {
            return bad("storage.max_batch and storage.queue_depth must be at least 1".into());
        }
        if !self.node.standalone {
            let c = &mut self.cluster;
            if c.etcd_endpoints.is_empty() || c.etcd_endpoints.iter().any(|e| e.is_empty()) {
                return bad("cluster.etcd_endpoints must list at least one etcd URL".into());
            }
            if !c.prefix.starts_with('/') || !c.prefix.ends_with('/') {
                return bad(format!(
                    "cluster.prefix {:?} must start and end with '/'",
                    c.prefix
                ));
            }
            if c.weight == 0 || c.weight > 1000 {
                return bad("cluster.weight must be 1..=1000".into());
            }
            if c.lease_ttl_secs < 2 {
                return bad("cluster.lease_ttl_secs must be at least 2".into());
            }
            if c.forward_batch == 0 || c.forward_timeout_ms == 0 || c.forward_give_up_ms == 0 {
                return bad(
                    "cluster.forward_batch, forward_timeout_ms and forward_give_up_ms must be at least 1"
                        .into(),
                );
            }
            if c.forward_batch as usize > crate::peer::MAX_FORWARD_ENTRIES {
                return bad(format!(
                    "cluster.forward_batch must be at most {} (what a peer accepts)",
                    crate::peer::MAX_FORWARD_ENTRIES
                ));
            }
            if c.forward_timeout_ms > 3_600_000 {
                return bad("cluster.forward_timeout_ms must be at most an hour".into());
            }
            if c.quic_listen.ip().is_unspecified() && c.quic_public_addr.is_empty() {
                return bad(format!(
                    "cluster.quic_listen {} is a wildcard: set cluster.quic_public_addr to the address peers dial",
                    c.quic_listen
                ));
            }
            if self.client.listen.ip().is_unspecified() && self.client.public_url.is_empty() {
                return bad(format!(
                    "client.listen {} is a wildcard: set client.public_url to the URL clients are redirected to",
                    self.client.listen
                ));
            }
            let dir = c
                .ca_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if c.cert_file.as_os_str().is_empty() {
                c.cert_file = dir.join(format!("{id}.pem"));
            }
            if c.key_file.as_os_str().is_empty() {
                c.key_file = dir.join(format!("{id}.key"));
            }
        }
        Ok(())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.storage.retention_secs)
    }

    /// The URL given to clients for this node, once the listener's real address is known.
    pub fn client_url(&self, bound: SocketAddr) -> String {
        if self.client.public_url.is_empty() {
            format!("ws://{bound}")
        } else {
            self.client.public_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("node.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_values_apply_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "[node]\nid = \"n7\"\nstandalone = true\n[auth]\njwt_secret = \"0123456789abcdef\"\n[limits]\nmax_body_bytes = 100\n",
        );
        let cfg = NodeConfig::load(Some(&good), &Overrides::default()).unwrap();
        assert_eq!(cfg.node.id, "n7");
        assert_eq!(cfg.limits.max_body_bytes, 100);
        assert!(cfg.storage.sync, "defaults fill the rest");

        let bad = write(
            dir.path(),
            "[node]\nstandalone = true\nbogus = 1\n[auth]\njwt_secret = \"0123456789abcdef\"\n",
        );
        let err = NodeConfig::load(Some(&bad), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn overrides_win_and_validation_runs() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "[auth]\njwt_secret = \"0123456789abcdef\"\n");
        let o = Overrides {
            standalone: true,
            id: Some("cli".into()),
            ..Default::default()
        };
        assert_eq!(NodeConfig::load(Some(&f), &o).unwrap().node.id, "cli");
        let short = write(dir.path(), "[auth]\njwt_secret = \"short\"\n");
        assert!(NodeConfig::load(Some(&short), &o).is_err());
    }

    #[test]
    fn the_example_file_shows_every_key_with_its_default() {
        let text = include_str!("../chat-node.example.toml");
        let parsed: NodeConfig = toml::from_str(text).expect("example parses, no unknown keys");
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(NodeConfig::default()).unwrap()
        );
    }

    #[test]
    fn cluster_mode_derives_certificate_paths_and_checks_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "[node]\nid = \"n2\"\n[auth]\njwt_secret = \"0123456789abcdef\"\n[cluster]\nca_file = \"/etc/chat/ca.pem\"\n",
        );
        let cfg = NodeConfig::load(Some(&f), &Overrides::default()).unwrap();
        assert_eq!(cfg.cluster.cert_file, PathBuf::from("/etc/chat/n2.pem"));
        assert_eq!(cfg.cluster.key_file, PathBuf::from("/etc/chat/n2.key"));
        for bad in [
            "[cluster]\nprefix = \"chat\"\n",
            "[cluster]\netcd_endpoints = []\n",
            "[cluster]\nweight = 0\n",
            "[node]\nid = \"Not_A_Label\"\n",
        ] {
            let f = write(
                dir.path(),
                &format!("{bad}[auth]\njwt_secret = \"0123456789abcdef\"\n"),
            );
            assert!(
                NodeConfig::load(Some(&f), &Overrides::default()).is_err(),
                "{bad}"
            );
        }
    }
}
