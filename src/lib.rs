//! bootforge: per-node iPXE boot media for networks without DHCP, and the boot decision service
//! that tells each node whether to install or boot its local disk.
//!
//! Data flows one way through the modules:
//!
//! ```text
//! media builder:  CSV ──inventory──▶ Node ──script──▶ iPXE script ──media──▶ image ──fleet──▶ output dir
//! boot service:   request ──serve──▶ inventory + flag store ──script / profiles──▶ answer
//! ```
//!
//! `main.rs` only parses the command line (`cli`) and calls into these modules, so tests and
//! benchmarks drive exactly the code the binary runs.

pub mod atomic;
pub mod cafile;
pub mod cli;
pub mod firmware;
pub mod fleet;
pub mod inventory;
pub mod media;
pub mod redfish;
pub mod script;
pub mod serve;
pub mod tls;
pub mod token;
