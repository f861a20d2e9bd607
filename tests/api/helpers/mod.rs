//! What the integration tests share, one file per concern: the test database (`db`), an
//! in-process server and requests to it (`app`), replica processes (`replicas`), the fake
//! upstream (`upstream`), where content is kept (`storage`) and the notifications waits wake on (`signals`). Tests import
//! everything from `crate::helpers`.

mod app;
mod db;
mod replicas;
mod signals;
mod storage;
mod upstream;

pub use app::*;
pub use db::*;
pub use replicas::*;
pub use signals::*;
pub use storage::*;
pub use upstream::*;
