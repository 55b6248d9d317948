//! The catalog: everything Shoal must remember lives in schema `shoal` of the coordinator
//! database, so a crash at any point loses nothing that matters.
//!
//! This crate owns the catalog's schema (versioned migrations embedded in the binary), typed rows
//! for its tables, and the queries that read and write them. It decides nothing: the operations in
//! `shoal-cluster` do.

pub mod conn;
mod error;
mod migrate;
pub mod model;
mod pgpass;
pub mod tls;

pub use conn::{connect, ConnectParams};
pub use error::{pg_message, CatalogError};
pub use migrate::{check_version, init, InitReport, LATEST_VERSION};
