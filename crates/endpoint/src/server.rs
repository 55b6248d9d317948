//! Connections from the endpoint to a PostgreSQL server (the coordinator or a node), speaking
//! the protocol as a client: TLS as `sslmode` asks, the startup message, authentication with
//! Shoal's credentials (or relayed from the application, see `session::startup`), and a simple
//! query helper for the endpoint's own statements.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::response::ReadyForQuery;
use pgwire::messages::startup::{Authentication, Startup};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::error::{EndpointError, ServerError};
use crate::wire::{Framed, Stream};
use shoal_catalog::tls::SslMode;
use shoal_catalog::ConnectParams;

/// A server connection after startup.
pub struct ServerConn {
    pub framed: Framed<Stream>,
    /// The server's process id and secret, for cancel requests.
    pub key: Option<(i32, i32)>,
    /// What the server reported with ParameterStatus, last value wins.
    pub parameters: BTreeMap<String, String>,
    /// The transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
    pub address: (String, u16),
}

/// TCP, then TLS when `params` ask for it (`prefer` falls back to plain text when the server
/// has no TLS, as libpq does).
pub async fn open_stream(params: &ConnectParams) -> Result<Framed<Stream>, EndpointError> {
    let tcp = TcpStream::connect((params.host.as_str(), params.port)).await?;
    tcp.set_nodelay(true)?;
    let mode = params.tls().mode;
    if mode == SslMode::Disable {
        return Ok(Framed::server_side(Stream::Plain(tcp)));
    }
    let mut tcp = tcp;
    let mut request = BytesMut::with_capacity(8);
    request.put_i32(8);
    request.put_i32(80877103);
    tcp.write_all(&request).await?;
    let mut plain = Framed::server_side(tcp);
    let answer = plain.read_byte().await?;
    let tcp = plain.into_inner();
    if answer != b'S' {
        if mode == SslMode::Prefer {
            return Ok(Framed::server_side(Stream::Plain(tcp)));
        }
        return Err(EndpointError::Tls(format!(
            "{}:{} does not accept TLS connections and sslmode is {}",
            params.host,
            params.port,
            mode.as_str()
        )));
    }
    let config: Arc<rustls::ClientConfig> = params.tls_config()?;
    let name = ServerName::try_from(params.host.clone())
        .map_err(|e| EndpointError::Tls(format!("server name {}: {e}", params.host)))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| EndpointError::Tls(e.to_string()))?;
    Ok(Framed::server_side(Stream::Tls(Box::new(tls))))
}

pub fn startup_message(parameters: BTreeMap<String, String>) -> PgWireFrontendMessage {
    let mut startup = Startup::new();
    startup.protocol_number_major = 3;
    startup.protocol_number_minor = 0;
    startup.parameters = parameters;
    PgWireFrontendMessage::Startup(startup)
}

/// Opens a connection as Shoal's role (the credentials in `params`), for the pools.
pub async fn connect(
    params: &ConnectParams,
    application_name: &str,
) -> Result<ServerConn, EndpointError> {
    let mut framed = open_stream(params).await?;
    let parameters = BTreeMap::from([
        ("user".to_string(), params.user.clone()),
        ("database".to_string(), params.dbname.clone()),
        ("application_name".to_string(), application_name.to_string()),
        ("client_encoding".to_string(), "UTF8".to_string()),
        // Shoal's own sessions leave DDL propagation to Shoal.
        ("options".to_string(), "-c shoal.manage_ddl=off".to_string()),
    ]);
    framed.queue_frontend(&startup_message(parameters))?;
    framed.flush().await?;
    authenticate(&mut framed, &params.user, params.password()).await?;
    finish_startup(framed, (params.host.clone(), params.port)).await
}

/// Answers the server's authentication requests with `password`.
async fn authenticate(
    framed: &mut Framed<Stream>,
    user: &str,
    password: Option<&str>,
) -> Result<(), EndpointError> {
    let missing = || {
        EndpointError::Server(ServerError::new(
            "28P01",
            "the server asks for a password and none is configured \
             (give it in the coordinator URI, PGPASSWORD or the password file)",
        ))
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        match framed.read_backend().await? {
            PgWireBackendMessage::Authentication(Authentication::Ok) => return Ok(()),
            PgWireBackendMessage::Authentication(Authentication::CleartextPassword) => {
                let password = password.ok_or_else(missing)?;
                send_password_bytes(framed, password.as_bytes()).await?;
            }
            PgWireBackendMessage::Authentication(Authentication::MD5Password(salt)) => {
                let password = password.ok_or_else(missing)?;
                let salt: [u8; 4] = salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| EndpointError::Protocol("md5 salt".into()))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    password.as_bytes(),
                    salt,
                );
                send_password_bytes(framed, hash.as_bytes()).await?;
            }
            PgWireBackendMessage::Authentication(Authentication::SASL(mechanisms)) => {
                let password = password.ok_or_else(missing)?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(EndpointError::Protocol(format!(
                        "the server offers no SASL mechanism Shoal speaks ({mechanisms:?})"
                    )));
                }
                let client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                let mut body = BytesMut::new();
                postgres_protocol::message::frontend::sasl_initial_response(
                    SCRAM_SHA_256,
                    client.message(),
                    &mut body,
                )?;
                framed.queue_raw(&body);
                framed.flush().await?;
                scram = Some(client);
            }
            PgWireBackendMessage::Authentication(Authentication::SASLContinue(data)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| EndpointError::Protocol("SASL out of order".into()))?;
                client.update(&data)?;
                let mut body = BytesMut::new();
                postgres_protocol::message::frontend::sasl_response(client.message(), &mut body)?;
                framed.queue_raw(&body);
                framed.flush().await?;
            }
            PgWireBackendMessage::Authentication(Authentication::SASLFinal(data)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| EndpointError::Protocol("SASL out of order".into()))?;
                client.finish(&data)?;
            }
            PgWireBackendMessage::ErrorResponse(error) => {
                return Err(ServerError {
                    fields: error.fields,
                }
                .into())
            }
            PgWireBackendMessage::NoticeResponse(_) => {}
            other => {
                return Err(EndpointError::Protocol(format!(
                    "unexpected message during authentication: {other:?}"
                )))
            }
        }
    }
}

async fn send_password_bytes(
    framed: &mut Framed<Stream>,
    password: &[u8],
) -> Result<(), EndpointError> {
    let mut body = BytesMut::new();
    postgres_protocol::message::frontend::password_message(password, &mut body)?;
    framed.queue_raw(&body);
    framed.flush().await
}

/// Reads what follows authentication until the first ReadyForQuery.
pub async fn finish_startup(
    mut framed: Framed<Stream>,
    address: (String, u16),
) -> Result<ServerConn, EndpointError> {
    let mut key = None;
    let mut parameters = BTreeMap::new();
    loop {
        match framed.read_backend().await? {
            PgWireBackendMessage::ParameterStatus(p) => {
                parameters.insert(p.name, p.value);
            }
            PgWireBackendMessage::BackendKeyData(data) => {
                key = secret_as_i32(&data.secret_key).map(|s| (data.pid, s));
            }
            PgWireBackendMessage::ReadyForQuery(ready) => {
                return Ok(ServerConn {
                    framed,
                    key,
                    parameters,
                    status: status_byte(&ready),
                    address,
                })
            }
            PgWireBackendMessage::ErrorResponse(error) => {
                return Err(ServerError {
                    fields: error.fields,
                }
                .into())
            }
            _ => {}
        }
    }
}

pub fn secret_as_i32(secret: &pgwire::messages::startup::SecretKey) -> Option<i32> {
    match secret {
        pgwire::messages::startup::SecretKey::I32(s) => Some(*s),
        pgwire::messages::startup::SecretKey::Bytes(b) if b.len() == 4 => {
            Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => None,
    }
}

pub fn status_byte(ready: &ReadyForQuery) -> u8 {
    use pgwire::messages::response::TransactionStatus;
    match ready.status {
        TransactionStatus::Idle => b'I',
        TransactionStatus::Transaction => b'T',
        TransactionStatus::Error => b'E',
    }
}

/// Reads the text columns of a DataRow.
pub fn text_columns(row: &pgwire::messages::data::DataRow) -> Vec<Option<String>> {
    let mut data = row.data.clone().freeze();
    let mut columns = Vec::with_capacity(row.field_count.max(0) as usize);
    for _ in 0..row.field_count {
        if data.remaining() < 4 {
            break;
        }
        let len = data.get_i32();
        if len < 0 {
            columns.push(None);
        } else {
            let value: Bytes = data.split_to(len as usize);
            columns.push(Some(String::from_utf8_lossy(&value).into_owned()));
        }
    }
    columns
}

impl ServerConn {
    /// Runs `sql` (no parameters: the endpoint's own statements, values quoted by
    /// `shoal_sql`) and returns the text rows of its last result.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, EndpointError> {
        Ok(self
            .simple_query_typed(sql, RowLimit::Abandon(usize::MAX))
            .await?
            .1)
    }

    /// Like [`ServerConn::simple_query`], with the type OIDs of the last result's columns;
    /// fails with [`EndpointError::TooManyRows`] past `limit`'s rows.
    pub async fn simple_query_typed(
        &mut self,
        sql: &str,
        limit: RowLimit,
    ) -> Result<(Vec<u32>, Vec<Vec<Option<String>>>), EndpointError> {
        self.framed.queue_frontend(&PgWireFrontendMessage::Query(
            pgwire::messages::simplequery::Query::new(sql.to_string()),
        ))?;
        self.framed.flush().await?;
        self.read_typed(limit).await
    }

    /// Like [`ServerConn::simple_query_typed`] for one statement with parameters, by the
    /// extended protocol: `types` as a client's Parse declared them (0 for the server to
    /// infer), the values and their formats as its Bind carried them; text results.
    pub async fn extended_query_typed(
        &mut self,
        sql: &str,
        types: &[u32],
        parameters: &[Option<Bytes>],
        formats: &[i16],
        limit: RowLimit,
    ) -> Result<(Vec<u32>, Vec<Vec<Option<String>>>), EndpointError> {
        use pgwire::messages::extendedquery::{Bind, Describe, Execute, Parse, Sync};
        let messages = [
            PgWireFrontendMessage::Parse(Parse::new(None, sql.to_string(), types.to_vec())),
            PgWireFrontendMessage::Bind(Bind::new(
                None,
                None,
                formats.to_vec(),
                parameters.to_vec(),
                Vec::new(),
            )),
            PgWireFrontendMessage::Describe(Describe::new(b'P', None)),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            PgWireFrontendMessage::Sync(Sync::new()),
        ];
        for message in &messages {
            self.framed.queue_frontend(message)?;
        }
        self.framed.flush().await?;
        self.read_typed(limit).await
    }

    /// The column types and text rows of the last result up to ReadyForQuery.
    async fn read_typed(
        &mut self,
        limit: RowLimit,
    ) -> Result<(Vec<u32>, Vec<Vec<Option<String>>>), EndpointError> {
        let (mut types, mut rows, mut error) = (Vec::new(), Vec::new(), None);
        let mut too_many = false;
        loop {
            match self.framed.read_backend().await? {
                PgWireBackendMessage::RowDescription(description) => {
                    types = description.fields.iter().map(|f| f.type_id).collect();
                    rows.clear();
                    too_many = false;
                }
                PgWireBackendMessage::DataRow(row) => {
                    if too_many {
                        continue;
                    }
                    match limit {
                        RowLimit::Abandon(max) if rows.len() == max => {
                            return Err(EndpointError::TooManyRows(max));
                        }
                        RowLimit::Drain(max) if rows.len() == max => {
                            too_many = true;
                            rows.clear();
                        }
                        _ => rows.push(text_columns(&row)),
                    }
                }
                PgWireBackendMessage::ErrorResponse(e) => {
                    error = Some(ServerError { fields: e.fields })
                }
                PgWireBackendMessage::ParameterStatus(p) => {
                    self.parameters.insert(p.name, p.value);
                }
                PgWireBackendMessage::ReadyForQuery(ready) => {
                    self.status = status_byte(&ready);
                    return match (error, limit) {
                        (Some(e), _) => Err(e.into()),
                        (None, RowLimit::Drain(max)) if too_many => {
                            Err(EndpointError::TooManyRows(max))
                        }
                        (None, _) => Ok((types, rows)),
                    };
                }
                _ => {}
            }
        }
    }

    /// Sends a cancel request for whatever this connection runs now.
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        self.key.map(|(pid, secret)| CancelHandle {
            address: self.address.clone(),
            pid,
            secret,
        })
    }
}

/// How many rows a typed query may bring back, and what past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLimit {
    /// Stop reading at once: the answer is not wanted, nor the connection (its rest is unread).
    Abandon(usize),
    /// Read the answer to its end, keeping none of it: the connection stays usable, as a
    /// transaction's must.
    Drain(usize),
}

/// Enough to cancel a server connection's running statement from elsewhere.
#[derive(Debug, Clone)]
pub struct CancelHandle {
    pub address: (String, u16),
    pub pid: i32,
    pub secret: i32,
}

impl CancelHandle {
    pub async fn cancel(&self) -> Result<(), EndpointError> {
        let mut tcp = TcpStream::connect((self.address.0.as_str(), self.address.1)).await?;
        let mut request = BytesMut::with_capacity(16);
        request.put_i32(16);
        request.put_i32(80877102);
        request.put_i32(self.pid);
        request.put_i32(self.secret);
        tcp.write_all(&request).await?;
        tcp.shutdown().await?;
        Ok(())
    }
}
