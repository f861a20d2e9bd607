//! What the integration tests share, one file per concern: the test database (`db`), an
//! in-process server and requests to it (`app`), replica processes (`replicas`) and the fake
//! upstream (`upstream`). Tests import everything from `crate::helpers`.

mod app;
mod db;
mod replicas;
mod upstream;

pub use app::*;
pub use db::*;
pub use replicas::*;
pub use upstream::*;
