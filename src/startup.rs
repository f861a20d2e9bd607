use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::DropGuard;

use crate::api::{self, AppState, FairSlots};
use crate::config::Settings;
use crate::engine::upstream::Upstreams;
use crate::engine::Worker;
use crate::error::render_framework_error;
use crate::notify::{Feed, Notifications};
use crate::store::content::Content;
use crate::store::keys;
use crate::tasks::TaskGroup;

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on its own address (`server.metrics_address`), off the public port.
    metrics_server: Option<(u16, ServerHandle, JoinHandle<std::io::Result<()>>)>,
    worker: Option<Worker>,
    webhooks: crate::webhooks::Deliverer,
    /// Maintenance, heartbeats, key reloading, metrics refresh and the LISTEN connection,
    /// stopped last; the worker's and webhook delivery's groups are its children.
    background: TaskGroup,
    /// Stops every task should this be dropped without `run_until_stopped`.
    _stop_on_drop: DropGuard,
}

/// What every request handler shares: the pool, the admission queue, limits and slots.
fn app_state(
    settings: &Settings,
    content: Content,
    auth: api::Auth,
    live: Arc<AtomicUsize>,
    wake_worker: Option<Arc<tokio::sync::Notify>>,
    batch_status: Feed,
) -> web::Data<AppState> {
    let pool = content.pool().clone();
    let creates = crate::services::batches::create_queue::CreateQueue::start(
        pool.clone(),
        settings.limits.max_active_batches_per_project,
    );
    let limits = &settings.limits;
    web::Data::new(AppState {
        pool,
        content,
        creates,
        limits: settings.limits.clone(),
        auth,
        rate: api::RateLimiter::new(settings.limits.requests_per_minute_per_key, live),
        expiry_override_secs: settings.batches.expiry_override_secs,
        wake_worker,
        uploads: FairSlots::new(
            limits.max_concurrent_uploads,
            limits.max_concurrent_uploads_per_project,
        ),
        webhooks: settings.webhooks.clone(),
        event_streams: FairSlots::new(
            limits.max_event_streams,
            limits.max_event_streams_per_project,
        ),
        live_readers: FairSlots::new(limits.max_live_readers, limits.max_live_readers_per_project),
        batch_status,
        completion_windows: settings.batches.windows(),
    })
}

impl Application {
    /// Connects to the database (creating it if allowed), applies migrations and binds.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // Before touching the database: a refusal should not wait on a connection.
        settings.check_serving()?;
        let pool = crate::store::connect(&settings.database).await?;
        crate::store::migrate(&pool).await?;
        Self::build_with_pool(settings, pool)
    }

    pub fn build_with_pool(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        settings.check_serving()?;
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).with_context(|| {
            format!(
                "cannot listen on {address}; set OPENBATCH__SERVER__HOST / OPENBATCH__SERVER__PORT \
                 to a free address"
            )
        })?;
        let port = listener.local_addr()?.port();
        let auth = api::Auth::new(&settings.auth);
        let content = Content::new(pool, &settings.storage)?;
        let Background {
            group: background,
            stop_on_drop,
            webhooks,
            worker,
            members,
            batch_status,
        } = Background::start(settings, &content, &auth)?;
        let wake_worker = worker.as_ref().map(Worker::waker);
        let state = app_state(
            settings,
            content,
            auth,
            members.live,
            wake_worker,
            batch_status,
        );
        let host_guard = web::Data::new(api::HostGuard::new(
            settings.auth.enabled,
            &settings.server.allowed_hosts,
        ));
        let public_metrics = settings.server.metrics_address.is_none();
        let metrics_server = match &settings.server.metrics_address {
            Some(address) => Some(metrics_server(address, state.clone())?),
            None => None,
        };
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(host_guard.clone())
                .wrap(from_fn(api::host_guard_middleware))
                // Outermost, so that even rewritten framework errors carry the request id.
                .wrap(from_fn(api::request_id_middleware))
                .wrap(ErrorHandlers::new().default_handler(render_framework_error))
                .configure(api::routes)
                .configure(|cfg| {
                    if public_metrics {
                        api::metrics_routes(cfg);
                    }
                })
        })
        .listen(listener)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        tracing::info!(%address, port, "openbatch listening");
        Ok(Self {
            port,
            server: server.run(),
            metrics_server,
            worker,
            webhooks,
            background,
            _stop_on_drop: stop_on_drop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the separate metrics listener, when `server.metrics_address` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _, _)| *port)
    }

    /// Serves until SIGTERM/SIGINT, then drains HTTP and the worker.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = match self.metrics_server {
            Some((_, handle, metrics)) => {
                let served = self.server.await;
                // Both servers hear the signal; stop the metrics one also if the API one ended.
                handle.stop(true).await;
                let _ = metrics.await;
                served
            }
            None => self.server.await,
        };
        if let Some(worker) = self.worker {
            worker.shutdown().await;
        }
        self.webhooks.shutdown().await;
        // The heartbeat leaves the replica table on its way out: this replica stops counting
        // once everything else has stopped.
        self.background.stop().await;
        served
    }
}

/// `/metrics` alone, on `address`: (its port, its handle, the task serving it).
fn metrics_server(
    address: &str,
    state: web::Data<AppState>,
) -> anyhow::Result<(u16, ServerHandle, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(address).with_context(|| {
        format!(
            "cannot listen on {address}; set OPENBATCH__SERVER__METRICS_ADDRESS to a \
             free host:port (or unset it to serve /metrics on the API port)"
        )
    })?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(api::metrics_routes)
    })
    .workers(1)
    .listen(listener)?;
    tracing::info!(%address, port, "metrics listening");
    let server = server.run();
    Ok((port, server.handle(), tokio::spawn(server)))
}

/// A replica's tasks besides HTTP.
struct Background {
    /// Maintenance, heartbeats, key reloading, metrics refresh and the LISTEN connection; the
    /// parent of the worker's and webhook delivery's groups.
    group: TaskGroup,
    stop_on_drop: DropGuard,
    webhooks: crate::webhooks::Deliverer,
    worker: Option<Worker>,
    /// Kept by the heartbeats: the per-key request rate and the upstreams' `max_in_flight`
    /// are limits for the whole cluster, split between the live replicas.
    members: crate::cluster::Members,
    /// Status changes, for the event streams.
    batch_status: Feed,
}

impl Background {
    fn start(settings: &Settings, content: &Content, auth: &api::Auth) -> anyhow::Result<Self> {
        let pool = content.pool();
        let group = TaskGroup::new();
        // Also when starting fails half way: nothing started outlives it.
        let stop_on_drop = group.token().drop_guard();
        let mut notices = Notifications::new();
        group.spawn(crate::maintenance::run(
            content.clone(),
            group.token(),
            settings.webhooks.log_retention_secs,
            settings.database.reindex_slack_bytes,
            settings.batches.stuck_grace_secs,
        ));
        group.spawn(crate::metrics::refresh_until_stopped(
            pool.clone(),
            std::time::Duration::from_secs(settings.server.metrics_refresh_secs),
            group.token(),
        ));
        let webhooks = crate::webhooks::Deliverer::start(
            pool.clone(),
            settings.webhooks.clone(),
            &mut notices,
            group.child(),
        )?;
        let members = crate::cluster::Members::starting();
        let worker = if settings.worker.enabled {
            let upstreams = Upstreams::in_cluster(settings, members.upstream.clone())?;
            Some(Worker::start(
                content.clone(),
                upstreams,
                settings.worker.clone(),
                settings.batches.clone(),
                crate::engine::BatchLimits::of(&settings.limits),
                &mut notices,
                group.child(),
            ))
        } else {
            None
        };
        group.spawn(crate::cluster::run(
            pool.clone(),
            settings.cluster.clone(),
            members.clone(),
            group.token(),
        ));
        if let Some(keyring) = auth.keyring() {
            let notices = notices.subscribe(&[keys::KEYS_CHANNEL]);
            group.spawn(keyring.run(pool.clone(), notices, group.token()));
        }
        let batch_status = notices.feed(&[crate::store::leases::STATUS_CHANNEL]);
        notices.start(pool.clone(), &group);
        Ok(Self {
            group,
            stop_on_drop,
            webhooks,
            worker,
            members,
            batch_status,
        })
    }
}
