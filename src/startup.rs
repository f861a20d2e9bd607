use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, FairSlots};
use crate::config::Settings;
use crate::error::render_framework_error;
use crate::upstream::Upstreams;
use crate::worker::Worker;

pub struct Application {
    port: u16,
    server: Server,
    /// `/metrics` on its own address (`server.metrics_address`), off the public port.
    metrics_server: Option<(u16, ServerHandle, JoinHandle<std::io::Result<()>>)>,
    worker: Option<Worker>,
    webhooks: crate::webhooks::Deliverer,
    maintenance: (watch::Sender<bool>, JoinHandle<()>),
    /// Heartbeat, key reloading and metrics refresh, stopped with maintenance.
    background: Vec<JoinHandle<()>>,
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
        let (stop_maintenance, stopped) = watch::channel(false);
        let maintenance = tokio::spawn(crate::maintenance::run(
            pool.clone(),
            stopped.clone(),
            settings.webhooks.log_retention_secs,
            settings.database.reindex_slack_bytes,
            settings.batches.stuck_grace_secs,
        ));
        let metrics_refresh = tokio::spawn(crate::metrics::refresh_until_stopped(
            pool.clone(),
            std::time::Duration::from_secs(settings.server.metrics_refresh_secs),
            stopped.clone(),
        ));
        let webhooks = crate::webhooks::Deliverer::start(pool.clone(), settings.webhooks.clone())?;
        // Kept by the heartbeats: the per-key request rate and the upstreams' `max_in_flight`
        // are limits for the whole cluster, split between the live replicas.
        let members = crate::cluster::Members::starting();
        let worker = if settings.worker.enabled {
            let upstreams = Upstreams::in_cluster(settings, members.upstream.clone())?;
            Some(Worker::start(
                pool.clone(),
                upstreams,
                settings.worker.clone(),
                settings.batches.clone(),
            ))
        } else {
            None
        };
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).with_context(|| {
            format!(
                "cannot listen on {address}; set OPENBATCH__SERVER__HOST / OPENBATCH__SERVER__PORT \
                 to a free address"
            )
        })?;
        let port = listener.local_addr()?.port();
        let auth = api::Auth::new(&settings.auth);
        let mut background = vec![tokio::spawn(crate::cluster::run(
            pool.clone(),
            settings.cluster.clone(),
            members.clone(),
            stopped.clone(),
        ))];
        background.push(metrics_refresh);
        if let Some(keyring) = auth.keyring() {
            background.push(tokio::spawn(keyring.run(pool.clone(), stopped.clone())));
        }
        let creates = crate::store::create_queue::CreateQueue::start(
            pool.clone(),
            settings.limits.max_active_batches_per_project,
        );
        let limits = &settings.limits;
        let state = web::Data::new(AppState {
            pool,
            creates,
            limits: settings.limits.clone(),
            auth,
            rate: api::RateLimiter::new(settings.limits.requests_per_minute_per_key, members.live),
            expiry_override_secs: settings.batches.expiry_override_secs,
            wake_worker: worker.as_ref().map(Worker::waker),
            uploads: FairSlots::new(
                limits.max_concurrent_uploads,
                limits.max_concurrent_uploads_per_project,
            ),
            webhooks: settings.webhooks.clone(),
            event_streams: FairSlots::new(
                limits.max_event_streams,
                limits.max_event_streams_per_project,
            ),
            live_readers: FairSlots::new(
                limits.max_live_readers,
                limits.max_live_readers_per_project,
            ),
        });
        let host_guard = web::Data::new(api::HostGuard::new(
            settings.auth.enabled,
            &settings.server.allowed_hosts,
        ));
        let public_metrics = settings.server.metrics_address.is_none();
        let metrics_server = match &settings.server.metrics_address {
            Some(address) => {
                let listener = TcpListener::bind(address).with_context(|| {
                    format!(
                        "cannot listen on {address}; set OPENBATCH__SERVER__METRICS_ADDRESS to a \
                         free host:port (or unset it to serve /metrics on the API port)"
                    )
                })?;
                let port = listener.local_addr()?.port();
                let state = state.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .configure(api::metrics_routes)
                })
                .workers(1)
                .listen(listener)?;
                tracing::info!(%address, port, "metrics listening");
                let server = server.run();
                Some((port, server.handle(), tokio::spawn(server)))
            }
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
            maintenance: (stop_maintenance, maintenance),
            background,
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
        let (stop, task) = self.maintenance;
        let _ = stop.send(true);
        let _ = task.await;
        for task in self.background {
            let _ = task.await;
        }
        served
    }
}
