//! The command line: argument definitions and the thin glue from them to the library.

pub mod build;
pub mod serve;
