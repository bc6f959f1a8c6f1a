//! The operator's console: the page at `/ui/` (embedded in the binary: no CDN, no external font
//! or script), its logins (`/session`), and inventory editing (`/inventory`).
//!
//! The page is static HTML, CSS and vanilla JavaScript that calls the same JSON API as `curl`
//! does; a console session cookie authorizes that API like a token
//! ([`crate::serve::auth::session`]). Every console answer carries a strict
//! `Content-Security-Policy` (`default-src 'self'`, no inline script or style, `frame-ancestors
//! 'none'`), `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`; the page holds
//! no secret (the CSRF token is fetched into memory, the session id is an `HttpOnly` cookie) and
//! puts none into a URL.
//!
//! Its parts: the embedded page and its headers ([`page`], `ui/`), logins ([`login`]), and
//! inventory editing ([`inventory`], through [`editor`]). See docs/CONSOLE.md.

pub mod discover;
pub mod editor;
pub mod inventory;
pub mod login;
pub mod page;
