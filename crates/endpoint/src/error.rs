use std::fmt;

/// An error a server (or the endpoint itself) reports to a client: PostgreSQL's fields, kept
/// whole so that the client sees the SQLSTATE, position and detail it would see directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub fields: Vec<(u8, String)>,
}

impl ServerError {
    /// An error raised by the endpoint, with PostgreSQL's field codes.
    pub fn new(sqlstate: &str, message: impl Into<String>) -> ServerError {
        ServerError {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', sqlstate.into()),
                (b'M', message.into()),
            ],
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ServerError {
        self.fields.push((b'H', hint.into()));
        self
    }

    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    pub fn sqlstate(&self) -> &str {
        self.field(b'C').unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        self.field(b'M').unwrap_or("")
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message(), self.sqlstate())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the connection closed")]
    Closed,
    /// An answer longer than the caller would take (the connection is left mid-answer).
    #[error("the answer has more than {0} rows")]
    TooManyRows(usize),
    #[error("{0}")]
    Server(ServerError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Catalog(#[from] shoal_catalog::CatalogError),
    #[error(transparent)]
    Cluster(#[from] shoal_cluster::ClusterError),
    #[error("catalog query failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

impl From<pgwire::error::PgWireError> for EndpointError {
    fn from(error: pgwire::error::PgWireError) -> Self {
        EndpointError::Protocol(error.to_string())
    }
}

impl From<ServerError> for EndpointError {
    fn from(error: ServerError) -> Self {
        EndpointError::Server(error)
    }
}
