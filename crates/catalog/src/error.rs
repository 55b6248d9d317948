use thiserror::Error;

/// Errors of the catalog layer. Each says what was wrong and what to do next.
#[derive(Debug, Error)]
pub enum CatalogError {
    #[error(
        "cannot connect to {target}: {source}; check that the server runs and the address is right"
    )]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("invalid connection URI: {0}; expected postgresql://USER@HOST:PORT/DBNAME")]
    BadUri(String),
    #[error("the coordinator has no Shoal catalog; run `shoal init` first")]
    NotInitialized,
    #[error(
        "the catalog is at version {catalog} but this shoal binary knows only up to {binary}; \
         use a newer shoal binary"
    )]
    CatalogTooNew { catalog: i32, binary: i32 },
    #[error(
        "the catalog is at version {catalog}, older than this binary's {binary}; \
         run `shoal init` to migrate it"
    )]
    CatalogTooOld { catalog: i32, binary: i32 },
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
}
