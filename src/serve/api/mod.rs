//! The API's handlers, one file per resource. Each is thin: it authorizes
//! ([`crate::serve::app::guard`]), gathers what the request proved (validated host, node token,
//! MAC), calls one transition of the pure [`crate::serve::domain::lifecycle`] core through the
//! single write path ([`crate::serve::app::service::Service::change`]), and turns the outcome
//! into an answer and an audit [`crate::serve::domain::event::Event`]. Work that touches the
//! disk or renders runs on the blocking pool; only answers built from memory (health, metrics,
//! refusals) stay on the connection's task. Which path reaches which handler is
//! `dispatch.rs`'s alone.

pub mod admin;
pub mod assets;
pub mod bmc;
pub mod boot;
pub mod events;
pub mod flags;
pub mod hardware;
pub mod hosts;
pub mod installer;
pub mod media;
pub mod sessions;
pub mod timeline;
