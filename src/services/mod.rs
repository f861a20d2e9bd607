//! The rules of the API, one module per resource, between the HTTP handlers (`api`), which
//! only extract, call one function here and render, and the engine and the store below.

pub mod batches;
pub mod files;
pub mod results;
pub mod webhooks;
