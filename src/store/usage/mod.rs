//! Token usage (migrations 0020, 0023): the flushes' insert-only events, folded by the
//! maintainer into per-minute, per-hour and per-day rollups at once (each row naming its
//! (project, endpoint, model, key) by a `usage_combos` id), and read back in buckets for the
//! Usage API from the coarsest rollup each stretch of a report allows.

use sqlx::PgPool;

use crate::domain::unix_now;
use plan::{HOUR, MINUTE};

mod plan;

/// Events folded per run, and old minutes deleted per run: bounded statements.
const FOLD_PER_RUN: i64 = 50_000;
/// How long usage is kept to the minute (`bucket_width=1m`); hours and days are kept for good.
/// OpenAI's Usage API pages 1m buckets a day at a time; a month and a bit covers any month's
/// report.
pub const MINUTE_RETENTION_SECS: i64 = 35 * 24 * 3600;

/// Folds events into minutes, hours and days (and the totals) in one statement, so an event
/// is counted once in each or not yet at all; then deletes minutes past `minute_retention_secs`.
/// Returns the events folded and the minutes deleted.
#[tracing::instrument(skip_all, name = "db.usage.fold")]
pub async fn fold(pool: &PgPool, minute_retention_secs: i64) -> Result<(u64, u64), sqlx::Error> {
    // Names first, in their own statement: the fold's inserts could not see them in its own.
    sqlx::query!(
        "INSERT INTO usage_combos (project_id, endpoint, model, api_key_id)
         SELECT DISTINCT project_id, endpoint, model, coalesce(api_key_id, '')
         FROM (SELECT * FROM usage_events ORDER BY seq LIMIT $1) e
         ON CONFLICT DO NOTHING",
        FOLD_PER_RUN,
    )
    .execute(pool)
    .await?;
    // Events named since (a flush that committed in between) wait for the next run.
    let events = sqlx::query_scalar!(
        r#"WITH moved AS (
            DELETE FROM usage_events e USING usage_combos c
            WHERE e.seq IN (SELECT seq FROM usage_events ORDER BY seq LIMIT $1)
              AND (c.project_id, c.endpoint, c.model, c.api_key_id)
                = (e.project_id, e.endpoint, e.model, coalesce(e.api_key_id, ''))
            RETURNING e.*, c.id AS combo
         ), totals AS (
            INSERT INTO usage_totals AS t (project_id, model, requests, input_tokens,
                                           cached_tokens, output_tokens)
            SELECT project_id, model, sum(requests), sum(input_tokens), sum(cached_tokens),
                   sum(output_tokens)
            FROM moved GROUP BY 1, 2
            ON CONFLICT (project_id, model) DO UPDATE SET
               requests = t.requests + excluded.requests,
               input_tokens = t.input_tokens + excluded.input_tokens,
               cached_tokens = t.cached_tokens + excluded.cached_tokens,
               output_tokens = t.output_tokens + excluded.output_tokens
         ), minutes AS (
            INSERT INTO usage_minutes AS r (start, combo, requests, input_tokens, cached_tokens,
                                      output_tokens)
            SELECT at - at % 60, combo, sum(requests), sum(input_tokens), sum(cached_tokens),
                   sum(output_tokens)
            FROM moved GROUP BY 1, 2
            ON CONFLICT (start, combo) DO UPDATE SET
               requests = r.requests + excluded.requests,
               input_tokens = r.input_tokens + excluded.input_tokens,
               cached_tokens = r.cached_tokens + excluded.cached_tokens,
               output_tokens = r.output_tokens + excluded.output_tokens
         ), hours AS (
            INSERT INTO usage_hours AS r (start, combo, requests, input_tokens, cached_tokens,
                                      output_tokens)
            SELECT at - at % 3600, combo, sum(requests), sum(input_tokens), sum(cached_tokens),
                   sum(output_tokens)
            FROM moved GROUP BY 1, 2
            ON CONFLICT (start, combo) DO UPDATE SET
               requests = r.requests + excluded.requests,
               input_tokens = r.input_tokens + excluded.input_tokens,
               cached_tokens = r.cached_tokens + excluded.cached_tokens,
               output_tokens = r.output_tokens + excluded.output_tokens
         ), days AS (
            INSERT INTO usage_days AS r (start, combo, requests, input_tokens, cached_tokens,
                                      output_tokens)
            SELECT at - at % 86400, combo, sum(requests), sum(input_tokens), sum(cached_tokens),
                   sum(output_tokens)
            FROM moved GROUP BY 1, 2
            ON CONFLICT (start, combo) DO UPDATE SET
               requests = r.requests + excluded.requests,
               input_tokens = r.input_tokens + excluded.input_tokens,
               cached_tokens = r.cached_tokens + excluded.cached_tokens,
               output_tokens = r.output_tokens + excluded.output_tokens
         )
         SELECT count(*) AS "n!" FROM moved"#,
        FOLD_PER_RUN,
    )
    .fetch_one(pool)
    .await?;
    let minutes = sqlx::query!(
        "DELETE FROM usage_minutes WHERE ctid IN (
            SELECT ctid FROM usage_minutes WHERE start < unix_now() - $2 LIMIT $1)",
        FOLD_PER_RUN,
        minute_retention_secs,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((events as u64, minutes))
}

/// What to read: `[from, to)`, in buckets of `width` seconds aligned to UTC (the first starting
/// at `first`), filtered and grouped as asked (`None`: no filter).
pub struct UsageRead<'a> {
    pub first: i64,
    pub from: i64,
    pub to: i64,
    pub width: i64,
    /// `to` is now (no `end_time` given, and the last page): nothing newer can exist.
    pub open_end: bool,
    pub endpoints: &'a [&'a str],
    pub projects: Option<&'a [String]>,
    pub models: Option<&'a [String]>,
    pub api_keys: Option<&'a [String]>,
    pub by_project: bool,
    pub by_model: bool,
    pub by_api_key: bool,
}

/// One bucket's sums for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket: i64,
    pub project_id: Option<String>,
    pub model: Option<String>,
    pub api_key_id: Option<String>,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
}

/// A transaction for a report. The planner cannot know how few rows each segment holds: its
/// cost passes `jit_above_cost` (compiling would take longer, ~45 ms, than reading does), and
/// the rows of a long report would be grouped on disk past the default 4 MB.
async fn report_transaction(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "SELECT set_config('jit', 'off', true) AS a, set_config('work_mem', '64MB', true) AS b"
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(tx)
}

/// Where minutes are read from: past the maintainer's cut-off, with an hour's margin for clocks
/// that disagree, on an hour.
fn minutes_from(now: i64) -> i64 {
    let kept = now - MINUTE_RETENTION_SECS + HOUR;
    kept + (HOUR - kept.rem_euclid(HOUR)) % HOUR
}

/// The sums of events not yet folded and of the rollups `plan` picks, by bucket and group.
#[tracing::instrument(skip_all, name = "db.usage.read")]
pub async fn read(pool: &PgPool, q: &UsageRead<'_>) -> Result<Vec<UsageRow>, sqlx::Error> {
    let lo = q.from - q.from.rem_euclid(MINUTE);
    let hi = if q.open_end {
        plan::open_end(q.to, q.width)
    } else {
        q.to
    };
    let seg = plan::Columns::of(&plan::plan(lo, hi, q.width, minutes_from(unix_now())));
    let mut tx = report_transaction(pool).await?;
    let rows = sqlx::query_as!(
        UsageRow,
        r#"WITH seg AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $15::bigint[])
                        s(res, a, b, sign)),
         picked AS (
            SELECT id, project_id, model, api_key_id FROM usage_combos
            WHERE endpoint = ANY($8)
              AND ($9::text[] IS NULL OR project_id = ANY($9))
              AND ($10::text[] IS NULL OR model = ANY($10))
              AND ($14::text[] IS NULL OR api_key_id = ANY($14))
         ),
         rolled AS (
            SELECT seg.sign, r.* FROM seg JOIN usage_minutes r
            ON seg.res = 60 AND r.start >= seg.a AND r.start < seg.b
            UNION ALL
            SELECT seg.sign, r.* FROM seg JOIN usage_hours r
            ON seg.res = 3600 AND r.start >= seg.a AND r.start < seg.b
            UNION ALL
            SELECT seg.sign, r.* FROM seg JOIN usage_days r
            ON seg.res = 86400 AND r.start >= seg.a AND r.start < seg.b
         ),
         rows AS (
            SELECT greatest($6, start - start % $7) AS bucket, p.project_id, p.model,
                   p.api_key_id, sign * requests AS requests, sign * input_tokens AS input_tokens,
                   sign * cached_tokens AS cached_tokens, sign * output_tokens AS output_tokens
            FROM rolled JOIN picked p ON p.id = rolled.combo
            UNION ALL
            SELECT greatest($6, at - at % $7), project_id, model, coalesce(api_key_id, ''),
                   requests, input_tokens, cached_tokens, output_tokens
            FROM usage_events
            WHERE at >= $4 AND at < $5
              AND endpoint = ANY($8)
              AND ($9::text[] IS NULL OR project_id = ANY($9))
              AND ($10::text[] IS NULL OR model = ANY($10))
              AND ($14::text[] IS NULL OR coalesce(api_key_id, '') = ANY($14))
         )
         SELECT bucket AS "bucket!",
                CASE WHEN $11 THEN project_id END AS project_id,
                CASE WHEN $12 THEN model END AS model,
                CASE WHEN $13 THEN nullif(api_key_id, '') END AS api_key_id,
                sum(requests)::bigint AS "requests!", sum(input_tokens)::bigint AS "input_tokens!",
                sum(cached_tokens)::bigint AS "cached_tokens!",
                sum(output_tokens)::bigint AS "output_tokens!"
         FROM rows
         GROUP BY 1, 2, 3, 4
         -- A day less the minutes around the range: a combination used only in those minutes
         -- nets to nothing, and is no result.
         HAVING sum(requests) <> 0
         ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST, 4 NULLS FIRST"#,
        &seg.res,
        &seg.from,
        &seg.to,
        lo,
        hi,
        q.first,
        q.width,
        q.endpoints as &[&str],
        q.projects,
        q.models,
        q.by_project,
        q.by_model,
        q.by_api_key,
        q.api_keys,
        &seg.sign,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Usage since the start per project and model: the folded totals and the events not yet
/// folded. Sorted, so that the counters are set in one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    pub project_id: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
}

#[tracing::instrument(skip_all, name = "db.usage.totals")]
pub async fn totals(pool: &PgPool) -> Result<Vec<UsageTotal>, sqlx::Error> {
    sqlx::query_as!(
        UsageTotal,
        r#"SELECT project_id AS "project_id!", model AS "model!",
                  sum(requests)::bigint AS "requests!", sum(input_tokens)::bigint AS "input_tokens!",
                  sum(cached_tokens)::bigint AS "cached_tokens!",
                  sum(output_tokens)::bigint AS "output_tokens!"
           FROM (SELECT project_id, model, requests, input_tokens, cached_tokens, output_tokens
                 FROM usage_totals
                 UNION ALL
                 SELECT project_id, model, requests, input_tokens, cached_tokens, output_tokens
                 FROM usage_events) u
           GROUP BY 1, 2 ORDER BY 1, 2"#
    )
    .fetch_all(pool)
    .await
}
