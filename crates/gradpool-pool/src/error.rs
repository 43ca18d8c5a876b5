//! Errors of the pool and how they become HTTP replies.

use crate::ledger::LedgerError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gradpool_core::wire::ApiError;

/// Everything that can go wrong in the pool. Each variant maps to one HTTP
/// status and one [`ApiError::code`] (see [`PoolError::status`]).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The thing asked for does not exist, or the caller may not see it.
    #[error("{0}")]
    NotFound(String),
    /// No credentials, or credentials the pool does not know.
    #[error("{0}")]
    Unauthorized(String),
    /// Known caller, refused action.
    #[error("{0}")]
    Forbidden(String),
    /// A malformed or inconsistent request.
    #[error("{0}")]
    BadRequest(String),
    /// A job spec that does not parse or validate; the message names the field.
    #[error("{0}")]
    InvalidSpec(String),
    /// A body over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// An uploaded blob whose bytes do not hash to its name.
    #[error("{0}")]
    DigestMismatch(String),
    /// The request conflicts with the current state (lease lost, chain moved on).
    #[error("{0}")]
    Conflict(String),
    /// Not enough money: a budget or a withdrawal above the balance.
    #[error("{0}")]
    InsufficientFunds(String),
    /// The pool's money backend cannot do this (a faucet on a Monero pool,
    /// a deposit address on a dev pool) or is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The pool is running behind: the request can wait, and is refused
    /// rather than queued behind the writers already waiting (sent with
    /// `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// A client past its budget on an open route (see [`crate::throttle`]).
    #[error("{0}")]
    TooManyRequests(String),
    /// A database failure.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A failure to migrate the database schema.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file system failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else that is the pool's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::db::DbError> for PoolError {
    fn from(e: crate::db::DbError) -> PoolError {
        use crate::db::DbError;
        match e {
            DbError::Config(m) => PoolError::BadRequest(m),
            DbError::Sqlx(e) => PoolError::Db(e),
            DbError::Migrate(e) => PoolError::Migrate(e),
            other => PoolError::Internal(other.to_string()),
        }
    }
}

impl PoolError {
    /// The HTTP status and stable code of this error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            PoolError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            PoolError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            PoolError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PoolError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            PoolError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
            PoolError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            PoolError::DigestMismatch(_) => (StatusCode::BAD_REQUEST, "digest_mismatch"),
            PoolError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PoolError::InsufficientFunds(_) => (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"),
            PoolError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            PoolError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            PoolError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            PoolError::Db(_)
            | PoolError::Migrate(_)
            | PoolError::Io(_)
            | PoolError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The body sent for this error; internal details stay in the log.
    pub fn to_api_error(&self) -> ApiError {
        let (status, code) = self.status();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            "internal error; see the pool's log".to_owned()
        } else {
            self.to_string()
        };
        ApiError {
            code: code.to_owned(),
            message,
        }
    }

    pub(crate) fn not_found(what: impl std::fmt::Display) -> PoolError {
        PoolError::NotFound(format!("{what} not found"))
    }
}

impl IntoResponse for PoolError {
    fn into_response(self) -> Response {
        let (status, _) = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        }
        let busy = matches!(self, PoolError::Busy(_));
        let mut response = (status, axum::Json(self.to_api_error())).into_response();
        if busy {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<LedgerError> for PoolError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Insufficient { .. } => PoolError::InsufficientFunds(e.to_string()),
            LedgerError::ZeroAmount | LedgerError::AmountTooLarge(_) | LedgerError::BadKey => {
                PoolError::BadRequest(e.to_string())
            }
            LedgerError::KeyReused { .. } | LedgerError::Overflow(_) => {
                PoolError::Conflict(e.to_string())
            }
            LedgerError::Db(e) => PoolError::Db(e),
            other => PoolError::Internal(format!("ledger: {other}")),
        }
    }
}

impl From<gradpool_core::state::UnknownState> for PoolError {
    /// A state the database holds but no enum has: the schema's `CHECK`
    /// constraints make this a corrupt file, never bad input.
    fn from(e: gradpool_core::state::UnknownState) -> Self {
        PoolError::Internal(format!("stored {e}"))
    }
}

impl From<JsonRejection> for PoolError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            PoolError::TooLarge(e.body_text())
        } else {
            PoolError::BadRequest(e.body_text())
        }
    }
}

impl From<PathRejection> for PoolError {
    fn from(e: PathRejection) -> Self {
        PoolError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for PoolError {
    fn from(e: QueryRejection) -> Self {
        PoolError::BadRequest(e.body_text())
    }
}

impl From<serde_json::Error> for PoolError {
    fn from(e: serde_json::Error) -> Self {
        PoolError::Internal(format!("stored JSON does not parse: {e}"))
    }
}

impl From<tokio::task::JoinError> for PoolError {
    fn from(e: tokio::task::JoinError) -> Self {
        PoolError::Internal(format!("background work failed: {e}"))
    }
}
