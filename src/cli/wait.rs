//! Watching a batch until it ends (live progress on a terminal), and turning its result files
//! into one JSONL in input order with a summary of what failed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::client::{is_transient, Client};
use super::output;

pub const TERMINAL: [&str; 4] = ["completed", "failed", "expired", "cancelled"];

/// Exit code when the batch ended but not every line succeeded (failed, expired, cancelled,
/// or some lines in the error file).
pub const EXIT_BATCH_FAILED: i32 = 4;
/// Exit code when Ctrl-C detached from a batch that goes on running.
pub const EXIT_DETACHED: i32 = 130;

pub fn is_terminal(batch: &Value) -> bool {
    TERMINAL.contains(&batch["status"].as_str().unwrap_or_default())
}

pub enum Waited {
    Finished(Value),
    /// Ctrl-C: the batch goes on without us.
    Detached(Value),
}

pub struct WaitOptions {
    pub cancel_on_interrupt: bool,
    pub poll: Duration,
    /// Follow the server's event stream when it has one (else only poll).
    pub events: bool,
}

/// The batch objects a server pushes on `GET /batches/{id}/events`.
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    async fn open(client: &Client, id: &str) -> Option<Self> {
        let res = client.batch_events(id).await?;
        Some(Self {
            body: Box::pin(res.bytes_stream()),
            buf: String::new(),
        })
    }

    /// The next batch object; `None` when the stream ended. Cancel-safe: what was read stays
    /// in the buffer.
    async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        use futures_util::StreamExt;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = if name.trim() == "batch" {
                            "batch"
                        } else {
                            "other"
                        };
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if event == "batch" && !data.is_empty() {
                    return Ok(Some(
                        serde_json::from_str(&data).context("an event that is not a batch")?,
                    ));
                }
            }
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk.context("the event stream broke")?;
                    self.buf.push_str(&String::from_utf8_lossy(&chunk));
                }
                None => return Ok(None),
            }
        }
    }
}

/// Follows the batch until it reaches a final status: from its event stream when the server
/// offers one (progress arrives as it happens, one connection instead of a request a second),
/// else by polling — also when the stream breaks, until it can be opened again. Network
/// hiccups and 5xx answers are retried (the batch runs on the server regardless); Ctrl-C
/// detaches or, with `cancel_on_interrupt`, cancels and keeps watching until the cancel lands
/// (a second Ctrl-C detaches).
pub async fn wait(client: &Client, id: &str, opts: &WaitOptions) -> anyhow::Result<Waited> {
    let mut view = Progress::new(id);
    let mut cancel_pending = opts.cancel_on_interrupt;
    let mut last: Option<Value> = None;
    let mut failures = 0u32;
    // Registered before the first request, so a Ctrl-C at any point of the wait is ours.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let mut events = if opts.events {
        Events::open(client, id).await
    } else {
        None
    };
    let mut reopen_at = Instant::now() + REOPEN_EVENTS;
    let mut first_poll = true;
    loop {
        let streaming = events.is_some();
        let pause = poll_pause(failures, first_poll, opts.poll);
        let next = async {
            match events.as_mut() {
                Some(stream) => stream.next().await,
                None => {
                    tokio::time::sleep(pause).await;
                    client.get_batch(id).await.map(Some)
                }
            }
        };
        tokio::select! {
            got = next => match got {
                Ok(Some(batch)) => {
                    failures = 0;
                    first_poll = streaming;
                    view.update(&batch);
                    if is_terminal(&batch) {
                        view.finish();
                        return Ok(Waited::Finished(batch));
                    }
                    last = Some(batch);
                }
                // The stream ended or broke before a final status: poll (at once), and try
                // the stream again in a while.
                Ok(None) | Err(_) if streaming => {
                    events = None;
                    first_poll = true;
                    reopen_at = Instant::now() + REOPEN_EVENTS;
                }
                Ok(None) => {}
                Err(e) if is_transient(&e) && failures < 60 => {
                    failures += 1;
                    view.note(&format!("{e:#}; retrying"));
                }
                Err(e) => {
                    view.finish();
                    return Err(e);
                }
            },
            _ = sigint.recv() => {
                if cancel_pending {
                    cancel_pending = false;
                    let b = client.cancel_batch(id).await?;
                    view.note(&format!("Ctrl-C: cancel requested; batch {id} is {}", text(&b["status"])));
                    // A second Ctrl-C detaches.
                    continue;
                }
                view.finish();
                let batch = match last { Some(b) => b, None => client.get_batch(id).await? };
                return Ok(Waited::Detached(batch));
            }
        }
        if events.is_none() && opts.events && failures == 0 && Instant::now() >= reopen_at {
            events = Events::open(client, id).await;
            reopen_at = Instant::now() + REOPEN_EVENTS;
        }
    }
}

/// How long a poll waits: longer after each failure in a row, not at all for the first one.
fn poll_pause(failures: u32, first_poll: bool, poll: Duration) -> Duration {
    if failures > 0 {
        Duration::from_millis(500 * u64::from(failures.min(10)))
    } else if first_poll {
        Duration::ZERO
    } else {
        poll
    }
}

/// How long after an event stream broke (or was refused) the next one is tried.
const REOPEN_EVENTS: Duration = Duration::from_secs(10);

fn text(v: &Value) -> String {
    output::text(v)
}

/// A progress bar on a terminal; one line per status change otherwise.
struct Progress {
    id: String,
    bar: Option<ProgressBar>,
    last_status: String,
    /// When the lines started being counted, and how many were done then: the rate and ETA
    /// count from there, not from the validation phase.
    origin: Option<(Instant, u64)>,
}

impl Progress {
    fn new(id: &str) -> Self {
        let bar = output::stderr_is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("valid template"),
            );
            bar.set_prefix(id.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            id: id.to_owned(),
            bar,
            last_status: String::new(),
            origin: None,
        }
    }

    fn update(&mut self, batch: &Value) {
        let status = batch["status"].as_str().unwrap_or("?").to_owned();
        let c = &batch["request_counts"];
        let total = c["total"].as_u64().unwrap_or(0);
        let failed = c["failed"].as_u64().unwrap_or(0);
        let done = c["completed"].as_u64().unwrap_or(0) + failed;
        match &self.bar {
            Some(bar) => {
                if total > 0 && bar.length() != Some(total) {
                    bar.set_length(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {prefix} [{bar:30}] {pos}/{len} lines  {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                }
                bar.set_position(done);
                let mut msg = status.clone();
                if failed > 0 {
                    msg.push_str(&format!(", {failed} failed"));
                }
                if total > 0 {
                    let (since, base) = *self.origin.get_or_insert((Instant::now(), done));
                    let secs = since.elapsed().as_secs_f64();
                    if done > base && secs >= 1.0 {
                        let rate = (done - base) as f64 / secs;
                        let eta = (total.saturating_sub(done)) as f64 / rate;
                        msg.push_str(&format!(
                            "  {rate:.1} lines/s  ETA {}",
                            output::duration(eta.ceil() as i64)
                        ));
                    }
                }
                bar.set_message(msg);
            }
            None => {
                if status != self.last_status {
                    eprintln!(
                        "{}: {status} ({done}/{total} lines, {failed} failed)",
                        self.id
                    );
                }
            }
        }
        self.last_status = status;
    }

    fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            // Stop the ticker first, or it may draw the bar again after the clear.
            bar.disable_steady_tick();
            bar.finish_and_clear();
        }
    }
}

/// Where the input order comes from.
pub enum InputOrder<'a> {
    /// The local file that was submitted.
    Local(&'a std::path::Path),
    /// The batch's input file, read back from the server.
    Server,
}

/// What the result files held.
#[derive(Default)]
pub struct Outcome {
    pub succeeded: usize,
    pub failed: usize,
    /// "HTTP 400" / "upstream_timeout" → (count, first example).
    pub failures: Vec<(String, usize, String)>,
}

/// Writes every result line (output and error files merged, each line as the server wrote it)
/// in the order of the input file's `custom_id`s.
pub async fn write_results(
    client: &Client,
    batch: &Value,
    order: InputOrder<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let mut results: HashMap<String, String> = HashMap::new();
    let mut outcome = Outcome::default();
    let mut kinds: HashMap<String, (usize, String)> = HashMap::new();
    for (field, is_error) in [("output_file_id", false), ("error_file_id", true)] {
        let Some(file_id) = batch[field].as_str() else {
            continue;
        };
        let text = client.text(file_id).await?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("a line of {file_id} is not JSON"))?;
            let custom_id = output::text(&v["custom_id"]);
            if is_error {
                outcome.failed += 1;
                let (kind, message) = failure_kind(&v);
                let entry = kinds
                    .entry(kind)
                    .or_insert((0, format!("{custom_id}: {message}")));
                entry.0 += 1;
            } else {
                outcome.succeeded += 1;
            }
            results.insert(custom_id, line.to_owned());
        }
    }
    let input: Box<dyn BufRead> = match order {
        InputOrder::Local(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        InputOrder::Server => {
            let id = batch["input_file_id"].as_str().unwrap_or_default();
            Box::new(std::io::Cursor::new(client.text(id).await?.into_bytes()))
        }
    };
    for line in input.lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(result) = v["custom_id"].as_str().and_then(|id| results.remove(id)) {
            writeln!(out, "{result}")?;
        }
    }
    // Anything the input no longer names (it cannot happen with an unchanged input) is kept.
    let mut rest: Vec<_> = results.into_iter().collect();
    rest.sort();
    for (_, line) in rest {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    let mut failures: Vec<_> = kinds.into_iter().map(|(k, (n, ex))| (k, n, ex)).collect();
    failures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    outcome.failures = failures;
    Ok(outcome)
}

/// An error line's class and message: the upstream's status, or the error code when no
/// response came back.
fn failure_kind(line: &Value) -> (String, String) {
    let response = &line["response"];
    if let Some(status) = response["status_code"].as_i64() {
        let body = &response["body"];
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        return (format!("HTTP {status}"), message);
    }
    (
        output::text(&line["error"]["code"]),
        output::text(&line["error"]["message"]),
    )
}

/// Prints what happened to stderr; returns the exit code (0 only if every line succeeded).
pub fn report(
    batch: &Value,
    outcome: Option<&Outcome>,
    results_at: Option<&str>,
    elapsed: Option<Duration>,
) -> i32 {
    let id = output::text(&batch["id"]);
    let status = batch["status"].as_str().unwrap_or("?");
    let c = &batch["request_counts"];
    let failed = c["failed"].as_i64().unwrap_or(0);
    let took = elapsed
        .map(|d| format!(" in {}", output::duration(d.as_secs() as i64)))
        .unwrap_or_default();
    eprintln!(
        "batch {id} {status}{took}: {} of {} lines succeeded, {failed} failed",
        c["completed"].as_i64().unwrap_or(0),
        c["total"].as_i64().unwrap_or(0),
    );
    let errors = batch["errors"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !errors.is_empty() {
        eprintln!("the input file was rejected ({} problems):", errors.len());
        for e in errors.iter().take(20) {
            eprintln!("  {}", output::validation_error(e));
        }
        if errors.len() > 20 {
            eprintln!(
                "  … and {} more (openbatch batches get {id} --json)",
                errors.len() - 20
            );
        }
    }
    if let Some(o) = outcome {
        for (kind, n, example) in o.failures.iter().take(10) {
            eprintln!("  {n} × {kind}, e.g. {example}");
        }
    }
    if let Some(path) = results_at {
        eprintln!("results (output and error lines, in input order): {path}");
    }
    if status == "completed" && failed == 0 && outcome.is_none_or(|o| o.failed == 0) {
        0
    } else {
        EXIT_BATCH_FAILED
    }
}

/// Waits for the batch, then writes results to `output` (if any) and reports. The shared tail
/// of `submit --wait` and `batches wait`.
pub async fn wait_and_report(
    client: &Client,
    id: &str,
    opts: &WaitOptions,
    output_path: Option<&std::path::Path>,
    order: InputOrder<'_>,
    json: bool,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let batch = match wait(client, id, opts).await? {
        Waited::Finished(b) => b,
        Waited::Detached(b) => {
            if json {
                output::print_json(&b);
            }
            eprintln!(
                "detached from batch {id} ({}); it keeps running on the server.\n\
                 re-attach with: openbatch batches wait {id}",
                output::text(&b["status"])
            );
            return Ok(EXIT_DETACHED);
        }
    };
    let outcome = match output_path {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            );
            Some(write_results(client, &batch, order, &mut file).await?)
        }
        None => None,
    };
    if json {
        output::print_json(&batch);
    }
    let shown = output_path.map(|p| p.display().to_string());
    Ok(report(
        &batch,
        outcome.as_ref(),
        shown.as_deref(),
        Some(started.elapsed()),
    ))
}
