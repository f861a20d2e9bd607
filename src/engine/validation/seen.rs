//! The custom_ids a file has used, for the duplicate check, in 16 bytes each rather than the
//! ids themselves: a million lines take ~34 MB of tables. They are 256 tables, by the top byte
//! of each fingerprint, so that a table doubling holds its old copy for 1/256 of the ids, not
//! all of them (one table of a million would need 51 MB while it last doubles).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

pub struct SeenIds {
    /// Drawn for this file: no one can choose ids that share a fingerprint.
    keys: [RandomState; 2],
    /// By the first 64 bits of an id's 96-bit fingerprint (in the table its top byte picks):
    /// the line that used it, and the other 32 bits. Two different ids agreeing on all 96 is a
    /// 2^-96 event per pair.
    by_prefix: Vec<HashMap<u64, (u32, u32)>>,
    /// Ids whose first 64 bits an earlier, different id took (a 2^-64 event per pair): by
    /// all 96 bits.
    overflow: HashMap<(u64, u32), u32>,
}

impl SeenIds {
    pub fn new() -> Self {
        Self {
            keys: [RandomState::new(), RandomState::new()],
            by_prefix: vec![HashMap::new(); 256],
            overflow: HashMap::new(),
        }
    }

    /// The line that used `id` first; `None` (and `line` recorded) if it is new.
    pub fn first_use(&mut self, id: &str, line: u32) -> Option<u32> {
        let prefix = self.keys[0].hash_one(id);
        let rest = self.keys[1].hash_one(id) as u32;
        self.record(prefix, rest, line)
    }

    fn record(&mut self, prefix: u64, rest: u32, line: u32) -> Option<u32> {
        match self.by_prefix[(prefix >> 56) as usize].entry(prefix) {
            Entry::Vacant(e) => {
                e.insert((line, rest));
                None
            }
            Entry::Occupied(e) if e.get().1 == rest => Some(e.get().0),
            Entry::Occupied(_) => match self.overflow.entry((prefix, rest)) {
                Entry::Vacant(e) => {
                    e.insert(line);
                    None
                }
                Entry::Occupied(e) => Some(*e.get()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SeenIds;

    #[test]
    fn ids_are_told_apart_and_repeats_found() {
        let mut seen = SeenIds::new();
        assert_eq!(seen.first_use("a", 1), None);
        assert_eq!(seen.first_use("b", 2), None);
        assert_eq!(seen.first_use("a", 3), Some(1));
        assert_eq!(seen.first_use("b", 4), Some(2));
        assert_eq!(seen.first_use("", 5), None);
    }

    #[test]
    fn fingerprints_sharing_their_first_64_bits_stay_apart() {
        let mut seen = SeenIds::new();
        assert_eq!(seen.record(7, 1, 10), None);
        assert_eq!(
            seen.record(7, 2, 11),
            None,
            "another id with the same prefix"
        );
        assert_eq!(seen.record(7, 3, 12), None);
        assert_eq!(seen.record(7, 1, 13), Some(10));
        assert_eq!(seen.record(7, 2, 14), Some(11));
        assert_eq!(seen.record(7, 3, 15), Some(12));
        assert_eq!(
            seen.record(8, 2, 16),
            None,
            "the same rest under another prefix"
        );
    }

    #[test]
    fn ids_spread_over_every_table_are_all_new_once_and_repeats_found() {
        let mut seen = SeenIds::new();
        for i in 0..100_000 {
            assert_eq!(seen.first_use(&format!("id-{i}"), i), None);
        }
        assert!(seen.by_prefix.iter().all(|t| !t.is_empty()));
        for i in (0..100_000).step_by(7) {
            assert_eq!(seen.first_use(&format!("id-{i}"), 200_000 + i), Some(i));
        }
        assert_eq!(
            seen.record(7 | (3 << 56), 1, 9),
            None,
            "same low bits, another table"
        );
        assert_eq!(seen.record(7, 1, 10), None);
        assert_eq!(seen.record(7 | (3 << 56), 1, 11), Some(9));
    }
}
