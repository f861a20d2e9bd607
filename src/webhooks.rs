//! Webhook delivery, run by every replica: claims due deliveries from the outbox (woken by
//! the trigger's NOTIFY, polling as the fallback), signs them the Standard Webhooks way, POSTs
//! them, and records the outcome. Independent of HTTP handling and of the batch worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};

use crate::config::WebhookSettings;
use crate::domain::{is_public, WebhookSecret};
use crate::notify::{Notice, Notifications, Subscription};
use crate::store::webhooks::{self as store, Due, Outcome, Policy};
use crate::tasks::{CancellationToken, TaskGroup};

/// At most this much of a receiver's answer is read (and the first KiB of it logged).
const MAX_RESPONSE_BYTES: usize = 4096;
const MAX_LOGGED_CHARS: usize = 1024;

pub struct Deliverer {
    tasks: TaskGroup,
}

impl Deliverer {
    /// Runs in `tasks`, woken by the outbox channel of `notices`.
    pub fn start(
        pool: PgPool,
        settings: WebhookSettings,
        notices: &mut Notifications,
        tasks: TaskGroup,
    ) -> anyhow::Result<Self> {
        let http = client(&settings)?;
        let wake = Arc::new(Notify::new());
        tasks.spawn(listen(
            notices.subscribe(&[store::CHANNEL]),
            wake.clone(),
            tasks.token(),
        ));
        tasks.spawn(run(pool, http, settings, wake, tasks.token()));
        Ok(Self { tasks })
    }

    /// Stops claiming and lets attempts in flight end (each is bounded by its timeout).
    pub async fn shutdown(self) {
        self.tasks.stop().await;
    }
}

/// No redirects (a 3xx is a failed attempt), a timeout per attempt, and, unless private networks
/// are allowed, a resolver that only ever yields public addresses: a host name that resolves to
/// (or is rebound to) a private address is refused at connection time.
fn client(settings: &WebhookSettings) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(settings.timeout_secs))
        .connect_timeout(Duration::from_secs(settings.timeout_secs))
        .pool_max_idle_per_host(2)
        .user_agent(concat!("OpenBatch-Webhooks/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private_networks {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    Ok(builder.build()?)
}

struct PublicOnly;

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused: {} resolves only to non-public addresses (set \
             OPENBATCH__WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true to allow them)",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

async fn run(
    pool: PgPool,
    http: reqwest::Client,
    settings: WebhookSettings,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let settings = Arc::new(settings);
    // Long enough for an attempt to time out and its outcome to be written.
    let lease_secs = (settings.timeout_secs + 15) as f64;
    let poll = Duration::from_millis(settings.poll_interval_ms.max(10));
    loop {
        if stop.is_cancelled() {
            break;
        }
        let free = slots.available_permits();
        let mut claimed = 0;
        if free > 0 {
            match store::claim_due(&pool, free as i64, lease_secs).await {
                Ok(due) => {
                    claimed = due.len();
                    for d in due {
                        let permit = slots.clone().acquire_owned().await.expect("never closed");
                        let (pool, http, settings, wake) =
                            (pool.clone(), http.clone(), settings.clone(), wake.clone());
                        tokio::spawn(async move {
                            deliver(&pool, &http, &settings, d).await;
                            drop(permit);
                            wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
            }
        }
        if claimed > 0 && claimed == free {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = wake.notified() => {}
            _ = stop.cancelled() => {}
        }
    }
    // Attempts in flight are bounded by the timeout; one cut short is sent again by another
    // replica when its lease lapses.
    let all = settings.max_in_flight as u32;
    let _ = tokio::time::timeout(
        Duration::from_secs(settings.timeout_secs + 1),
        slots.acquire_many(all),
    )
    .await;
}

/// Wakes the claiming loop on each NOTIFY of the outbox, and after a gap in them (polling
/// remains the fallback).
async fn listen(mut notices: Subscription, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            n = notices.recv() => if n != Notice::Lost {
                wake.notify_one();
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// One attempt, and its outcome recorded.
async fn deliver(pool: &PgPool, http: &reqwest::Client, settings: &WebhookSettings, due: Due) {
    let (status_code, error, delivered) = attempt(http, settings, &due).await;
    let doublings = (due.attempts.clamp(1, 40) - 1) as u32;
    let backoff_ms = settings
        .retry_base_ms
        .saturating_mul(1u64 << doublings)
        .min(settings.retry_max_ms);
    // Jitter spreads the retries of many deliveries that failed together.
    let retry_in_secs = backoff_ms as f64 / 1000.0 * rand::rng().random_range(0.5..=1.0);
    if delivered {
        tracing::debug!(event_id = %due.event_id, endpoint = %due.endpoint_id, "webhook delivered");
    } else {
        tracing::info!(event_id = %due.event_id, endpoint = %due.endpoint_id, attempt = due.attempts,
                       status_code, error = error.as_deref(), "webhook delivery failed");
    }
    let outcome = Outcome {
        delivered,
        status_code,
        error: error.as_deref(),
        retry_in_secs,
    };
    let policy = Policy {
        max_retry_secs: settings.max_retry_secs as i64,
        disable_after: settings.disable_after_failures,
    };
    if let Err(e) = store::record(pool, &due, &outcome, &policy).await {
        // The lease lapses and the delivery is attempted again: a duplicate, never a loss.
        tracing::warn!(error = %e, event_id = %due.event_id, "could not record a webhook attempt");
    }
}

/// (status code, error, delivered).
async fn attempt(
    http: &reqwest::Client,
    settings: &WebhookSettings,
    due: &Due,
) -> (Option<i32>, Option<String>, bool) {
    // A literal address never reaches the resolver: check it here. Names (`localhost`
    // included) are checked by the resolver, on the addresses actually connected to.
    if !settings.allow_private_networks {
        if let Some(ip) = literal_ip(&due.url).filter(|ip| !is_public(*ip)) {
            return (
                None,
                Some(format!("refused: {ip} is not a public address")),
                false,
            );
        }
    }
    let timestamp = crate::domain::unix_now();
    let body = due.payload.as_bytes();
    let mut signatures =
        vec![WebhookSecret::from_db(due.secret.clone()).sign(&due.event_id, timestamp, body)];
    if let Some(previous) = &due.previous_secret {
        signatures.push(WebhookSecret::from_db(previous.clone()).sign(
            &due.event_id,
            timestamp,
            body,
        ));
    }
    let sent = http
        .post(&due.url)
        .header("content-type", "application/json")
        .header("webhook-id", &due.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(due.payload.clone())
        .send()
        .await;
    let mut res = match sent {
        Ok(r) => r,
        Err(e) => return (None, Some(truncate(&error_chain(&e))), false),
    };
    let status = res.status();
    // Read a bounded prefix of the answer, for the log; the rest is never read.
    let mut head = Vec::new();
    while head.len() < MAX_RESPONSE_BYTES {
        match res.chunk().await {
            Ok(Some(c)) => head.extend_from_slice(&c),
            _ => break,
        }
    }
    let code = Some(i32::from(status.as_u16()));
    if status.is_success() {
        return (code, None, true);
    }
    let text = String::from_utf8_lossy(&head[..head.len().min(MAX_RESPONSE_BYTES)]);
    let error = if text.trim().is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), text.trim())
    };
    (code, Some(truncate(&error)), false)
}

fn literal_ip(url: &str) -> Option<std::net::IpAddr> {
    match reqwest::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_LOGGED_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
