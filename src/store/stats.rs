//! Planner statistics that keep up with growth. Every deployment starts on empty tables, and a
//! plan cached while `batches` was empty (a scan that was cheap then) stays cached until the
//! table is analyzed — which autovacuum may do only after minutes of fast growth. ANALYZE
//! invalidates the cached plans of every connection of every replica, so they are re-planned
//! with the real row counts.

use sqlx::PgPool;

/// The tables whose statements run per request; names are fixed, so they can be spliced in.
const TABLES: [&str; 4] = ["batches", "files", "batch_chunks", "api_keys"];

/// Analyzes each table that has grown to more than twice (plus 1,000 rows) what its statistics
/// say; returns the tables analyzed.
#[tracing::instrument(level = "debug", skip_all, name = "db.stats.refresh")]
pub async fn refresh_grown(pool: &PgPool) -> Result<Vec<&'static str>, sqlx::Error> {
    let grown: Vec<String> = sqlx::query_scalar!(
        r#"SELECT s.relname::text AS "relname!"
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
           WHERE s.schemaname = current_schema() AND s.relname = ANY($1)
             AND s.n_live_tup > 2 * greatest(c.reltuples, 0) + 1000"#,
        &TABLES[..] as &[&str],
    )
    .fetch_all(pool)
    .await?;
    let mut analyzed = Vec::new();
    for table in TABLES.into_iter().filter(|t| grown.iter().any(|g| g == t)) {
        // Built at run time: a table name cannot be a bound parameter.
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(pool)
            .await?;
        analyzed.push(table);
    }
    Ok(analyzed)
}
