//! Loading a process's configuration: one typed document whose every field has a default.
//! Precedence, lowest first: the defaults, the TOML file, `<PREFIX><SECTION>__<KEY>` environment
//! variables, then what the caller applies from its command line. Unknown keys are refused by
//! the document's own types (`deny_unknown_fields`).

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Defaults, then `file` (if any; it must exist), then the environment variables starting with
/// `env_prefix` (`CHAT_NODE_` reads `CHAT_NODE_STORAGE__SYNC` as `storage.sync`; the variable
/// `<env_prefix>CONFIG`, which names the file, is not a key).
pub fn load<T>(file: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__").ignore(&["config"]));
    fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))
}

/// Where a cluster's state lives in etcd. The router's `[cluster]` section is exactly this; the
/// node's has these two keys among others, with the same defaults and checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSection {
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// Every etcd key of the cluster starts with this.
    pub prefix: String,
}

pub use chat_cluster::{DEFAULT_ETCD_ENDPOINT, DEFAULT_PREFIX};

impl Default for EtcdSection {
    fn default() -> Self {
        EtcdSection {
            etcd_endpoints: vec![DEFAULT_ETCD_ENDPOINT.into()],
            prefix: DEFAULT_PREFIX.into(),
        }
    }
}

impl EtcdSection {
    /// Checks what serde cannot; `section` names it in the message (`cluster`).
    pub fn check(&self, section: &str) -> Result<(), ConfigError> {
        check_etcd(&self.etcd_endpoints, &self.prefix, section)
    }
}

/// The checks of [`EtcdSection::check`], for a section that holds the two keys among others.
pub fn check_etcd(endpoints: &[String], prefix: &str, section: &str) -> Result<(), ConfigError> {
    if endpoints.is_empty() || endpoints.iter().any(|e| e.is_empty()) {
        return Err(ConfigError::Invalid(format!(
            "{section}.etcd_endpoints must list at least one etcd URL"
        )));
    }
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(ConfigError::Invalid(format!(
            "{section}.prefix {prefix:?} must start and end with '/'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Doc {
        cluster: EtcdSection,
    }

    #[test]
    fn the_file_overrides_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[cluster]\nprefix = \"/x/\"\n").unwrap();
        let d: Doc = load(Some(&file), "CHAT_SERVICE_TEST_").unwrap();
        assert_eq!(d.cluster.prefix, "/x/");
        assert_eq!(d.cluster.etcd_endpoints, vec![DEFAULT_ETCD_ENDPOINT]);
        std::fs::write(&file, "[cluster]\nprefx = \"/x/\"\n").unwrap();
        let e = load::<Doc>(Some(&file), "CHAT_SERVICE_TEST_").unwrap_err();
        assert!(e.to_string().contains("prefx"), "{e}");
        assert!(load::<Doc>(Some(&dir.path().join("missing.toml")), "X_").is_err());
    }

    #[test]
    fn etcd_checks_name_the_section() {
        let mut s = EtcdSection::default();
        assert!(s.check("cluster").is_ok());
        s.prefix = "chat".into();
        let e = s.check("cluster").unwrap_err().to_string();
        assert!(e.contains("cluster.prefix"), "{e}");
        s.prefix = "/chat/".into();
        s.etcd_endpoints.clear();
        assert!(s.check("cluster").is_err());
    }
}
