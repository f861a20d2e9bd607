//! API keys (`Authorization: Bearer …`) → the request's project (or, for an admin key, the
//! Admin API), and a per-key request rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use sqlx::PgPool;

use super::AppState;
use crate::config::AuthSettings;
use crate::domain::{constant_time_eq, ApiKey, ProjectId};
use crate::error::ApiError;
use crate::services::keys::{KeyScope, Keyring};

/// Who a request acts for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A project, or the Admin API; with authentication off, the built-in project on every
    /// route but `/v1/organization/*`, which it may use as an admin.
    pub scope: KeyScope,
    /// The key's public prefix; `None` when authentication is off.
    pub key_prefix: Option<String>,
}

/// The routes an admin key may use, and only it.
pub const ADMIN_SCOPE: &str = "/v1/organization/";
/// With an admin key, on a GET: the project whose data it reads (the header OpenAI's SDKs send
/// for `project=`).
const READ_AS: &str = "openai-project";

pub struct Auth {
    enabled: bool,
    /// The live keys, in memory: checking a key costs no query.
    keyring: Arc<Keyring>,
    /// Keys the copy does not hold may still be asked of the database at this many a second
    /// (per replica): a key used the instant it was created, before its notification lands,
    /// works, while a flood of made-up keys costs at most this many queries a second.
    unknown_lookups: Mutex<(f64, Instant)>,
    unknown_per_sec: f64,
}

impl Auth {
    pub fn new(settings: &AuthSettings) -> Self {
        if !settings.enabled {
            tracing::warn!(
                "authentication is OFF: every request acts for the built-in project; \
                 set OPENBATCH__AUTH__ENABLED=true in production"
            );
        }
        let per_sec = f64::from(settings.unknown_key_lookups_per_sec);
        Self {
            enabled: settings.enabled,
            keyring: Keyring::new(Duration::from_secs(settings.cache_secs)),
            unknown_lookups: Mutex::new((per_sec, Instant::now())),
            unknown_per_sec: per_sec,
        }
    }

    /// Takes one of the lookups allowed for keys the copy does not know.
    fn may_look_up_unknown(&self) -> bool {
        let mut bucket = self.unknown_lookups.lock().expect("not poisoned");
        let (tokens, at) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.unknown_per_sec)
            .min(self.unknown_per_sec);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// What keeps the in-memory keys current; `None` with authentication off.
    pub fn keyring(&self) -> Option<Arc<Keyring>> {
        self.enabled.then(|| self.keyring.clone())
    }

    /// Who asks, and whether their key may use `path`. `read_as`: the project an admin key
    /// reads (`OpenAI-Project` on a GET), archived or not.
    async fn identify(
        &self,
        pool: &PgPool,
        authorization: Option<&str>,
        path: &str,
        read_as: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let admin_route = path.starts_with(ADMIN_SCOPE);
        if !self.enabled {
            let scope = if admin_route {
                KeyScope::Admin
            } else {
                KeyScope::Project(ProjectId::built_in())
            };
            return Ok(Identity {
                scope,
                key_prefix: None,
            });
        }
        let identity = self.check_key(pool, authorization).await?;
        match (&identity.scope, admin_route, read_as) {
            (KeyScope::Admin, true, _) | (KeyScope::Project(_), false, _) => Ok(identity),
            (KeyScope::Project(_), true, _) => Err(ApiError::AdminKeyRequired),
            (KeyScope::Admin, false, Some(project)) => {
                let project = crate::services::projects::get(pool, project).await?;
                Ok(Identity {
                    scope: KeyScope::Project(project.id),
                    ..identity
                })
            }
            (KeyScope::Admin, false, None) => Err(ApiError::ProjectKeyRequired),
        }
    }

    async fn check_key(
        &self,
        pool: &PgPool,
        authorization: Option<&str>,
    ) -> Result<Identity, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::MissingApiKey);
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or("");
        let wrong = || ApiError::IncorrectApiKey {
            masked: ApiKey::mask(presented),
        };
        let key = ApiKey::parse(presented).ok_or_else(wrong)?;
        let stored = self
            .keyring
            .find(pool, &key.prefix, self.may_look_up_unknown())
            .await?;
        let stored = stored.ok_or_else(wrong)?;
        if !constant_time_eq(&stored.hash, &key.hash) {
            return Err(wrong());
        }
        self.keyring.mark_used(pool, &key.prefix);
        Ok(Identity {
            scope: stored.scope,
            key_prefix: Some(key.prefix),
        })
    }
}

/// A token bucket per key: `per_minute` requests a minute, in bursts of up to as many, for
/// the whole cluster. Each replica enforces its share, `per_minute / live replicas` (from the
/// heartbeat table), so behind a balancer that spreads a key's requests the cluster admits
/// about `per_minute`; a key whose requests all land on one replica gets that replica's share.
pub struct RateLimiter {
    per_minute: u32,
    /// Live replicas, this one included (at least 1), kept by `crate::cluster`.
    replicas: Arc<AtomicUsize>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, replicas: Arc<AtomicUsize>) -> Self {
        Self {
            per_minute,
            replicas,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the key has no request left.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let share =
            f64::from(self.per_minute) / self.replicas.load(Ordering::Relaxed).max(1) as f64;
        // A share under one request would never fill up to one: allow a burst of one.
        let capacity = share.max(1.0);
        let per_sec = share / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// Resolves the caller for every `/v1` route. Failures become responses here (not errors), so
/// the outer middleware still stamps them with a request id.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // An admin may read any project's data (an archived one's too), never change it.
    let read_as = matches!(*req.method(), Method::GET | Method::HEAD)
        .then(|| req.headers().get(READ_AS).and_then(|v| v.to_str().ok()))
        .flatten()
        .map(str::to_owned);
    let identity = match state
        .auth
        .identify(
            &state.pool,
            authorization.as_deref(),
            req.path(),
            read_as.as_deref(),
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => return Ok(req.into_response(e.error_response()).map_into_right_body()),
    };
    if let Some(prefix) = &identity.key_prefix {
        if let Err(wait) = state.rate.check(prefix) {
            let e = ApiError::RateLimited {
                per_minute: state.limits.requests_per_minute_per_key,
                wait_secs: wait,
            };
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
    }
    req.extensions_mut().insert(identity);
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, replicas: usize) -> RateLimiter {
        RateLimiter::new(per_minute, Arc::new(AtomicUsize::new(replicas)))
    }

    #[test]
    fn the_bucket_allows_a_burst_then_asks_to_wait() {
        let r = limiter(3, 1);
        assert!(r.check("k").is_ok());
        assert!(r.check("k").is_ok());
        assert!(r.check("k").is_ok());
        let wait = r.check("k").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        // Other keys have their own bucket.
        assert!(r.check("other").is_ok());
        assert!(limiter(0, 1).check("k").is_ok());
    }

    #[test]
    fn each_replica_enforces_its_share() {
        let r = limiter(60, 3);
        let admitted = (0..60).filter(|_| r.check("k").is_ok()).count();
        assert_eq!(admitted, 20);
        // A share below one request still admits one, then waits for it to refill.
        let r = limiter(2, 4);
        assert!(r.check("k").is_ok());
        let wait = r.check("k").unwrap_err();
        assert!((60..=120).contains(&wait), "{wait}");
        // Fewer replicas: a larger share from the next request on.
        let replicas = Arc::new(AtomicUsize::new(2));
        let r = RateLimiter::new(10, replicas.clone());
        assert_eq!((0..10).filter(|_| r.check("k").is_ok()).count(), 5);
        replicas.store(1, Ordering::Relaxed);
        assert!(
            r.check("k").is_err(),
            "the bucket refills at the new rate, not at once"
        );
    }
}
