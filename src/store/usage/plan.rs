//! Which rollup rows answer a usage report: the fewest rows whose signed sum is the usage of a
//! range, bucket by bucket. Whole days come from `usage_days` and whole hours from
//! `usage_hours` where the buckets are at least that wide; a ragged stretch inside a day (or an
//! hour) is read either as it is, from the finer rollup, or as the whole day (hour) less the
//! finer rows around it, whichever reads fewer rows. Minutes past their retention are read from
//! hours, an hour counting at its start.

pub const MINUTE: i64 = 60;
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

/// The rows of the rollup of resolution `res` starting in `[from, to)`, added (`sign` 1) or
/// taken away (-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub res: i64,
    pub from: i64,
    pub to: i64,
    pub sign: i64,
}

/// Segments as the columns a statement unnests.
pub struct Columns {
    pub res: Vec<i64>,
    pub from: Vec<i64>,
    pub to: Vec<i64>,
    pub sign: Vec<i64>,
}

impl Columns {
    pub fn of(segments: &[Segment]) -> Self {
        let column = |f: fn(&Segment) -> i64| segments.iter().map(f).collect();
        Self {
            res: column(|s| s.res),
            from: column(|s| s.from),
            to: column(|s| s.to),
            sign: column(|s| s.sign),
        }
    }
}

/// The segments of `[lo, hi)` (`lo` on a minute) read in buckets `width` wide, minutes being
/// kept from `minutes_from` (on an hour) on. Every row of a segment falls in the bucket of the
/// usage it stands for: a day or an hour is only read where the buckets are that wide or wider.
pub fn plan(lo: i64, hi: i64, width: i64, minutes_from: i64) -> Vec<Segment> {
    let levels: Vec<i64> = [DAY, HOUR].into_iter().filter(|&r| r <= width).collect();
    let mut out = Vec::new();
    cover(lo, hi, &levels, minutes_from, 1, &mut out);
    out
}

/// Where to read to, for a report up to `to` with nothing newer: the end of `to`'s bucket (of
/// its day, for wider buckets), so that whole rows are read instead of the edge's finer ones.
pub fn open_end(to: i64, width: i64) -> i64 {
    ceil(to, width.min(DAY))
}

fn floor(t: i64, res: i64) -> i64 {
    t - t.rem_euclid(res)
}

fn ceil(t: i64, res: i64) -> i64 {
    floor(t + res - 1, res)
}

/// Adds the segments of `[a, b)` at `levels` (coarsest first; minutes below them) to `out`;
/// returns how many rows per combination they read.
fn cover(
    a: i64,
    b: i64,
    levels: &[i64],
    minutes_from: i64,
    sign: i64,
    out: &mut Vec<Segment>,
) -> i64 {
    if a >= b {
        return 0;
    }
    let Some((&res, finer)) = levels.split_first() else {
        let cut = minutes_from.clamp(a, b);
        let mut rows = 0;
        if a < cut {
            out.push(Segment {
                res: HOUR,
                from: a,
                to: cut,
                sign,
            });
            rows += (ceil(cut, HOUR) - ceil(a, HOUR)) / HOUR;
        }
        if cut < b {
            out.push(Segment {
                res: MINUTE,
                from: cut,
                to: b,
                sign,
            });
            rows += (ceil(b, MINUTE) - cut) / MINUTE;
        }
        return rows;
    };
    let (inner_a, inner_b) = (ceil(a, res), floor(b, res));
    let mut rows = 0;
    if inner_a < inner_b {
        out.push(Segment {
            res,
            from: inner_a,
            to: inner_b,
            sign,
        });
        rows += (inner_b - inner_a) / res;
    }
    rows += ragged(a, inner_a.min(b), res, finer, minutes_from, sign, out);
    rows + ragged(inner_b.max(inner_a), b, res, finer, minutes_from, sign, out)
}

/// `[x, y)`, inside one unit of `res`: as it is at the finer levels, or as the whole unit less
/// the rest of it, whichever reads fewer rows.
fn ragged(
    x: i64,
    y: i64,
    res: i64,
    finer: &[i64],
    minutes_from: i64,
    sign: i64,
    out: &mut Vec<Segment>,
) -> i64 {
    if x >= y {
        return 0;
    }
    let mut direct = Vec::new();
    let direct_rows = cover(x, y, finer, minutes_from, sign, &mut direct);
    let unit = floor(x, res);
    let mut whole = vec![Segment {
        res,
        from: unit,
        to: unit + res,
        sign,
    }];
    let whole_rows = 1
        + cover(unit, x, finer, minutes_from, -sign, &mut whole)
        + cover(y, unit + res, finer, minutes_from, -sign, &mut whole);
    if whole_rows < direct_rows {
        out.extend(whole);
        whole_rows
    } else {
        out.extend(direct);
        direct_rows
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn seg(res: i64, from: i64, to: i64, sign: i64) -> Segment {
        Segment {
            res,
            from,
            to,
            sign,
        }
    }

    #[test]
    fn whole_days_and_hours_come_from_their_rollups_and_short_edges_from_minutes() {
        let (lo, hi) = (DAY + 600, 4 * DAY + 2 * HOUR + 120);
        assert_eq!(
            plan(lo, hi, DAY, 0),
            [
                seg(DAY, 2 * DAY, 4 * DAY, 1),
                // The first day's last 23 hours and 50 minutes: the day less 10 minutes.
                seg(DAY, DAY, 2 * DAY, 1),
                seg(MINUTE, DAY, DAY + 600, -1),
                // The last day's first two hours and two minutes.
                seg(HOUR, 4 * DAY, 4 * DAY + 2 * HOUR, 1),
                seg(MINUTE, 4 * DAY + 2 * HOUR, hi, 1),
            ]
        );
        // Hour buckets never read days; minute buckets read minutes only.
        assert_eq!(
            plan(DAY + 90 * MINUTE, DAY + 5 * HOUR, HOUR, 0),
            [
                seg(HOUR, DAY + 2 * HOUR, DAY + 5 * HOUR, 1),
                seg(MINUTE, DAY + 90 * MINUTE, DAY + 2 * HOUR, 1)
            ]
        );
        assert_eq!(plan(lo, hi, MINUTE, 0), [seg(MINUTE, lo, hi, 1)]);
    }

    #[test]
    fn minutes_past_their_retention_are_read_from_hours() {
        let cut = 10 * HOUR;
        assert_eq!(
            plan(8 * HOUR, 12 * HOUR, MINUTE, cut),
            [seg(HOUR, 8 * HOUR, cut, 1), seg(MINUTE, cut, 12 * HOUR, 1)]
        );
        assert_eq!(plan(0, 5 * HOUR, MINUTE, cut), [seg(HOUR, 0, 5 * HOUR, 1)]);
    }

    /// One rollup row per `(res, start)`, each minute holding `usage(minute)`.
    fn row(res: i64, start: i64, usage: &impl Fn(i64) -> i64) -> i64 {
        (start..start + res)
            .step_by(MINUTE as usize)
            .map(usage)
            .sum()
    }

    proptest! {
        /// The signed rows sum, bucket by bucket, to the minutes of `[lo, hi)` — and, before
        /// `minutes_from`, to the hours starting in the range.
        #[test]
        fn the_segments_sum_to_the_usage_of_the_range_bucket_by_bucket(
            lo_min in 0i64..3 * 1440, len_min in 0i64..3 * 1440, first_s in 0i64..60,
            width in prop::sample::select(vec![MINUTE, HOUR, DAY]),
            kept_from_hour in prop::option::of(0i64..6 * 24), seed in 0i64..1000,
        ) {
            let usage = |t: i64| (t / MINUTE * 7919 + seed).rem_euclid(13) / 4;
            let (lo, hi) = (lo_min * MINUTE, (lo_min + len_min) * MINUTE);
            let first = lo + first_s;
            let minutes_from = kept_from_hour.map_or(i64::MIN / 2, |h| h * HOUR);
            let bucket = |t: i64| first.max(t - t.rem_euclid(width));
            let mut want = BTreeMap::new();
            for t in (lo..hi).step_by(MINUTE as usize) {
                let counted = if t >= minutes_from {
                    usage(t)
                } else if t % HOUR == 0 {
                    row(HOUR, t, &usage)
                } else {
                    0
                };
                *want.entry(bucket(t)).or_insert(0) += counted;
            }
            let mut got = BTreeMap::new();
            for s in plan(lo, hi, width, minutes_from) {
                prop_assert!(s.res <= width.max(HOUR) && s.from < s.to, "{s:?}");
                for start in (ceil(s.from, s.res)..s.to).step_by(s.res as usize) {
                    *got.entry(bucket(start)).or_insert(0) += s.sign * row(s.res, start, &usage);
                }
            }
            want.retain(|_, v| *v != 0);
            got.retain(|_, v| *v != 0);
            prop_assert_eq!(got, want);
        }
    }
}
