use thiserror::Error;

pub use shoal_catalog::pg_message;
use shoal_catalog::CatalogError;

/// Errors of cluster operations. Each message names the problem and what to do next, and each
/// operation that fails with one has changed nothing (or has rolled back what it changed).
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("table {0} does not exist; check the name (quote it as in SQL if it has capitals or spaces)")]
    UnknownTable(String),
    #[error(
        "table {table} has no column {column}; its columns are: {available} (column names follow \
         SQL rules: quote one with capitals or spaces, e.g. '\"Id\"')"
    )]
    UnknownColumn {
        table: String,
        column: String,
        available: String,
    },
    #[error("schema {0} does not exist; check the name (quote it as in SQL if it has capitals or spaces)")]
    UnknownSchema(String),
    #[error("{0} is not a column name; give one name, quoted as in SQL if it has capitals or spaces (e.g. '\"Id\"')")]
    BadColumnName(String),
    #[error("no node {0} is registered; see `shoal node list`")]
    UnknownNode(String),
    #[error("table {table} is already distributed ({kind}); run `shoal table undistribute {table}` first to change it")]
    AlreadyDistributed { table: String, kind: String },
    #[error("table {0} is not distributed; see `shoal table list`")]
    NotDistributed(String),
    #[error(
        "schema {0} is already distributed; use `shoal schema sync {0}` to add new tables to it"
    )]
    SchemaAlreadyDistributed(String),
    #[error("schema {0} is not distributed; run `shoal schema distribute {0}` first")]
    SchemaNotDistributed(String),
    #[error("shard count {0} is out of range; use a value from 1 to 4096")]
    ShardCountOutOfRange(i64),
    #[error("cannot colocate with {other}: {reason}")]
    ColocationMismatch { other: String, reason: String },
    #[error("column {column} of type {type_name} cannot be hashed (no default hash operator class); distribute by another column")]
    NotHashable { column: String, type_name: String },
    #[error("cannot reach node {address}: {reason}; check that it runs and accepts connections from here")]
    NodeUnreachable { address: String, reason: String },
    #[error("node {address} is already registered as node {node_id}")]
    NodeAlreadyRegistered { address: String, node_id: i32 },
    #[error("node {address} runs PostgreSQL {version}; Shoal needs PostgreSQL 15 or newer")]
    NodeTooOld { address: String, version: String },
    #[error("node {address} has wal_level = {wal_level}; set wal_level = logical in its postgresql.conf and restart it")]
    NodeNotLogical { address: String, wal_level: String },
    #[error("node {node} still holds {count} shard placement(s) ({examples}); drain it first by moving its shards to other nodes")]
    NodeHasPlacements {
        node: String,
        count: usize,
        examples: String,
    },
    #[error("no active node can take shards; add one with `shoal node add HOST:PORT`")]
    NoNodes,
    #[error("invalid node address {0}; use HOST:PORT (for example 127.0.0.1:5433) or a node id")]
    BadAddress(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Ddl(#[from] shoal_ddl::DdlError),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{context}: {message}")]
    Postgres { context: String, message: String },
}

impl From<tokio_postgres::Error> for ClusterError {
    fn from(error: tokio_postgres::Error) -> Self {
        ClusterError::Postgres {
            context: "query failed".into(),
            message: pg_message(&error),
        }
    }
}

/// Adds what was being done to a PostgreSQL error.
pub trait PgContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, ClusterError>;
}

impl<T> PgContext<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, ClusterError> {
        self.map_err(|e| ClusterError::Postgres {
            context: context(),
            message: pg_message(&e),
        })
    }
}
