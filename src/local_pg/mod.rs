//! First run on a laptop: when no database URL is configured and nothing answers on the
//! default address, start a private PostgreSQL from the machine's own binaries, in a local
//! data directory, and stop it when the process exits.
//!
//! The private server listens on a Unix socket only (`listen_addresses = ''`), so it can never
//! collide with, or be mistaken for, a PostgreSQL on 127.0.0.1:5432. Its data outlives the
//! process: the next start finds the same batches and files. A configured URL
//! (`OPENBATCH__DATABASE__URL`, `DATABASE_URL`, or `database.url` in the config file) never
//! does any of this.

mod server;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use server::is_root;
pub use server::PgServer;

use crate::config::{Secret, Settings, DEFAULT_DATABASE_URL};

/// A PostgreSQL this process started; stopped when dropped.
pub struct LocalPostgres {
    server: PgServer,
    /// False when another process (an earlier `openbatch serve` still running) had already
    /// started it: then it is that process's to stop.
    owned: bool,
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let data = self.server.data().display().to_string();
        tracing::info!(%data, "stopping the private PostgreSQL");
        if let Err(e) = self.server.stop("fast") {
            tracing::warn!("could not stop the private PostgreSQL: {e:#}");
        }
    }
}

/// Starts (or first creates) the private PostgreSQL when the configuration asks for none and
/// none answers, and points `settings` at it. Returns `None` when nothing needed starting.
pub fn start_if_needed(settings: &mut Settings) -> anyhow::Result<Option<LocalPostgres>> {
    let vars: HashMap<String, String> = std::env::vars().collect();
    if url_configured(&vars) || settings.database.url.expose_secret() != DEFAULT_DATABASE_URL {
        return Ok(None);
    }
    let default: SocketAddr = "127.0.0.1:5432".parse().expect("a socket address");
    if TcpStream::connect_timeout(&default, Duration::from_secs(1)).is_ok() {
        return Ok(None);
    }
    let base = data_dir(&vars);
    let Some(server) = PgServer::find(base.join("postgres")) else {
        // No PostgreSQL here at all: the usual "cannot connect" message explains what to do.
        return Ok(None);
    };
    let bin = server.bindir().display().to_string();
    let (pg, url) = start(server, &base)?;
    tracing::info!(
        %bin,
        data = %base.display(),
        "no database configured and nothing answers on 127.0.0.1:5432: started a private \
         PostgreSQL (Unix socket only); it stops when openbatch exits. Set \
         OPENBATCH__DATABASE__URL to use another"
    );
    settings.database.url = Secret::from(url);
    Ok(Some(pg))
}

fn url_configured(vars: &HashMap<String, String>) -> bool {
    let set = |k: &str| vars.get(k).is_some_and(|v| !v.is_empty());
    if set("OPENBATCH__DATABASE__URL") || set("DATABASE_URL") {
        return true;
    }
    // The same file the settings come from; only whether it names a URL matters here.
    let file = match vars.get("OPENBATCH_CONFIG").filter(|v| !v.is_empty()) {
        Some(path) => config::File::with_name(path).required(true),
        None => config::File::with_name("config/openbatch").required(false),
    };
    config::Config::builder()
        .add_source(file)
        .build()
        .ok()
        .is_some_and(|c| c.get_string("database.url").is_ok())
}

/// `OPENBATCH_DATA_DIR`, else `$XDG_DATA_HOME/openbatch`, else `~/.local/share/openbatch`;
/// as root (where PostgreSQL runs as the `postgres` user, who cannot enter root's home)
/// `/var/lib/openbatch`.
fn data_dir(vars: &HashMap<String, String>) -> PathBuf {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = get("OPENBATCH_DATA_DIR") {
        return dir;
    }
    if is_root() {
        return PathBuf::from("/var/lib/openbatch");
    }
    get("XDG_DATA_HOME")
        .or_else(|| get("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("openbatch")
}

fn start(server: PgServer, base: &Path) -> anyhow::Result<(LocalPostgres, String)> {
    let data = server.data().to_path_buf();
    let run = base.join("run");
    let log = base.join("postgres.log");
    std::fs::create_dir_all(base)
        .with_context(|| format!("cannot create the data directory {}", base.display()))?;
    for dir in [&data, &run] {
        if !dir.exists() {
            std::fs::create_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    server.hand_over(&[&data, &run], &log)?;
    if !data.join("PG_VERSION").exists() {
        tracing::info!(data = %data.display(), "creating a private PostgreSQL cluster (first run)");
        let conf = format!(
            "\n# openbatch: a private server, reached through a Unix socket only\n\
             listen_addresses = ''\nunix_socket_directories = '{}'\n",
            run.display().to_string().replace('\'', "''")
        );
        server.init(&conf, true)?;
    }
    let url = format!(
        "postgres://postgres@localhost/openbatch?host={}",
        percent_encode(&run.display().to_string())
    );
    let mut pg = LocalPostgres {
        server,
        owned: false,
    };
    if pg.server.is_running() {
        tracing::info!(data = %data.display(), "the private PostgreSQL is already running: using it");
        return Ok((pg, url));
    }
    pg.server.start(&log).with_context(|| {
        format!(
            "could not start the private PostgreSQL in {} (its log: {}); set \
             OPENBATCH__DATABASE__URL to use another PostgreSQL",
            data.display(),
            log.display()
        )
    })?;
    pg.owned = true;
    Ok((pg, url))
}

/// Enough encoding for a filesystem path inside a URL query.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_configured_url_is_never_replaced() {
        let none = vars(&[("OPENBATCH_CONFIG", "")]);
        assert!(!url_configured(&none));
        assert!(url_configured(&vars(&[(
            "DATABASE_URL",
            "postgres://x@y/z"
        )])));
        assert!(url_configured(&vars(&[(
            "OPENBATCH__DATABASE__URL",
            "postgres://x@y/z"
        )])));
        let dir = std::env::temp_dir().join(format!("ob-cfg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ob.toml");
        std::fs::write(&file, "[database]\nurl = \"postgres://a@b/c\"\n").unwrap();
        let configured = url_configured(&vars(&[("OPENBATCH_CONFIG", file.to_str().unwrap())]));
        std::fs::write(&file, "[server]\nport = 1\n").unwrap();
        let unconfigured = url_configured(&vars(&[("OPENBATCH_CONFIG", file.to_str().unwrap())]));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(configured);
        assert!(!unconfigured);
    }

    #[test]
    fn the_data_directory_can_be_chosen() {
        assert_eq!(
            data_dir(&vars(&[("OPENBATCH_DATA_DIR", "/srv/ob")])),
            Path::new("/srv/ob")
        );
        assert_eq!(percent_encode("/a b/c"), "/a%20b/c");
    }
}
