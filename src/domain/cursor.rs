use sha2::{Digest, Sha256};

use super::{BatchId, Invalid};

/// Where a reader of `GET /v1/batches/{id}/results` stands. Opaque to clients; bound to its
/// batch by a short check, so a cursor of one batch is refused on another instead of silently
/// skipping lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultsCursor {
    /// Taken while the batch ran: every result group before `seq` read, and the first `taken`
    /// lines of group `seq`. Groups are numbered in the order they were committed.
    Live { seq: i64, taken: u32 },
    /// Taken from the result files once the batch ended: every request before `next` (0-based
    /// position among the input's requests) read.
    Final { next: u32 },
    /// Taken from the result files by a reader that began while the batch ran: the lines the
    /// live stream had served before position `seen` read, and of the others every request
    /// before `next`.
    Resumed { seen: u32, next: u32 },
}

impl ResultsCursor {
    pub fn encode(self, batch: &BatchId) -> String {
        let body = match self {
            Self::Live { seq, taken } => format!("l{seq}_{taken}"),
            Self::Final { next } => format!("f{next}"),
            Self::Resumed { seen, next } => format!("r{seen}_{next}"),
        };
        format!("{body}_{}", check(batch, &body))
    }

    pub fn parse(batch: &BatchId, raw: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid::new(
                "after",
                "invalid_cursor",
                format!("Invalid 'after': '{raw}' is not a results cursor of batch {batch}."),
            )
        };
        let (body, sum) = raw.rsplit_once('_').ok_or_else(bad)?;
        if sum != check(batch, body) {
            return Err(bad());
        }
        let cursor = if let Some(rest) = body.strip_prefix('l') {
            let (seq, taken) = rest.split_once('_').ok_or_else(bad)?;
            Self::Live {
                seq: seq.parse().map_err(|_| bad())?,
                taken: taken.parse().map_err(|_| bad())?,
            }
        } else if let Some(next) = body.strip_prefix('f') {
            Self::Final {
                next: next.parse().map_err(|_| bad())?,
            }
        } else if let Some(rest) = body.strip_prefix('r') {
            let (seen, next) = rest.split_once('_').ok_or_else(bad)?;
            Self::Resumed {
                seen: seen.parse().map_err(|_| bad())?,
                next: next.parse().map_err(|_| bad())?,
            }
        } else {
            return Err(bad());
        };
        Ok(cursor)
    }
}

fn check(batch: &BatchId, body: &str) -> String {
    let digest = Sha256::digest(format!("{batch}:{body}").as_bytes());
    hex::encode(&digest[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_with_their_batch() {
        let a = BatchId::generate();
        let b = BatchId::generate();
        for c in [
            ResultsCursor::Live { seq: 42, taken: 3 },
            ResultsCursor::Final { next: 7 },
            ResultsCursor::Resumed { seen: 33, next: 12 },
        ] {
            let raw = c.encode(&a);
            assert_eq!(ResultsCursor::parse(&a, &raw), Ok(c));
            assert!(
                ResultsCursor::parse(&b, &raw).is_err(),
                "{raw} on another batch"
            );
        }
        for raw in [
            "",
            "x",
            "l1_2",
            "f3_00000000",
            "lx_1_abcd",
            "l1_2_3_4",
            "r1_00000000",
        ] {
            assert!(ResultsCursor::parse(&a, raw).is_err(), "{raw}");
        }
        let tampered = ResultsCursor::Final { next: 1 }
            .encode(&a)
            .replacen("f1", "f9", 1);
        assert!(ResultsCursor::parse(&a, &tampered).is_err());
    }
}
