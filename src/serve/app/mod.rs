//! What every handler shares: the [`service::Service`] and its configuration, the single write
//! path ([`change`]), the authorization guards ([`guard`]), the media signer, the BMC client, the
//! metrics, whether an install is stalled ([`progress`]), and the one place lower layers' errors
//! become HTTP answers ([`error`]).

pub mod bmc;
pub mod change;
pub mod config;
pub mod discover;
pub mod error;
pub mod guard;
pub mod hardware;
pub mod locks;
pub mod media;
pub mod metrics;
pub mod progress;
pub mod refresher;
pub mod service;
