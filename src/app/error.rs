//! The one application error of the shared operations, tagged by who is at fault. Each front
//! door renders it its own way (DDP: a Meteor error; REST: Rocket.Chat's envelope and an HTTP
//! status), and only the client's own errors carry details to the client. Any thread.

use std::borrow::Cow;

use crate::store::StoreError;

/// A Rocket.Chat error code: a name like `error-invalid-room`, or a number like 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Name(Cow<'static, str>),
    Number(u16),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Name(n) => f.write_str(n),
            Code::Number(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// The client asked for something it may not have or that cannot be done (client's fault).
    #[error("{reason} [{code}]")]
    Client {
        code: Code,
        reason: String,
        /// The method or endpoint that refused, when the door reports it.
        method: Option<String>,
    },
    /// Parameters of the wrong type or shape (Meteor's `check` failure; REST `invalid-params`).
    #[error("invalid parameters: {0}")]
    Invalid(String),
    /// The store failed (unavailable, I/O): not the client's fault; clients see a generic text.
    #[error("store failure: {0}")]
    Store(String),
    /// A bug or damaged data in chatd: clients see a generic text.
    #[error("internal error: {0}")]
    Internal(String),
    /// Another part of the server did not answer in time (a shard round trip timed out): not
    /// the client's fault; it may retry.
    #[error("server busy: {0}")]
    Busy(String),
}

pub type AppResult<T> = Result<T, AppError>;

/// The error code and text both doors give when the store failed (e.g. MongoDB unreachable):
/// the client may retry; nothing about the failure itself is shown.
pub const STORE_UNAVAILABLE: &str = "error-store-unavailable";
pub const STORE_UNAVAILABLE_REASON: &str = "The database is unavailable; try again shortly";
/// The same when a round trip inside the server timed out.
pub const SERVER_BUSY: &str = "error-server-busy";
pub const SERVER_BUSY_REASON: &str = "The server is busy; try again shortly";

impl AppError {
    pub fn client(code: &'static str, reason: impl Into<String>) -> Self {
        AppError::Client {
            code: Code::Name(Cow::Borrowed(code)),
            reason: reason.into(),
            method: None,
        }
    }

    /// A numbered client error (Rocket.Chat answers failed logins with 403).
    pub fn status(code: u16, reason: impl Into<String>) -> Self {
        AppError::Client {
            code: Code::Number(code),
            reason: reason.into(),
            method: None,
        }
    }

    pub fn invalid(what: impl Into<String>) -> Self {
        AppError::Invalid(what.into())
    }

    pub fn internal(what: impl Into<String>) -> Self {
        AppError::Internal(what.into())
    }

    /// Names the method that refused (client errors only).
    pub fn with_method(mut self, name: &str) -> Self {
        if let AppError::Client { method, .. } = &mut self {
            *method = Some(name.to_owned());
        }
        self
    }

    /// Logs a server-side failure once, at the level its blame deserves.
    pub fn log(&self, what: &str) {
        match self {
            AppError::Store(e) => tracing::warn!(what, error = %e, "store failure"),
            AppError::Busy(e) => tracing::warn!(what, error = %e, "server busy"),
            AppError::Internal(e) => tracing::error!(what, error = %e, "internal error"),
            AppError::Client { .. } | AppError::Invalid(_) => {}
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rejected { code, reason } => AppError::client(code, reason),
            StoreError::Failed(e) => AppError::Store(e),
            StoreError::Internal(e) => AppError::Internal(e),
        }
    }
}
