//! The `openbatch` client CLI as a user runs it: a real binary against real replicas.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{chat_line, start_replicas_with, to_jsonl, FakeUpstream, TestDb};

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ob-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The CLI, pointed at `address` the way a user would: through `OPENAI_BASE_URL`.
fn cli(address: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openbatch"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENAI_BASE_URL", format!("{address}/v1"))
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run openbatch")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running CLI whose stderr is read line by line, so a test can act at a known point.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openbatch");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Blocks until a stderr line contains `needle` (the deadline only guards against a hang).
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:?}", self.seen),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for exit; returns the exit code (None if a signal ended it) and the rest of stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status.code(), self.seen.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| chat_line(&format!("req-{i:03}"), json!({})))
        .collect()
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn get(address: &str, path: &str) -> Value {
    reqwest::get(format!("{address}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

const WORKER_ON: [(&str, &str); 3] = [
    ("OPENBATCH__WORKER__ENABLED", "true"),
    ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
    ("OPENBATCH__WORKER__RETRY_BASE_MS", "50"),
];

#[tokio::test]
async fn submit_survives_ctrl_c_and_kill_and_reattaches_without_uploading_again() {
    let test_db = TestDb::new();
    let db = test_db.url.clone();
    let upstream = FakeUpstream::start(&[]);
    // No worker yet: the batch cannot finish while the CLI is interrupted, whatever the timing.
    let api_only = start_replicas_with(1, &db, &[("OPENBATCH__WORKER__ENABLED", "false")]).await;
    let address = &api_only[0].address;
    let dir = Scratch::new();
    let input = lines(12);
    let file = dir.write("requests.jsonl", &to_jsonl(&input));
    let results = dir.0.join("results.jsonl");
    let submit = || {
        let mut cmd = cli(address);
        cmd.arg("submit")
            .arg(&file)
            .args(["--wait", "--poll-interval", "0.1", "--output"])
            .arg(&results);
        cmd
    };

    // Ctrl-C while waiting detaches and says how to re-attach.
    let mut first = Running::start(&mut submit());
    let created = first.wait_for_line("created batch ");
    let id = created.rsplit(' ').next().unwrap().to_owned();
    first.wait_for_line(&format!("{id}: validating"));
    first.signal("-INT");
    let (code, err) = first.finish();
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains(&format!("openbatch batches wait {id}")),
        "{err}"
    );

    // Killed outright mid-wait: nothing to clean up, the batch lives on the server.
    let mut second = Running::start(&mut submit());
    second.wait_for_line("already uploaded as file-");
    second.wait_for_line(&format!("re-attached to batch {id}"));
    second.wait_for_line(&format!("{id}: validating"));
    second.signal("-KILL");
    assert_eq!(second.finish().0, None);

    // A replica that runs batches joins; the third run re-attaches and sees it through.
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let _worker = start_replicas_with(1, &db, &env).await;
    let third = run(&mut submit());
    let err = stderr(&third);
    assert_eq!(third.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("re-attached to batch {id}")), "{err}");
    assert!(err.contains("12 of 12 lines succeeded"), "{err}");

    let written = read_jsonl(&results);
    let order: Vec<_> = written.iter().map(|l| l["custom_id"].clone()).collect();
    let expected: Vec<_> = input.iter().map(|l| l["custom_id"].clone()).collect();
    assert_eq!(order, expected, "results are in input order");
    assert!(written.iter().all(|l| l["response"]["status_code"] == 200));

    // One upload, one batch, each line executed once.
    let files = get(address, "/v1/files?purpose=batch").await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1, "{files}");
    let batches = get(address, "/v1/batches").await;
    assert_eq!(batches["data"].as_array().unwrap().len(), 1, "{batches}");
    assert_eq!(upstream.executions().await, 12);

    // --new forces a fresh batch, still without uploading again.
    let fresh = run(cli(address)
        .arg("submit")
        .arg(&file)
        .args(["--new", "--json"]));
    assert_eq!(fresh.status.code(), Some(0), "{}", stderr(&fresh));
    let b: Value = serde_json::from_slice(&fresh.stdout).expect("--json prints the batch");
    assert_ne!(b["id"], json!(id));
    assert!(
        stderr(&fresh).is_empty(),
        "--json is quiet: {}",
        stderr(&fresh)
    );
    let files = get(address, "/v1/files?purpose=batch").await;
    assert_eq!(files["data"].as_array().unwrap().len(), 1, "{files}");
}

#[tokio::test]
async fn cancel_on_interrupt_cancels_and_a_second_ctrl_c_detaches() {
    let test_db = TestDb::new();
    let db = test_db.url.clone();
    // No worker: the cancel is recorded (`cancelling`) but never completed, so the CLI is
    // still waiting for it when the second Ctrl-C comes.
    let replicas = start_replicas_with(1, &db, &[("OPENBATCH__WORKER__ENABLED", "false")]).await;
    let address = &replicas[0].address;
    let dir = Scratch::new();
    let file = dir.write("requests.jsonl", &to_jsonl(&lines(3)));
    let mut run = Running::start(cli(address).arg("submit").arg(&file).args([
        "--wait",
        "--cancel-on-interrupt",
        "--poll-interval",
        "0.1",
    ]));
    let created = run.wait_for_line("created batch ");
    let id = created.rsplit(' ').next().unwrap().to_owned();
    run.wait_for_line(&format!("{id}: validating"));
    run.signal("-INT");
    run.wait_for_line(&format!(
        "Ctrl-C: cancel requested; batch {id} is cancelling"
    ));
    let batch = get(address, &format!("/v1/batches/{id}")).await;
    assert_eq!(batch["status"], "cancelling");
    run.signal("-INT");
    let (code, err) = run.finish();
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains(&format!("openbatch batches wait {id}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_rejected_input_exits_non_zero_with_the_servers_reasons() {
    let test_db = TestDb::new();
    let db = test_db.url.clone();
    let upstream = FakeUpstream::start(&[]);
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let replicas = start_replicas_with(1, &db, &env).await;
    let address = &replicas[0].address;
    let dir = Scratch::new();
    let mut content = to_jsonl(&lines(1));
    content.extend_from_slice(b"{not json\n");
    let file = dir.write("bad.jsonl", &content);

    let out = run(cli(address)
        .arg("submit")
        .arg(&file)
        .args(["--wait", "--poll-interval", "0.1"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains(" failed"), "{err}");
    assert!(err.contains("line 2: invalid_json_line"), "{err}");
    // Results were written next to the input (none: nothing ran).
    assert!(dir.0.join("bad.results.jsonl").exists());
    assert_eq!(upstream.executions().await, 0);
}

#[tokio::test]
async fn failed_lines_are_summarised_and_json_output_parses() {
    let test_db = TestDb::new();
    let db = test_db.url.clone();
    let upstream = FakeUpstream::start(&[]);
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let replicas = start_replicas_with(1, &db, &env).await;
    let address = &replicas[0].address;
    let dir = Scratch::new();
    // Lines 3 and 7 get a permanent 400 from the upstream.
    let input: Vec<Value> = (0..10)
        .map(|i| {
            let extra = if i == 3 || i == 7 {
                json!({"fake": {"fail": [400]}})
            } else {
                json!({})
            };
            chat_line(&format!("line-{i}"), extra)
        })
        .collect();
    let file = dir.write("mixed.jsonl", &to_jsonl(&input));
    let results = dir.0.join("out.jsonl");

    let out = run(cli(address)
        .arg("submit")
        .arg(&file)
        .args([
            "--wait",
            "--json",
            "--metadata",
            "team=nlp",
            "--poll-interval",
            "0.1",
            "-o",
        ])
        .arg(&results));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let batch: Value = serde_json::from_slice(&out.stdout).expect("--json prints the batch");
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["failed"], 2);
    assert_eq!(batch["metadata"]["team"], "nlp");
    assert!(err.contains("2 × HTTP 400"), "{err}");

    let written = read_jsonl(&results);
    let order: Vec<_> = written.iter().map(|l| l["custom_id"].clone()).collect();
    let expected: Vec<_> = input.iter().map(|l| l["custom_id"].clone()).collect();
    assert_eq!(
        order, expected,
        "output and error lines merged in input order"
    );
    assert_eq!(written[3]["response"]["status_code"], 400);
    assert_eq!(written[4]["response"]["status_code"], 200);

    // The same results again, through `batches results` on stdout.
    let id = batch["id"].as_str().unwrap();
    let again = run(cli(address).args(["batches", "results", id]));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(again.stdout, std::fs::read(&results).unwrap());

    // Scripts get the API's own objects.
    let list = run(cli(address).args(["batches", "list", "--json"]));
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], batch["id"]);
    let got = run(cli(address).args(["batches", "get", id, "--json"]));
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got["output_file_id"], batch["output_file_id"]);
    let files = run(cli(address).args(["files", "list", "--purpose", "batch", "--json"]));
    let files: Value = serde_json::from_slice(&files.stdout).unwrap();
    let input_file = files["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(json!(input_file), batch["input_file_id"]);

    // Off a terminal, tables carry no colour codes.
    let table = run(cli(address).args(["batches", "list"]));
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains(id), "{table}");
    assert!(!table.contains('\x1b'), "{table:?}");

    // Download is byte for byte; delete works; errors show the server's message and code.
    let copy = dir.0.join("copy.jsonl");
    let dl = run(cli(address)
        .args(["files", "download", &input_file, "-o"])
        .arg(&copy));
    assert_eq!(dl.status.code(), Some(0), "{}", stderr(&dl));
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&file).unwrap());
    let cancel = run(cli(address).args(["batches", "cancel", id]));
    let err = stderr(&cancel);
    assert_eq!(cancel.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Cannot cancel a batch with status 'completed'"),
        "{err}"
    );
    assert!(err.contains("HTTP 409"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Backtrace"),
        "{err}"
    );
    let del = run(cli(address).args(["files", "delete", &input_file]));
    assert_eq!(del.status.code(), Some(0), "{}", stderr(&del));
    let gone = run(cli(address).args(["files", "download", &input_file]));
    let err = stderr(&gone);
    assert_eq!(gone.status.code(), Some(1));
    assert!(err.contains("No such File object"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_is_a_one_line_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens on the port once the listener is dropped.
    let out = run(cli(&format!("http://127.0.0.1:{port}")).args(["batches", "list"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("openbatch: cannot reach the server at"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn batches_retry_runs_the_failed_lines_again_and_reattaches() {
    let test_db = TestDb::new();
    let upstream = FakeUpstream::start(&[]);
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let replicas = start_replicas_with(1, &test_db.url, &env).await;
    let address = &replicas[0].address;
    let dir = Scratch::new();
    // Lines 1 and 4 get a 400 the first time, line 2 a 422; the fake upstream answers a body's
    // second execution normally.
    let input: Vec<Value> = (0..6)
        .map(|i| {
            let extra = match i {
                1 | 4 => json!({"fake": {"fail": [400]}}),
                2 => json!({"fake": {"fail": [422]}}),
                _ => json!({}),
            };
            chat_line(&format!("line-{i}"), extra)
        })
        .collect();
    let file = dir.write("mixed.jsonl", &to_jsonl(&input));
    let out = run(cli(address)
        .arg("submit")
        .arg(&file)
        .args(["--wait", "--json"]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let origin: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = origin["id"].as_str().unwrap();

    let first = run(cli(address).args(["batches", "retry", id, "--status-code", "400"]));
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let retry_id = String::from_utf8(first.stdout).unwrap().trim().to_owned();
    assert!(retry_id.starts_with("batch_"), "{retry_id}");

    // The same command again re-attaches to the same retry, and follows it to the end.
    let again = run(cli(address).args([
        "batches",
        "retry",
        id,
        "--status-code",
        "400",
        "--wait",
        "--json",
    ]));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let done: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(done["id"], retry_id.as_str());
    assert_eq!(done["retry_of"], id);
    assert_eq!(
        done["request_counts"],
        json!({"total": 2, "completed": 2, "failed": 0})
    );
    let input_file = done["input_file_id"].as_str().unwrap();
    let content = reqwest::get(format!("{address}/v1/files/{input_file}/content"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        content.to_vec(),
        to_jsonl(&[input[1].clone(), input[4].clone()])
    );
    let origin_now = get(address, &format!("/v1/batches/{id}")).await;
    assert_eq!(origin_now["retries"], json!([retry_id]));

    // Nothing matches: the server's reason and code, exit 1.
    let none = run(cli(address).args(["batches", "retry", id, "--error-code", "batch_expired"]));
    let err = stderr(&none);
    assert_eq!(none.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing_to_retry"), "{err}");
}

#[tokio::test]
async fn wait_follows_the_event_stream_and_falls_back_to_polling() {
    let test_db = TestDb::new();
    let upstream = FakeUpstream::start(&[]);
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let with_events = start_replicas_with(1, &test_db.url, &env).await;
    env.push(("OPENBATCH__LIMITS__MAX_EVENT_STREAMS", "0"));
    let without = start_replicas_with(1, &test_db.url, &env).await;
    let dir = Scratch::new();
    // Still running at the first look, whatever the machine's speed.
    let slow = |name: &str| {
        dir.write(
            name,
            &to_jsonl(&[chat_line(name, json!({"fake": {"latency_ms": 1500}}))]),
        )
    };

    // Polling once an hour: only pushed events can end this wait in time.
    let out = run(cli(&with_events[0].address)
        .arg("submit")
        .arg(slow("a.jsonl"))
        .args(["--wait", "--json", "--poll-interval", "3600"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["status"], "completed");

    // A server that refuses the stream (its cap is 0) is polled instead.
    let out = run(cli(&without[0].address)
        .arg("submit")
        .arg(slow("b.jsonl"))
        .args(["--wait", "--json", "--poll-interval", "0.1"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["status"], "completed");
}

/// An address of this machine that is not a loopback one (the interface a default route
/// would use); a UDP "connection" sends nothing.
fn non_loopback_address() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("192.0.2.1:9")
        .expect("a route off this machine");
    let ip = probe.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback(),
        "this machine has no address but loopback"
    );
    ip
}

/// `--insecure` is what lets the key go in clear text to another machine: without it the CLI
/// refuses before it connects.
#[tokio::test]
async fn the_key_is_not_sent_over_plain_http_to_another_host_unless_insecure() {
    let ip = non_loopback_address();
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();

    let out = run(cli(&address)
        .env("OPENAI_API_KEY", "sk-secret-123")
        .args(["files", "list"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--insecure") && err.contains("https://"),
        "{err}"
    );
    assert!(
        listener.accept().is_err(),
        "the CLI connected although it refused to send the key"
    );

    // With --insecure the request goes out, key and all.
    listener.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed mid-request");
            request.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"object":"list","data":[],"has_more":false}"#;
        write!(
            conn,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    let out = run(cli(&address).env("OPENAI_API_KEY", "sk-secret-123").args([
        "files",
        "list",
        "--insecure",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(
        request.contains("authorization: bearer sk-secret-123"),
        "{request}"
    );
}

/// A file past `--parts-above` goes through the Uploads API, in parts, checked by md5; a re-run
/// finds the file it made instead of sending it again.
#[tokio::test]
async fn submit_sends_a_big_file_in_parts_and_runs_it() {
    let test_db = TestDb::new();
    let upstream = FakeUpstream::start(&[]);
    let mut env = WORKER_ON.to_vec();
    env.push(("OPENBATCH__UPSTREAM__BASE_URL", &upstream.base_url));
    let replicas = start_replicas_with(1, &test_db.url, &env).await;
    let address = &replicas[0].address;
    let dir = Scratch::new();
    let content = to_jsonl(&lines(60));
    let file = dir.write("big.jsonl", &content);
    let part_bytes = content.len() / 3 + 1;
    let submit = || {
        run(cli(address).arg("submit").arg(&file).args([
            "--wait",
            "--json",
            "--poll-interval",
            "0.1",
            "--parts-above",
            "1000",
            "--part-bytes",
            &part_bytes.to_string(),
        ]))
    };
    let out = submit();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(b["status"], "completed");
    assert_eq!(b["request_counts"]["completed"], 60);

    let pool = sqlx::PgPool::connect(&test_db.url).await.unwrap();
    let uploads: Vec<(String, i64)> = sqlx::query_as("SELECT status, bytes FROM uploads")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(uploads, [("completed".to_owned(), content.len() as i64)]);
    let again = submit();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "not sent again");
    pool.close().await;
}
