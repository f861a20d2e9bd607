//! First run on a laptop: when no database URL is configured and nothing answers on the
//! default address, start a private PostgreSQL from the machine's own binaries, in a local
//! data directory, and stop it when the process exits.
//!
//! The private server listens on a Unix socket only (`listen_addresses = ''`), so it can never
//! collide with, or be mistaken for, a PostgreSQL on 127.0.0.1:5432. Its data outlives the
//! process: the next start finds the same batches and files. A configured URL
//! (`OPENBATCH__DATABASE__URL`, `DATABASE_URL`, or `database.url` in the config file) never
//! does any of this.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::ExposeSecret;

use crate::config::{Secret, Settings, DEFAULT_DATABASE_URL};

/// A PostgreSQL this process started; stopped when dropped.
pub struct LocalPostgres {
    pg_ctl: PathBuf,
    data: PathBuf,
    as_postgres_user: bool,
    /// False when another process (an earlier `openbatch serve` still running) had already
    /// started it: then it is that process's to stop.
    owned: bool,
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        tracing::info!(data = %self.data.display(), "stopping the private PostgreSQL");
        let mut cmd = self.command(&self.pg_ctl);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        match output(cmd) {
            Ok(_) => {}
            Err(e) => tracing::warn!("could not stop the private PostgreSQL: {e:#}"),
        }
    }
}

impl LocalPostgres {
    fn command(&self, program: &Path) -> Command {
        as_owner(program, self.as_postgres_user)
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
    let Some(bindir) = find_bindir() else {
        // No PostgreSQL here at all: the usual "cannot connect" message explains what to do.
        return Ok(None);
    };
    let base = data_dir(&vars);
    let (pg, url) = start(&bindir, &base)?;
    tracing::info!(
        bin = %bindir.display(),
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

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl` (Debian and
/// Ubuntu), else the directory of an `initdb` on `PATH`.
fn find_bindir() -> Option<PathBuf> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let version = e
                .file_name()
                .to_str()
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
            let bin = e.path().join("bin");
            if let Some(v) = version.filter(|_| usable(&bin)) {
                if best.as_ref().is_none_or(|(b, _)| v > *b) {
                    best = Some((v, bin));
                }
            }
        }
    }
    if let Some((_, bin)) = best {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| usable(d))
            .map(|d| d.to_path_buf())
    })
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// PostgreSQL refuses to run as root: then every command runs as the `postgres` user.
fn as_owner(program: &Path, as_postgres_user: bool) -> Command {
    if as_postgres_user {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn output(mut cmd: Command) -> anyhow::Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn start(bindir: &Path, base: &Path) -> anyhow::Result<(LocalPostgres, String)> {
    let as_postgres_user = is_root();
    let data = base.join("postgres");
    let run = base.join("run");
    std::fs::create_dir_all(base)
        .with_context(|| format!("cannot create the data directory {}", base.display()))?;
    for dir in [&data, &run] {
        if !dir.exists() {
            std::fs::create_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if as_postgres_user {
        hand_to_postgres_user(base, &[&data, &run])?;
    }
    let mut pg = LocalPostgres {
        pg_ctl: bindir.join("pg_ctl"),
        data: data.clone(),
        as_postgres_user,
        owned: false,
    };
    if !data.join("PG_VERSION").exists() {
        init_cluster(bindir, &data, &run, as_postgres_user)?;
    }
    let socket_dir = run.display().to_string();
    let url = format!(
        "postgres://postgres@localhost/openbatch?host={}",
        percent_encode(&socket_dir)
    );
    let mut status = pg.command(&pg.pg_ctl);
    status.arg("-D").arg(&data).arg("status");
    if output(status).is_ok() {
        tracing::info!(data = %data.display(), "the private PostgreSQL is already running: using it");
        return Ok((pg, url));
    }
    let mut start = pg.command(&pg.pg_ctl);
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(base.join("postgres.log"))
        .args(["-w", "-t", "60", "start"]);
    if let Err(e) = output(start) {
        return Err(e.context(format!(
            "could not start the private PostgreSQL in {} (its log: {}); set \
             OPENBATCH__DATABASE__URL to use another PostgreSQL",
            data.display(),
            base.join("postgres.log").display()
        )));
    }
    pg.owned = true;
    Ok((pg, url))
}

/// Running as root: the data directories and the log belong to the `postgres` user, whom
/// PostgreSQL runs as.
fn hand_to_postgres_user(base: &Path, dirs: &[&PathBuf]) -> anyhow::Result<()> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = output({
            let mut c = Command::new("id");
            c.args([flag, "postgres"]);
            c
        })
        .context("running as root, PostgreSQL needs the 'postgres' user, which is missing")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    let (uid, gid) = (id("-u")?, id("-g")?);
    for dir in dirs {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    let log = base.join("postgres.log");
    if !log.exists() {
        std::fs::write(&log, b"")?;
    }
    std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
    Ok(())
}

/// Creates the cluster (first run), reached through a Unix socket in `run` only.
fn init_cluster(
    bindir: &Path,
    data: &Path,
    run: &Path,
    as_postgres_user: bool,
) -> anyhow::Result<()> {
    tracing::info!(data = %data.display(), "creating a private PostgreSQL cluster (first run)");
    let mut initdb = as_owner(&bindir.join("initdb"), as_postgres_user);
    initdb.arg("-D").arg(data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]);
    output(initdb).context("initdb failed")?;
    let conf = format!(
        "\n# openbatch: a private server, reached through a Unix socket only\n\
         listen_addresses = ''\nunix_socket_directories = '{}'\n",
        run.display().to_string().replace('\'', "''")
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    std::io::Write::write_all(&mut file, conf.as_bytes())?;
    Ok(())
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
