//! Giving the space of purged content back to the file system.
//!
//! VACUUM returns the empty pages at the end of a table, but not those of a b-tree: the index of
//! a TOAST table (one entry per ~2 KB slice of every large value) keeps its high-water mark. Once
//! 400 MB of file content is purged, `file_chunks`' TOAST index still holds ~6 MB of empty pages:
//! reused by later uploads, but never freed. `REINDEX TABLE CONCURRENTLY` rebuilds the indexes
//! from the live rows without blocking reads or writes (it takes the lock VACUUM takes).
//!
//! The same holds for the indexes of the work tables, whose rows live only while a batch runs
//! (`batch_chunks`) or until the usage rollup folds them (`usage_events`): a million-line batch
//! leaves them ~0.8 MB of empty index pages.

use sqlx::PgPool;

/// The tables whose values live in TOAST and are deleted in bulk (named again in `bloated`);
/// names are fixed, so they can be spliced into the statements that take no parameters.
const TABLES: [&str; 2] = ["file_chunks", "batch_results"];

/// Bytes a packed TOAST index entry takes, with margin: ~22 measured (an 8-byte key, tuple
/// header and line pointer, leaves 90 % full), so an index over this per live slice is
/// mostly empty pages.
const NEEDED_PER_SLICE: i64 = 3 * 22;

/// Bytes of a value per TOAST slice (`TOAST_MAX_CHUNK_SIZE` with 8 KiB pages).
const SLICE_BYTES: i64 = 1996;

/// Tables whose rows come and go with the work (named again in `bloated`).
const WORK_TABLES: [&str; 2] = ["batch_chunks", "usage_events"];

/// Index bytes a live row of a work table needs in each index, with margin (its keys are ids
/// and numbers of under 60 bytes).
const NEEDED_PER_ROW: i64 = 128;

/// An index's own pages even when empty (meta page and root).
const EMPTY_INDEX_BYTES: i64 = 2 * 8192;

/// A table whose indexes are mostly empty pages: its TOAST index (`TABLES`), or all of them
/// together (`WORK_TABLES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloated {
    pub table: &'static str,
    pub index_bytes: i64,
}

/// The tables whose TOAST index holds more than `slack` bytes beyond what their live values
/// need. The live bytes are summed from the tables' own rows — `pg_column_size` of a TOASTed
/// value reads its pointer only, and both tables hold one row per MiB or per flush, so the scan
/// is small — because the statistics counters can lag a purge by far more than a check's
/// interval.
#[tracing::instrument(level = "debug", skip_all, name = "db.compact.bloated")]
pub async fn bloated(pool: &PgPool, slack: i64) -> Result<Vec<Bloated>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH live (name, stored) AS (
              SELECT 'file_chunks', (SELECT coalesce(sum(pg_column_size(data)), 0) FROM file_chunks)
              UNION ALL
              SELECT 'batch_results',
                     (SELECT coalesce(sum(pg_column_size(lines)), 0) FROM batch_results)
           )
           SELECT live.name AS "name!", pg_relation_size(i.indexrelid) AS "index_bytes!"
           FROM live
           JOIN pg_class c ON c.relname = live.name
                          AND c.relnamespace = current_schema()::regnamespace
           JOIN pg_index i ON i.indrelid = c.reltoastrelid AND i.indisvalid
           WHERE pg_relation_size(i.indexrelid) > $1 + $2 * (live.stored / $3)"#,
        slack,
        NEEDED_PER_SLICE,
        SLICE_BYTES,
    )
    .fetch_all(pool)
    .await?;
    let work = sqlx::query!(
        r#"WITH live (name, rows) AS (
              SELECT 'batch_chunks', (SELECT count(*) FROM batch_chunks)
              UNION ALL
              SELECT 'usage_events', (SELECT count(*) FROM usage_events)
           )
           SELECT live.name AS "name!", sum(pg_relation_size(i.indexrelid))::int8 AS "index_bytes!"
           FROM live
           JOIN pg_class c ON c.relname = live.name
                          AND c.relnamespace = current_schema()::regnamespace
           JOIN pg_index i ON i.indrelid = c.oid AND i.indisvalid
           GROUP BY live.name, live.rows
           HAVING sum(pg_relation_size(i.indexrelid)) > $1 + count(*) * ($2 + live.rows * $3)"#,
        slack,
        EMPTY_INDEX_BYTES,
        NEEDED_PER_ROW,
    )
    .fetch_all(pool)
    .await?;
    let toast = rows.into_iter().map(|r| (r.name, r.index_bytes));
    let work = work.into_iter().map(|r| (r.name, r.index_bytes));
    Ok(toast
        .chain(work)
        .filter_map(|(name, index_bytes)| {
            let table = TABLES.into_iter().chain(WORK_TABLES).find(|t| *t == name)?;
            Some(Bloated { table, index_bytes })
        })
        .collect())
}

/// Rebuilds a table's indexes (its TOAST index among them) from its live rows; returns what
/// `bloated` measures of it afterwards (its TOAST index, or a work table's indexes). A rebuild
/// interrupted by a crash leaves an invalid `_ccnew` copy behind, which would be maintained on
/// every write and never used: those are dropped first.
#[tracing::instrument(skip_all, name = "db.compact.reindex", fields(table = table))]
pub async fn reindex(pool: &PgPool, table: &'static str) -> Result<i64, sqlx::Error> {
    debug_assert!(TABLES.contains(&table) || WORK_TABLES.contains(&table));
    let leftovers = sqlx::query_scalar!(
        r#"SELECT i.indexrelid::regclass::text AS "index!"
           FROM pg_class c JOIN pg_index i ON i.indrelid IN (c.oid, c.reltoastrelid)
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1
             AND NOT i.indisvalid"#,
        table,
    )
    .fetch_all(pool)
    .await?;
    for index in leftovers {
        // Built at run time: an index name cannot be a bound parameter; this one comes from
        // `regclass::text`, quoted by PostgreSQL itself.
        sqlx::raw_sql(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .execute(pool)
            .await?;
    }
    // Built at run time (a table name cannot be bound); the simple protocol, as REINDEX
    // CONCURRENTLY must not run inside a transaction block.
    sqlx::raw_sql(&format!("REINDEX TABLE CONCURRENTLY {table}"))
        .execute(pool)
        .await?;
    sqlx::query_scalar!(
        r#"SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0)::int8 AS "bytes!"
           FROM pg_class c
           JOIN pg_index i ON i.indrelid = CASE WHEN $2 THEN c.reltoastrelid ELSE c.oid END
                          AND i.indisvalid
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1"#,
        table,
        TABLES.contains(&table),
    )
    .fetch_one(pool)
    .await
}
