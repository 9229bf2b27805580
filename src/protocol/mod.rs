//! Wire formats: DDP frames and Meteor errors (`ddp`), and the JSON shapes of messages, rooms
//! and subscriptions as Rocket.Chat clients read them (`wire`). Pure functions; any thread.

pub mod ddp;
pub mod wire;
