//! DDL propagation: applications change distributed and reference tables with plain SQL on the
//! coordinator, and the change reaches every shard and replica inside the same transaction, or
//! the statement is refused before anything changes.
//!
//! The work happens inside PostgreSQL, because it must happen inside the transaction of the
//! statement that a client (psql, a migration tool) sent to the coordinator, and no extension
//! can be installed there: event triggers on the coordinator (`sql/coordinator.sql`) plan the
//! change from the table's definition before and after the statement and send it to each node's
//! inbox (`sql/node.sql`) through the coordinator's own postgres_fdw connection. This crate
//! installs those pieces (`shoal init`, `node add`); ARCHITECTURE.md has the design.

mod apply;
pub mod definition;
mod error;
mod install;
mod naming;
mod record;
pub mod statement;
pub mod verify;

pub use apply::{apply, Applied};
pub use error::DdlError;
pub use install::{inbox_table, install_coordinator, install_node, Triggers, NODE_SCHEMA};
