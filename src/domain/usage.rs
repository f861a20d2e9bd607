//! A Usage API query (OpenAI's `GET /v1/organization/usage/{completions,embeddings}`), read from
//! its query string: arrays as `x=a&x=b`, `x[]=a&x[]=b` (the Python SDK) or `x=a,b`.

use super::Invalid;

/// Which of OpenAI's usage endpoints: the batch endpoints whose lines it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    Completions,
    Embeddings,
}

impl UsageKind {
    pub fn endpoints(self) -> &'static [&'static str] {
        match self {
            Self::Completions => &["/v1/chat/completions", "/v1/completions", "/v1/responses"],
            Self::Embeddings => &["/v1/embeddings"],
        }
    }

    pub fn groups(self) -> &'static [&'static str] {
        match self {
            Self::Completions => &[
                "project_id",
                "user_id",
                "api_key_id",
                "model",
                "batch",
                "service_tier",
            ],
            Self::Embeddings => &["project_id", "user_id", "api_key_id", "model"],
        }
    }
}

/// A bucket's width, with OpenAI's default and largest page (in buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketWidth {
    Minute,
    Hour,
    Day,
}

impl BucketWidth {
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    pub const ALL: [(BucketWidth, &'static str); 3] = [
        (BucketWidth::Minute, "1m"),
        (BucketWidth::Hour, "1h"),
        (BucketWidth::Day, "1d"),
    ];

    /// Buckets per page: OpenAI's default for the width, or `raw`, up to its largest.
    fn limit(self, spelled: &str, raw: Option<&str>) -> Result<u32, Invalid> {
        let (default, max) = match self {
            Self::Minute => (60, 1440),
            Self::Hour => (24, 168),
            Self::Day => (7, 31),
        };
        // Past the width's largest page, the largest page (the document gives one range for
        // every width).
        match integer("limit", raw)? {
            None => Ok(default),
            Some(n) if n >= 1 => Ok(n.min(i64::from(max)) as u32),
            Some(n) => Err(Invalid::new(
                "limit",
                "invalid_value",
                format!("Invalid 'limit': {n}; with bucket_width {spelled} it is 1 to {max}."),
            )),
        }
    }
}

/// The query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub start: i64,
    pub end: i64,
    /// No `end_time` given: `end` is the time of the request, and no usage is newer.
    pub open_end: bool,
    pub width: BucketWidth,
    pub projects: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub api_keys: Option<Vec<String>>,
    /// Only usage of these users: OpenBatch has no users, so any list matches nothing.
    pub users: Option<Vec<String>>,
    /// `false`: only usage outside batches, of which OpenBatch has none.
    pub batch: Option<bool>,
    pub group_by: Vec<String>,
    /// Buckets per page.
    pub limit: u32,
    /// Where this page starts (`page`, as `next_page` gave it); `start` for the first.
    pub from: i64,
}

impl UsageQuery {
    pub fn grouped(&self, by: &str) -> bool {
        self.group_by.iter().any(|g| g == by)
    }

    /// Whether nothing can match: usage of users, or outside batches.
    pub fn matches_nothing(&self) -> bool {
        self.users.is_some() || self.batch == Some(false)
    }

    /// The `next_page` cursor of a page that ends at `at`.
    pub fn cursor(at: i64) -> String {
        format!("page_{at}")
    }

    /// Reads the query string's pairs; `now` is the default `end_time`.
    pub fn parse(kind: UsageKind, pairs: &[(String, String)], now: i64) -> Result<Self, Invalid> {
        let one = |name: &str| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let (start, end) = range(one("start_time"), one("end_time"), now)?;
        let spelled = one("bucket_width").unwrap_or("1d");
        let width = (BucketWidth::ALL.iter().find(|(_, s)| *s == spelled))
            .map(|(w, _)| *w)
            .ok_or_else(|| {
                Invalid::unsupported("bucket_width", spelled, BucketWidth::ALL.map(|(_, s)| s))
            })?;
        let limit = width.limit(spelled, one("limit"))?;
        let group_by = list(pairs, "group_by").unwrap_or_default();
        if let Some(bad) = group_by
            .iter()
            .find(|g| !kind.groups().contains(&g.as_str()))
        {
            return Err(Invalid::unsupported(
                "group_by",
                bad,
                kind.groups().iter().copied(),
            ));
        }
        let batch = match one("batch") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => return Err(Invalid::unsupported("batch", other, ["true", "false"])),
        };
        if batch.is_some() && kind == UsageKind::Embeddings {
            return Err(Invalid::new(
                "batch",
                "invalid_value",
                "'batch' is a filter of completions usage only.",
            ));
        }
        let from = match one("page") {
            None => start,
            Some(raw) => page(raw, start, end)?,
        };
        Ok(Self {
            start,
            end,
            open_end: one("end_time").is_none(),
            width,
            projects: list(pairs, "project_ids"),
            models: list(pairs, "models"),
            api_keys: list(pairs, "api_key_ids"),
            users: list(pairs, "user_ids"),
            batch,
            group_by,
            limit,
            from,
        })
    }
}

/// The last second a usage report may name (the end of the year 9999): past it no bucket
/// arithmetic is asked for, nor can overflow.
pub const LAST_TIME: i64 = 253_402_300_799;

/// `[start_time, end_time)`, checked; `end_time` defaults to `now`.
fn range(start: Option<&str>, end: Option<&str>, now: i64) -> Result<(i64, i64), Invalid> {
    let start = integer("start_time", start)?.ok_or_else(|| Invalid::missing("start_time"))?;
    let end = integer("end_time", end)?.unwrap_or(now);
    for (param, t) in [("start_time", start), ("end_time", end)] {
        if !(0..=LAST_TIME).contains(&t) {
            return Err(Invalid::new(
                param,
                "invalid_value",
                format!("Invalid '{param}': {t} is not a Unix time from 0 to {LAST_TIME}."),
            ));
        }
    }
    // A range that ends before it starts holds no bucket (an empty page), as an empty list.
    Ok((start, end.max(start)))
}

fn integer(param: &str, raw: Option<&str>) -> Result<Option<i64>, Invalid> {
    raw.map(|r| {
        r.parse::<i64>().map_err(|_| {
            Invalid::new(
                param,
                "invalid_type",
                format!("Invalid '{param}': expected an integer, got '{r}'."),
            )
        })
    })
    .transpose()
}

/// Every value of an array parameter, in any of its three spellings; `None` when absent.
fn list(pairs: &[(String, String)], name: &str) -> Option<Vec<String>> {
    let bracketed = format!("{name}[]");
    let values: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| *k == name || *k == bracketed)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    (!values.is_empty()).then_some(values)
}

/// A `page` cursor: where a page starts, within the query's range.
fn page(raw: &str, start: i64, end: i64) -> Result<i64, Invalid> {
    raw.strip_prefix("page_")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|at| (start..end).contains(at))
        .ok_or_else(|| {
            Invalid::new(
                "page",
                "invalid_value",
                format!("Invalid 'page': '{raw}' is not a page of this query."),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }

    fn parse(q: &str) -> Result<UsageQuery, Invalid> {
        UsageQuery::parse(UsageKind::Completions, &pairs(q), 1_000_000)
    }

    #[test]
    fn arrays_are_read_in_all_three_spellings() {
        for q in [
            "start_time=0&project_ids=a&project_ids=b",
            "start_time=0&project_ids[]=a&project_ids[]=b",
            "start_time=0&project_ids%5B%5D=a&project_ids%5B%5D=b",
            "start_time=0&project_ids=a,b",
        ] {
            assert_eq!(
                parse(q).unwrap().projects,
                Some(vec!["a".into(), "b".into()]),
                "{q}"
            );
        }
    }

    #[test]
    fn a_range_that_ends_before_it_starts_is_empty() {
        let q = parse("start_time=10&end_time=5").unwrap();
        assert_eq!((q.start, q.end), (10, 10));
    }

    #[test]
    fn defaults_are_openai_s() {
        let q = parse("start_time=100").unwrap();
        assert_eq!(
            (q.width, q.limit, q.end, q.from),
            (BucketWidth::Day, 7, 1_000_000, 100)
        );
        assert_eq!(parse("start_time=0&bucket_width=1m").unwrap().limit, 60);
        assert_eq!(
            parse("start_time=0&limit=500").unwrap().limit,
            31,
            "clamped"
        );
        assert_eq!(
            parse("start_time=0&bucket_width=1h&limit=168")
                .unwrap()
                .limit,
            168
        );
    }

    #[test]
    fn bad_queries_name_their_parameter() {
        for (q, param) in [
            ("", "start_time"),
            ("start_time=x", "start_time"),
            ("start_time=-1", "start_time"),
            ("start_time=0&end_time=9223372036854775807", "end_time"),
            ("start_time=0&bucket_width=2h", "bucket_width"),
            ("start_time=0&bucket_width=1h&limit=0", "limit"),
            ("start_time=0&group_by=color", "group_by"),
            ("start_time=0&batch=maybe", "batch"),
            ("start_time=0&page=page_2000000", "page"),
            ("start_time=0&page=nonsense", "page"),
        ] {
            assert_eq!(parse(q).unwrap_err().param, param, "{q}");
        }
        let e = UsageQuery::parse(
            UsageKind::Embeddings,
            &pairs("start_time=0&group_by=batch"),
            9,
        );
        assert_eq!(e.unwrap_err().param, "group_by");
    }
}
