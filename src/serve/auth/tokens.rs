//! API tokens: who may read the flags, who may set them.
//!
//! The tokens file holds one line per token, `NAME ROLE SHA256-OF-TOKEN` (hex), so the file itself
//! reveals no usable secret. A request presents `Authorization: Bearer TOKEN`; the service hashes
//! it and looks the hash up. Names, never tokens, go into the audit log.

use crate::serve::domain::actor::{Caller, Role, Via};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: the service was started without a tokens file.
    ApiDisabled,
    /// 401: the tokens file could not be loaded at the last reload.
    TokensUnusable,
    /// 401: no `Authorization: Bearer` token.
    MissingToken,
    /// 401: a token the tokens file does not hold (or no longer holds).
    UnknownToken,
    /// 403: a known token whose role is too small.
    RoleTooSmall { name: String, has: Role, needs: Role },
    /// 401: a console session cookie that is unknown, expired, logged out, or whose token was
    /// revoked.
    NoSession,
    /// 403: a state-changing console request without the session's CSRF token.
    Csrf,
    /// 403: a console request that the browser says comes from another site (`Origin`,
    /// `Sec-Fetch-Site`).
    CrossSite,
    /// 503: a console session cookie that cannot be checked now: the database that holds the
    /// sessions does not answer (try again; nothing was decided).
    SessionsUnavailable,
}

impl Denied {
    /// A fixed name for the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            Denied::ApiDisabled => "api-disabled",
            Denied::TokensUnusable => "tokens-file-unusable",
            Denied::MissingToken => "missing-token",
            Denied::UnknownToken => "unknown-token",
            Denied::RoleTooSmall { .. } => "role-too-small",
            Denied::NoSession => "no-session",
            Denied::Csrf => "csrf",
            Denied::CrossSite => "cross-site",
            Denied::SessionsUnavailable => "sessions-unavailable",
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Denied::ApiDisabled => "the API is disabled: this server was started without --tokens-file; create one with lines `NAME ROLE SHA256-OF-TOKEN` and restart".into(),
            Denied::TokensUnusable => "the tokens file could not be loaded at the last reload, so every API token is refused until it is fixed; the server log and the audit log say why".into(),
            Denied::MissingToken => "missing API token: send `Authorization: Bearer TOKEN`".into(),
            Denied::UnknownToken => "unknown API token: check the token against --tokens-file".into(),
            Denied::RoleTooSmall { name, has, needs } => format!(
                "token {name:?} has role {}, this needs role {}",
                has.as_str(),
                needs.as_str()
            ),
            Denied::NoSession => "the console session has expired or was ended: log in again".into(),
            Denied::Csrf => "missing or wrong X-CSRF-Token: reload the console".into(),
            Denied::CrossSite => "refused: the request comes from another site".into(),
            Denied::SessionsUnavailable => "console sessions cannot be checked now: the database does not answer; try again in a few seconds".into(),
        }
    }
}

/// The parsed tokens file. `None` inside means the service was started without one.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: Option<HashMap<[u8; 32], Caller>>,
    /// The tokens file could not be loaded at the last reload: every token is refused until it
    /// can (failing closed, so that a broken edit never keeps a revoked token alive).
    unusable: bool,
}

impl Tokens {
    /// No tokens file: the safe default is that every API call that needs a token is refused
    /// with 401 and a message saying how to enable the API. Boot answers, installer callbacks,
    /// assets, health and metrics do not need an API token and keep working.
    pub fn disabled() -> Tokens {
        Tokens { by_hash: None, unusable: false }
    }

    /// What a tokens file that cannot be read or parsed gives: every API call refused.
    pub fn unusable() -> Tokens {
        Tokens { by_hash: None, unusable: true }
    }

    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tokens file {}: {e}", path.display()))?;
        Tokens::parse(&path.display().to_string(), &text)
    }

    /// Parses `NAME ROLE SHA256HEX` lines; `#` starts a comment. Every bad line is reported.
    pub fn parse(source: &str, text: &str) -> anyhow::Result<Tokens> {
        let mut map = HashMap::new();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = i + 1;
            if fields.len() != 3 {
                errors.push(format!(
                    "{source}:{n}: expected `NAME ROLE SHA256-HEX`, found {} fields",
                    fields.len()
                ));
                continue;
            }
            let role = match fields[1].parse::<Role>() {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{source}:{n}: {e}"));
                    continue;
                }
            };
            let mut hash = [0u8; 32];
            if hex::decode_to_slice(fields[2], &mut hash).is_err() {
                errors.push(format!(
                    "{source}:{n}: the third field must be the SHA-256 of the token in 64 hex digits (e.g. `printf %s \"$TOKEN\" | sha256sum`)"
                ));
                continue;
            }
            let caller = Caller { name: fields[0].to_string(), role, via: Via::Token };
            if map.insert(hash, caller).is_some() {
                errors.push(format!("{source}:{n}: this token hash appears twice"));
            }
        }
        anyhow::ensure!(errors.is_empty(), "{}", errors.join("\n"));
        Ok(Tokens { by_hash: Some(map), unusable: false })
    }

    pub fn enabled(&self) -> bool {
        self.by_hash.is_some()
    }

    pub fn is_unusable(&self) -> bool {
        self.unusable
    }

    /// Checks the `Authorization` header value against the role `need`.
    pub fn check(&self, authorization: Option<&str>, need: Role) -> Result<Caller, Denied> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let hash = self.known(token)?;
        let caller = self.by_hash(&hash).ok_or(Denied::UnknownToken)?;
        caller.at_least(need)
    }

    /// The SHA-256 of `token` if the tokens file holds it: what a console session opened with
    /// a token keeps, so that removing the line ends the session too.
    pub fn known(&self, token: Option<&str>) -> Result<[u8; 32], Denied> {
        let Some(map) = &self.by_hash else {
            return Err(if self.unusable { Denied::TokensUnusable } else { Denied::ApiDisabled });
        };
        let token = token.ok_or(Denied::MissingToken)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !map.contains_key(&hash) {
            return Err(Denied::UnknownToken);
        }
        Ok(hash)
    }

    /// The caller a token hash stands for now (`None` once its line is gone).
    pub fn by_hash(&self, hash: &[u8; 32]) -> Option<Caller> {
        self.by_hash.as_ref()?.get(hash).cloned()
    }
}

impl Caller {
    /// The caller, if its role is `need` or more.
    pub fn at_least(self, need: Role) -> Result<Caller, Denied> {
        if self.role < need {
            return Err(Denied::RoleTooSmall { name: self.name, has: self.role, needs: need });
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(t: &str) -> String {
        hex::encode(Sha256::digest(t.as_bytes()))
    }

    #[test]
    fn roles_nest() {
        let text = format!(
            "# ops\nalice admin {}\nbob read {}  # read only\n",
            sha("a-tok"),
            sha("b-tok")
        );
        let t = Tokens::parse("tokens", &text).unwrap();
        assert_eq!(t.check(Some("Bearer a-tok"), Role::Reimage).unwrap().name, "alice");
        let denied = t.check(Some("Bearer b-tok"), Role::Reimage).unwrap_err();
        assert_eq!(denied.kind(), "role-too-small");
        assert!(t.check(Some("Bearer b-tok"), Role::Read).is_ok());
        assert_eq!(t.check(Some("Bearer x"), Role::Read), Err(Denied::UnknownToken));
        assert_eq!(t.check(None, Role::Read), Err(Denied::MissingToken));
        assert_eq!(
            Tokens::disabled().check(Some("Bearer a-tok"), Role::Read),
            Err(Denied::ApiDisabled)
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let err = Tokens::parse("t", "a read 12\nb root 00\n").unwrap_err().to_string();
        assert!(err.contains("t:1:") && err.contains("t:2:"), "{err}");
    }
}
