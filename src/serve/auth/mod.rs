//! Who the caller is: API tokens ([`tokens`]), console sessions with their CSRF and login
//! throttles ([`session`]), and directory (LDAP) logins ([`ldap`]).

pub mod ldap;
pub mod session;
pub mod tokens;
