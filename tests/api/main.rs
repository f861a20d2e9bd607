//! Integration tests through real HTTP against a real PostgreSQL; every test gets its own
//! freshly created database.

mod abuse;
mod abuse_clients;
mod abuse_keys;
mod auth;
mod batches;
mod chunks;
mod cli;
mod cluster;
mod console;
mod crash;
mod create_queue;
mod engine;
mod errors;
mod exact_limits;
mod fair_slots;
mod fake_gpu;
mod files;
mod first_run;
mod helpers;
mod hostile_http;
mod idempotency;
mod live_results;
mod memory;
mod models;
mod openapi;
mod poison;
mod pools;
mod replicas;
mod retry;
mod retry_limits;
mod secrets;
mod startup;
mod stored_values;
mod webhooks;
mod wedge;
