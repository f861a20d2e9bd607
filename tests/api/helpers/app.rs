//! An in-process server (`TestApp`) and what tests send it: requests that state the status
//! they must get, OpenAI error envelopes, batches and their lines.

use std::time::{Duration, Instant};

use openbatch::config::Settings;
use openbatch::startup::Application;
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::db::TestDb;
use super::signals::{StatusChanges, FALLBACK};

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
        // The bucket's credentials and endpoint: from this process's `AWS_*` variables.
        .chain(super::storage_env(database_url))
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
    spawn_app_on(TestDb::new(), tweak).await
}

/// A server on a database the test prepared first (its settings, say).
pub async fn spawn_app_on(db: TestDb, tweak: impl FnOnce(&mut Settings)) -> TestApp {
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

    /// A client of a replica process that sends `key` as `Authorization: Bearer …`.
    pub async fn connect_with_key(address: &str, database_url: &str, key: &str) -> Self {
        let mut app = Self::connect(address, database_url).await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
        app.client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        app
    }

    /// What this client's key is answered on `GET /v1/batches`: 200, or 401 once refused.
    pub async fn key_status(&self) -> u16 {
        self.get("/v1/batches")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
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

    /// Waits until `done` holds for the batch, checking it again at each of its status changes
    /// (the service notifies them) and at least every second. For a condition on progress,
    /// which nothing announces, use [`TestApp::wait_for_progress`]. The deadline only guards
    /// against a hang; no assertion depends on speed.
    pub async fn wait_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_on(id, FALLBACK, done).await
    }

    /// Waits until the batch reaches one of `statuses`.
    pub async fn wait_for(&self, id: &str, statuses: &[&str]) -> Value {
        self.wait_until(id, |b| statuses.iter().any(|s| b["status"] == *s))
            .await
    }

    /// Waits until `done` holds for the batch's progress (`request_counts`), polled every 50 ms:
    /// progress is written by flushes, which notify nothing (nor does the events stream, which
    /// polls too). Status changes still wake it at once.
    pub async fn wait_for_progress(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_on(id, Duration::from_millis(50), done).await
    }

    /// Waits until at least `n` lines have completed (or the whole batch has).
    pub async fn wait_for_completed(&self, id: &str, n: i64) -> Value {
        self.wait_for_progress(id, |b| {
            b["request_counts"]["completed"].as_i64() >= Some(n) || b["status"] == "completed"
        })
        .await
    }

    async fn wait_on(&self, id: &str, every: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut changes = StatusChanges::listen(&self.pool, id).await;
        loop {
            let b = self.batch(id).await;
            if done(&b) {
                return b;
            }
            assert!(Instant::now() < deadline, "batch stuck: {b}");
            changes.next(every).await;
        }
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

    /// A file's content, as `GET /v1/files/{id}/content` answers it (200).
    pub async fn content_of(&self, file_id: &Value) -> Vec<u8> {
        let id = file_id.as_str().expect("a file id");
        let res = self.get(&format!("/v1/files/{id}/content"));
        res.expect_response(200)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// A result file's lines (empty for a null id).
    pub async fn lines_of(&self, file_id: &Value) -> Vec<Value> {
        if file_id.as_str().is_none() {
            return Vec::new();
        }
        let content = self.content_of(file_id).await;
        String::from_utf8(content)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}
