//! The `gradpool` command, as a library: the binary's `main` parses the
//! command line and calls into these modules; integration tests call them
//! directly.
//!
//! One binary serves every role:
//!
//! - `gradpool pool` runs a pool; `gradpool provider` runs the agent on a rig;
//! - `gradpool account …` and `gradpool job …` are the customer's commands;
//! - `gradpool train`, `gradpool sample` and `gradpool bench` run the native
//!   runtime locally; `gradpool segment run` is what a provider runs in a
//!   child process for each segment;
//! - `gradpool devnet` starts a whole pool with providers on this machine and
//!   trains a model end to end.

pub mod cmd;
pub mod credentials;
pub mod devnet;
pub mod pool_trust;
pub mod postgres;
pub mod provider_config;
pub mod watch;
