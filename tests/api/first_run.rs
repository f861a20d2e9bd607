//! First run on a laptop: `openbatch serve` with no configuration at all, where nothing
//! answers on 127.0.0.1:5432, starts a private PostgreSQL and stops it on exit.
//!
//! "Nothing answers on 127.0.0.1:5432" is made true for real: each run happens in a network
//! namespace of its own (`unshare --net`), whose loopback has no PostgreSQL, while the machine's
//! PostgreSQL binaries are still there. The client CLI, in the same namespace, uses the server.

use std::path::Path;
use std::process::Command;

/// Runs one laptop session in a fresh network namespace: serve, upload/list through the CLI,
/// SIGTERM. Returns the script's stdout.
fn laptop_session(dir: &Path, upload: bool) -> String {
    let script = format!(
        r#"set -eu
ip link set lo up
cd "{dir}"
env -i PATH="$PATH" OPENBATCH_DATA_DIR="{dir}/data" OPENBATCH__WORKER__ENABLED=false \
    "$OB" serve >>serve.log 2>&1 &
pid=$!
ready=""
for _ in $(seq 1 600); do
    if "$OB" batches list >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" || break
    # Readiness is announced nowhere: the server is asked.
    sleep 0.1
done
[ -n "$ready" ] || {{ echo "server never answered"; exit 1; }}
if [ "{upload}" = true ]; then "$OB" files upload in.jsonl --json >/dev/null; fi
"$OB" files list --json
kill -TERM "$pid"
wait "$pid"
"#,
        dir = dir.display()
    );
    let out = Command::new("unshare")
        .args(["--net", "bash", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OB", env!("CARGO_BIN_EXE_openbatch"))
        .output()
        .expect("run unshare");
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "laptop session failed: {}\n{}\nserve.log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn can_isolate_network() -> bool {
    Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn serve_with_no_configuration_starts_and_stops_a_private_postgres() {
    if !can_isolate_network() {
        // Without a namespace the machine's own PostgreSQL answers on 5432, and the test
        // would prove nothing.
        eprintln!("SKIPPED: `unshare --net` is not permitted here");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ob-first-run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The `postgres` user (PostgreSQL's, when the tests run as root) must be able to enter it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            // Should a run have failed half way, make sure no server outlives the test.
            let data = self.0.join("data/postgres");
            if data.join("postmaster.pid").exists() {
                let _ = Command::new("runuser")
                    .args(["-u", "postgres", "--", "pg_ctl", "-D"])
                    .arg(&data)
                    .args(["-m", "immediate", "stop"])
                    .status();
                let _ = Command::new("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate", "stop"])
                    .status();
            }
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&dir);
    std::fs::write(
        dir.join("in.jsonl"),
        b"{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\",\"messages\":[]}}\n",
    )
    .unwrap();

    let first: serde_json::Value = serde_json::from_str(&laptop_session(&dir, true)).unwrap();
    assert_eq!(first["data"][0]["filename"], "in.jsonl", "{first}");
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(
        log.contains("creating a private PostgreSQL cluster"),
        "{log}"
    );
    assert!(log.contains("started a private PostgreSQL"), "{log}");
    assert!(log.contains("stopping the private PostgreSQL"), "{log}");
    assert!(
        !dir.join("data/postgres/postmaster.pid").exists(),
        "the private PostgreSQL still runs after openbatch exited"
    );

    // The next start finds the same data (and does not create the cluster again).
    let second: serde_json::Value = serde_json::from_str(&laptop_session(&dir, false)).unwrap();
    assert_eq!(second["data"], first["data"]);
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert_eq!(
        log.matches("creating a private PostgreSQL cluster").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("stopping the private PostgreSQL").count(),
        2,
        "{log}"
    );
    assert!(!dir.join("data/postgres/postmaster.pid").exists());
}
