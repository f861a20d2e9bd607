use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// `host:port` serving `/metrics` alone; when set, the public port does not serve it.
    pub metrics_address: Option<String>,
    /// How often one background task refreshes the database-derived gauges (scrapes read
    /// the cached values, so a scrape costs no query).
    pub metrics_refresh_secs: u64,
    /// With authentication off, host names (besides loopback ones) this server answers to;
    /// `*` answers any. Other names are refused, so a rebound name cannot reach it.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            metrics_address: None,
            metrics_refresh_secs: 5,
            allowed_hosts: Vec::new(),
        }
    }
}

impl ServerSettings {
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.metrics_refresh_secs >= 1,
            "OPENBATCH__SERVER__METRICS_REFRESH_SECS must be at least 1"
        );
        Ok(())
    }
}

/// Whether `host` (a name or address, IPv6 in brackets or not) names this machine's loopback.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
