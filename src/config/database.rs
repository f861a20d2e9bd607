use serde::{Deserialize, Serialize};

use super::secret::{serialize_url, Secret};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/openbatch";

/// `url` falls back to `DATABASE_URL` when `OPENBATCH__DATABASE__URL` is not set (see `load`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseSettings {
    #[serde(serialize_with = "serialize_url")]
    pub url: Secret,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    /// Create the database named in `url` when it does not exist.
    pub create_if_missing: bool,
    /// A TOAST index holding this many bytes more than its live content needs, or a work
    /// table's indexes this many more than their rows need, is rebuilt to give the space of
    /// purged content and finished work back (0: never).
    pub reindex_slack_bytes: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::from(DEFAULT_DATABASE_URL),
            max_connections: 16,
            min_connections: 0,
            connect_timeout_secs: 10,
            acquire_timeout_secs: 10,
            create_if_missing: true,
            reindex_slack_bytes: 256 * 1024,
        }
    }
}

impl DatabaseSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections >= 1,
            "OPENBATCH__DATABASE__MAX_CONNECTIONS must be at least 1"
        );
        anyhow::ensure!(
            self.min_connections <= self.max_connections,
            "OPENBATCH__DATABASE__MIN_CONNECTIONS must not exceed OPENBATCH__DATABASE__MAX_CONNECTIONS"
        );
        Ok(())
    }
}

/// Query parameters of a PostgreSQL URL whose values are secret.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "passfile", "sslkey"];

/// The URL with its password (in the authority or a query parameter) masked, for messages.
/// Parsed, not split: a password may hold `@`, `:` or `/`. Anything that does not parse is
/// hidden whole.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw.split_once("://").map_or("", |(s, _)| s);
        return format!("{scheme}://***");
    };
    if url.password().is_some() {
        // Cannot fail: the URL has a host, since it has a password.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}
