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
//!   `"gate": "name"` holds the answer until `POST /gates/name` opens that gate (a test's
//!   "finish now", where a latency would be a guess at how long its set-up takes).
//!
//! `--pretty` pretty-prints every JSON body it answers, errors included, over several lines,
//! as some servers and gateways do.
//!
//! `POST /tokenize` counts a body's prompt tokens as vLLM's does (`{"count": N, …}`, the count
//! its answers' `usage` gives), or answers 404 with `--no-tokenize`.
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
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use answers::answer;
use faults::{jitter, planned_fault, random_fault, shed};
use http::{error, ok, serve_connection, Reply, Request, Response};

// Directories beside the binary, not src/bin/*.rs, which Cargo would build as binaries of their own.
#[path = "fake_upstream/answers.rs"]
mod answers;
#[path = "fake_upstream/faults.rs"]
mod faults;
#[path = "fake_upstream/gpu.rs"]
mod gpu;
#[path = "fake_upstream/http.rs"]
mod http;

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
    /// Answer `POST /tokenize` with a 404, like a server other than vLLM.
    #[arg(long, env = "FAKE_UPSTREAM_NO_TOKENIZE")]
    no_tokenize: bool,
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
    /// `POST /tokenize` requests.
    tokenizations: u64,
}

struct State {
    args: Args,
    stats: Mutex<Stats>,
    /// Present in GPU mode (`--gpu-slots`).
    gpu: Option<gpu::Gpu>,
    /// Named gates, open once `POST /gates/{name}` has been received.
    gates: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl State {
    fn gate(&self, name: &str) -> tokio::sync::watch::Sender<bool> {
        let mut gates = self.gates.lock().unwrap();
        gates
            .entry(name.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(false).0)
            .clone()
    }
}

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
    let state = Arc::new(State {
        args,
        stats,
        gpu,
        gates: Mutex::default(),
    });
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

async fn route(state: &State, req: &Request, body: &[u8]) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default();
    let path = match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let stats_json = |s: &Stats| {
        let mut body = json!({"total": s.total, "by_key": s.by_key, "model_lists": s.model_lists,
                              "tokenizations": s.tokenizations});
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
        ("POST", gate) if gate.starts_with("/gates/") => {
            let name = &gate["/gates/".len()..];
            state.gate(name).send_replace(true);
            ok(json!({"gate": name, "open": true}))
        }
        ("GET", "/metrics") if state.gpu.is_some() => Response {
            text: state.gpu.as_ref().map(|gpu| gpu.metrics()),
            ..ok(Value::Null)
        },
        // vLLM's tokenizer route (at the server's root): as many tokens as its answers count.
        ("POST", "/tokenize") if !state.args.no_tokenize => {
            state.stats.lock().unwrap().tokenizations += 1;
            match serde_json::from_slice::<Value>(body) {
                Ok(b) => ok(
                    json!({"count": answers::prompt_tokens(&b), "max_model_len": 8192, "tokens": []}),
                ),
                Err(_) => error(400, "We could not parse the JSON body of your request."),
            }
        }
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
    let run = count(state, body.as_ref(), sha, directive.is_some());
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
    if let Some(name) = directive.as_ref().and_then(|d| d["gate"].as_str()) {
        let mut open = state.gate(name).subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
    if args.cpu_us > 0 {
        let until = std::time::Instant::now() + Duration::from_micros(args.cpu_us);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let Some(fault) = fault else {
        let mut resp = answer(route, &body);
        if let Some(d) = &directive {
            if let Some(n) = d["pad_bytes"].as_u64() {
                resp.body["padding"] = Value::String("x".repeat(n as usize));
            }
            resp.no_length = d["no_length"] == true;
        }
        return Reply::Send(resp);
    };
    fault.reply(directive.is_some())
}

/// Counts an execution (in total, and by its `user` or else its body's hash) and returns how
/// many times this exact body ran before, which picks its planned fault.
fn count(state: &State, body: Option<&Value>, sha: String, planned: bool) -> usize {
    let key = match body.and_then(|b| b.get("user")) {
        Some(Value::String(user)) => user.clone(),
        _ => sha.clone(),
    };
    let mut stats = state.stats.lock().unwrap();
    stats.total += 1;
    *stats.by_key.entry(key).or_default() += 1;
    // Only directive bodies need a run index; skipping the rest bounds memory in benchmarks.
    if planned {
        let runs = stats.runs.entry(sha).or_default();
        *runs += 1;
        *runs - 1
    } else {
        0
    }
}
