//! Claiming a chunk: its lease, then its lines read back from the input file, less those a
//! previous owner already stored.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::TryStreamExt;

use super::{forget, Line, Running};
use crate::engine::upstream::trace_id_for;
use crate::engine::Ctx;
use crate::jsonl::{group, queued, LineSplitter, Piece};
use crate::store::chunks::{self, ClaimedChunk, Group, Held};
use crate::store::content::ContentError;

/// Claims a chunk and reads its lines, skipping those that already have a result (a chunk
/// taken over from a replica that died keeps what that replica stored).
pub(super) async fn claim(ctx: &Arc<Ctx>, except: &[String]) -> anyhow::Result<Option<Vec<Line>>> {
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
            // Back for another try rather than sat on until the lease lapses. Input out of
            // reach (an outage of the bucket or the database) is not a claim that failed.
            let unread = e.downcast_ref::<ContentError>().is_some();
            forget(ctx, &running);
            if let Err(e) = chunks::release_one(&ctx.pool, &running.held, unread).await {
                tracing::warn!(error = %e, "could not hand a chunk back; its lease will lapse");
            }
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
    let done: HashSet<i32> = if c.attempt > 1 {
        let mut done = HashSet::new();
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
    let bytes = ctx
        .content
        .read_range(&at.file_id, at.start(), at.end())
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
