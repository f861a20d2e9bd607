//! API keys (`Authorization: Bearer …`) → the request's project, and a per-key request rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use sqlx::PgPool;

use super::AppState;
use crate::config::AuthSettings;
use crate::domain::{constant_time_eq, ApiKey, ProjectId};
use crate::error::ApiError;

/// Who a request acts for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub project: ProjectId,
    /// The key's public prefix; `None` when authentication is off.
    pub key_prefix: Option<String>,
}

pub struct Auth {
    enabled: bool,
    ttl: Duration,
    /// Keys checked recently, by hash, so most requests cost no query.
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

fn unauthorized(message: String) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message,
        param: None,
        code: Some("invalid_api_key".to_owned()),
        should_retry: Some(false),
    }
}

impl Auth {
    pub fn new(settings: &AuthSettings) -> Self {
        if !settings.enabled {
            tracing::warn!(
                "authentication is OFF: every request acts for the built-in project; \
                 set OPENBATCH__AUTH__ENABLED=true in production"
            );
        }
        Self {
            enabled: settings.enabled,
            ttl: Duration::from_secs(settings.cache_secs),
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn identify(
        &self,
        pool: &PgPool,
        authorization: Option<&str>,
    ) -> Result<Identity, ApiError> {
        if !self.enabled {
            return Ok(Identity {
                project: ProjectId::built_in(),
                key_prefix: None,
            });
        }
        let Some(value) = authorization else {
            return Err(unauthorized(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                    .to_owned(),
            ));
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or("");
        let wrong = || {
            unauthorized(format!(
                "Incorrect API key provided: {}.",
                ApiKey::mask(presented)
            ))
        };
        let key = ApiKey::parse(presented).ok_or_else(wrong)?;
        if let Some(identity) = self.cached(&key.hash) {
            return Ok(identity);
        }
        let stored = crate::store::keys::find(pool, &key.prefix)
            .await?
            .ok_or_else(wrong)?;
        if !constant_time_eq(&stored.hash, &key.hash) {
            return Err(wrong());
        }
        let identity = Identity {
            project: stored.project,
            key_prefix: Some(key.prefix),
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        // Bounded: entries of keys not seen for a while are dropped in bulk.
        if cache.len() > 10_000 {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        cache.insert(key.hash, (identity.clone(), Instant::now()));
        Ok(identity)
    }

    fn cached(&self, hash: &[u8; 32]) -> Option<Identity> {
        let cache = self.cache.lock().expect("not poisoned");
        cache
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(identity, _)| identity.clone())
    }
}

/// A token bucket per key: `per_minute` requests a minute, in bursts of up to as many.
/// Per replica: behind N replicas a key gets up to N times the rate.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the key has no request left.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
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
    let identity = match state
        .auth
        .identify(&state.pool, authorization.as_deref())
        .await
    {
        Ok(identity) => identity,
        Err(e) => return Ok(req.into_response(e.error_response()).map_into_right_body()),
    };
    if let Some(prefix) = &identity.key_prefix {
        if let Err(wait) = state.rate.check(prefix) {
            let e = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "Rate limit reached for this API key: {} requests per minute. Retry after {wait} s.",
                    state.limits.requests_per_minute_per_key
                ),
                param: None,
                code: Some("rate_limit_exceeded".to_owned()),
                should_retry: None,
            };
            let mut res = e.error_response();
            res.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_str(&wait.to_string()).expect("digits"),
            );
            return Ok(req.into_response(res).map_into_right_body());
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

    #[test]
    fn the_bucket_allows_a_burst_then_asks_to_wait() {
        let r = RateLimiter::new(3);
        assert!(r.check("k").is_ok());
        assert!(r.check("k").is_ok());
        assert!(r.check("k").is_ok());
        let wait = r.check("k").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        // Other keys have their own bucket.
        assert!(r.check("other").is_ok());
        assert!(RateLimiter::new(0).check("k").is_ok());
    }
}
