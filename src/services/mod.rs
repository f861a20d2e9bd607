//! The rules of the API, between the HTTP handlers (`api`) and the engine and the store: each
//! handler calls one function here.

pub mod batches;
pub mod results;
pub mod spool;
