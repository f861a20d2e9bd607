//! Where test servers keep file content. By default in the database; with
//! `OPENBATCH_TEST_STORAGE=s3` (set by scripts/test.sh for its second pass) in the bucket of
//! the S3 server the test command started (`OPENBATCH_TEST_S3_ENDPOINT`, bucket
//! `OPENBATCH_TEST_S3_BUCKET`), each test database under a prefix of its own. `S3Server` is a
//! test's own real S3 server (moto's, from the e2e venv), for tests that stop it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this run's servers keep content in a bucket.
pub fn s3_pass() -> bool {
    std::env::var("OPENBATCH_TEST_STORAGE").is_ok_and(|s| s == "s3")
}

/// The settings (as environment variables) that put a server on `database_url` on this
/// run's storage backend.
pub fn storage_env(database_url: &str) -> Vec<(String, String)> {
    if !s3_pass() {
        return Vec::new();
    }
    let need = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("OPENBATCH_TEST_STORAGE=s3 needs {name}: run the tests through scripts/test.sh")
        })
    };
    s3_env(
        &need("OPENBATCH_TEST_S3_ENDPOINT"),
        &need("OPENBATCH_TEST_S3_BUCKET"),
        database_name(database_url),
    )
}

/// A server's settings for `bucket` on the S3 server at `endpoint`, keys under `prefix/`.
pub fn s3_env(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("OPENBATCH__STORAGE__BACKEND", "s3"),
        ("OPENBATCH__STORAGE__S3__BUCKET", bucket),
        ("OPENBATCH__STORAGE__S3__PREFIX", prefix),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn database_name(url: &str) -> &str {
    let path = url.rsplit('/').next().expect("a database URL");
    path.split('?').next().unwrap()
}

/// A real S3 server of the test's own (moto's server mode), stopped when dropped.
pub struct S3Server {
    pub endpoint: String,
    child: Child,
}

pub const TEST_BUCKET: &str = "openbatch-test";

impl S3Server {
    /// Starts the server, with `TEST_BUCKET` made.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: spawn_moto(port),
        };
        server.wait_ready().await;
        make_bucket(&server.endpoint, TEST_BUCKET).await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the S3 server exited"
            );
            if reqwest::get(format!("{}/", self.endpoint)).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "the S3 server never answered");
            // Readiness is announced nowhere: the server is asked.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGSTOP: the server answers nothing (connections hang) until `resume`.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// The keys under `prefix` in `TEST_BUCKET`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        list_keys(&self.endpoint, TEST_BUCKET, prefix).await
    }

    /// Multipart uploads begun and neither completed nor aborted, under `prefix`.
    pub async fn unfinished_uploads(&self, prefix: &str) -> usize {
        let url = format!("{}/{TEST_BUCKET}?uploads&prefix={prefix}", self.endpoint);
        get_text(&url).await.matches("<Upload>").count()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

/// moto's server from the e2e venv (`OPENBATCH_TEST_MOTO`, else `.venv/bin/moto_server`).
fn spawn_moto(port: u16) -> Child {
    let bin = std::env::var("OPENBATCH_TEST_MOTO")
        .unwrap_or_else(|_| format!("{}/.venv/bin/moto_server", env!("CARGO_MANIFEST_DIR")));
    Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start the S3 server {bin} ({e}): scripts/test.sh installs it (moto[server] in .venv)")
        })
}

async fn make_bucket(endpoint: &str, bucket: &str) {
    let res = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "create bucket: {}", res.status());
}

/// How much of a file's content is stored: its chunks in the database, or (on the s3 pass)
/// 1 while its object exists in the bucket and 0 once it is deleted.
pub async fn stored_parts(pool: &sqlx::PgPool, file_id: &str) -> i64 {
    if !s3_pass() {
        return sqlx::query_scalar("SELECT count(*) FROM file_chunks WHERE file_id = $1")
            .bind(file_id)
            .fetch_one(pool)
            .await
            .unwrap();
    }
    let (endpoint, bucket, db) = pass_bucket(pool).await;
    let url = format!("{endpoint}/{bucket}/{db}/files/{file_id}");
    let res = s3_client().head(url).send().await.unwrap();
    match res.status().as_u16() {
        200 => 1,
        404 => 0,
        other => panic!("HEAD of {file_id}'s object: {other}"),
    }
}

/// A client for the tests' own requests to moto. Moto checks no signature, but answers an
/// object request that carries no `Authorization` at all as an anonymous one (403 on a
/// private object): any header will do.
pub fn s3_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The content of Uploads API parts that is stored: chunk rows in the database, or (on the s3
/// pass) part objects in the bucket.
pub async fn stored_part_content(pool: &sqlx::PgPool) -> i64 {
    if !s3_pass() {
        return sqlx::query_scalar("SELECT count(*) FROM upload_chunks")
            .fetch_one(pool)
            .await
            .unwrap();
    }
    let (endpoint, bucket, db) = pass_bucket(pool).await;
    list_keys(&endpoint, &bucket, &format!("{db}/uploads/"))
        .await
        .len() as i64
}

/// The s3 pass's S3 endpoint and bucket, and the key prefix of `pool`'s database in it.
async fn pass_bucket(pool: &sqlx::PgPool) -> (String, String, String) {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    (
        var("OPENBATCH_TEST_S3_ENDPOINT"),
        var("OPENBATCH_TEST_S3_BUCKET"),
        db,
    )
}

/// The keys under `prefix` in `bucket` (one page: the tests hold far fewer than 1,000).
async fn list_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let body = get_text(&format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}")).await;
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

async fn get_text(url: &str) -> String {
    let res = s3_client().get(url).send().await.unwrap();
    assert!(res.status().is_success(), "GET {url}: {}", res.status());
    res.text().await.unwrap()
}
