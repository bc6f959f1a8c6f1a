//! The one place where lower layers' errors become HTTP answers. The store, inputs and auth
//! layers each have their own error type and know nothing of HTTP; what a caller is told (and
//! which status) is decided here.

use crate::serve::auth::tokens::Denied;
use crate::serve::store::StoreError;
use crate::serve::web::reply::HttpError;

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTooLong => HttpError::bad_request(e.to_string()),
            StoreError::Unavailable(_) | StoreError::Busy => {
                tracing::error!("{e}");
                HttpError::new(
                    503,
                    "the state database is unavailable or busy; nothing was changed, try again",
                )
                .header("Retry-After", "2".into())
            }
            _ => HttpError::internal(e),
        }
    }
}

/// The status a refusal is answered (and audited) with: 401 when the caller is not known, 403
/// when it is known but not allowed, or the request is not the console's own; 503 when a
/// session cannot be checked because the database does not answer.
pub fn denied_status(denied: &Denied) -> u16 {
    match denied {
        Denied::RoleTooSmall { .. } | Denied::Csrf | Denied::CrossSite => 403,
        Denied::SessionsUnavailable => 503,
        _ => 401,
    }
}

impl From<&Denied> for HttpError {
    fn from(denied: &Denied) -> Self {
        let e = HttpError::new(denied_status(denied), denied.message());
        match denied {
            Denied::SessionsUnavailable => e.header("Retry-After", "5".into()),
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::domain::actor::Role;

    #[test]
    fn an_unknown_caller_gets_401_a_known_one_403() {
        let too_small =
            Denied::RoleTooSmall { name: "bob".into(), has: Role::Read, needs: Role::Reimage };
        assert_eq!(HttpError::from(&too_small).status, 403);
        assert_eq!(denied_status(&Denied::Csrf), 403);
        assert_eq!(denied_status(&Denied::CrossSite), 403);
        assert_eq!(denied_status(&Denied::UnknownToken), 401);
        assert_eq!(denied_status(&Denied::MissingToken), 401);
        assert_eq!(denied_status(&Denied::NoSession), 401);
        let store = StoreError::NameTooLong;
        assert_eq!(HttpError::from(store).status, 400);
    }
}
