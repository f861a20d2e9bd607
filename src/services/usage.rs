//! The Usage API's reports: a page of buckets over `[start_time, end_time)`, each with its sums
//! per group, read from the usage the flushes recorded (`store::usage`). Empty buckets are
//! answered too, as OpenAI answers them.

use sqlx::PgPool;

use crate::domain::{UsageKind, UsageQuery};
use crate::error::ApiError;
pub use crate::store::usage::UsageRow;
use crate::store::usage::{self as store, UsageRead};

pub struct Bucket {
    pub start: i64,
    pub end: i64,
    pub rows: Vec<UsageRow>,
}

pub struct UsagePage {
    pub buckets: Vec<Bucket>,
    /// Where the next page starts, if any.
    pub next: Option<i64>,
}

/// The buckets of the page `q` asks for: from `q.from`, at most `q.limit`, the first starting
/// at `start_time` and the last ending at `end_time`, the others on UTC boundaries.
fn bounds(q: &UsageQuery) -> (Vec<(i64, i64)>, Option<i64>) {
    let width = q.width.seconds();
    let mut buckets = Vec::new();
    let mut at = q.from;
    while at < q.end && buckets.len() < q.limit as usize {
        let next = at - at.rem_euclid(width) + width;
        buckets.push((at, next.min(q.end)));
        at = next;
    }
    (buckets, (at < q.end).then_some(at))
}

pub async fn report(pool: &PgPool, kind: UsageKind, q: &UsageQuery) -> Result<UsagePage, ApiError> {
    let (bounds, next) = bounds(q);
    let to = bounds.last().map_or(q.from, |b| b.1);
    let rows = if q.matches_nothing() || bounds.is_empty() {
        Vec::new()
    } else {
        store::read(
            pool,
            &UsageRead {
                first: q.start,
                from: q.from,
                to,
                width: q.width.seconds(),
                open_end: q.open_end && to == q.end,
                endpoints: kind.endpoints(),
                projects: q.projects.as_deref(),
                models: q.models.as_deref(),
                api_keys: q.api_keys.as_deref(),
                by_project: q.grouped("project_id"),
                by_model: q.grouped("model"),
                by_api_key: q.grouped("api_key_id"),
            },
        )
        .await?
    };
    let mut rows = rows.into_iter().peekable();
    let buckets = bounds
        .into_iter()
        .map(|(start, end)| {
            let mut bucket = Bucket {
                start,
                end,
                rows: Vec::new(),
            };
            while let Some(row) = rows.next_if(|r| r.bucket < end) {
                bucket.rows.push(row);
            }
            bucket
        })
        .collect();
    Ok(UsagePage { buckets, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BucketWidth;

    fn query(start: i64, end: i64, width: BucketWidth, limit: u32, from: i64) -> UsageQuery {
        UsageQuery {
            start,
            end,
            open_end: false,
            width,
            projects: None,
            models: None,
            api_keys: None,
            users: None,
            batch: None,
            group_by: Vec::new(),
            limit,
            from,
        }
    }

    #[test]
    fn the_first_bucket_starts_at_start_time_and_the_rest_on_utc_boundaries() {
        let (b, next) = bounds(&query(90_000, 300_000, BucketWidth::Day, 7, 90_000));
        assert_eq!(
            b,
            [(90_000, 172_800), (172_800, 259_200), (259_200, 300_000)]
        );
        assert_eq!(next, None);
        let (b, next) = bounds(&query(30, 400, BucketWidth::Minute, 2, 30));
        assert_eq!((b, next), (vec![(30, 60), (60, 120)], Some(120)));
        let (b, next) = bounds(&query(30, 400, BucketWidth::Minute, 60, 120));
        assert_eq!(b.len(), 5);
        assert_eq!((b[4], next), ((360, 400), None));
    }
}
