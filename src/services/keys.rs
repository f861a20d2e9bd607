//! Each replica's in-memory copy of the live API keys, so that checking a key — good or bad —
//! costs no query: a flood of wrong keys never reaches the database, and a revocation reaches
//! every replica within a NOTIFY's delay.
//!
//! The copy is reloaded when a key is created or revoked (LISTEN/NOTIFY, sent by the same
//! statement), when the LISTEN connection is re-established (notifications may have been
//! missed meanwhile), and every `auth.cache_secs` as a fallback. Until it is loaded, while the
//! listener is down, and once it is older than twice that period, requests ask the database
//! instead.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::notify::{Notice, Subscription};
pub use crate::store::keys::KeyScope;
use crate::store::keys::{self, StoredKey};

/// How often a replica records that a key was used (`last_used_at`): at most once a minute
/// per key, so a busy key costs one small UPDATE a minute, not one per request.
const MARK_USED_EVERY: Duration = Duration::from_secs(60);
use crate::tasks::CancellationToken;

pub struct Keyring {
    period: Duration,
    copy: RwLock<Copy>,
    /// When this replica last recorded each key's use.
    marked: std::sync::Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct Copy {
    by_prefix: HashMap<String, StoredKey>,
    /// When the copy was loaded; `None` while it cannot be trusted.
    loaded_at: Option<Instant>,
}

/// What the copy says of a prefix.
pub enum Lookup {
    /// A live key has this prefix, or (`None`) none has.
    Known(Option<StoredKey>),
    /// The copy cannot be trusted right now: ask the database.
    Unsure,
}

impl Keyring {
    /// `period` 0: no copy is kept, every lookup is `Unsure`.
    pub fn new(period: Duration) -> Arc<Self> {
        Arc::new(Self {
            period,
            copy: RwLock::new(Copy::default()),
            marked: Default::default(),
        })
    }

    pub fn lookup(&self, prefix: &str) -> Lookup {
        let copy = self.copy.read().expect("not poisoned");
        match copy.loaded_at {
            Some(at) if at.elapsed() < self.period * 2 => {
                Lookup::Known(copy.by_prefix.get(prefix).cloned())
            }
            _ => Lookup::Unsure,
        }
    }

    /// The stored key with `prefix`: from the copy when it can be trusted, else from the
    /// database. `ask_unknown`: whether a prefix the trusted copy lacks is still worth a query.
    pub async fn find(
        &self,
        pool: &PgPool,
        prefix: &str,
        ask_unknown: bool,
    ) -> Result<Option<StoredKey>, sqlx::Error> {
        match self.lookup(prefix) {
            Lookup::Known(Some(stored)) => Ok(Some(stored)),
            Lookup::Known(None) if !ask_unknown => Ok(None),
            Lookup::Known(None) | Lookup::Unsure => {
                crate::metrics::get().auth_key_queries.inc();
                keys::find(pool, prefix).await
            }
        }
    }

    /// Records the use of a key in the background, if this replica has not for a minute.
    pub fn mark_used(&self, pool: &PgPool, prefix: &str) {
        {
            let mut marked = self.marked.lock().expect("not poisoned");
            let now = Instant::now();
            match marked.get(prefix) {
                Some(at) if now.duration_since(*at) < MARK_USED_EVERY => return,
                _ => {}
            }
            // Bounded by the live keys: revoked ones fall out at the next reload.
            marked.insert(prefix.to_owned(), now);
        }
        let (pool, prefix) = (pool.clone(), prefix.to_owned());
        tokio::spawn(async move {
            if let Err(e) = keys::mark_used(&pool, &prefix).await {
                tracing::debug!(error = %e, "could not record a key's use");
            }
        });
    }

    fn replace(&self, keys: Vec<(String, StoredKey)>, loaded_at: Instant) {
        let mut copy = self.copy.write().expect("not poisoned");
        copy.by_prefix = keys.into_iter().collect();
        copy.loaded_at = Some(loaded_at);
        let live = &copy.by_prefix;
        (self.marked.lock().expect("not poisoned")).retain(|prefix, _| live.contains_key(prefix));
    }

    fn distrust(&self) {
        self.copy.write().expect("not poisoned").loaded_at = None;
    }

    async fn reload(&self, pool: &PgPool) {
        // Stamped before the query: a change committed during it is announced after it.
        let started = Instant::now();
        match keys::load_live(pool).await {
            Ok(live) => {
                self.replace(live, started);
                crate::metrics::get().auth_key_reloads.inc();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not load the API keys; asking the database per request")
            }
        }
    }

    /// Keeps the copy current until `stop`, from the key-change notifications of `notices`.
    pub async fn run(
        self: Arc<Self>,
        pool: PgPool,
        mut notices: Subscription,
        stop: CancellationToken,
    ) {
        if self.period.is_zero() {
            return;
        }
        // Reloads on a timer only while listening: otherwise a change could be missed and
        // the copy, freshly stamped, trusted.
        let mut listening = false;
        loop {
            let notice = tokio::select! {
                n = notices.recv() => n,
                _ = tokio::time::sleep(self.period), if listening => {
                    self.reload(&pool).await;
                    continue;
                }
                _ = stop.cancelled() => return,
            };
            match notice {
                Notice::Message { .. } => self.reload(&pool).await,
                // Whatever was announced meanwhile is lost. Ask the database until listening
                // again and the copy reloaded.
                Notice::Lost => {
                    listening = false;
                    self.distrust();
                    tracing::info!("LISTEN connection for key changes lost; reconnecting");
                }
                // Loaded only once listening, so no change can fall between the two.
                Notice::Resume => {
                    listening = true;
                    self.reload(&pool).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProjectId;

    fn key() -> StoredKey {
        StoredKey {
            scope: KeyScope::Project(ProjectId::built_in()),
            hash: vec![1; 32],
        }
    }

    #[test]
    fn the_copy_is_trusted_only_while_fresh() {
        let ring = Keyring::new(Duration::from_secs(10));
        assert!(matches!(ring.lookup("obk_a"), Lookup::Unsure));
        ring.replace(vec![("obk_a".into(), key())], Instant::now());
        assert!(matches!(ring.lookup("obk_a"), Lookup::Known(Some(_))));
        assert!(matches!(ring.lookup("obk_b"), Lookup::Known(None)));
        ring.distrust();
        assert!(matches!(ring.lookup("obk_a"), Lookup::Unsure));
        ring.replace(Vec::new(), Instant::now() - Duration::from_secs(21));
        assert!(matches!(ring.lookup("obk_b"), Lookup::Unsure));
        let off = Keyring::new(Duration::ZERO);
        off.replace(Vec::new(), Instant::now());
        assert!(matches!(off.lookup("obk_b"), Lookup::Unsure));
    }
}
