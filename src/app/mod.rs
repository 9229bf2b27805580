//! The application core both front doors share: the operations (`ops`), their one error type
//! (`error`), and the backend-neutral chat rules every store backend applies (`rules`).

pub mod actions;
pub mod error;
pub mod login_guard;
pub mod ops;
pub mod permissions;
pub mod rules;

pub use error::{AppError, AppResult, Code};
