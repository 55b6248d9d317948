//! Accepting clients: the SSL and GSS requests answered (no encryption on the endpoint yet),
//! cancel requests passed to what the session runs, and the startup relayed to the
//! coordinator, which authenticates the client with its own users, passwords and pg_hba.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, SslNegotiationMetaMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{EndpointError, ServerError};
use crate::server::{self, CancelHandle};
use crate::session::Session;
use crate::shared::Shared;
use crate::wire::Framed;

/// Accepts clients until `shutdown` changes.
pub async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EndpointError> {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.changed() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(error) = client(shared, tcp).await {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}

async fn client(shared: Arc<Shared>, tcp: TcpStream) -> Result<(), EndpointError> {
    let mut framed = Framed::client_side(tcp);
    let startup = loop {
        let Some(message) = framed.read_frontend().await? else {
            return Ok(());
        };
        match message {
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_))
            | PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)) => {
                framed.queue_raw(b"N");
                framed.flush().await?;
            }
            PgWireFrontendMessage::SslNegotiation(SslNegotiationMetaMessage::None) => {
                framed.context_mut().awaiting_ssl = false;
            }
            PgWireFrontendMessage::CancelRequest(request) => {
                let key = server::secret_as_i32(&request.secret_key).map(|s| (request.pid, s));
                let running =
                    key.and_then(|k| shared.cancels.lock().expect("cancel lock").get(&k).cloned());
                let handle = running.and_then(|r| r.lock().expect("cancel lock").clone());
                if let Some(handle) = handle {
                    handle.cancel().await?;
                }
                return Ok(());
            }
            PgWireFrontendMessage::Startup(startup) => {
                framed.context_mut().awaiting_ssl = false;
                framed.context_mut().awaiting_startup = false;
                break startup;
            }
            _ => return Err(EndpointError::Protocol("expected a startup message".into())),
        }
    };
    if startup.parameters.contains_key("replication") {
        return refuse(&mut framed, ServerError::new(
            "08P01",
            "Shoal's endpoint does not serve replication connections; connect to the coordinator",
        ))
        .await;
    }
    if startup.protocol_number_minor > 0 {
        let unsupported: Vec<String> = startup
            .parameters
            .keys()
            .filter(|k| k.starts_with("_pq_."))
            .cloned()
            .collect();
        framed.queue_backend(&PgWireBackendMessage::NegotiateProtocolVersion(
            NegotiateProtocolVersion::new(0, unsupported),
        ))?;
    }
    let parameters: BTreeMap<String, String> = startup
        .parameters
        .into_iter()
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .collect();
    let coordinator = match relay_startup(&shared, &mut framed, parameters).await? {
        Some(coordinator) => coordinator,
        None => return Ok(()),
    };
    let key = (rand::random::<i32>().abs().max(1), rand::random::<i32>());
    let running: Arc<Mutex<Option<CancelHandle>>> = Arc::new(Mutex::new(None));
    shared
        .cancels
        .lock()
        .expect("cancel lock")
        .insert(key, running.clone());
    for (name, value) in &coordinator.parameters {
        framed.queue_backend(&PgWireBackendMessage::ParameterStatus(
            ParameterStatus::new(name.clone(), value.clone()),
        ))?;
    }
    framed.queue_backend(&PgWireBackendMessage::BackendKeyData(BackendKeyData::new(
        key.0,
        SecretKey::I32(key.1),
    )))?;
    framed.queue_backend(&PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
        TransactionStatus::Idle,
    )))?;
    shared
        .metrics
        .connections_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared
        .metrics
        .connections_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result = match Session::start(framed, coordinator, shared.clone(), running).await {
        Ok(session) => session.run().await,
        Err(error) => Err(error),
    };
    shared
        .metrics
        .connections_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    shared.cancels.lock().expect("cancel lock").remove(&key);
    result
}

async fn refuse(framed: &mut Framed<TcpStream>, error: ServerError) -> Result<(), EndpointError> {
    let mut fields = error.fields;
    for field in fields.iter_mut() {
        if field.0 == b'S' || field.0 == b'V' {
            field.1 = "FATAL".into();
        }
    }
    framed.queue_backend(&PgWireBackendMessage::ErrorResponse(ErrorResponse::new(
        fields,
    )))?;
    framed.flush().await
}

/// Opens the client's session on the coordinator with the client's startup parameters and
/// relays authentication both ways; `None` when the coordinator refused the client (it has
/// been told why).
async fn relay_startup(
    shared: &Shared,
    framed: &mut Framed<TcpStream>,
    parameters: BTreeMap<String, String>,
) -> Result<Option<server::ServerConn>, EndpointError> {
    let mut coordinator = match server::open_stream(&shared.coordinator).await {
        Ok(stream) => stream,
        Err(error) => {
            refuse(
                framed,
                ServerError::new(
                    "08006",
                    format!("Shoal's endpoint cannot reach the coordinator: {error}"),
                ),
            )
            .await?;
            return Ok(None);
        }
    };
    coordinator.queue_frontend(&server::startup_message(parameters))?;
    coordinator.flush().await?;
    loop {
        let message = coordinator.read_backend().await?;
        let answer = match &message {
            PgWireBackendMessage::Authentication(Authentication::Ok) => {
                framed.queue_backend(&message)?;
                break;
            }
            PgWireBackendMessage::Authentication(Authentication::SASL(mechanisms)) => {
                // Channel binding would bind to the coordinator's TLS session, which the
                // client does not see: offer what works through the endpoint.
                let offered: Vec<String> = mechanisms
                    .iter()
                    .filter(|m| !m.ends_with("-PLUS"))
                    .cloned()
                    .collect();
                framed.queue_backend(&PgWireBackendMessage::Authentication(
                    Authentication::SASL(offered),
                ))?;
                true
            }
            PgWireBackendMessage::Authentication(Authentication::SASLFinal(_)) => {
                framed.queue_backend(&message)?;
                false
            }
            PgWireBackendMessage::Authentication(_) => {
                framed.queue_backend(&message)?;
                true
            }
            PgWireBackendMessage::ErrorResponse(_) => {
                framed.queue_backend(&message)?;
                framed.flush().await?;
                return Ok(None);
            }
            PgWireBackendMessage::NegotiateProtocolVersion(_) => false,
            _ => {
                framed.queue_backend(&message)?;
                false
            }
        };
        if answer {
            framed.flush().await?;
            match framed.read_frontend().await? {
                Some(PgWireFrontendMessage::PasswordMessageFamily(password)) => {
                    coordinator
                        .queue_frontend(&PgWireFrontendMessage::PasswordMessageFamily(password))?;
                    coordinator.flush().await?;
                }
                _ => return Ok(None),
            }
        }
    }
    let address = (shared.coordinator.host.clone(), shared.coordinator.port);
    match server::finish_startup(coordinator, address).await {
        Ok(conn) => Ok(Some(conn)),
        Err(EndpointError::Server(error)) => {
            refuse(framed, error).await?;
            Ok(None)
        }
        Err(other) => Err(other),
    }
}
