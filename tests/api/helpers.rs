use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openbatch::config::Settings;
use openbatch::startup::Application;
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;

/// The PostgreSQL server tests create their databases on: `DATABASE_URL` (any database on
/// it), or the local default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that does not exist yet (the server creates it), dropped when this goes out of
/// scope, also when the test fails. Declare it before the servers using it, so they stop first.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub fn new() -> Self {
        let base = server_url();
        let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
        let prefix = prefix.split('?').next().unwrap();
        let name = format!("ob_test_{}", uuid::Uuid::new_v4().simple());
        Self {
            url: format!("{prefix}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of our own.
        let (admin, name) = (server_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

pub fn settings_for(database_url: &str) -> Settings {
    Settings::load_from(
        [
            ("OPENBATCH__DATABASE__URL", database_url),
            ("OPENBATCH__SERVER__PORT", "0"),
            ("OPENBATCH__SERVER__WORKERS", "2"),
            ("OPENBATCH__WORKER__ENABLED", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
    .expect("test settings")
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    /// The app's own database, when the app made it.
    pub _db: Option<TestDb>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDb::new();
    let mut settings = settings_for(&db.url);
    tweak(&mut settings);
    let app = Application::build(&settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let pool = PgPool::connect(&db.url).await.expect("test pool");
    TestApp {
        address,
        client: reqwest::Client::new(),
        pool,
        _db: Some(db),
    }
}

pub fn batch_body(input_file_id: &str) -> Value {
    json!({
        "input_file_id": input_file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    })
}

impl TestApp {
    /// A client of a server that runs elsewhere (a replica process) on `database_url`.
    pub async fn connect(address: &str, database_url: &str) -> Self {
        TestApp {
            address: address.to_owned(),
            client: reqwest::Client::new(),
            pool: PgPool::connect(database_url).await.unwrap(),
            _db: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// A request with a method named by the test (`"GET"`, `"DELETE"`, …).
    pub fn request(&self, method: &str, path: &str) -> RequestBuilder {
        self.client
            .request(method.parse().expect("an HTTP method"), self.url(path))
    }

    /// The JSON body of a GET that must answer 200.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).expect(200).await
    }

    /// `POST /v1/batches`, to be sent with the expected status ([`Expect`]).
    pub fn create_batch(&self, body: &Value) -> RequestBuilder {
        self.post("/v1/batches").json(body)
    }

    /// `POST /v1/files`, to be sent with the expected status ([`Expect`]).
    pub fn upload(&self, purpose: &str, name: &str, content: Vec<u8>) -> RequestBuilder {
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part(
                "file",
                reqwest::multipart::Part::bytes(content).file_name(name.to_owned()),
            );
        self.post("/v1/files").multipart(form)
    }

    pub async fn count_batches(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM batches")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Sends a request and states the status it must answer, as svix's `TestClient` does: a test
/// reads `app.post(path).json(&body).expect(200).await`, and a different status fails it with
/// the answer's body.
pub trait Expect {
    /// The JSON body of an answer with `status`.
    async fn expect(self, status: u16) -> Value;
    /// The answer with `status` itself, for its headers or a body that is not JSON.
    async fn expect_response(self, status: u16) -> Response;
    /// The inner object of an OpenAI error envelope with `status` (see [`expect_error`]).
    async fn expect_error(self, status: u16) -> Value;
}

impl Expect for RequestBuilder {
    async fn expect(self, status: u16) -> Value {
        let res = self.expect_response(status).await;
        res.json().await.expect("a JSON body")
    }

    async fn expect_response(self, status: u16) -> Response {
        assert_status(self.send().await.unwrap(), status).await
    }

    async fn expect_error(self, status: u16) -> Value {
        expect_error(self.send().await.unwrap(), status).await
    }
}

/// `res` if its status is `status`; otherwise fails the test, showing the body.
pub async fn assert_status(res: Response, status: u16) -> Response {
    let got = res.status();
    if got.as_u16() != status {
        let url = res.url().clone();
        let body = res.text().await.unwrap_or_default();
        panic!("expected HTTP {status} from {url}, got {got}: {body}");
    }
    res
}

/// Asserts an OpenAI error envelope with all four keys and returns the inner object.
pub async fn expect_error(res: Response, status: u16) -> Value {
    let res = assert_status(res, status).await;
    assert!(res.headers().contains_key("x-request-id"));
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = res.json().await.unwrap();
    let err = body["error"].as_object().expect("error envelope").clone();
    for key in ["message", "type", "param", "code"] {
        assert!(err.contains_key(key), "missing {key} in {body}");
    }
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    Value::Object(err)
}

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

pub fn openbatch_command(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openbatch"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OPENBATCH__DATABASE__URL", database_url)
        .env("OPENBATCH__SERVER__HOST", "127.0.0.1")
        .env("OPENBATCH__SERVER__WORKERS", "2")
        .env("RUST_LOG", "warn");
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A new API key for `project` (created if missing), straight in the database.
pub async fn key_for(pool: &PgPool, project: &str) -> String {
    project_and_key(pool, project).await.1
}

/// The id of `project` (created if missing) and a new API key for it.
pub async fn project_and_key(pool: &PgPool, project: &str) -> (String, String) {
    let name = openbatch::domain::ProjectName::parse(project).unwrap();
    let id = openbatch::store::keys::ensure_project(pool, &name)
        .await
        .unwrap();
    let key = openbatch::domain::ApiKey::generate();
    openbatch::store::keys::insert(pool, &id, &key)
        .await
        .unwrap();
    (id.as_str().to_owned(), key.secret)
}

/// The fake OpenAI-compatible upstream (`src/bin/fake_upstream.rs`) as a real process.
pub struct FakeUpstream {
    pub base_url: String,
    child: Child,
}

impl FakeUpstream {
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake-upstream");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("fake-upstream prints its address");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            base_url: format!("{address}/v1"),
            child,
        }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.base_url.trim_end_matches("/v1")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn executions(&self) -> u64 {
        self.stats().await["total"].as_u64().unwrap()
    }

    /// `http://host:port`, where `/metrics` and `/health` live (beside `/v1`, as on vLLM).
    pub fn origin(&self) -> &str {
        self.base_url.trim_end_matches("/v1")
    }

    /// GPU mode's counters (`--gpu-slots`): running, waiting, peak_running, served, shed...
    pub async fn gpu(&self) -> Value {
        self.stats().await["gpu"].clone()
    }

    /// `GET /metrics` as text (GPU mode: vLLM's gauges and the fake's counters).
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(format!("{}/metrics", self.origin()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET /metrics");
        resp.text().await.unwrap()
    }

    /// The port it listens on: `start(&["--port", …])` starts one there again.
    pub fn port(&self) -> u16 {
        self.base_url
            .trim_end_matches("/v1")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the base URL")
    }

    /// SIGKILL, as a crashed server: open connections are reset, new ones refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment of a replica process whose worker runs against `upstream`, tuned to react
/// fast in tests, plus `extra` settings.
pub fn engine_env<'a>(
    upstream: &'a FakeUpstream,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OPENBATCH__UPSTREAM__BASE_URL", upstream.base_url.as_str()),
        ("OPENBATCH__WORKER__POLL_INTERVAL_MS", "50"),
    ];
    env.extend_from_slice(extra);
    env
}

/// A server with its batch worker on, pointed at `upstream`, tuned to react fast in tests.
pub async fn spawn_engine(upstream: &FakeUpstream, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let base = upstream.base_url.clone();
    spawn_app_with(move |s| {
        s.worker.enabled = true;
        s.upstream.base_url = base;
        s.worker.poll_interval_ms = 50;
        s.worker.retry_base_ms = 50;
        s.worker.retry_max_ms = 2000;
        tweak(s);
    })
    .await
}

pub fn chat_line(custom_id: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": format!("hello {custom_id}")}],
        "user": custom_id,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
}

pub fn to_jsonl(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

impl TestApp {
    /// Uploads `lines` and creates a batch on `endpoint`; returns the batch id.
    pub async fn submit(&self, endpoint: &str, content: Vec<u8>) -> String {
        let file: Value = self.upload("batch", "in.jsonl", content).expect(200).await;
        let mut body = batch_body(file["id"].as_str().expect("uploaded"));
        body["endpoint"] = json!(endpoint);
        let batch: Value = self.create_batch(&body).expect(200).await;
        batch["id"].as_str().unwrap().to_owned()
    }

    pub async fn batch(&self, id: &str) -> Value {
        self.get(&format!("/v1/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the batch until `done` holds. The deadline only guards against a hang; no
    /// assertion depends on speed.
    pub async fn wait_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let b = self.batch(id).await;
            if done(&b) {
                return b;
            }
            assert!(Instant::now() < deadline, "batch stuck: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the batch reaches one of `statuses`.
    pub async fn wait_for(&self, id: &str, statuses: &[&str]) -> Value {
        self.wait_until(id, |b| statuses.iter().any(|s| b["status"] == *s))
            .await
    }

    /// Polls until at least `n` lines have completed (or the whole batch has).
    pub async fn wait_for_completed(&self, id: &str, n: i64) -> Value {
        self.wait_until(id, |b| {
            b["request_counts"]["completed"].as_i64() >= Some(n) || b["status"] == "completed"
        })
        .await
    }

    /// A new batch put straight into `status`, as the worker would leave it.
    pub async fn batch_in_status(&self, status: &str) -> String {
        let b: Value = self.create_batch(&batch_body("f")).expect(200).await;
        let id = b["id"].as_str().unwrap().to_owned();
        sqlx::query("UPDATE batches SET status = $1 WHERE id = $2")
            .bind(status)
            .bind(&id)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    /// A result file's lines (empty for a null id).
    pub async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else {
            return Vec::new();
        };
        let text = self
            .get(&format!("/v1/files/{id}/content"))
            .expect_response(200)
            .await
            .text()
            .await
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
