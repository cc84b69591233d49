//! The operator commands: one file per command. `main.rs` only declares them.
//!
//! `status`, `top` and `gate` ask a running agent over its JSON API
//! ([`crate::api::types`], shared with the server) through [`client`].

pub mod check;
pub mod client;
pub mod gate;
pub mod progress;
pub mod status;
pub mod table;
pub mod top;

/// Where `status`, `top` and `gate` find the agent unless `--agent` says otherwise.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9464";
