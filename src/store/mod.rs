//! All SQL lives under this module, one file per table group.

/// The statuses of a batch that has not finished, as an SQL list. Written out as a literal (not a
/// bound array) because the partial indexes of migrations 0004 and 0005 have this predicate,
/// and the planner uses them only for a query that repeats it. The query macros take literals
/// only, so their statements spell it out (as does migration 0016's admission count); a test
/// below holds them to this one.
#[cfg_attr(not(test), allow(unused_macros))]
macro_rules! unfinished_statuses {
    () => {
        "('validating', 'in_progress', 'finalizing', 'cancelling')"
    };
}

pub mod batches;
pub mod chunks;
pub mod compact;
pub mod content;
pub mod files;
pub mod gauges;
pub mod keys;
pub mod keyset;
pub mod leader;
pub mod leases;
pub mod objects;
pub mod projects;
pub mod replicas;
pub mod results;
pub mod stats;
pub mod uploads;
pub mod usage;
pub mod webhooks;

use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::{redact_url, DatabaseSettings};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, creating the database first when it is missing and allowed to.
/// Fails fast with a message that names the setting to fix.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let url = settings.url.expose_secret();
    let shown = redact_url(url);
    let options: PgConnectOptions = url.parse().with_context(|| {
        format!("OPENBATCH__DATABASE__URL (or DATABASE_URL) is not a valid PostgreSQL URL: {shown}")
    })?;
    let options = options.log_statements(tracing::log::LevelFilter::Debug);
    let pool_options = || {
        PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .min_connections(settings.min_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            // No ping before every checkout: it doubles the round trips of a one-statement
            // request (measured: create throughput 44% -> bench/RESULTS.md). A connection that died
            // (database restarted) fails its next query instead, which is dropped from the pool
            // and answered 503 (retried by the SDKs) or retried by the worker.
            .test_before_acquire(false)
            // A connection keeps its buffers at the size of the largest message it ever carried:
            // after a few 4 MiB results had passed through different connections, the pool held
            // tens of MiB for good. Shrinking on release costs nothing while they stay small.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.shrink_buffers();
                    Ok(true)
                })
            })
    };
    let connect_timeout = Duration::from_secs(settings.connect_timeout_secs);
    let first = tokio::time::timeout(
        connect_timeout,
        pool_options().connect_with(options.clone()),
    )
    .await;
    let err = match first {
        Ok(Ok(pool)) => return Ok(pool),
        Ok(Err(e)) => e,
        Err(_) => bail!(
            "timed out after {}s connecting to PostgreSQL at {shown}; check that it is running \
             and that OPENBATCH__DATABASE__URL (or DATABASE_URL) points at it",
            settings.connect_timeout_secs
        ),
    };
    if is_missing_database(&err) && settings.create_if_missing {
        create_database(&options).await.with_context(|| {
            format!("database in {shown} does not exist and could not be created")
        })?;
        return tokio::time::timeout(connect_timeout, pool_options().connect_with(options))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to PostgreSQL at {shown}"));
    }
    Err(err).with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {shown}; check that it is running and that \
             OPENBATCH__DATABASE__URL (or DATABASE_URL) is right"
        )
    })
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "3D000")
}

async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options
        .get_database()
        .context("the URL names no database")?
        .to_owned();
    let mut admin = options.clone().database("postgres").connect().await?;
    // Built at run time: a database name cannot be a bound parameter.
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&sql).execute(&mut admin).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // Another replica created it first.
        Err(e)
            if matches!(
                e.as_database_error().and_then(|d| d.code()).as_deref(),
                Some("42P04" | "23505")
            ) => {}
        Err(e) => return Err(e.into()),
    }
    admin.close().await?;
    Ok(())
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it does, so
/// replicas starting together apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying migrations failed")
}

pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(pool)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use crate::domain::BatchStatus;

    #[test]
    fn the_unfinished_statuses_in_sql_are_the_non_terminal_ones() {
        let sql: Vec<&str> = unfinished_statuses!()
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\''))
            .collect();
        let enum_side: Vec<&str> = (BatchStatus::ALL.into_iter())
            .filter(|s| !s.is_terminal())
            .map(BatchStatus::as_str)
            .collect();
        assert_eq!(sql, enum_side);
    }

    #[test]
    fn the_statements_spelling_out_the_unfinished_statuses_use_this_list() {
        let spelled_out = [
            ("leases.rs", include_str!("leases.rs"), "b.status IN "),
            ("gauges.rs", include_str!("gauges.rs"), "WHERE status IN "),
            (
                "0016_batch_admission.sql",
                include_str!("../../migrations/0016_batch_admission.sql"),
                "b.status IN ",
            ),
        ];
        for (file, source, before) in spelled_out {
            let expected = format!("{before}{}", unfinished_statuses!());
            assert!(source.contains(&expected), "{file} has no `{expected}`");
        }
    }
}
