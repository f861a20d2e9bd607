use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Require `Authorization: Bearer <key>` on every `/v1` route. Off: one built-in project.
    pub enabled: bool,
    /// How often each replica reloads its in-memory copy of the live keys even without a
    /// change notification (the fallback should a NOTIFY be lost). 0: no copy, every request
    /// asks the database.
    pub cache_secs: u64,
    /// Database lookups a second (per replica) for keys the in-memory copy does not hold: a
    /// key used before its creation's notification arrives still works, and a flood of
    /// made-up keys costs at most this many queries a second.
    pub unknown_key_lookups_per_sec: u32,
    /// Serve with authentication off on a non-loopback address. Off by default: anyone who
    /// reaches the port would read every file and spend the upstream's key.
    pub allow_anonymous: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            cache_secs: 10,
            unknown_key_lookups_per_sec: 10,
            allow_anonymous: false,
        }
    }
}
