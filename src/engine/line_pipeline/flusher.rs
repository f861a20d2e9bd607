//! The flusher: finished lines' results written in groups, one per chunk, group-commit style.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::limits::{Backlog, Limits, WAIT_FLUSH_BYTES};
use super::{forget, let_go, Running};
use crate::engine::output::Usage;
use crate::engine::Ctx;
use crate::jsonl::group;
use crate::store::chunks::{self, Group};

/// Most results written in one statement.
const MAX_FLUSH: usize = 256;

/// Most result bytes gathered for one statement (one line over it is written alone): keeps a
/// flush's memory and message size bounded whatever the responses weigh.
const MAX_FLUSH_BYTES: usize = 8 << 20;

pub(super) struct Done {
    pub(super) chunk: Arc<Running>,
    pub(super) line: i32,
    pub(super) success: bool,
    pub(super) file_line: String,
    pub(super) usage: Usage,
    /// Freed only once the result is stored, which bounds the work a killed replica can lose
    /// to `2 × max_in_flight` lines (its upstream slot is freed as soon as the answer is in).
    pub(super) _unstored: OwnedSemaphorePermit,
    pub(super) _backlog: Backlog,
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
pub(super) async fn flush(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Done>, limits: Arc<Limits>) {
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
