//! Shoal's endpoint: a PostgreSQL server that applications connect to instead of the
//! coordinator. It relays each client's session to the coordinator (which authenticates the
//! client), runs statements that one shard group answers on that group's node itself, at the
//! client's isolation level, commits transactions that wrote on several servers with
//! two-phase commit, and resolves what a crash left prepared.
//!
//! - pure: `control` (what a statement means for the transaction), `transaction` (the path a
//!   transaction takes and its participants), `twophase`'s naming and resolution rules,
//!   `gate` (shard groups closed by a move's fence), `session::settings`;
//! - the shell: `wire` (framing with `pgwire`'s message types), `server` (connections to the
//!   servers), `pool`, `session` (one client), `listener` (accepting clients, cancel
//!   requests), `twophase::recover`, `runtime` (start, topology refresh, recovery loop, and
//!   its sessions handed to `shoal_cluster::deadlock` for detection across servers).

pub mod control;
pub mod error;
pub mod gate;
pub mod listener;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod session;
pub mod shared;
pub mod transaction;
pub mod twophase;
pub mod wire;

pub use error::{EndpointError, ServerError};
pub use runtime::{start, Endpoint};
pub use shared::Options;
