//! The move's replication slot, created over a replication-protocol connection so that it
//! exports a snapshot: the initial copy then reads exactly the rows that precede the first
//! change the slot streams, with no overlap and no gap.
//!
//! tokio-postgres speaks only the ordinary protocol. This speaks just enough of the other
//! (startup with `replication=database`, authentication, one simple query) to run
//! `CREATE_REPLICATION_SLOT`. A logical replication connection names a database, so the
//! server admits it by the same `pg_hba.conf` lines as an ordinary one, as it does the
//! subscriptions a move creates.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{DataRowBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::TransferError;
use shoal_catalog::conn::ConnectParams;
use shoal_sql::quote_ident;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Socket: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Socket for T {}

/// A logical slot just created, and the connection that holds its exported snapshot open.
/// The snapshot can be imported (`SET TRANSACTION SNAPSHOT`) until [`ExportedSlot::release`]
/// or drop closes the connection; the slot itself stays.
pub(crate) struct ExportedSlot {
    socket: Box<dyn Socket>,
    /// Where the slot's changes begin: every change committed after it is streamed.
    pub consistent_point: String,
    /// The name to import the snapshot by.
    pub snapshot: String,
}

impl ExportedSlot {
    /// Closes the replication connection (the exported snapshot ends with it).
    pub(crate) async fn release(mut self) {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        let _ = self.socket.write_all(&buf).await;
        let _ = self.socket.shutdown().await;
    }
}

/// Creates the logical slot `slot` (output plugin `pgoutput`) on the server `params` points at,
/// exporting the snapshot its changes start after.
pub(crate) async fn create_exporting_slot(
    params: &ConnectParams,
    application_name: &str,
    slot: &str,
) -> Result<ExportedSlot, TransferError> {
    let context = || format!("creating replication slot {slot} on {}", params.display());
    let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, open(params, application_name))
        .await
        .map_err(|_| failed(&context(), &"no answer within 10 s"))?
        .map_err(|e| failed(&context(), &e))?;
    let command = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
        quote_ident(slot)
    );
    let row = connection
        .simple_query_row(&command)
        .await
        .map_err(|e| failed(&context(), &e))?;
    // slot_name, consistent_point, snapshot_name, output_plugin
    match (row.get(1), row.get(2)) {
        (Some(Some(consistent_point)), Some(Some(snapshot))) => Ok(ExportedSlot {
            consistent_point: consistent_point.clone(),
            snapshot: snapshot.clone(),
            socket: connection.socket,
        }),
        _ => Err(failed(
            &context(),
            &"the server did not return a consistent point and a snapshot",
        )),
    }
}

fn failed(context: &str, message: &dyn std::fmt::Display) -> TransferError {
    TransferError::Postgres {
        context: context.to_string(),
        message: message.to_string(),
    }
}

/// What went wrong on the replication connection.
#[derive(Debug)]
enum ProtocolError {
    Io(io::Error),
    Server(String),
    Unsupported(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Io(error) => write!(f, "{error}"),
            ProtocolError::Server(message) | ProtocolError::Unsupported(message) => {
                write!(f, "{message}")
            }
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(error: io::Error) -> Self {
        ProtocolError::Io(error)
    }
}

struct Connection {
    socket: Box<dyn Socket>,
    incoming: BytesMut,
}

async fn open(params: &ConnectParams, application_name: &str) -> Result<Connection, ProtocolError> {
    let socket: Box<dyn Socket> = if params.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", params.host, params.port);
        Box::new(tokio::net::UnixStream::connect(path).await?)
    } else {
        let stream = tokio::net::TcpStream::connect((params.host.as_str(), params.port)).await?;
        stream.set_nodelay(true)?;
        Box::new(stream)
    };
    let mut connection = Connection {
        socket,
        incoming: BytesMut::with_capacity(8192),
    };
    let mut buf = BytesMut::new();
    frontend::startup_message(
        [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
        ],
        &mut buf,
    )?;
    connection.send(&buf).await?;
    connection.authenticate(params).await?;
    loop {
        match connection.next().await? {
            Message::ReadyForQuery(_) => return Ok(connection),
            Message::ErrorResponse(body) => return Err(server_error(&body)),
            _ => {} // parameter statuses, backend key, notices
        }
    }
}

impl Connection {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.socket.write_all(buf).await?;
        self.socket.flush().await
    }

    async fn next(&mut self) -> Result<Message, ProtocolError> {
        loop {
            if let Some(message) = Message::parse(&mut self.incoming)? {
                return Ok(message);
            }
            if self.socket.read_buf(&mut self.incoming).await? == 0 {
                return Err(ProtocolError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<(), ProtocolError> {
        let password = || {
            params.password().ok_or_else(|| {
                ProtocolError::Unsupported(
                    "the server asks for a password and the connection URI has none".into(),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let mut buf = BytesMut::new();
            match self.next().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut buf)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(params.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mechanisms: Vec<String> =
                        body.mechanisms().map(|m| Ok(m.to_string())).collect()?;
                    if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(ProtocolError::Unsupported(format!(
                            "the server offers SASL mechanisms {mechanisms:?}, none of them {SCRAM_SHA_256}"
                        )));
                    }
                    let state =
                        ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, state.message(), &mut buf)?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| out_of_order("SASL continue"))?;
                    state.update(body.data())?;
                    frontend::sasl_response(state.message(), &mut buf)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| out_of_order("SASL final"))?;
                    state.finish(body.data())?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                _ => {
                    return Err(ProtocolError::Unsupported(
                        "the server asks for an authentication method Shoal does not speak \
                         (trust, password, md5 and scram-sha-256 are supported)"
                            .into(),
                    ))
                }
            }
            self.send(&buf).await?;
        }
    }

    /// Runs one command by the simple protocol and returns its single row (text columns).
    async fn simple_query_row(
        &mut self,
        command: &str,
    ) -> Result<Vec<Option<String>>, ProtocolError> {
        let mut buf = BytesMut::new();
        frontend::query(command, &mut buf)?;
        self.send(&buf).await?;
        let mut row = None;
        let mut error = None;
        loop {
            match self.next().await? {
                Message::DataRow(body) => row = Some(text_columns(&body)?),
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {} // row description, command complete, notices
            }
        }
        match (error, row) {
            (Some(error), _) => Err(error),
            (None, Some(row)) => Ok(row),
            (None, None) => Err(ProtocolError::Unsupported(format!(
                "`{command}` returned no row"
            ))),
        }
    }
}

fn text_columns(body: &DataRowBody) -> Result<Vec<Option<String>>, ProtocolError> {
    let buffer = body.buffer();
    Ok(body
        .ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()?)
}

fn server_error(body: &ErrorResponseBody) -> ProtocolError {
    let mut message = String::new();
    let mut detail = None;
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
            b'D' => detail = Some(String::from_utf8_lossy(field.value_bytes()).into_owned()),
            _ => {}
        }
    }
    if let Some(detail) = detail {
        message.push_str(&format!(" ({detail})"));
    }
    ProtocolError::Server(message)
}

fn out_of_order(what: &str) -> ProtocolError {
    ProtocolError::Unsupported(format!("the server sent {what} out of order"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_testkit::{TestCluster, DBNAME};

    fn params(port: u16, user: &str, password: Option<&str>) -> ConnectParams {
        let mut uri = format!("postgresql://{user}");
        if let Some(password) = password {
            uri.push(':');
            uri.push_str(password);
        }
        uri.push_str(&format!("@127.0.0.1:{port}/{DBNAME}"));
        ConnectParams::parse(&uri).unwrap()
    }

    /// Every authentication method the slot connection speaks, against a real server: the
    /// slot is created, its snapshot can be imported, and a bad password or a slot that
    /// exists already is an error that says so.
    #[tokio::test]
    async fn creates_a_slot_and_exports_its_snapshot_with_each_authentication_method() {
        let pg = TestCluster::start(0).await;
        let server = &pg.coordinator;
        let sql = server.connect().await;
        sql.batch_execute(
            "SET password_encryption = 'md5';
             CREATE ROLE slot_md5 LOGIN REPLICATION PASSWORD 'md5 secret';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE slot_scram LOGIN REPLICATION PASSWORD 'scram secret';
             CREATE ROLE slot_clear LOGIN REPLICATION PASSWORD 'clear secret';",
        )
        .await
        .unwrap();
        let hba = server.data_dir.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!(
                "host all slot_md5 127.0.0.1/32 md5\n\
                 host all slot_scram 127.0.0.1/32 scram-sha-256\n\
                 host all slot_clear 127.0.0.1/32 password\n{rules}"
            ),
        )
        .unwrap();
        sql.batch_execute("SELECT pg_reload_conf()").await.unwrap();

        let logins = [
            ("postgres", None),
            ("slot_md5", Some("md5 secret")),
            ("slot_scram", Some("scram secret")),
            ("slot_clear", Some("clear secret")),
        ];
        for (i, (user, password)) in logins.into_iter().enumerate() {
            let slot_name = format!("test_slot_{i}");
            let slot =
                create_exporting_slot(&params(server.port, user, password), "test", &slot_name)
                    .await
                    .unwrap_or_else(|e| panic!("{user}: {e}"));
            let importer = server.connect().await;
            importer
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'; COMMIT",
                    slot.snapshot
                ))
                .await
                .unwrap_or_else(|e| panic!("{user}: importing the snapshot: {e}"));
            let row = sql
                .query_one(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot_name],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, String>(0), slot.consistent_point, "{user}");
            slot.release().await;
        }

        let wrong = create_exporting_slot(
            &params(server.port, "slot_scram", Some("not it")),
            "test",
            "test_slot_wrong",
        )
        .await
        .err()
        .expect("a wrong password is refused");
        assert!(
            wrong.to_string().contains("password authentication failed"),
            "{wrong}"
        );
        let missing = create_exporting_slot(&params(server.port, "slot_md5", None), "test", "x")
            .await
            .err()
            .expect("no password is refused");
        assert!(
            missing.to_string().contains("the connection URI has none"),
            "{missing}"
        );
        let taken = create_exporting_slot(
            &params(server.port, "postgres", None),
            "test",
            "test_slot_0",
        )
        .await
        .err()
        .expect("an existing slot is refused");
        assert!(taken.to_string().contains("already exists"), "{taken}");
        let left: i64 = sql
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 4, "only the slots asked for");
        sql.batch_execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
            .await
            .unwrap();
    }
}
