//! The pure core: what the service decides, with no file system, network, clock or runtime.
//!
//! Everything here is a function of its arguments (time stamps are passed in), so it is unit
//! tested transition by transition and can be read without the rest of the service. A layer
//! test (`tests/layers.rs`) holds this folder to that: it imports nothing above it, and no
//! `std::fs`, `std::net` sockets, `tokio` or `SystemTime`.

pub mod actor;
pub mod discover;
pub mod event;
pub mod lifecycle;
pub mod query;
pub mod timeline;
