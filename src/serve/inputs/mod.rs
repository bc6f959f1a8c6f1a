//! The read-only inputs the service reloads when they change: inventory, profiles and tokens
//! ([`catalog`], one snapshot), and the profiles' templates ([`profiles`]).

pub mod catalog;
pub mod profiles;
