//! Local PostgreSQL servers started from the system's binaries (see ARCHITECTURE.md).
//!
//! Process management only: no knowledge of Shoal's catalog. When run as root, every
//! PostgreSQL process runs as the `postgres` account, because PostgreSQL refuses root.

mod binaries;
mod cluster;
mod database;
mod error;
mod server;
mod user;

pub use binaries::{PgBinaries, MIN_MAJOR};
pub use cluster::{
    postgres_uri, ClusterFile, LocalCluster, LocalServer, Role, ServerEntry, ServerStatus,
    UpReport, CLUSTER_FILE, ENV_FILE,
};
pub use database::{connect_admin, create_database};
pub use error::{LocalError, Result};
pub use server::{
    configured_port, initdb, is_running, port_is_free, render_shoal_conf, set_port, start, stop,
    InitOptions, StopMode, SHOAL_CONF,
};
pub use user::RunAs;
