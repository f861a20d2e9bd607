//! OpenBatch: an OpenAI-compatible Batch and Files API server on PostgreSQL.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod engine;
pub mod error;
pub mod jsonl;
pub mod local_pg;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod services;
pub mod startup;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod webhooks;
