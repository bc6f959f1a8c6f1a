//! Who acts: a caller's role, how they proved who they are, and the actor an audit record names.

/// What a token may do. Each role includes the ones before it: `admin` ⊇ `reimage` ⊇ `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `GET /hosts`, `GET /hosts/{h}`, `GET /events`.
    Read,
    /// Also `PUT`/`DELETE /hosts/{h}/reimage`.
    Reimage,
    /// Also `POST /admin/reload`.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Reimage => "reimage",
            Role::Admin => "admin",
        }
    }
}

/// Roles in configuration files (`--ldap-config`'s `[roles]`), with the same words and error.
impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "reimage" => Ok(Role::Reimage),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("{s:?} is not a role; expected read, reimage or admin")),
        }
    }
}

/// An authenticated caller: who (a token's name from the tokens file, or a directory login
/// name), with which role, and how they proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub via: Via,
}

/// How a caller authenticated, recorded with every action they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// `Authorization: Bearer TOKEN` on the request itself.
    Token,
    /// A console session opened with an API token.
    TokenSession,
    /// A console session opened with a directory (LDAP) account.
    LdapSession,
    /// A `bootforge` command run on a machine with the database's credentials (`bootforge
    /// inventory import`): the name is the local account that ran it.
    Cli,
}

/// Who did something, as audit records carry it (flattened into the record:
/// `"by": NAME, "role": ROLE, "via": HOW`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    pub by: String,
    pub role: Role,
    pub via: Via,
}

impl From<&Caller> for Actor {
    fn from(c: &Caller) -> Actor {
        Actor { by: c.name.clone(), role: c.role, via: c.via }
    }
}
