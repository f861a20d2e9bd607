//! Layered settings: built-in defaults < `config/openbatch.toml` (or the file named by
//! `OPENBATCH_CONFIG`) < `OPENBATCH__SECTION__KEY` environment variables. `DATABASE_URL` is
//! honoured when `OPENBATCH__DATABASE__URL` is not set.

use std::fmt;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub limits: LimitSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub min_connections: u32,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    /// Create the database named in `url` when it does not exist.
    pub create_if_missing: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_upload_bytes: u64,
    pub max_json_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `openbatch=debug,sqlx=warn`; `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that never prints: the database URL carries a password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/openbatch";

impl Settings {
    pub fn load() -> anyhow::Result<Settings> {
        Self::load_from(|name| std::env::var(name).ok())
    }

    /// `env` is injected so tests can load settings without touching the process environment.
    pub fn load_from(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder()
            .set_default("server.host", "127.0.0.1")?
            .set_default("server.port", 8080)?
            .set_default("server.workers", 0)?
            .set_default("database.url", DEFAULT_DATABASE_URL)?
            .set_default("database.max_connections", 16)?
            .set_default("database.min_connections", 0)?
            .set_default("database.connect_timeout_secs", 10)?
            .set_default("database.acquire_timeout_secs", 10)?
            .set_default("database.create_if_missing", true)?
            .set_default("limits.max_upload_bytes", 512_u64 * 1024 * 1024)?
            .set_default("limits.max_json_body_bytes", 1024 * 1024)?
            .set_default("log.format", "text")?
            .set_default("log.level", "info")?;
        builder = match env("OPENBATCH_CONFIG") {
            Some(path) => builder.add_source(config::File::with_name(&path).required(true)),
            None => builder.add_source(config::File::with_name("config/openbatch").required(false)),
        };
        let vars: config::Map<String, String> = ENV_NAMES
            .iter()
            .filter_map(|name| env(name).map(|v| ((*name).to_owned(), v)))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("OPENBATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        if env("OPENBATCH__DATABASE__URL").is_none() {
            if let Some(url) = env("DATABASE_URL") {
                builder = builder.set_override("database.url", url)?;
            }
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .context(
                "invalid configuration; settings come from config/openbatch.toml (or OPENBATCH_CONFIG) \
                 and OPENBATCH__SECTION__KEY environment variables, e.g. OPENBATCH__SERVER__PORT=8080",
            )?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        let db = &self.database;
        anyhow::ensure!(
            db.max_connections >= 1,
            "OPENBATCH__DATABASE__MAX_CONNECTIONS must be at least 1"
        );
        anyhow::ensure!(
            db.min_connections <= db.max_connections,
            "OPENBATCH__DATABASE__MIN_CONNECTIONS must not exceed OPENBATCH__DATABASE__MAX_CONNECTIONS"
        );
        anyhow::ensure!(
            self.limits.max_upload_bytes >= 1,
            "OPENBATCH__LIMITS__MAX_UPLOAD_BYTES must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_json_body_bytes >= 1024,
            "OPENBATCH__LIMITS__MAX_JSON_BODY_BYTES must be at least 1024"
        );
        Ok(())
    }
}

/// Every variable the settings read. Listing them (rather than scanning the whole
/// environment) keeps unrelated `OPENBATCH__*` typos from being silently accepted elsewhere
/// and lets `load_from` work from an injected environment.
const ENV_NAMES: &[&str] = &[
    "OPENBATCH__SERVER__HOST",
    "OPENBATCH__SERVER__PORT",
    "OPENBATCH__SERVER__WORKERS",
    "OPENBATCH__DATABASE__URL",
    "OPENBATCH__DATABASE__MAX_CONNECTIONS",
    "OPENBATCH__DATABASE__MIN_CONNECTIONS",
    "OPENBATCH__DATABASE__CONNECT_TIMEOUT_SECS",
    "OPENBATCH__DATABASE__ACQUIRE_TIMEOUT_SECS",
    "OPENBATCH__DATABASE__CREATE_IF_MISSING",
    "OPENBATCH__LIMITS__MAX_UPLOAD_BYTES",
    "OPENBATCH__LIMITS__MAX_JSON_BODY_BYTES",
    "OPENBATCH__LOG__FORMAT",
    "OPENBATCH__LOG__LEVEL",
];

/// The URL with its password masked, for messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let Some(at) = rest.find('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = load(&[]).unwrap();
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.database.url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(s.limits.max_upload_bytes, 512 * 1024 * 1024);
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = load(&[
            ("OPENBATCH__SERVER__PORT", "9999"),
            ("OPENBATCH__SERVER__HOST", "0.0.0.0"),
            ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
            ("OPENBATCH__LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(s.server.port, 9999);
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.database.url.expose(), "postgres://a@b/c");
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn database_url_is_a_fallback_only() {
        let s = load(&[("DATABASE_URL", "postgres://x@y/z")]).unwrap();
        assert_eq!(s.database.url.expose(), "postgres://x@y/z");
        let s = load(&[
            ("DATABASE_URL", "postgres://x@y/z"),
            ("OPENBATCH__DATABASE__URL", "postgres://a@b/c"),
        ])
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgres://a@b/c");
    }

    #[test]
    fn a_bad_setting_names_itself() {
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__SERVER__PORT", "eighty")]).unwrap_err()
        );
        assert!(err.contains("server.port"), "{err}");
        let err = format!(
            "{:#}",
            load(&[("OPENBATCH__DATABASE__MAX_CONNECTIONS", "0")]).unwrap_err()
        );
        assert!(
            err.contains("OPENBATCH__DATABASE__MAX_CONNECTIONS"),
            "{err}"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load(&[("OPENBATCH__DATABASE__URL", "postgres://u:hunter2@h/d")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            redact_url("postgres://u:hunter2@h/d"),
            "postgres://u:***@h/d"
        );
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    }
}
