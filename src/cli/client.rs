//! The one HTTP client the CLI uses: the public `/v1` API, exactly as the SDKs call it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// An error answer from the server, shown as the server worded it.
#[derive(Debug)]
pub struct ServerError {
    pub status: u16,
    pub message: String,
    pub code: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        match &self.code {
            Some(code) => write!(f, " (code {code}, HTTP {})", self.status),
            None => write!(f, " (HTTP {})", self.status),
        }
    }
}

impl std::error::Error for ServerError {}

pub struct Client {
    http: reqwest::Client,
    /// Including `/v1`, like `OPENAI_BASE_URL`.
    base: String,
    api_key: Option<String>,
}

/// What `POST /v1/batches` answered.
pub struct Created {
    pub batch: Value,
    /// The server returned an existing batch for the idempotency key.
    pub replayed: bool,
}

impl Client {
    /// `insecure`: send the key over plain http:// to another machine all the same.
    pub fn new(base_url: &str, api_key: Option<String>, insecure: bool) -> anyhow::Result<Self> {
        let base = base_url.trim_end_matches('/').to_owned();
        let url = url::Url::parse(&base).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        let Some(url) = url else {
            anyhow::bail!(
                "the base URL must be an http(s) URL such as http://127.0.0.1:8080/v1 \
                 (--base-url or OPENAI_BASE_URL), got '{base}'"
            );
        };
        let api_key = api_key.filter(|k| !k.is_empty());
        let host = url.host_str().unwrap_or_default();
        anyhow::ensure!(
            api_key.is_none()
                || insecure
                || url.scheme() == "https"
                || crate::config::is_loopback(host),
            "refusing to send the API key in clear text to {host}: use an https:// base URL, \
             or pass --insecure if the network to it is trusted"
        );
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("openbatch-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    async fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let res = rb.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the server at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        if res.status().is_success() {
            return Ok(res);
        }
        Err(server_error(res).await.into())
    }

    async fn json(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        let res = self.send(rb).await?;
        res.json()
            .await
            .context("the server sent a body that is not JSON")
    }

    pub async fn get_batch(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, &format!("/batches/{id}")))
            .await
    }

    pub async fn list_batches(&self, limit: u32, after: Option<&str>) -> anyhow::Result<Value> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(after.map(|a| ("after", a.to_owned())));
        self.json(self.request(Method::GET, "/batches").query(&query))
            .await
    }

    pub async fn cancel_batch(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::POST, &format!("/batches/{id}/cancel")))
            .await
    }

    /// `POST /batches/{id}/retry` (an OpenBatch extension), under an idempotency key.
    pub async fn retry_batch(&self, id: &str, body: &Value, key: &str) -> anyhow::Result<Created> {
        let rb = self
            .request(Method::POST, &format!("/batches/{id}/retry"))
            .header("Idempotency-Key", key)
            .json(body);
        created(self.send(rb).await?).await
    }

    /// The batch's Server-Sent Events (an OpenBatch extension), or `None` when the server does
    /// not offer them for it (another server, or its cap on open streams is reached).
    pub async fn batch_events(&self, id: &str) -> Option<Response> {
        let res = self
            .request(Method::GET, &format!("/batches/{id}/events"))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .ok()?;
        let is_sse = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        (res.status().is_success() && is_sse).then_some(res)
    }

    pub async fn create_batch(&self, body: &Value) -> anyhow::Result<Created> {
        created(
            self.send(self.request(Method::POST, "/batches").json(body))
                .await?,
        )
        .await
    }

    pub async fn list_files(
        &self,
        purpose: Option<&str>,
        limit: u32,
        order: &str,
        after: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut query = vec![("limit", limit.to_string()), ("order", order.to_owned())];
        query.extend(purpose.map(|p| ("purpose", p.to_owned())));
        query.extend(after.map(|a| ("after", a.to_owned())));
        self.json(self.request(Method::GET, "/files").query(&query))
            .await
    }

    /// Every file with `purpose`, oldest first, following `has_more`.
    pub async fn all_files(&self, purpose: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_files(Some(purpose), 10_000, "asc", after.as_deref())
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            after = data
                .last()
                .and_then(|f| f["id"].as_str())
                .map(str::to_owned);
            all.extend(data);
            if page["has_more"] != Value::Bool(true) || after.is_none() {
                return Ok(all);
            }
        }
    }

    /// Any JSON route of the API (the webhook endpoints use these).
    pub async fn get_json(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, path).query(query))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub async fn delete_json(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, path)).await
    }

    pub async fn get_file(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, &format!("/files/{id}")))
            .await
    }

    pub async fn delete_file(&self, id: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::DELETE, &format!("/files/{id}")))
            .await
    }

    /// Streams the file at `path` to the server under `filename`, in one request.
    pub async fn upload(
        &self,
        path: &Path,
        filename: &str,
        purpose: &str,
    ) -> anyhow::Result<Value> {
        let len = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?
            .len();
        let chunks = file_range(path, 0, len).await?;
        let part =
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), len)
                .file_name(filename.to_owned())
                .mime_str("application/jsonl")?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", part);
        self.json(self.request(Method::POST, "/files").multipart(form))
            .await
    }

    /// Sends the file at `path` through the Uploads API in parts of `part_bytes`, each streamed
    /// from disk, and returns the file it became.
    pub async fn upload_in_parts(
        &self,
        path: &Path,
        filename: &str,
        purpose: &str,
        d: &super::submit::Digested,
        part_bytes: u64,
    ) -> anyhow::Result<Value> {
        let upload = self
            .post_json(
                "/uploads",
                &serde_json::json!({"filename": filename, "purpose": purpose, "bytes": d.bytes,
                                    "mime_type": "application/jsonl"}),
            )
            .await?;
        let id = upload["id"]
            .as_str()
            .context("an upload without an id")?
            .to_owned();
        let mut part_ids = Vec::new();
        let mut offset = 0;
        while offset < d.bytes {
            let len = part_bytes.min(d.bytes - offset);
            let part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(file_range(path, offset, len).await?),
                len,
            )
            .file_name("upload");
            let form = reqwest::multipart::Form::new().part("data", part);
            let sent = self
                .json(
                    self.request(Method::POST, &format!("/uploads/{id}/parts"))
                        .multipart(form),
                )
                .await?;
            part_ids.push(sent["id"].clone());
            offset += len;
        }
        let done = self
            .post_json(
                &format!("/uploads/{id}/complete"),
                &serde_json::json!({"part_ids": part_ids, "md5": d.md5}),
            )
            .await?;
        Ok(done["file"].clone())
    }

    /// The raw content of a file, as a response to stream from.
    pub async fn content(&self, id: &str) -> anyhow::Result<Response> {
        self.send(self.request(Method::GET, &format!("/files/{id}/content")))
            .await
    }

    /// Streams a file's content into `out`.
    pub async fn download_to(
        &self,
        id: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> anyhow::Result<u64> {
        let mut stream = self.content(id).await?.bytes_stream();
        let mut written = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the download was interrupted")?;
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        out.flush().await?;
        Ok(written)
    }

    /// A file's whole content as text (result files: one JSON object per line).
    pub async fn text(&self, id: &str) -> anyhow::Result<String> {
        self.content(id)
            .await?
            .text()
            .await
            .context("the download was interrupted")
    }
}

async fn server_error(res: Response) -> ServerError {
    let status = res.status().as_u16();
    let body: Option<Value> = res.json().await.ok();
    let err = body.as_ref().map(|b| &b["error"]);
    let message = err
        .and_then(|e| e["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the server answered HTTP {status}"));
    let code = err.and_then(|e| e["code"].as_str()).map(str::to_owned);
    ServerError {
        status,
        message,
        code,
    }
}

/// reqwest's outermost message ("error sending request for url ...") hides the useful part.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Whether an error is worth retrying while only watching a batch: the connection, or a
/// server answer that says "try again".
pub fn is_transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ServerError>() {
        Some(s) => s.status == 429 || s.status >= 500,
        None => e.to_string().starts_with("cannot reach the server"),
    }
}

/// A created batch, and whether the server replayed it from an earlier request with its key.
async fn created(res: Response) -> anyhow::Result<Created> {
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let batch = res
        .json()
        .await
        .context("the server sent a body that is not JSON")?;
    Ok(Created { batch, replayed })
}

/// `len` bytes of the file at `path` from `offset`, read as they are sent.
async fn file_range(
    path: &Path,
    offset: u64,
    len: u64,
) -> anyhow::Result<impl futures_util::Stream<Item = std::io::Result<Vec<u8>>>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    Ok(futures_util::stream::unfold(
        file.take(len),
        |mut file| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::Client;

    fn refused(base: &str, key: Option<&str>, insecure: bool) -> bool {
        Client::new(base, key.map(str::to_owned), insecure)
            .err()
            .is_some_and(|e| e.to_string().contains("--insecure"))
    }

    #[test]
    fn a_key_goes_in_clear_text_only_to_this_machine_or_when_told() {
        let key = Some("sk-test");
        assert!(refused("http://batch.example.com/v1", key, false));
        assert!(refused("http://10.0.0.5:8080/v1", key, false));
        assert!(refused("http://localhost.example.com/v1", key, false));
        for base in [
            "http://127.0.0.1:8080/v1",
            "http://localhost:8080/v1",
            "http://[::1]:8080/v1",
            "https://batch.example.com/v1",
        ] {
            assert!(!refused(base, key, false), "{base}");
        }
        assert!(!refused("http://batch.example.com/v1", key, true));
        assert!(
            !refused("http://batch.example.com/v1", None, false),
            "no key to leak"
        );
        assert!(
            !refused("http://batch.example.com/v1", Some(""), false),
            "no key to leak"
        );
    }

    #[test]
    fn a_base_url_that_is_not_http_is_refused_with_an_example() {
        for base in ["ftp://x/v1", "127.0.0.1:8080", "http://"] {
            let err = Client::new(base, None, false)
                .err()
                .expect(base)
                .to_string();
            assert!(err.contains("http://127.0.0.1:8080/v1"), "{base}: {err}");
        }
    }
}
