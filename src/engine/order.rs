//! The order in which a batch's lines were served while it ran, kept when it ends, so that a
//! cursor taken from the live stream still says which lines its reader has: the live stream
//! serves the result groups in `seq` order, so a cursor (group `seq`, `taken` lines of it) is
//! a position in that stream, and the lines first served before that position are read.

use anyhow::Context;
use sqlx::PgConnection;

use crate::domain::BatchId;
use crate::domain::MAX_LINES_CEILING;
use crate::jsonl::group;
use crate::store::results::{self, StoredLiveOrder};

/// The rank of a line the live stream never served (its result was written by finalization).
const NEVER: u32 = u32::MAX;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveOrder {
    /// The result groups' `seq`, ascending.
    group_seqs: Vec<i64>,
    /// Lines served before each group, then the total served (one more element).
    group_starts: Vec<u32>,
    /// Per request ordinal: its position in the live stream when first served, or `NEVER`.
    /// Lines past its end were never served.
    ranks: Vec<u32>,
}

/// A `LiveOrder` being built from the groups in `seq` order.
#[derive(Default)]
struct Builder {
    order: LiveOrder,
    served: u32,
}

impl Builder {
    /// Adds the next group, as `jsonl::group::encode` stored it.
    #[cfg(test)]
    fn push_group(&mut self, seq: i64, lines: &str) -> anyhow::Result<()> {
        self.push_ordinals(seq, &ordinals(lines)?)
    }

    /// Adds the next group, by the ordinals of its lines.
    fn push_ordinals(&mut self, seq: i64, ordinals: &[u32]) -> anyhow::Result<()> {
        let o = &mut self.order;
        anyhow::ensure!(
            o.group_seqs.last().is_none_or(|&last| last < seq),
            "result groups out of order"
        );
        o.group_seqs.push(seq);
        o.group_starts.push(self.served);
        for &ordinal in ordinals {
            let ordinal = ordinal as usize;
            if o.ranks.len() <= ordinal {
                o.ranks.resize(ordinal + 1, NEVER);
            }
            // A line stored twice (by a claim that lapsed after its flush) was read at its
            // first serving.
            if o.ranks[ordinal] == NEVER {
                o.ranks[ordinal] = self.served;
            }
            self.served += 1;
        }
        Ok(())
    }

    fn finish(self) -> LiveOrder {
        let mut order = self.order;
        order.group_starts.push(self.served);
        order
    }
}

impl LiveOrder {
    /// The position in the live stream just after the record whose cursor was
    /// `Live { seq, taken }`: every line first served before it has been read.
    pub fn position(&self, seq: i64, taken: u32) -> u32 {
        let i = self.group_seqs.partition_point(|&s| s < seq);
        let start = self.group_starts[i];
        if self.group_seqs.get(i) == Some(&seq) {
            start + taken.min(self.group_starts[i + 1] - start)
        } else {
            start
        }
    }

    /// Whether request `ordinal` was served live before `position`.
    pub fn read_before(&self, ordinal: u32, position: u32) -> bool {
        self.ranks
            .get(ordinal as usize)
            .is_some_and(|&r| r < position)
    }

    fn to_stored(&self) -> StoredLiveOrder {
        StoredLiveOrder {
            group_seqs: self.group_seqs.clone(),
            // Fewer than MAX_LINES_CEILING lines per batch (each stored at most a few times).
            group_starts: self.group_starts.iter().map(|&s| s as i32).collect(),
            ranks: self.ranks.iter().flat_map(|r| r.to_le_bytes()).collect(),
        }
    }

    pub fn from_stored(stored: StoredLiveOrder) -> anyhow::Result<Self> {
        let StoredLiveOrder {
            group_seqs,
            group_starts,
            ranks,
        } = stored;
        anyhow::ensure!(
            group_starts.len() == group_seqs.len() + 1
                && group_starts.iter().all(|&s| s >= 0)
                && group_starts.windows(2).all(|w| w[0] <= w[1])
                && group_seqs.windows(2).all(|w| w[0] < w[1])
                && ranks.len() % 4 == 0,
            "a malformed live order"
        );
        Ok(Self {
            group_seqs,
            group_starts: group_starts.into_iter().map(|s| s as u32).collect(),
            ranks: ranks
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

/// The ordinals of a stored group's lines.
fn ordinals(lines: &str) -> anyhow::Result<Vec<u32>> {
    group::decode(lines)
        .map(|stored| {
            let line = stored?.line;
            u32::try_from(line)
                .ok()
                .filter(|&n| (n as usize) < MAX_LINES_CEILING)
                .context("a result line numbered out of range")
        })
        .collect()
}

/// A batch's result groups as finalization reads them — a chunk at a time, not in `seq`
/// order — kept as each group's `seq` and its lines' ordinals (4 bytes a line), so that the
/// order is built without reading the results a second time.
#[derive(Default)]
pub struct Served {
    groups: Vec<(i64, Vec<u32>)>,
}

impl Served {
    pub fn add(&mut self, seq: i64, lines: &str) -> anyhow::Result<()> {
        self.groups.push((seq, ordinals(lines)?));
        Ok(())
    }

    /// Keeps the order the batch's stored results were served in, in the transaction that
    /// writes its files and deletes those results. Nothing is kept for a batch that stored
    /// none: no live cursor of it can exist.
    pub async fn save(mut self, conn: &mut PgConnection, batch: &BatchId) -> anyhow::Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        self.groups.sort_unstable_by_key(|g| g.0);
        let mut order = Builder::default();
        for (seq, ordinals) in &self.groups {
            order.push_ordinals(*seq, ordinals)?;
        }
        results::save_live_order(conn, batch, &order.finish().to_stored()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(lines: &[i32]) -> String {
        let mut g = String::new();
        for &l in lines {
            group::encode(&mut g, l, true, "{}");
        }
        g
    }

    /// Groups 10 (lines 3, 0), 12 (1, 3 again, 5), 15 (2); line 4 never served.
    fn sample() -> LiveOrder {
        let mut o = Builder::default();
        o.push_group(10, &group(&[3, 0])).unwrap();
        o.push_group(12, &group(&[1, 3, 5])).unwrap();
        o.push_group(15, &group(&[2])).unwrap();
        o.finish()
    }

    fn read(o: &LiveOrder, position: u32) -> Vec<u32> {
        (0..8).filter(|&l| o.read_before(l, position)).collect()
    }

    #[test]
    fn a_live_cursor_reads_the_lines_served_before_it() {
        let o = sample();
        assert_eq!(o.position(10, 1), 1);
        assert_eq!(read(&o, 1), [3]);
        assert_eq!(o.position(10, 2), 2);
        assert_eq!(read(&o, 2), [0, 3]);
        assert_eq!(o.position(12, 2), 4);
        assert_eq!(read(&o, 4), [0, 1, 3], "line 3 served twice counts once");
        assert_eq!(o.position(15, 1), 6);
        assert_eq!(read(&o, 6), [0, 1, 2, 3, 5], "line 4 never served live");
        // Past the last group, and a group finalization never saw (none exists between).
        assert_eq!(o.position(99, 1), 6);
        assert_eq!(o.position(11, 1), 2);
        // More taken than the group holds: no further than its end.
        assert_eq!(o.position(12, 9), 5);
        assert_eq!(read(&o, 0), Vec::<u32>::new());
    }

    #[test]
    fn the_order_round_trips_through_its_stored_form() {
        let o = sample();
        assert_eq!(LiveOrder::from_stored(o.to_stored()).unwrap(), o);
        let mut broken = o.to_stored();
        broken.group_starts.pop();
        assert!(LiveOrder::from_stored(broken).is_err());
        let mut broken = o.to_stored();
        broken.ranks.pop();
        assert!(LiveOrder::from_stored(broken).is_err());
    }

    #[test]
    fn groups_out_of_order_or_lines_out_of_range_are_refused() {
        let mut o = Builder::default();
        o.push_group(5, &group(&[0])).unwrap();
        assert!(o.push_group(5, &group(&[1])).is_err());
        let mut o = Builder::default();
        assert!(o
            .push_group(1, &group(&[MAX_LINES_CEILING as i32]))
            .is_err());
        assert!(o.push_group(2, &group(&[-1])).is_err());
    }
}
