//! The read-only inputs the service reloads when they change: inventory, profiles and tokens
//! ([`catalog`], one snapshot), the profiles' templates ([`profiles`]), and the service's own
//! TLS certificate and key ([`certs`]).

pub mod catalog;
pub mod certs;
pub mod profiles;
