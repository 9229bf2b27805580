//! chatd: a realtime chat server speaking Rocket.Chat's realtime (DDP) and REST APIs.
pub mod ids;
pub mod store;
