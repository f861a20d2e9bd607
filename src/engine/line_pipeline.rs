//! The line pipeline of one replica: claim a chunk → execute its lines → write their results in
//! groups, continuously. A free slot is refilled as soon as one line's result is stored, so a
//! slow line never holds back others; a new chunk is claimed when the claimed ones have no line
//! left to start.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, TryStreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::output::{self, Usage};
use super::Ctx;
use crate::domain::{Endpoint, ProjectId};
use crate::engine::upstream::{trace_id_for, traceparent_in, Outcome};
use crate::jsonl::{group, queued, LineSplitter, Piece};
use crate::store::chunks::{self, ClaimedChunk, Group, Held};
use crate::store::files;
use crate::tasks::{sleep_or_cancelled, CancellationToken};

/// Most results written in one statement.
const MAX_FLUSH: usize = 256;
/// Most result bytes gathered for one statement (one line over it is written alone): keeps a
/// flush's memory and message size bounded whatever the responses weigh.
const MAX_FLUSH_BYTES: usize = 8 << 20;
/// Result bytes past which a flush no longer waits for stragglers: a statement that large
/// costs the database little per line already, and waiting would only hold more in memory.
const WAIT_FLUSH_BYTES: usize = 1 << 20;

/// A chunk this replica has claimed and is executing.
pub(super) struct Running {
    pub held: Held,
    project_id: ProjectId,
    endpoint: Endpoint,
    trace_context: Option<String>,
    /// The trace id of upstream calls when tracing is off (`trace_id_for` the batch).
    trace_id: String,
    /// False once nothing more of it may start: its batch is being cancelled, or the claim was
    /// lost (taken over, or closed by the batch's cancellation or expiry). Lines already at the
    /// upstream still finish (and are written only if the claim holds); lines waiting for one
    /// (every endpoint down, paused or full) or for a retry stop waiting (`stopped`).
    live: AtomicBool,
    /// Wakes the lines waiting in `Upstreams::execute` when `live` turns false.
    stopped: tokio::sync::Notify,
    /// Its lines not yet stored or dropped; at zero the chunk is let go.
    outstanding: AtomicUsize,
}

impl Running {
    pub fn key(&self) -> (String, i32) {
        (self.held.batch_id.clone(), self.held.idx)
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.live.store(false, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    /// Resolves once the chunk is stopped.
    async fn until_stopped(&self) {
        loop {
            let notified = self.stopped.notified();
            tokio::pin!(notified);
            // Registered before the check: a `stop` in between still wakes us.
            notified.as_mut().enable();
            if !self.is_live() {
                return;
            }
            notified.await;
        }
    }
}

struct Line {
    chunk: Arc<Running>,
    line: i32,
    custom_id: String,
    model: String,
    /// Shared, so that no attempt copies it.
    body: bytes::Bytes,
}

struct Done {
    chunk: Arc<Running>,
    line: i32,
    success: bool,
    file_line: String,
    usage: Usage,
    /// Freed only once the result is stored, which bounds the work a killed replica can lose
    /// to `2 × max_in_flight` lines (its upstream slot is freed as soon as the answer is in).
    _unstored: OwnedSemaphorePermit,
    _backlog: Backlog,
}

/// The limits of one replica's pipeline: `slots`, lines at the upstream (`max_in_flight`), and
/// `unstored`, lines started and not yet stored (twice that). A finished line gives its slot
/// back at once, so a flush that waits for stragglers (`flush_interval_ms`) costs the upstream
/// nothing; `unstored` keeps what a crash can lose bounded, and stops claims while the database
/// cannot take results. No line starts while `WAIT_FLUSH_BYTES` of results wait to be stored,
/// so large responses are held no more than when a slot was held until its result was stored.
struct Limits {
    slots: Arc<Semaphore>,
    unstored: Arc<Semaphore>,
    max_in_flight: usize,
    /// Bytes of finished lines' results not yet stored.
    backlog: AtomicUsize,
    stored: tokio::sync::Notify,
}

impl Limits {
    fn new(max_in_flight: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            unstored: Arc::new(Semaphore::new(2 * max_in_flight)),
            max_in_flight,
            backlog: AtomicUsize::new(0),
            stored: tokio::sync::Notify::new(),
        }
    }

    /// No line is at the upstream: nothing more can finish until another starts.
    fn idle(&self) -> bool {
        self.slots.available_permits() == self.max_in_flight
    }

    /// Waits until less than `WAIT_FLUSH_BYTES` of results wait to be stored.
    async fn backlog_below_limit(&self) {
        // `notify_one` keeps a permit when nobody waits yet: no wake-up is lost between the
        // check and the wait.
        while self.backlog.load(Ordering::Relaxed) >= WAIT_FLUSH_BYTES {
            self.stored.notified().await;
        }
    }

    fn backlog(self: &Arc<Self>, bytes: usize) -> Backlog {
        self.backlog.fetch_add(bytes, Ordering::Relaxed);
        Backlog {
            limits: self.clone(),
            bytes,
        }
    }
}

/// A finished line's share of `Limits::backlog`, given back when its result is stored (or
/// dropped).
struct Backlog {
    limits: Arc<Limits>,
    bytes: usize,
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.limits.backlog.fetch_sub(self.bytes, Ordering::Relaxed);
        self.limits.stored.notify_one();
    }
}

pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let limits = Arc::new(Limits::new(ctx.settings.max_in_flight));
    let (tx, rx) = mpsc::channel::<Done>(2 * ctx.settings.max_in_flight);
    let flusher = tokio::spawn(flush(ctx.clone(), rx, limits.clone()));
    dispatch(ctx, stop, tx, limits).await;
    // The flusher ends when the last in-flight line has sent its result.
    let _ = flusher.await;
}

/// Lines waiting for a slot, one queue per claimed chunk, served round robin: a chunk claimed
/// later (another project's) does not wait behind all the lines of an earlier one.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<VecDeque<Line>>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn push(&mut self, lines: Vec<Line>) {
        if !lines.is_empty() {
            self.chunks.push_back(lines.into());
        }
    }

    fn next(&mut self) -> Option<Line> {
        let mut front = self.chunks.pop_front()?;
        let line = front.pop_front();
        if !front.is_empty() {
            self.chunks.push_back(front);
        }
        line
    }

    /// The projects whose lines are waiting here.
    fn projects(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .chunks
            .iter()
            .filter_map(|q| q.front().map(|l| l.chunk.project_id.as_str().to_owned()))
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Takes out the waiting lines of chunks that may no longer run, with how many there were.
    fn drop_stopped(&mut self) -> Vec<(Arc<Running>, usize)> {
        let mut dropped = Vec::new();
        self.chunks.retain(|q| match q.front() {
            Some(l) if !l.chunk.is_live() => {
                dropped.push((l.chunk.clone(), q.len()));
                false
            }
            _ => true,
        });
        dropped
    }
}

async fn dispatch(
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    results: mpsc::Sender<Done>,
    limits: Arc<Limits>,
) {
    let poll = Duration::from_millis(ctx.settings.poll_interval_ms);
    let mut queue = Queue::default();
    let mut last_claim = Instant::now();
    let mut failures = 0_u32;
    loop {
        let slot = tokio::select! {
            p = take(&limits) => p,
            _ = stop.cancelled() => return,
        };
        if stop.is_cancelled() {
            return;
        }
        for (chunk, n) in queue.drop_stopped() {
            let_go(&ctx, &chunk, n).await;
        }
        // Idle, claim at once; busy, look now and then for another project's work, so that a
        // small batch never waits for a big one's lines to drain.
        if queue.is_empty() || last_claim.elapsed() >= poll {
            last_claim = Instant::now();
            match claim(&ctx, &queue.projects()).await {
                Ok(Some(lines)) => {
                    failures = 0;
                    queue.push(lines);
                }
                Ok(None) if queue.is_empty() => {
                    drop(slot);
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = ctx.wake_lines.notified() => {}
                        _ = stop.cancelled() => return,
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    failures += 1;
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "claiming a chunk failed; retrying"
                    );
                    if queue.is_empty() {
                        drop(slot);
                        let backoff = poll * 2_u32.saturating_pow(failures.min(5));
                        if sleep_or_cancelled(&stop, backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        }
        match queue.next() {
            Some(line) => {
                let (slot, unstored) = slot;
                tokio::select! {
                    _ = limits.backlog_below_limit() => {}
                    _ = stop.cancelled() => return,
                }
                let permits = (slot, unstored, limits.clone());
                tokio::spawn(execute_line(ctx.clone(), line, permits, results.clone()));
            }
            // A claimed chunk whose lines all had results already.
            None => drop(slot),
        }
    }
}

/// A permit to start a line: room among the unstored lines, then an upstream slot.
async fn take(limits: &Limits) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
    let unstored = limits.unstored.clone().acquire_owned().await;
    let slot = limits.slots.clone().acquire_owned().await;
    (slot.expect("never closed"), unstored.expect("never closed"))
}

/// Claims a chunk and reads its lines, skipping those that already have a result (a chunk
/// taken over from a replica that died keeps what that replica stored).
async fn claim(ctx: &Arc<Ctx>, except: &[String]) -> anyhow::Result<Option<Vec<Line>>> {
    let Some(c) = chunks::claim(&ctx.pool, &ctx.owner, ctx.settings.lease_secs, except).await?
    else {
        return Ok(None);
    };
    if c.attempt > 1 {
        crate::metrics::get().lease_takeovers.inc();
    }
    if c.idle_claims > ctx.settings.max_idle_claims as i32 {
        // Every claim since the last stored result ended without one: whatever kills or wedges
        // the replicas running this chunk would take the next one down too. Its remaining
        // lines go to the error file instead (see `finalize`).
        tracing::error!(batch_id = %c.batch_id, chunk = c.idx, claims = c.idle_claims - 1,
                        "giving a chunk up: its claims keep ending without a result");
        let held = Held {
            batch_id: c.batch_id.as_str().to_owned(),
            idx: c.idx,
            attempt: c.attempt,
        };
        chunks::give_up(&ctx.pool, &held).await?;
        ctx.wake_jobs.notify_one();
        return Ok(Some(Vec::new()));
    }
    let running = Arc::new(Running {
        held: Held {
            batch_id: c.batch_id.as_str().to_owned(),
            idx: c.idx,
            attempt: c.attempt,
        },
        project_id: c.project_id.clone(),
        endpoint: c.endpoint,
        trace_context: c.trace_context.clone(),
        trace_id: trace_id_for(c.batch_id.as_str()),
        live: AtomicBool::new(true),
        stopped: tokio::sync::Notify::new(),
        outstanding: AtomicUsize::new(0),
    });
    ctx.held
        .lock()
        .expect("not poisoned")
        .insert(running.key(), running.clone());
    let lines = match read_lines(ctx, &c, &running).await {
        Ok(lines) => lines,
        Err(e) => {
            // Hand it back for another try rather than sit on it until the lease lapses.
            let_go(ctx, &running, 0).await;
            return Err(e);
        }
    };
    running.outstanding.store(lines.len(), Ordering::Relaxed);
    if lines.is_empty() {
        // Every line already has its result: an empty group marks the chunk done.
        let group = Group {
            batch_id: running.held.batch_id.clone(),
            idx: c.idx,
            attempt: c.attempt,
            ..Group::default()
        };
        chunks::flush(&ctx.pool, &[group]).await?;
        forget(ctx, &running);
        ctx.wake_jobs.notify_one();
    }
    Ok(Some(lines))
}

async fn read_lines(
    ctx: &Ctx,
    c: &ClaimedChunk,
    running: &Arc<Running>,
) -> anyhow::Result<Vec<Line>> {
    let done: std::collections::HashSet<i32> = if c.attempt > 1 {
        let mut done = std::collections::HashSet::new();
        let mut groups = chunks::results(&ctx.pool, &c.batch_id, c.idx);
        while let Some((_, group)) = groups.try_next().await? {
            for stored in group::decode(&group) {
                done.insert(stored?.line);
            }
        }
        done
    } else {
        Default::default()
    };
    let at = &c.lines;
    let bytes = files::read_range(&ctx.pool, &at.file_id, at.start(), at.end())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the content of input file {} is missing", at.file_id))?;
    let mut lines = Vec::with_capacity(at.line_count as usize);
    let mut ordinal = at.first_line;
    let mut bad = None;
    let mut splitter = LineSplitter::default();
    let mut take = |piece: Piece<'_>| {
        // Never `Err`: see `LineSplitter::default`.
        let raw = piece.unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let line = ordinal;
        ordinal += 1;
        if done.contains(&line) {
            return;
        }
        // Validation accepted every line already.
        match queued(raw) {
            Ok(v) => lines.push(Line {
                chunk: running.clone(),
                line,
                custom_id: v.custom_id,
                model: v.model,
                body: v.body.into(),
            }),
            Err(e) => bad = Some(format!("line {}: {e}", line + 1)),
        }
    };
    splitter.feed(&bytes, &mut take);
    splitter.finish(&mut take);
    if let Some(message) = bad {
        anyhow::bail!("a validated line no longer passes validation: {message}");
    }
    anyhow::ensure!(
        ordinal - at.first_line == at.line_count,
        "chunk {} of batch {} holds {} lines, not {}",
        c.idx,
        c.batch_id,
        ordinal - at.first_line,
        at.line_count
    );
    Ok(lines)
}

/// Stops tracking a chunk here.
fn forget(ctx: &Ctx, running: &Running) {
    ctx.held
        .lock()
        .expect("not poisoned")
        .remove(&running.key());
}

/// Accounts for `n` lines that will not be stored; once none is outstanding, a chunk that is
/// not finished is handed back at once (cancelled batch, or a failure reading it).
async fn let_go(ctx: &Ctx, running: &Arc<Running>, n: usize) {
    let left = running.outstanding.fetch_sub(n, Ordering::Relaxed) - n;
    if left == 0 {
        forget(ctx, running);
        if let Err(e) = chunks::release_one(&ctx.pool, &running.held).await {
            tracing::warn!(error = %e, "could not hand a chunk back; its lease will lapse");
        }
    }
}

async fn execute_line(
    ctx: Arc<Ctx>,
    line: Line,
    (slot, unstored, limits): (OwnedSemaphorePermit, OwnedSemaphorePermit, Arc<Limits>),
    results: mpsc::Sender<Done>,
) {
    let batch_id = line.chunk.held.batch_id.as_str();
    let span = tracing::info_span!(
        "batch_line",
        otel.kind = "internal",
        batch_id = %batch_id,
        line = line.line,
        model = %line.model,
    );
    // The line's trace is its own; a link leads back to the request that created the batch.
    if let Some(tp) = &line.chunk.trace_context {
        crate::telemetry::link_to(&span, tp);
    }
    let outcome = contain_panic(
        async {
            // Upstream calls carry this trace when tracing is on, else one trace id per batch.
            let traceparent = crate::telemetry::traceparent(&tracing::Span::current())
                .unwrap_or_else(|| traceparent_in(&line.chunk.trace_id));
            ctx.upstreams
                .execute(
                    line.chunk.endpoint.as_str(),
                    &line.model,
                    &line.body,
                    &traceparent,
                    line.chunk.until_stopped(),
                )
                .await
        }
        .instrument(span),
    )
    .await;
    drop(slot);
    let Some(outcome) = outcome else {
        // Its batch stopped while it waited for the upstream: it never ran, and its batch's
        // end (cancelled, expired) or the chunk's next owner accounts for it.
        drop(unstored);
        let_go(&ctx, &line.chunk, 1).await;
        return;
    };
    let success = outcome.is_success();
    crate::metrics::get()
        .lines
        .with_label_values(&[if success { "succeeded" } else { "failed" }])
        .inc();
    let mut usage = Usage::default();
    if let (true, Outcome::Response { body, .. }) = (success, &outcome) {
        usage.add(body);
    }
    let file_line = output::render(batch_id, line.line, &line.custom_id, &outcome);
    let backlog = limits.backlog(file_line.len());
    let _ = results
        .send(Done {
            chunk: line.chunk,
            line: line.line,
            success,
            file_line,
            usage,
            _unstored: unstored,
            _backlog: backlog,
        })
        .await;
}

/// A line whose execution panics (a bug) still ends with a result, a failure: otherwise its
/// chunk would wait for it forever, kept alive by the heartbeat, until the batch expired.
async fn contain_panic(
    work: impl std::future::Future<Output = Option<Outcome>>,
) -> Option<Outcome> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Some(Outcome::Failure {
            code: "internal_error",
            message: "OpenBatch failed while executing this request.".to_owned(),
        }),
    }
}

/// Writes results in groups, group-commit style: each write takes everything that finished
/// while the previous one ran (up to `MAX_FLUSH`), one group per chunk, so groups grow with
/// load. `flush_interval_ms` adds a wait of up to that long for stragglers while lines are at
/// the upstream (none are: nothing can arrive, so a lone line is written at once), which makes
/// groups several times larger — a fraction of the database's CPU per line — at no cost to the
/// upstream, since a finished line's slot is already free. The wait ends early once
/// `max_in_flight` results are gathered: past that, the lines waiting to be stored would use up
/// the `unstored` budget and hold back new lines. A failed write (database restarting)
/// is retried with the results kept; the unstored lines' permits stay taken meanwhile, so the
/// replica stops claiming instead of piling up work.
async fn flush(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Done>, limits: Arc<Limits>) {
    let window = Duration::from_millis(ctx.settings.flush_interval_ms);
    let mut buf: Vec<Done> = Vec::with_capacity(MAX_FLUSH);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.file_line.len();
        buf.push(first);
        let deadline = Instant::now() + window;
        while buf.len() < MAX_FLUSH && bytes < MAX_FLUSH_BYTES {
            let next = match rx.try_recv() {
                Ok(d) => d,
                Err(_)
                    if window.is_zero()
                        || bytes >= WAIT_FLUSH_BYTES
                        || buf.len() >= limits.max_in_flight
                        || limits.idle() =>
                {
                    break
                }
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(d)) => d,
                    Ok(None) | Err(_) => break,
                },
            };
            bytes += next.file_line.len();
            buf.push(next);
        }
        let (groups, members) = group(&buf);
        let flushed = store(&ctx, &groups, &members).await;
        let mut any_done = false;
        for (g, chunk) in groups.iter().zip(&members) {
            let n = (g.completed + g.failed) as usize;
            match flushed
                .iter()
                .find(|f| f.batch_id.as_str() == g.batch_id && f.idx == g.idx)
            {
                Some(f) if f.done => {
                    forget(&ctx, chunk);
                    any_done = true;
                }
                Some(_) => {
                    chunk.outstanding.fetch_sub(n, Ordering::Relaxed);
                    if !chunk.is_live() && chunk.outstanding.load(Ordering::Relaxed) == 0 {
                        let_go(&ctx, chunk, 0).await;
                    }
                }
                None => {
                    // The claim was lost (taken over, or closed by a cancellation or expiry):
                    // these results are not ours to write, and the rest of the chunk is not ours
                    // to run.
                    tracing::info!(batch_id = %g.batch_id, chunk = g.idx, lines = n,
                                   "dropped results of a chunk no longer held");
                    chunk.stop();
                    forget(&ctx, chunk);
                }
            }
        }
        buf.clear();
        if any_done {
            ctx.wake_jobs.notify_one();
        }
    }
}

/// Writes the groups, retrying while the database is unreachable or restarting (the lines'
/// permits stay taken meanwhile). A refusal that would recur on every retry (a limit, a constraint, a
/// data exception) must not hold the permits forever: each group is then tried alone, and a
/// chunk whose results cannot be stored is given up — its unstored lines go to the error file
/// at finalization — instead of wedging the replica.
async fn store(ctx: &Ctx, groups: &[Group], members: &[Arc<Running>]) -> Vec<chunks::Flushed> {
    let mut delay = Duration::from_millis(100);
    loop {
        match chunks::flush(&ctx.pool, groups).await {
            Ok(f) => return f,
            Err(e) if is_permanent(&e) => {
                tracing::error!(error = %e, groups = groups.len(), "the database refused results");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, groups = groups.len(), "storing results failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut flushed = Vec::new();
    for (g, chunk) in groups.iter().zip(members) {
        if groups.len() > 1 {
            match chunks::flush(&ctx.pool, std::slice::from_ref(g)).await {
                Ok(f) => {
                    flushed.extend(f);
                    continue;
                }
                Err(e) if !is_permanent(&e) => {
                    // Unreachable again: these results are lost with the claim, which lapses
                    // and is run again elsewhere, as after a crash.
                    tracing::warn!(error = %e, "storing results failed");
                    continue;
                }
                Err(_) => {}
            }
        }
        tracing::error!(batch_id = %g.batch_id, chunk = g.idx,
                        "giving up a chunk whose results the database refuses");
        if let Err(e) = chunks::give_up(&ctx.pool, &chunk.held).await {
            tracing::warn!(error = %e, "could not give the chunk up; its lease will lapse");
        }
    }
    // The given-up chunks are missing from the answer: the caller stops and forgets them.
    flushed
}

/// A refusal by PostgreSQL that the same statement would meet again.
fn is_permanent(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_)) && !crate::error::is_transient(e)
}

/// One group per chunk, in the order the chunks first appear.
fn group(buf: &[Done]) -> (Vec<Group>, Vec<Arc<Running>>) {
    let mut index: HashMap<(&str, i32, i32), usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut members: Vec<Arc<Running>> = Vec::new();
    let mut usage: Vec<Usage> = Vec::new();
    for d in buf {
        let h = &d.chunk.held;
        let i = *index
            .entry((h.batch_id.as_str(), h.idx, h.attempt))
            .or_insert_with(|| {
                groups.push(Group {
                    batch_id: h.batch_id.clone(),
                    idx: h.idx,
                    attempt: h.attempt,
                    ..Group::default()
                });
                members.push(d.chunk.clone());
                usage.push(Usage::default());
                groups.len() - 1
            });
        let g = &mut groups[i];
        if d.success {
            g.completed += 1;
            usage[i].merge(d.usage);
        } else {
            g.failed += 1;
        }
        group::encode(&mut g.lines, d.line, d.success, &d.file_line);
    }
    for (g, u) in groups.iter_mut().zip(usage) {
        g.usage = u.to_array();
    }
    (groups, members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_line_still_ends_with_a_failure() {
        let outcome = contain_panic(async { panic!("a bug") }).await;
        assert!(
            matches!(
                outcome,
                Some(Outcome::Failure {
                    code: "internal_error",
                    ..
                })
            ),
            "{outcome:?}"
        );
        let ok = contain_panic(async {
            Some(Outcome::Failure {
                code: "x",
                message: String::new(),
            })
        })
        .await;
        assert!(matches!(ok, Some(Outcome::Failure { code: "x", .. })));
    }
}
