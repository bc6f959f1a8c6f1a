//! Transport only: the accept loop and its connection caps, request limits and bodies, [`Req`]
//! and [`Reply`], the route table, static files. It takes its handler as an argument
//! ([`accept::Handler`]) and knows nothing of the service behind it.
//!
//! [`Req`]: request::Req
//! [`Reply`]: reply::Reply

pub mod accept;
pub mod body;
pub mod files;
pub mod limits;
pub mod reply;
pub mod request;
pub mod routes;
