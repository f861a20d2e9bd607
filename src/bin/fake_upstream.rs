//! fake-upstream: a small OpenAI-compatible inference server for OpenBatch tests and benchmarks.
//!
//! It speaks HTTP/1.1 on raw tokio TCP instead of using a web framework, because the faults it
//! injects must be exact: closing a socket without any response, or holding a request open with
//! no answer at all, are things a framework smooths over with its own error pages and timeouts.
//!
//! Faults come from two places:
//! * global rates (`--error-rate`, `--rate-429`, `--hang-rate`, `--drop-rate`) for benchmarks;
//! * a `"fake"` object in the JSON body, deterministic, for tests:
//!   `"fake": {"fail": [500, 429, "hang", "drop", "redirect", "html"], "latency_ms": 50}`
//!   (`redirect`: a 307 back to `/v1/chat/completions`; `html`: a 502 whose body is a
//!   gateway's HTML page over several lines, not JSON). The k-th execution of the
//!   same raw body answers with `fail[k]`, and normally once the list is used up.
//!   `"pad_bytes": N` adds a string of N bytes to a successful answer (a huge response), and
//!   `"no_length": true` sends it without `Content-Length`, ending it by closing the connection.
//!
//! `--pretty` pretty-prints every JSON body it answers, errors included, over several lines,
//! as some servers and gateways do.
//!
//! `GET /v1/models` lists `--models` (OpenBatch checks batches' models against it), or answers
//! 404 with `--no-models-endpoint`, like a server that does not list its models. Inference
//! itself answers for any model but `missing-model`, so a test can turn OpenBatch's check off
//! and still run lines.
//!
//! GPU mode (`gpu.rs`), for tests and benchmarks of how OpenBatch shares a model server:
//! `--gpu-slots N` requests are served at once, each for `--service-ms M` (which replaces
//! `--latency-ms`/`--jitter-ms`; a directive's `latency_ms` still wins), and the rest wait in
//! a FIFO queue; `--queue-max Q` sheds a request past Q waiting with a 429 (`Retry-After: 1`,
//! OpenAI's error body), as a gateway in front of the server would. `GET /metrics` then serves
//! vLLM's gauges `vllm:num_requests_running` and `vllm:num_requests_waiting` (labelled with the
//! first of `--models`) and the peaks and totals as `fake_upstream_*`; `GET /stats` has the same
//! under `gpu`, and `POST /stats/reset` restarts them. Without `--gpu-slots`, `/metrics` is a
//! 404 as before: a server that exports no metrics.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

// A directory beside the binary, not src/bin/gpu.rs, which Cargo would build as a binary of its own.
#[path = "fake_upstream/gpu.rs"]
mod gpu;

/// Bounds that keep a misbehaving client from making us buffer without limit.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
/// "Never answers" in practice: far longer than any client timeout under test.
const HANG: Duration = Duration::from_secs(3600);

#[derive(Parser)]
#[command(
    name = "fake-upstream",
    about = "Fake OpenAI-compatible upstream with fault injection"
)]
struct Args {
    #[arg(long, env = "FAKE_UPSTREAM_HOST", default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the chosen one is printed on stdout.
    #[arg(long, env = "FAKE_UPSTREAM_PORT", default_value_t = 0)]
    port: u16,
    /// Fixed delay before answering each inference request.
    #[arg(long, env = "FAKE_UPSTREAM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Extra uniform random delay in [0, jitter_ms] on top of --latency-ms.
    #[arg(long, env = "FAKE_UPSTREAM_JITTER_MS", default_value_t = 0)]
    jitter_ms: u64,
    /// Probability of a 500 response.
    #[arg(long, env = "FAKE_UPSTREAM_ERROR_RATE", default_value_t = 0.0, value_parser = probability)]
    error_rate: f64,
    /// Probability of a 429 response with `Retry-After: 1`.
    #[arg(long = "rate-429", env = "FAKE_UPSTREAM_RATE_429", default_value_t = 0.0, value_parser = probability)]
    rate_429: f64,
    /// Probability that the request is never answered (connection held for an hour).
    #[arg(long, env = "FAKE_UPSTREAM_HANG_RATE", default_value_t = 0.0, value_parser = probability)]
    hang_rate: f64,
    /// Probability that the connection is closed without a response.
    #[arg(long, env = "FAKE_UPSTREAM_DROP_RATE", default_value_t = 0.0, value_parser = probability)]
    drop_rate: f64,
    /// CPU burnt per inference request, in microseconds: makes this server CPU-bound, like a
    /// model server whose compute is the bottleneck (benchmarks measure its ceiling alone).
    #[arg(long, env = "FAKE_UPSTREAM_CPU_US", default_value_t = 0)]
    cpu_us: u64,
    /// The model ids `GET /v1/models` lists (comma-separated).
    #[arg(
        long,
        env = "FAKE_UPSTREAM_MODELS",
        value_delimiter = ',',
        default_value = "fake-model"
    )]
    models: Vec<String>,
    /// Answer `GET /v1/models` with a 404, like a server that does not list its models.
    #[arg(long, env = "FAKE_UPSTREAM_NO_MODELS_ENDPOINT")]
    no_models_endpoint: bool,
    /// Delay before answering `GET /v1/models`: holds a batch in `validating` that long.
    #[arg(long, env = "FAKE_UPSTREAM_MODELS_LATENCY_MS", default_value_t = 0)]
    models_latency_ms: u64,
    /// Pretty-print every JSON body, errors included (`{\n  "error": …\n}`).
    #[arg(long, env = "FAKE_UPSTREAM_PRETTY")]
    pretty: bool,
    /// GPU mode: inference requests served at once; the rest wait in a FIFO queue.
    #[arg(long, env = "FAKE_UPSTREAM_GPU_SLOTS", value_parser = clap::value_parser!(u32).range(1..))]
    gpu_slots: Option<u32>,
    /// GPU mode: how long a request holds its slot (replaces --latency-ms and --jitter-ms).
    #[arg(
        long,
        env = "FAKE_UPSTREAM_SERVICE_MS",
        default_value_t = 0,
        requires = "gpu_slots"
    )]
    service_ms: u64,
    /// GPU mode: requests allowed to wait; one more is answered 429 with `Retry-After: 1`.
    #[arg(long, env = "FAKE_UPSTREAM_QUEUE_MAX", requires = "gpu_slots")]
    queue_max: Option<usize>,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    (0.0..=1.0)
        .contains(&p)
        .then_some(p)
        .ok_or_else(|| "must be within 0.0..=1.0".into())
}

/// All counters under one lock: a request updates both maps at once, and the critical section
/// is a couple of hash-map updates, so contention does not matter at our request rates.
#[derive(Default)]
struct Stats {
    total: u64,
    by_key: HashMap<String, u64>,
    /// Executions so far per raw-body sha256, kept only for bodies with a `fake` directive.
    runs: HashMap<String, usize>,
    /// `GET /v1/models` requests (not counted in `total`, which counts executions).
    model_lists: u64,
}

struct State {
    args: Args,
    stats: Mutex<Stats>,
    /// Present in GPU mode (`--gpu-slots`).
    gpu: Option<gpu::Gpu>,
}

struct Request {
    method: String,
    path: String,
    content_length: usize,
    chunked: bool,
    keep_alive: bool,
    expect_continue: bool,
}

struct Response {
    status: u16,
    body: Value,
    headers: Vec<(&'static str, &'static str)>,
    /// Send no `Content-Length`: the body ends when the connection closes.
    no_length: bool,
    /// Sent instead of `body`, as HTML: a page that is not JSON.
    html: Option<&'static str>,
    /// Sent instead of `body`, as Prometheus text.
    text: Option<String>,
}

enum Reply {
    Send(Response),
    Hang,
    Drop,
}

enum Fault {
    Status(u16),
    Hang,
    Drop,
    /// 307 to the same path: a client that follows it sends the line a second time.
    Redirect,
    /// 502 with a gateway's HTML error page.
    Html,
}

/// What a proxy in front of a model server answers when the server is down.
const GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    // Tests parse this exact line to learn the port; it must be the only stdout output.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);

    let stats = Mutex::default();
    let gpu = args.gpu_slots.map(|slots| {
        let model = args.models.first().map_or("fake-model", String::as_str);
        gpu::Gpu::new(slots as usize, args.service_ms, args.queue_max, model)
    });
    let state = Arc::new(State { args, stats, gpu });
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Typically EMFILE under a heavy benchmark: back off instead of spinning.
                eprintln!("fake-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        // Errors are clients going away, often on purpose in fault tests: nothing to report.
        tokio::spawn(async move { serve_connection(sock, state).await });
    }
}

/// Serves requests on one connection until the client closes it, asks for `Connection: close`,
/// or a fault ends it. Bytes past the current request stay in `buf` for the next one.
async fn serve_connection(mut sock: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let pretty = state.args.pretty;
    let mut buf = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return send(
                    &mut sock,
                    error(431, "request headers too large"),
                    false,
                    pretty,
                )
                .await;
            }
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(()); // closed between requests (normal) or mid-head
            }
        };
        let req = match parse_head(&String::from_utf8_lossy(&buf[..head_end])) {
            Ok(req) => req,
            Err(msg) => return send(&mut sock, error(400, msg), false, pretty).await,
        };
        // Without a length we cannot tell where the body ends, so the connection is done after.
        if req.chunked {
            let resp = error(411, "chunked bodies are not supported: send Content-Length");
            return send(&mut sock, resp, false, pretty).await;
        }
        if req.content_length > MAX_BODY {
            return send(
                &mut sock,
                error(413, "request body too large"),
                false,
                pretty,
            )
            .await;
        }
        let end = head_end + req.content_length;
        // curl waits (up to 1 s) for this before it sends a large body.
        if req.expect_continue && buf.len() < end {
            sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        while buf.len() < end {
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body: Vec<u8> = buf.drain(..end).skip(head_end).collect();
        match route(&state, &req, &body).await {
            Reply::Send(resp) => {
                let close = resp.no_length;
                send(&mut sock, resp, req.keep_alive, pretty).await?;
                if close {
                    return Ok(());
                }
            }
            Reply::Drop => return Ok(()), // dropping the socket closes it with no response
            Reply::Hang => {
                // Read and discard so that we notice when the client gives up: otherwise a
                // benchmark with many hangs would pile up open sockets for an hour.
                let mut sink = [0u8; 4096];
                let drain = async { while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(HANG, drain).await;
                return Ok(());
            }
        }
        if !req.keep_alive {
            return Ok(());
        }
    }
}

async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = sock.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn parse_head(head: &str) -> Result<Request, &'static str> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        content_length: 0,
        chunked: false,
        // HTTP/1.1 connections are persistent by default, HTTP/1.0 ones are not.
        keep_alive: version == "HTTP/1.1",
        expect_continue: false,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                req.content_length = value.parse().map_err(|_| "bad Content-Length")?
            }
            "transfer-encoding" => req.chunked = true,
            "expect" => req.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        req.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        req.keep_alive = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(req)
}

async fn send(
    sock: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    pretty: bool,
) -> std::io::Result<()> {
    let (body, content_type) = match (resp.html, resp.text) {
        (Some(page), _) => (page.to_owned(), "text/html"),
        (None, Some(text)) => (text, "text/plain; version=0.0.4"),
        _ if pretty => (
            serde_json::to_string_pretty(&resp.body).expect("a JSON value serialises"),
            "application/json",
        ),
        _ => (resp.body.to_string(), "application/json"),
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let connection = if resp.no_length { "close" } else { connection };
    let length = if resp.no_length {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\n{length}\
         x-request-id: req_{}\r\nConnection: {connection}\r\n",
        resp.status,
        reason(resp.status),
        Uuid::new_v4(),
    );
    for (name, value) in resp.headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += "\r\n";
    out += &body;
    sock.write_all(out.as_bytes()).await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Fake Status",
    }
}

fn ok(body: Value) -> Response {
    let headers = Vec::new();
    Response {
        status: 200,
        body,
        headers,
        no_length: false,
        html: None,
        text: None,
    }
}

/// OpenAI's error envelope, with the `type` OpenAI uses for each class of status.
fn error(status: u16, message: impl Into<String>) -> Response {
    let kind = match status {
        429 => "requests",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let error = json!({"message": message.into(), "type": kind, "param": null, "code": null});
    Response {
        status,
        ..ok(json!({ "error": error }))
    }
}

impl Response {
    /// Sets a field (`param` or `code`) of the error object.
    fn with(mut self, field: &str, value: &str) -> Self {
        self.body["error"][field] = value.into();
        self
    }
}

async fn route(state: &State, req: &Request, body: &[u8]) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default();
    let path = match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let stats_json = |s: &Stats| {
        let mut body = json!({"total": s.total, "by_key": s.by_key, "model_lists": s.model_lists});
        if let Some(gpu) = &state.gpu {
            body["gpu"] = gpu.stats();
        }
        ok(body)
    };
    Reply::Send(match (req.method.as_str(), path) {
        ("GET", "/health") => ok(json!({"status": "ok"})),
        ("GET", "/stats") => stats_json(&state.stats.lock().unwrap()),
        ("POST", "/stats/reset") => {
            // This also restarts every `fake.fail` sequence: a reset gives a fresh server.
            let mut stats = state.stats.lock().unwrap();
            *stats = Stats::default();
            if let Some(gpu) = &state.gpu {
                gpu.reset();
            }
            stats_json(&stats)
        }
        ("GET", "/metrics") if state.gpu.is_some() => Response {
            text: state.gpu.as_ref().map(|gpu| gpu.metrics()),
            ..ok(Value::Null)
        },
        ("GET", "/models") if !state.args.no_models_endpoint => {
            state.stats.lock().unwrap().model_lists += 1;
            tokio::time::sleep(Duration::from_millis(state.args.models_latency_ms)).await;
            let data: Vec<Value> = (state.args.models.iter())
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "fake-upstream"}))
                .collect();
            ok(json!({"object": "list", "data": data}))
        }
        ("POST", "/chat/completions" | "/completions" | "/embeddings" | "/responses")
        | ("POST", "/moderations") => return inference(state, path, body).await,
        (method, _) => error(404, format!("Invalid URL ({method} {})", req.path)),
    })
}

async fn inference(state: &State, route: &str, raw: &[u8]) -> Reply {
    let args = &state.args;
    let sha = hex::encode(Sha256::digest(raw));
    let body = serde_json::from_slice::<Value>(raw)
        .ok()
        .filter(Value::is_object);
    let directive = body
        .as_ref()
        .and_then(|b| b.get("fake"))
        .filter(|f| f.is_object())
        .cloned();
    // Count first: every execution counts, including those that fail or fault below.
    let run = {
        let key = match body.as_ref().and_then(|b| b.get("user")) {
            Some(Value::String(user)) => user.clone(),
            _ => sha.clone(),
        };
        let mut stats = state.stats.lock().unwrap();
        stats.total += 1;
        *stats.by_key.entry(key).or_default() += 1;
        // Only directive bodies need a run index; skipping the rest bounds memory in benchmarks.
        if directive.is_some() {
            let runs = stats.runs.entry(sha).or_default();
            *runs += 1;
            *runs - 1
        } else {
            0
        }
    };
    let Some(body) = body else {
        let msg = "We could not parse the JSON body of your request.";
        return Reply::Send(error(400, msg));
    };

    // A directive makes the request deterministic: no random faults, and its latency_ms (if
    // any) replaces both --latency-ms and --jitter-ms (in GPU mode, --service-ms).
    let (fault, latency) = match &directive {
        Some(d) => match planned_fault(d, run) {
            Ok(fault) => (fault, d["latency_ms"].as_u64()),
            Err(msg) => return Reply::Send(error(400, msg).with("param", "fake")),
        },
        None => (random_fault(args), None),
    };
    // In GPU mode the request holds a slot for its whole service, faults included; the slot is
    // given back when the answer is ready (`_slot` dropped at the end of this function).
    let (_slot, latency) = match &state.gpu {
        Some(gpu) => match gpu.admit().await {
            Some(slot) => (
                Some(slot),
                latency.map_or(gpu.service, Duration::from_millis),
            ),
            None => return Reply::Send(shed()),
        },
        None => {
            let normal = || args.latency_ms + jitter(args.jitter_ms);
            (None, Duration::from_millis(latency.unwrap_or_else(normal)))
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if args.cpu_us > 0 {
        let until = std::time::Instant::now() + Duration::from_micros(args.cpu_us);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    Reply::Send(match fault {
        None => {
            let mut resp = answer(route, &body);
            if let Some(d) = &directive {
                if let Some(n) = d["pad_bytes"].as_u64() {
                    resp.body["padding"] = Value::String("x".repeat(n as usize));
                }
                resp.no_length = d["no_length"] == true;
            }
            resp
        }
        Some(Fault::Hang) => return Reply::Hang,
        Some(Fault::Drop) => return Reply::Drop,
        Some(Fault::Redirect) => {
            let mut resp = error(307, "fake-upstream redirects this request");
            resp.headers.push(("Location", "/v1/chat/completions"));
            resp
        }
        Some(Fault::Html) => Response {
            status: 502,
            html: Some(GATEWAY_PAGE),
            ..ok(Value::Null)
        },
        Some(Fault::Status(429)) => {
            // Real servers' back-off hints; tests get the short one so retries stay fast.
            let mut resp = error(429, "Rate limit reached (fake-upstream)");
            resp.headers.push(("Retry-After", "1"));
            if directive.is_some() {
                resp.headers.push(("retry-after-ms", "200"));
            }
            resp.with("code", "rate_limit_exceeded")
        }
        Some(Fault::Status(status)) => error(status, format!("fake-upstream injected a {status}")),
    })
}

/// GPU mode's answer past `--queue-max` waiting: what a gateway that sheds load sends.
fn shed() -> Response {
    let msg = "The server is overloaded: too many requests are waiting (fake-upstream --queue-max)";
    let mut resp = error(429, msg).with("code", "rate_limit_exceeded");
    resp.headers.push(("Retry-After", "1"));
    resp
}

/// The fault scheduled for execution `k` of a body carrying `"fake": {...}`.
fn planned_fault(directive: &Value, k: usize) -> Result<Option<Fault>, String> {
    let steps = match &directive["fail"] {
        Value::Null => return Ok(None),
        Value::Array(steps) => steps,
        _ => return Err("fake.fail must be an array".into()),
    };
    match steps.get(k) {
        None => Ok(None),
        Some(Value::String(s)) if s == "hang" => Ok(Some(Fault::Hang)),
        Some(Value::String(s)) if s == "drop" => Ok(Some(Fault::Drop)),
        Some(Value::String(s)) if s == "redirect" => Ok(Some(Fault::Redirect)),
        Some(Value::String(s)) if s == "html" => Ok(Some(Fault::Html)),
        Some(step) => match step.as_u64() {
            Some(code @ 400..=599) => Ok(Some(Fault::Status(code as u16))),
            _ => Err(format!(
                "fake.fail[{k}] must be a 4xx/5xx, \"hang\", \"drop\", \"redirect\" or \"html\": {step}"
            )),
        },
    }
}

/// One draw against cumulative thresholds, so each rate is exactly that fault's probability
/// (as long as the rates add up to at most 1).
fn random_fault(args: &Args) -> Option<Fault> {
    let r = random_unit();
    let mut edge = 0.0;
    [
        (args.hang_rate, Fault::Hang),
        (args.drop_rate, Fault::Drop),
        (args.rate_429, Fault::Status(429)),
        (args.error_rate, Fault::Status(500)),
    ]
    .into_iter()
    .find_map(|(rate, fault)| {
        edge += rate;
        (r < edge).then_some(fault)
    })
}

/// Uniform in [0, 1). There is no `rand` in our dependencies, so take the top 48 bits of a v4
/// UUID, which are all random (its version and variant bits sit lower down).
fn random_unit() -> f64 {
    (Uuid::new_v4().as_u128() >> 80) as f64 / (1u64 << 48) as f64
}

fn jitter(max_ms: u64) -> u64 {
    (random_unit() * (max_ms + 1) as f64) as u64
}

/// The successful answer for an inference route, once faults are out of the way.
fn answer(route: &str, body: &Value) -> Response {
    let Some(model) = body["model"].as_str() else {
        return error(400, "you must provide a model parameter").with("param", "model");
    };
    if model == "missing-model" {
        let msg = format!("The model `{model}` does not exist or you do not have access to it.");
        return error(404, msg)
            .with("param", "model")
            .with("code", "model_not_found");
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = Uuid::new_v4();
    match route {
        "/chat/completions" => {
            let Some(messages) = body["messages"].as_array() else {
                return error(400, "'messages' is a required property").with("param", "messages");
            };
            let texts: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
            let answer = format!("echo: {}", texts.last().map_or("", String::as_str));
            let usage = usage(tokens(&texts.join(" ")), tokens(&answer));
            ok(json!({
                "id": format!("chatcmpl-{id}"), "object": "chat.completion",
                "created": created, "model": model,
                "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": answer},
                    "logprobs": null, "finish_reason": "stop",
                }],
                "usage": usage,
            }))
        }
        "/completions" => {
            let prompts = strings(&body["prompt"]);
            let answers: Vec<String> = prompts.iter().map(|p| format!("echo: {p}")).collect();
            let choices: Vec<Value> = (answers.iter().enumerate())
                .map(|(i, t)| json!({"text": t, "index": i, "logprobs": null, "finish_reason": "stop"}))
                .collect();
            let usage = usage(tokens(&prompts.join(" ")), tokens(&answers.join(" ")));
            ok(json!({
                "id": format!("cmpl-{id}"), "object": "text_completion",
                "created": created, "model": model, "choices": choices, "usage": usage,
            }))
        }
        "/embeddings" => {
            if body["input"].is_null() {
                return error(400, "'input' is a required property").with("param", "input");
            }
            let inputs = strings(&body["input"]);
            let data: Vec<Value> = (inputs.iter().enumerate())
                .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
                .collect();
            let n: u64 = inputs.iter().map(|t| tokens(t)).sum();
            ok(json!({
                "object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }))
        }
        "/responses" => {
            // `input` is a string, or a list of messages (or of bare strings).
            let texts: Vec<String> = match &body["input"] {
                Value::Array(items) => (items.iter())
                    .map(|item| {
                        item.as_str()
                            .map_or_else(|| text_of(&item["content"]), str::to_string)
                    })
                    .collect(),
                other => strings(other),
            };
            let answer = format!("echo: {}", texts.last().map_or("", String::as_str));
            let (input, output) = (tokens(&texts.join(" ")), tokens(&answer));
            ok(json!({
                "id": format!("resp_{id}"), "object": "response", "created_at": created,
                "status": "completed", "error": null, "incomplete_details": null, "model": model,
                "output": [{
                    "type": "message", "id": format!("msg_{}", Uuid::new_v4()),
                    "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": answer, "annotations": []}],
                }],
                "usage": {
                    "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input + output,
                },
            }))
        }
        _ => {
            let results: Vec<Value> = (strings(&body["input"]).iter())
                .map(|_| json!({"flagged": false, "categories": {}, "category_scores": {}}))
                .collect();
            ok(json!({"id": format!("modr-{id}"), "model": model, "results": results}))
        }
    }
}

/// Deterministic stand-in for a tokenizer: whitespace-separated words, never less than 1.
fn tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Text of a message `content`: a string, or an array of parts whose `text`s are joined by spaces.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => (parts.iter())
            .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A `prompt` / `input` that may be a string or an array (token-id arrays become JSON text).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) if !items.is_empty() => (items.iter())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![String::new()],
    }
}

/// Eight floats in [-1, 1] from the sha256 of the text: stable across runs, distinct per input.
fn embed(text: &str) -> Vec<f64> {
    (Sha256::digest(text.as_bytes()).chunks(4))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64 / u32::MAX as f64 * 2.0 - 1.0)
        .collect()
}
