//! The one place where lower layers' errors become HTTP answers. The store, inputs and auth
//! layers each have their own error type and know nothing of HTTP; what a caller is told (and
//! which status) is decided here.

use crate::serve::store::StoreError;
use crate::serve::web::reply::HttpError;

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTooLong => HttpError::bad_request(e.to_string()),
            _ => HttpError::internal(e),
        }
    }
}
