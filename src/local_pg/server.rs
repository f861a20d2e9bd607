//! A PostgreSQL server of this machine's own binaries, for one data directory, run as its
//! owner: the first run's private server (`super`) and the tests' throwaway servers, which
//! they stop and start at will, both go through it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};

pub struct PgServer {
    bindir: PathBuf,
    data: PathBuf,
    /// PostgreSQL refuses to run as root: then every program runs as the `postgres` user.
    as_postgres_user: bool,
}

impl PgServer {
    /// The server of the cluster in `data`, with the newest binaries found (`None`: this
    /// machine has none).
    pub fn find(data: PathBuf) -> Option<Self> {
        Some(Self {
            bindir: find_bindir()?,
            data,
            as_postgres_user: is_root(),
        })
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Running as root: `dirs` and the (created if missing) `log` become the `postgres`
    /// user's, whom PostgreSQL runs as.
    pub fn hand_over(&self, dirs: &[&Path], log: &Path) -> anyhow::Result<()> {
        if !self.as_postgres_user {
            return Ok(());
        }
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
        if !log.exists() {
            std::fs::write(log, b"")?;
        }
        for path in dirs.iter().copied().chain([log]) {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Creates the cluster (trust authentication, user `postgres`) and appends `conf` to its
    /// `postgresql.conf`. `durable: false` skips initdb's fsync (a throwaway cluster).
    pub fn init(&self, conf: &str, durable: bool) -> anyhow::Result<()> {
        let mut initdb = self.program("initdb");
        initdb.arg("-D").arg(&self.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        if !durable {
            initdb.arg("--no-sync");
        }
        output(initdb).context("initdb failed")?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        Ok(())
    }

    /// Whether a server runs on the data directory (perhaps another process's).
    pub fn is_running(&self) -> bool {
        let mut status = self.program("pg_ctl");
        status.arg("-D").arg(&self.data).arg("status");
        output(status).is_ok()
    }

    /// Starts the server, logging to `log`, and waits until it answers.
    pub fn start(&self, log: &Path) -> anyhow::Result<()> {
        let mut start = self.program("pg_ctl");
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(["-w", "-t", "60", "start"]);
        output(start).map(drop)
    }

    /// Stops the server: `fast` (clients disconnected, a clean shutdown) or `immediate`
    /// (as a crash would).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut stop = self.program("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "60", "stop"]);
        output(stop).map(drop)
    }

    fn program(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        if self.as_postgres_user {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

pub(super) fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
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
