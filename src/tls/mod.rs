//! TLS matters outside the service's own listener: whether a certificate suits the iPXE that
//! bootforge ships (`bootforge tls check`, and the same check at `serve` start-up).
//!
//! Invariant: [`check::check`] is pure (bytes and a clock in, a [`check::Report`] out), so the
//! command line, the service and the tests all judge a certificate by the same code.

pub mod check;
