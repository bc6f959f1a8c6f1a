//! The operator's console: the embedded page ([`page`], `ui/`), logins and sessions
//! ([`login`]), and inventory editing ([`inventory`], through [`editor`]). See docs/CONSOLE.md.

pub mod editor;
pub mod inventory;
pub mod login;
pub mod page;
