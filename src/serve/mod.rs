//! The boot decision service (`bootforge serve`); its command-line client is `crate::cli::client`.
//!
//! Every boot medium asks `GET /boot/{host}?mac=..&ip=..&medium=..[&token=..]` at every boot. The
//! answer is always a 200 iPXE script: the host's install chain if, and only if, an operator
//! flagged it for reimage (and the node's token and MAC check out), otherwise the local-boot
//! script. The installer then fetches its rendered config from `/config/{host}/{file}` and calls
//! `/hosts/{host}/done`, which clears the flag, so the next boot is local again.
//!
//! The service is layered like the media builder, one way: each folder imports only folders
//! below it (`tests/layers.rs` fails the build otherwise; docs/DESIGN.md lists what each may
//! import):
//!
//! ```text
//! server        start-up and shutdown
//! dispatch      the one table of every endpoint: route → handler
//! api, console  thin handlers, one file per resource; the console's page, logins, inventory edits
//! app           Service, the single write path (Service::change), authorization guards
//! inputs        the reloaded files: inventory, profiles, tokens
//! auth          tokens, sessions (their checks; the rows are the store's), LDAP
//! store         the database: hosts' states, the audit log, console sessions
//! web, domain   transport (knows no Service); the pure core (no fs, net, clock or runtime)
//! ```
//!
//! The process holds nothing that matters: the inventory, profiles and API tokens are files it
//! reloads when they change ([`inputs::catalog`]), flags are per-host files in `--state-dir`
//! written durably under a lock ([`store::files`]), and the audit log is an append-only file
//! there ([`store::audit`]).
//! Any number of instances can share one state directory and restart at any moment.

pub mod api;
pub mod app;
pub mod auth;
pub mod console;
pub mod dispatch;
pub mod domain;
pub mod inputs;
pub mod server;
pub mod store;
pub mod util;
pub mod web;

pub use app::config::Config;
pub use server::Server;
