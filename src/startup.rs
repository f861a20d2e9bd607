use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::error::render_framework_error;
use crate::upstream::Upstreams;
use crate::worker::Worker;

pub struct Application {
    port: u16,
    server: Server,
    worker: Option<Worker>,
    maintenance: (watch::Sender<bool>, JoinHandle<()>),
}

impl Application {
    /// Connects to the database (creating it if allowed), applies migrations and binds.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let pool = crate::store::connect(&settings.database).await?;
        crate::store::migrate(&pool).await?;
        Self::build_with_pool(settings, pool)
    }

    pub fn build_with_pool(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let (stop_maintenance, stopped) = watch::channel(false);
        let maintenance = tokio::spawn(crate::maintenance::run(pool.clone(), stopped));
        let worker = if settings.worker.enabled {
            let upstreams = Upstreams::new(settings)?;
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
        let state = web::Data::new(AppState {
            pool,
            limits: settings.limits.clone(),
            auth: api::Auth::new(&settings.auth),
            rate: api::RateLimiter::new(settings.limits.requests_per_minute_per_key),
            expiry_override_secs: settings.batches.expiry_override_secs,
            wake_worker: worker.as_ref().map(Worker::waker),
            event_streams: Default::default(),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Outermost, so that even rewritten framework errors carry the request id.
                .wrap(from_fn(api::request_id_middleware))
                .wrap(ErrorHandlers::new().default_handler(render_framework_error))
                .configure(api::routes)
        })
        .listen(listener)?;
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        tracing::info!(%address, port, "openbatch listening");
        Ok(Self {
            port,
            server: server.run(),
            worker,
            maintenance: (stop_maintenance, maintenance),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then drains HTTP and the worker.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Some(worker) = self.worker {
            worker.shutdown().await;
        }
        let (stop, task) = self.maintenance;
        let _ = stop.send(true);
        let _ = task.await;
        served
    }
}
