//! Fair shares of a replica's long-held slots (event streams, uploads being received, results
//! readers): a per-replica total, and a per-project share of it, so that no project can take
//! every slot while another waits. A slot is a guard given back when dropped, which happens
//! however its request ends: finished, failed, or its client gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::ProjectId;
use crate::error::Full;

/// The slots of one kind on this replica.
#[derive(Clone)]
pub struct FairSlots {
    inner: Arc<Inner>,
}

struct Inner {
    total: usize,
    share: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    all: usize,
    /// Only projects holding a slot: the map is never larger than `total`.
    by_project: HashMap<ProjectId, usize>,
}

/// A project's default share: half the replica's slots, rounded up (all of one slot), so that
/// one project leaves at least half of them to the others.
pub fn default_share(total: usize) -> usize {
    total.div_ceil(2)
}

impl FairSlots {
    /// `total` slots, at most `share` of them (at most `total`) per project; `share` defaults
    /// to [`default_share`].
    pub fn new(total: usize, share: Option<usize>) -> Self {
        let share = share.unwrap_or_else(|| default_share(total)).min(total);
        Self {
            inner: Arc::new(Inner {
                total,
                share,
                held: Mutex::default(),
            }),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        // The counts are updated in single statements that cannot panic halfway.
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `project`, or why there is none: its share is checked first, so that a
    /// project over its share is told so even when the replica is also full.
    pub fn take(&self, project: &ProjectId) -> Result<Slot, Full> {
        if self.inner.total == 0 {
            return Err(Full::Replica { total: 0 });
        }
        let mut held = self.held();
        let mine = held.by_project.get(project).copied().unwrap_or(0);
        if mine >= self.inner.share {
            return Err(Full::Project {
                share: self.inner.share,
                total: self.inner.total,
            });
        }
        if held.all >= self.inner.total {
            return Err(Full::Replica {
                total: self.inner.total,
            });
        }
        held.all += 1;
        *held.by_project.entry(project.clone()).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            project: project.clone(),
        })
    }

    /// Slots held, in all and by `project`.
    pub fn held_by(&self, project: &ProjectId) -> (usize, usize) {
        let held = self.held();
        let mine = held.by_project.get(project).copied().unwrap_or(0);
        (held.all, mine)
    }
}

/// One slot, given back when dropped.
pub struct Slot {
    slots: FairSlots,
    project: ProjectId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held();
        held.all -= 1;
        if let Some(n) = held.by_project.get_mut(&self.project) {
            *n -= 1;
            if *n == 0 {
                held.by_project.remove(&self.project);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str) -> ProjectId {
        ProjectId::from_db(name.to_owned())
    }

    #[test]
    fn a_project_gets_its_share_and_leaves_the_rest_to_others() {
        let slots = FairSlots::new(4, None);
        let (a, b) = (project("proj_a"), project("proj_b"));
        let held_a: Vec<Slot> = (0..2).map(|_| slots.take(&a).unwrap()).collect();
        assert_eq!(
            slots.take(&a).err(),
            Some(Full::Project { share: 2, total: 4 })
        );
        let held_b: Vec<Slot> = (0..2).map(|_| slots.take(&b).unwrap()).collect();
        assert_eq!(slots.held_by(&a), (4, 2));
        assert_eq!(
            slots.take(&project("proj_c")).err(),
            Some(Full::Replica { total: 4 })
        );
        drop(held_a);
        assert_eq!(slots.held_by(&a), (2, 0));
        drop(held_b);
        assert_eq!(slots.held_by(&b), (0, 0));
    }

    #[test]
    fn a_slot_dropped_is_free_again_for_its_project() {
        let slots = FairSlots::new(3, Some(1));
        let a = project("proj_a");
        let first = slots.take(&a).unwrap();
        assert!(matches!(
            slots.take(&a),
            Err(Full::Project { share: 1, .. })
        ));
        drop(first);
        let _again = slots.take(&a).unwrap();
    }

    #[test]
    fn the_replica_total_holds_even_when_shares_would_allow_more() {
        let slots = FairSlots::new(3, Some(2));
        let (a, b) = (project("proj_a"), project("proj_b"));
        let _a = [slots.take(&a).unwrap(), slots.take(&a).unwrap()];
        let _b = slots.take(&b).unwrap();
        assert_eq!(slots.take(&b).err(), Some(Full::Replica { total: 3 }));
    }

    #[test]
    fn shares_default_to_half_rounded_up_and_never_exceed_the_total() {
        assert_eq!(default_share(0), 0);
        assert_eq!(default_share(1), 1);
        assert_eq!(default_share(3), 2);
        assert_eq!(default_share(256), 128);
        let none = FairSlots::new(0, None);
        assert_eq!(
            none.take(&project("proj_a")).err(),
            Some(Full::Replica { total: 0 })
        );
        let capped = FairSlots::new(2, Some(10));
        let a = project("proj_a");
        let _held = [capped.take(&a).unwrap(), capped.take(&a).unwrap()];
        assert_eq!(
            capped.take(&a).err(),
            Some(Full::Project { share: 2, total: 2 })
        );
    }
}
