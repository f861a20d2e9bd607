//! Token usage (migration 0020): the flushes' insert-only events, folded by the maintainer into
//! per-minute and then per-hour rollups, and read back in buckets for the Usage API.

use sqlx::PgPool;

/// Events folded per run, and minutes folded into hours per run: bounded statements.
const FOLD_PER_RUN: i64 = 50_000;

/// Folds events into minutes, and minutes older than `minute_retention_secs` into hours, each
/// in one statement (an event or a minute is deleted and added exactly once). Returns the
/// minute rows and the hour rows written.
#[tracing::instrument(skip_all, name = "db.usage.fold")]
pub async fn fold(pool: &PgPool, minute_retention_secs: i64) -> Result<(u64, u64), sqlx::Error> {
    let events = sqlx::query!(
        "WITH moved AS (
            DELETE FROM usage_events WHERE seq IN (
                SELECT seq FROM usage_events ORDER BY seq LIMIT $1)
            RETURNING *
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
         )
         INSERT INTO usage_minutes AS m (start, project_id, endpoint, model, api_key_id, requests,
                                         input_tokens, cached_tokens, output_tokens)
         SELECT at - at % 60, project_id, endpoint, model, coalesce(api_key_id, ''),
                sum(requests), sum(input_tokens), sum(cached_tokens), sum(output_tokens)
         FROM moved GROUP BY 1, 2, 3, 4, 5
         ON CONFLICT (start, project_id, endpoint, model, api_key_id) DO UPDATE SET
            requests = m.requests + excluded.requests,
            input_tokens = m.input_tokens + excluded.input_tokens,
            cached_tokens = m.cached_tokens + excluded.cached_tokens,
            output_tokens = m.output_tokens + excluded.output_tokens",
        FOLD_PER_RUN,
    )
    .execute(pool)
    .await?
    .rows_affected();
    let minutes = sqlx::query!(
        "WITH moved AS (
            DELETE FROM usage_minutes WHERE ctid IN (
                SELECT ctid FROM usage_minutes WHERE start < unix_now() - $2 LIMIT $1)
            RETURNING *
         )
         INSERT INTO usage_hours AS h (start, project_id, endpoint, model, api_key_id, requests,
                                       input_tokens, cached_tokens, output_tokens)
         SELECT start - start % 3600, project_id, endpoint, model, api_key_id,
                sum(requests), sum(input_tokens), sum(cached_tokens), sum(output_tokens)
         FROM moved GROUP BY 1, 2, 3, 4, 5
         ON CONFLICT (start, project_id, endpoint, model, api_key_id) DO UPDATE SET
            requests = h.requests + excluded.requests,
            input_tokens = h.input_tokens + excluded.input_tokens,
            cached_tokens = h.cached_tokens + excluded.cached_tokens,
            output_tokens = h.output_tokens + excluded.output_tokens",
        FOLD_PER_RUN,
        minute_retention_secs,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok((events, minutes))
}

/// What to read: `[from, to)`, in buckets of `width` seconds aligned to UTC (the first starting
/// at `first`), filtered and grouped as asked (`None`: no filter).
pub struct UsageRead<'a> {
    pub first: i64,
    pub from: i64,
    pub to: i64,
    pub width: i64,
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

/// The sums of events not yet folded and of both rollups, by bucket and group. A rollup row
/// counts at its start (usage is kept to the minute, and to the hour past the minutes'
/// retention).
#[tracing::instrument(skip_all, name = "db.usage.read")]
pub async fn read(pool: &PgPool, q: &UsageRead<'_>) -> Result<Vec<UsageRow>, sqlx::Error> {
    sqlx::query_as!(
        UsageRow,
        r#"WITH q AS (SELECT $1::bigint AS first, $2::bigint AS "from", $3::bigint AS "to",
                             $4::bigint AS width),
         rows AS (
            SELECT at AS t, project_id, endpoint, model, coalesce(api_key_id, '') AS api_key_id,
                   requests, input_tokens, cached_tokens, output_tokens
            FROM usage_events, q WHERE at >= q.from - 3600 AND at < q.to
            UNION ALL
            SELECT start, project_id, endpoint, model, api_key_id, requests, input_tokens,
                   cached_tokens, output_tokens
            FROM usage_minutes, q WHERE start >= q.from - 3600 AND start < q.to
            UNION ALL
            SELECT start, project_id, endpoint, model, api_key_id, requests, input_tokens,
                   cached_tokens, output_tokens
            FROM usage_hours, q WHERE start >= q.from - 3600 AND start < q.to
         )
         SELECT greatest(q.first, t - t % q.width) AS "bucket!",
                CASE WHEN $9 THEN project_id END AS project_id,
                CASE WHEN $10 THEN model END AS model,
                CASE WHEN $11 THEN nullif(api_key_id, '') END AS api_key_id,
                sum(requests)::bigint AS "requests!", sum(input_tokens)::bigint AS "input_tokens!",
                sum(cached_tokens)::bigint AS "cached_tokens!",
                sum(output_tokens)::bigint AS "output_tokens!"
         FROM rows, q
         WHERE greatest(q.first, t - t % q.width) >= q.from AND t < q.to
           AND t >= q.first - q.first % 60
           AND endpoint = ANY($5)
           AND ($6::text[] IS NULL OR project_id = ANY($6))
           AND ($7::text[] IS NULL OR model = ANY($7))
           AND ($8::text[] IS NULL OR api_key_id = ANY($8))
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2 NULLS FIRST, 3 NULLS FIRST, 4 NULLS FIRST"#,
        q.first,
        q.from,
        q.to,
        q.width,
        q.endpoints as &[&str],
        q.projects,
        q.models,
        q.api_keys,
        q.by_project,
        q.by_model,
        q.by_api_key,
    )
    .fetch_all(pool)
    .await
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
