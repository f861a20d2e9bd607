//! Real `openbatch serve` processes, started together on one database, and their metrics.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real `openbatch serve` process.
pub struct Replica {
    pub address: String,
    child: Child,
}

impl Replica {
    /// SIGTERM, then waits for the process to exit; true if it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM")
            .success();
        assert!(ok, "kill -TERM");
        self.child.wait().expect("reap replica").success()
    }

    /// Peak resident set (VmHWM) of the process so far, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        proc_status_mib(self.child.id(), "VmHWM").expect("a live process")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited, crashed or OOM-killed).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll replica").is_none()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill replica");
        self.child.wait().expect("reap replica");
    }
}

/// A memory figure (`VmRSS`, `VmHWM`, …) of process `pid` in MiB; `None` once it has exited.
pub fn proc_status_mib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib / 1024)
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until every client's key is answered `status`: a key copy's reload is seen only by
/// asking each replica. Hang guard only (30 s, far below the 300 s fallback reload the key
/// tests set): nothing asserts how fast a change lands.
pub async fn wait_for_key_status(apps: &[&super::TestApp], status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for app in apps {
        loop {
            let now = app.key_status().await;
            if now == status {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} answers {now}, not {status}",
                app.address
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `openbatch keys create --admin`: an admin key, straight to the database (the bootstrap).
pub fn admin_key(database_url: &str) -> String {
    let out = openbatch_command(database_url)
        .args(["keys", "create", "--admin", "--name", "platform"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn openbatch_command(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openbatch"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENBATCH__DATABASE__URL", database_url)
        .env("OPENBATCH__SERVER__HOST", "127.0.0.1")
        .env("OPENBATCH__SERVER__WORKERS", "2")
        .env("RUST_LOG", "warn")
        .envs(super::storage_env(database_url));
    cmd
}

/// Starts `n` server processes on one database at once (so they also race to create it and
/// to migrate it) and waits until each answers.
pub async fn start_replicas(n: usize, database_url: &str) -> Vec<Replica> {
    start_replicas_with(n, database_url, &[("OPENBATCH__WORKER__ENABLED", "false")]).await
}

pub async fn start_replicas_with(
    n: usize,
    database_url: &str,
    env: &[(&str, &str)],
) -> Vec<Replica> {
    let spawn = || {
        // Another process may take the port between `free_port` and the server's bind: the
        // server then exits at once, and is started again on another port.
        let port = free_port();
        let child = openbatch_command(database_url)
            .envs(env.iter().copied())
            .env("OPENBATCH__SERVER__PORT", port.to_string())
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start openbatch");
        Replica {
            address: format!("http://127.0.0.1:{port}"),
            child,
        }
    };
    let mut replicas: Vec<Replica> = (0..n).map(|_| spawn()).collect();
    let client = reqwest::Client::new();
    for r in &mut replicas {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut starts = 1;
        loop {
            if let Some(status) = r.child.try_wait().expect("poll replica") {
                assert!(starts < 5, "replica exited ({status}) {starts} times");
                starts += 1;
                *r = spawn();
                continue;
            }
            let ok = client
                .get(format!("{}/readyz", r.address))
                .send()
                .await
                .is_ok_and(|res| res.status().is_success());
            // Ready, and still ours: a server that lost the bind race exits soon after.
            if ok && r.child.try_wait().expect("poll replica").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} never became ready",
                r.address
            );
            // Readiness is announced nowhere: the replica is asked.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    replicas
}

/// One replica whose log (stderr) goes to `log` instead of the test's output.
pub async fn start_replica_logging_to(
    database_url: &str,
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> Replica {
    let port = free_port();
    let child = openbatch_command(database_url)
        .envs(env.iter().copied())
        .env("OPENBATCH__SERVER__PORT", port.to_string())
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("start openbatch");
    let replica = Replica {
        address: format!("http://127.0.0.1:{port}"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{}/readyz", replica.address))
        .await
        .is_ok_and(|res| res.status().is_success())
    {
        assert!(Instant::now() < deadline, "replica never became ready");
        // Readiness is announced nowhere: the replica is asked.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica
}

/// Every replica answers `/readyz` 200 within a deadline: one whose pooled connections were
/// just killed may fail a probe or two (it drops the dead connection), as a probe's failure
/// threshold allows.
pub async fn assert_all_ready(replicas: &[Replica]) {
    for r in replicas {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("{}/readyz", r.address)).await.unwrap();
            if ready.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{} not ready", r.address);
            // Readiness is announced nowhere: the replica is asked.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `GET <address>/metrics` summed over the series named `name`.
pub async fn metric_value(address: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
