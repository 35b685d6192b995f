//! Node configuration: one typed TOML document. Every field has a default; unknown keys are
//! refused. Precedence, lowest first: defaults, the TOML file, `CHAT_NODE_<SECTION>__<KEY>`
//! environment variables (for example `CHAT_NODE_STORAGE__SYNC=false`), command-line flags.
//! `docs/operations.md` and `node/chat-node.example.toml` list every field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod groups;
mod media;
mod rates;
mod sections;
mod tuning;

pub use chat_service::config::ConfigError;
pub use chat_service::log::{LogFormat, LogSection};
pub use groups::GroupsSection;
pub use media::{MediaBackend, MediaSection, S3Section};
pub use rates::{EphemeralSection, OverloadSection, PresenceSection, RateSection};
pub use sections::*;
pub use tuning::{ForwardSection, PeerSection, RebalanceSection};

/// The longest retention a cluster may have.
pub const MAX_RETENTION_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub client: ClientSection,
    pub http: HttpSection,
    pub auth: AuthSection,
    pub storage: StorageSection,
    pub limits: LimitsSection,
    pub rate: RateSection,
    pub ephemeral: EphemeralSection,
    pub presence: PresenceSection,
    pub groups: GroupsSection,
    pub media: MediaSection,
    pub overload: OverloadSection,
    pub log: LogSection,
    pub cluster: ClusterSection,
    pub forward: ForwardSection,
    pub rebalance: RebalanceSection,
    pub peer: PeerSection,
    pub admin: AdminSection,
}

/// Overrides given on the command line; `None` leaves the value as the file and env set it.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub standalone: bool,
    pub listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    pub log_format: Option<LogFormat>,
    pub etcd: Option<Vec<String>>,
    pub quic_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
}

impl NodeConfig {
    /// Defaults, then the file (if any), then the environment, then `overrides`; then validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = chat_service::config::load(file, "CHAT_NODE_")?;
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
        if let Some(v) = o.log_format {
            self.log.format = v;
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
        if let Some(v) = o.http_listen {
            self.http.listen = v;
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
            ("limits.max_blocked", l.max_blocked),
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
        if !(1..=MAX_RETENTION_SECS).contains(&self.storage.retention_secs) {
            return bad(format!(
                "storage.retention_secs must be 1 to {MAX_RETENTION_SECS} (a year)"
            ));
        }
        if self.client.tls_cert_file.is_empty() != self.client.tls_key_file.is_empty() {
            return bad("client.tls_cert_file and client.tls_key_file go together".into());
        }
        if self.client_tls() && self.client.public_url.starts_with("ws://") {
            return bad(format!(
                "client.public_url {} is ws:// but the listener speaks TLS: use wss://",
                self.client.public_url
            ));
        }
        if self.storage.max_batch == 0 || self.storage.queue_depth == 0 {
            return bad("storage.max_batch and storage.queue_depth must be at least 1".into());
        }
        self.check_tuning()?;
        self.http.check().map_err(ConfigError::Invalid)?;
        self.rate.check().map_err(ConfigError::Invalid)?;
        self.ephemeral.check().map_err(ConfigError::Invalid)?;
        self.presence.check().map_err(ConfigError::Invalid)?;
        self.groups.check().map_err(ConfigError::Invalid)?;
        self.media.check().map_err(ConfigError::Invalid)?;
        self.media
            .url_key(&self.auth.jwt_secret)
            .map_err(ConfigError::Invalid)?;
        self.overload.check().map_err(ConfigError::Invalid)?;
        if !self.node.standalone {
            let c = &mut self.cluster;
            chat_service::config::check_etcd(&c.etcd_endpoints, &c.prefix, "cluster")?;
            if c.weight == 0 || c.weight > 1000 {
                return bad("cluster.weight must be 1..=1000".into());
            }
            if c.lease_ttl_secs < 2 {
                return bad("cluster.lease_ttl_secs must be at least 2".into());
            }
            if c.quic_listen.ip().is_unspecified() && c.quic_public_addr.is_empty() {
                return bad(format!(
                    "cluster.quic_listen {} is a wildcard: set cluster.quic_public_addr to the address peers dial",
                    c.quic_listen
                ));
            }
            if self.http.listen.ip().is_unspecified() && self.http.public_url.is_empty() {
                return bad(format!(
                    "http.listen {} is a wildcard: set http.public_url to the URL clients reach it at",
                    self.http.listen
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

    /// The node-to-node sections: counts and durations at least 1, waits ordered, and a
    /// forward request no larger than a peer accepts.
    fn check_tuning(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let (f, r, p) = (&self.forward, &self.rebalance, &self.peer);
        for (name, v) in [
            ("forward.batch", f.batch as u64),
            ("forward.timeout_ms", f.timeout_ms),
            ("forward.give_up_ms", f.give_up_ms),
            ("forward.max_queued", f.max_queued as u64),
            ("forward.backoff_min_ms", f.backoff_min_ms),
            ("rebalance.page_keys", r.page_keys as u64),
            ("rebalance.page_bytes", r.page_bytes as u64),
            ("rebalance.request_writes", r.request_writes as u64),
            ("rebalance.request_bytes", r.request_bytes as u64),
            ("rebalance.request_timeout_ms", r.request_timeout_ms),
            ("rebalance.backoff_min_ms", r.backoff_min_ms),
            ("rebalance.commit_every_ms", r.commit_every_ms),
            ("peer.keep_alive_ms", p.keep_alive_ms),
            ("peer.idle_timeout_ms", p.idle_timeout_ms),
            ("peer.dial_every_ms", p.dial_every_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        for (name, lo, hi) in [
            ("forward.backoff", f.backoff_min_ms, f.backoff_max_ms),
            ("rebalance.backoff", r.backoff_min_ms, r.backoff_max_ms),
            ("peer.dial", p.dial_every_ms, p.dial_backoff_max_ms),
        ] {
            if lo > hi {
                return bad(format!("{name}: the minimum wait is over the maximum"));
            }
        }
        if !(1..=64).contains(&f.max_inflight) {
            return bad("forward.max_inflight must be 1 to 64".into());
        }
        if f.batch as usize > crate::peer::MAX_FORWARD_ENTRIES {
            return bad(format!(
                "forward.batch must be at most {} (what a peer accepts)",
                crate::peer::MAX_FORWARD_ENTRIES
            ));
        }
        if f.timeout_ms > 3_600_000 || r.request_timeout_ms > 3_600_000 {
            return bad(
                "forward.timeout_ms and rebalance.request_timeout_ms must be at most an hour"
                    .into(),
            );
        }
        if p.keep_alive_ms >= p.idle_timeout_ms {
            return bad("peer.keep_alive_ms must be below peer.idle_timeout_ms".into());
        }
        Ok(())
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.storage.retention_secs)
    }

    /// The longest history a user may ask to keep: the retention, in whole days.
    pub fn max_history_days(&self) -> u32 {
        (self.storage.retention_secs / 86_400) as u32
    }

    /// Whether the client listener speaks TLS.
    pub fn client_tls(&self) -> bool {
        !self.client.tls_cert_file.is_empty()
    }

    /// The base URL of this node's client HTTP listener, once its real address is known.
    pub fn http_url(&self, bound: SocketAddr) -> String {
        if self.http.public_url.is_empty() {
            let scheme = if self.http.tls_cert_file.is_empty() {
                "http"
            } else {
                "https"
            };
            format!("{scheme}://{bound}")
        } else {
            self.http.public_url.trim_end_matches('/').to_string()
        }
    }

    /// The URL given to clients for this node, once the listener's real address is known.
    pub fn client_url(&self, bound: SocketAddr) -> String {
        if self.client.public_url.is_empty() {
            let scheme = if self.client_tls() { "wss" } else { "ws" };
            format!("{scheme}://{bound}")
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
        let text = include_str!("../../chat-node.example.toml");
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
            "[forward]\nbatch = 0\n",
            "[forward]\nbatch = 20000\n",
            "[rebalance]\nbackoff_min_ms = 5000\n",
            "[peer]\nkeep_alive_ms = 9000\n",
            "[cluster]\nforward_batch = 1\n",
            "[http]\ntls_cert_file = \"/etc/chat/http.pem\"\n",
            "[http]\ntls_cert_file = \"a.pem\"\ntls_key_file = \"a.key\"\npublic_url = \"http://x\"\n",
            "[http]\nallow_origins = [\"*\", \"https://a.example\"]\n",
            "[http]\nallow_origins = [\"https://a.example/path\"]\n",
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
