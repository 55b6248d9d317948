//! Errors of local server management: each says what went wrong and what to do next.

use std::io;
use std::path::PathBuf;

/// Result type of this crate.
pub type Result<T, E = LocalError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (looked in: {searched}); \
         install them (Debian/Ubuntu: apt-get install postgresql-15) or set SHOAL_PG_BIN to their directory"
    )]
    PgNotFound { searched: String },

    #[error(
        "SHOAL_PG_BIN={dir} does not contain {program}; point SHOAL_PG_BIN at the directory \
         holding initdb, pg_ctl and postgres (e.g. /usr/lib/postgresql/15/bin)"
    )]
    PgBinMissing { dir: PathBuf, program: String },

    #[error(
        "PostgreSQL in {bindir} is version {version}, but Shoal needs 15 or newer; \
         install a newer one (Debian/Ubuntu: apt-get install postgresql-15) and set SHOAL_PG_BIN if needed"
    )]
    PgTooOld { bindir: PathBuf, version: String },

    #[error("could not understand `{program} --version` output {output:?}; set SHOAL_PG_BIN to a PostgreSQL 15+ bin directory")]
    PgVersion { program: PathBuf, output: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("{program} failed ({status}): {output}")]
    Command {
        program: String,
        status: String,
        output: String,
    },

    #[error(
        "PostgreSQL refuses to run as root and the `postgres` account could not be created ({reason}); \
         create it (useradd --system --user-group postgres) or run as an ordinary user"
    )]
    ServerUser { reason: String },

    #[error(
        "the `{user}` account that runs PostgreSQL cannot reach or write {dir}; \
         use a directory under /tmp or make every directory on the path traversable by `{user}`"
    )]
    DirNotAccessible { dir: PathBuf, user: String },

    #[error("{dir} already exists and is not empty; remove it or choose another directory")]
    DirNotEmpty { dir: PathBuf },

    #[error(
        "{0} is not a data directory initialised by Shoal (shoal.conf missing); run initdb first"
    )]
    NotConfigured(PathBuf),

    #[error("PostgreSQL in {data_dir} did not start; last lines of {log_file}:\n{log_tail}")]
    StartFailed {
        data_dir: PathBuf,
        log_file: PathBuf,
        log_tail: String,
    },

    #[error(
        "PostgreSQL in {data_dir} did not stop within 60 s; see its log, or force it with \
         `pg_ctl -D {data_dir} -m immediate stop`"
    )]
    StopTimeout { data_dir: PathBuf },

    #[error("port {port} on 127.0.0.1 is already in use; choose another base port with --port")]
    PortInUse { port: u16 },

    #[error("ports {base}..={last} do not fit below 65536; choose a lower base port with --port")]
    PortRange { base: u16, last: u32 },

    #[error("no local cluster in {dir} (cluster.toml missing); create one with `up`")]
    NoCluster { dir: PathBuf },

    #[error("{path} is not a valid cluster file ({message}); fix it or remove the directory and run `up` again")]
    ClusterFile { path: PathBuf, message: String },

    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("invalid database name {0:?}: it must be 1 to 63 bytes without NUL")]
    InvalidDbName(String),
}

impl LocalError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LocalError::Io {
            context: context.into(),
            source,
        }
    }
}
