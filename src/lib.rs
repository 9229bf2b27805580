//! chatd: a realtime chat server speaking Rocket.Chat's realtime (DDP) and REST APIs.
pub mod api;
pub mod app;
pub mod auth;
pub mod chat;
pub mod config;
pub mod ctx;
pub mod gateway;
pub mod ids;
pub mod import;
pub mod peer;
pub mod protocol;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::{raise_fd_limit, Server, ServerError};
