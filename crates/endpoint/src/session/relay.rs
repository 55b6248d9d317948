//! Reading a server's answers and passing them on: rows and descriptions unchanged, the
//! endpoint's own injected statements swallowed, COPY data streamed both ways.

use std::collections::VecDeque;

use pgwire::messages::extendedquery::{Bind, Close, Execute, Parse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::{Await, Dest, Session};
use crate::error::EndpointError;
use shoal_route::Place;

/// Reserved names for statements the endpoint injects into a client's batch.
const INJECTED: &str = "__shoal_injected";

impl Session {
    /// Queues an extended-protocol message for `dest`, answering with `awaits` (relayed to
    /// the client when `relay`); flushes another server's pending messages first.
    pub(super) async fn send(
        &mut self,
        dest: Dest,
        message: PgWireFrontendMessage,
        awaits: Option<Await>,
        relay: bool,
    ) -> Result<(), EndpointError> {
        if self.segment.as_ref().is_some_and(|(d, _)| *d != dest) {
            self.complete_segment().await?;
        }
        if !self.touched.contains(&dest) {
            self.touched.push(dest);
        }
        self.conn(dest).framed.queue_frontend(&message)?;
        let segment = self.segment.get_or_insert_with(|| (dest, VecDeque::new()));
        if let Some(awaits) = awaits {
            segment.1.push_back((awaits, relay));
        }
        Ok(())
    }

    /// Runs one statement of the endpoint's own inside the client's open batch on `dest`,
    /// answers swallowed (an error still reaches the client, and ends the batch).
    pub(super) async fn inject(&mut self, dest: Dest, sql: &str) -> Result<(), EndpointError> {
        let name = Some(INJECTED.to_string());
        let messages = [
            (
                PgWireFrontendMessage::Parse(Parse::new(name.clone(), sql.to_string(), vec![])),
                Await::Parse,
            ),
            (
                PgWireFrontendMessage::Bind(Bind::new(
                    name.clone(),
                    name.clone(),
                    vec![],
                    vec![],
                    vec![],
                )),
                Await::Bind,
            ),
            (
                PgWireFrontendMessage::Execute(Execute::new(name.clone(), 0)),
                Await::Execute,
            ),
            (
                PgWireFrontendMessage::Close(Close::new(b'P', name.clone())),
                Await::Close,
            ),
            (
                PgWireFrontendMessage::Close(Close::new(b'S', name)),
                Await::Close,
            ),
        ];
        for (message, awaits) in messages {
            self.send(dest, message, Some(awaits), false).await?;
        }
        Ok(())
    }

    /// Flushes the pending server and relays what it owes the client.
    pub(super) async fn complete_segment(&mut self) -> Result<(), EndpointError> {
        let Some((dest, awaits)) = self.segment.as_ref() else {
            return Ok(());
        };
        let dest = *dest;
        if awaits.is_empty() {
            self.segment = None;
            return Ok(());
        }
        let conn = self.conn(dest);
        conn.framed.queue_frontend(&PgWireFrontendMessage::Flush(
            pgwire::messages::extendedquery::Flush::new(),
        ))?;
        conn.framed.flush().await?;
        self.pump(dest, false).await
    }

    /// Reads `dest`'s answers: until it owes nothing more (`until_ready` false), or until
    /// its ReadyForQuery (after a Sync or a simple query).
    pub(super) async fn pump(
        &mut self,
        dest: Dest,
        until_ready: bool,
    ) -> Result<(), EndpointError> {
        self.set_running(dest).await;
        let result = self.pump_inner(dest, until_ready).await;
        *self.running.lock().expect("cancel lock") = None;
        if result.is_err() {
            if let Dest::Shoal(place) = dest {
                if let Some(pooled) = self.held.get_mut(&place) {
                    pooled.reusable = false;
                }
            }
        }
        result
    }

    async fn pump_inner(&mut self, dest: Dest, until_ready: bool) -> Result<(), EndpointError> {
        loop {
            let owed = self
                .segment
                .as_ref()
                .filter(|(d, _)| *d == dest)
                .map_or(0, |(_, a)| a.len());
            if !until_ready && owed == 0 {
                self.segment = None;
                return Ok(());
            }
            let mut message = self.conn(dest).framed.read_backend().await?;
            if let PgWireBackendMessage::ErrorResponse(error) = &mut message {
                match dest {
                    Dest::Shoal(place) => {
                        // A position in the node's statement (rewritten names) is not one in
                        // the client's text.
                        error
                            .fields
                            .retain(|(code, _)| !matches!(code, b'P' | b'p' | b'q'));
                        self.report_deadlock(Some(place), &mut error.fields);
                    }
                    // Cancelled on a node, through the coordinator's postgres_fdw.
                    Dest::Session => self.report_deadlock(None, &mut error.fields),
                }
            }
            let front = self
                .segment
                .as_ref()
                .filter(|(d, _)| *d == dest)
                .and_then(|(_, a)| a.front().copied());
            let relay_front = front.is_none_or(|(_, relay)| relay);
            if self.swallow_result {
                match &message {
                    PgWireBackendMessage::RowDescription(_) | PgWireBackendMessage::DataRow(_) => {
                        continue;
                    }
                    PgWireBackendMessage::CommandComplete(_) => {
                        self.swallow_result = false;
                        continue;
                    }
                    PgWireBackendMessage::ErrorResponse(_) => self.swallow_result = false,
                    _ => {}
                }
            }
            let mut completes = None;
            let relay = match &message {
                PgWireBackendMessage::ReadyForQuery(ready) => {
                    self.conn(dest).status = crate::server::status_byte(ready);
                    if until_ready {
                        if self.segment.as_ref().is_some_and(|(d, _)| *d == dest) {
                            self.segment = None;
                        }
                        return Ok(());
                    }
                    false
                }
                PgWireBackendMessage::ErrorResponse(_) => {
                    // The server skips the rest until Sync; so does the session.
                    if let Some((d, awaits)) = self.segment.as_mut() {
                        if *d == dest {
                            awaits.clear();
                        }
                    }
                    if dest == Dest::Session {
                        self.describing.clear();
                    }
                    self.after_error();
                    true
                }
                PgWireBackendMessage::ParseComplete(_) => {
                    completes = Some(Await::Parse);
                    relay_front
                }
                PgWireBackendMessage::BindComplete(_) => {
                    completes = Some(Await::Bind);
                    relay_front
                }
                PgWireBackendMessage::CloseComplete(_) => {
                    completes = Some(Await::Close);
                    relay_front
                }
                PgWireBackendMessage::ParameterDescription(description) => {
                    if dest == Dest::Session {
                        self.learn_parameter_types(&description.types);
                    }
                    relay_front
                }
                PgWireBackendMessage::RowDescription(_) | PgWireBackendMessage::NoData(_) => {
                    if front.is_some_and(|(a, _)| a == Await::Describe) {
                        completes = Some(Await::Describe);
                    }
                    relay_front
                }
                PgWireBackendMessage::CommandComplete(_)
                | PgWireBackendMessage::EmptyQueryResponse(_)
                | PgWireBackendMessage::PortalSuspended(_) => {
                    if front.is_some_and(|(a, _)| a == Await::Execute) {
                        completes = Some(Await::Execute);
                    }
                    relay_front
                }
                PgWireBackendMessage::ParameterStatus(_) => dest == Dest::Session,
                PgWireBackendMessage::CopyInResponse(_) => {
                    self.queue(message)?;
                    self.client.flush().await?;
                    self.copy_in(dest).await?;
                    continue;
                }
                _ => relay_front,
            };
            if let Some(kind) = completes {
                if let Some((d, awaits)) = self.segment.as_mut() {
                    if *d == dest && awaits.front().is_some_and(|(a, _)| *a == kind) {
                        awaits.pop_front();
                    }
                }
            }
            if relay {
                self.queue(message)?;
            }
        }
    }

    /// Streams the client's COPY data to `dest` until the client ends it.
    async fn copy_in(&mut self, dest: Dest) -> Result<(), EndpointError> {
        loop {
            let Some(message) = self.client.read_frontend().await? else {
                return Err(EndpointError::Closed);
            };
            let last = matches!(
                message,
                PgWireFrontendMessage::CopyDone(_) | PgWireFrontendMessage::CopyFail(_)
            );
            if matches!(
                message,
                PgWireFrontendMessage::CopyData(_)
                    | PgWireFrontendMessage::CopyDone(_)
                    | PgWireFrontendMessage::CopyFail(_)
            ) {
                self.conn(dest).framed.queue_frontend(&message)?;
            }
            if last {
                self.conn(dest).framed.flush().await?;
                return Ok(());
            }
            if self.conn(dest).framed.pending_output() > 256 * 1024 {
                self.conn(dest).framed.flush().await?;
            }
        }
    }

    /// A simple query on `dest`, its answers relayed (its ReadyForQuery kept for ours).
    pub(super) async fn relay_simple(
        &mut self,
        dest: Dest,
        sql: &str,
    ) -> Result<(), EndpointError> {
        self.settle(dest).await?;
        let conn = self.conn(dest);
        conn.framed.queue_frontend(&PgWireFrontendMessage::Query(
            pgwire::messages::simplequery::Query::new(sql.to_string()),
        ))?;
        conn.framed.flush().await?;
        self.pump(dest, true).await
    }

    /// The client's Sync: every server its batch reached ends the batch, then the client
    /// gets one ReadyForQuery with the transaction's status.
    pub(super) async fn sync(&mut self) -> Result<(), EndpointError> {
        let touched = std::mem::take(&mut self.touched);
        let current = self.segment.as_ref().map(|(d, _)| *d);
        // The pending server reads its Sync with its messages, in one round trip.
        let mut order: Vec<Dest> = touched
            .iter()
            .copied()
            .filter(|d| Some(*d) != current)
            .collect();
        order.extend(current);
        for dest in &order {
            let conn = self.conn(*dest);
            conn.framed.queue_frontend(&PgWireFrontendMessage::Sync(
                pgwire::messages::extendedquery::Sync::new(),
            ))?;
            conn.framed.flush().await?;
        }
        for dest in order {
            self.pump(dest, true).await?;
        }
        self.segment = None;
        self.skipping = false;
        self.ready().await
    }

    /// The coordinator described a statement: its parameter types, where the client
    /// declared none, say how binary parameters read.
    fn learn_parameter_types(&mut self, types: &[u32]) {
        let Some(name) = self.describing.pop_front() else {
            return;
        };
        if let Some(prepared) = self.statements.get_mut(&name) {
            let mut learned = types.to_vec();
            for (i, declared) in prepared.types.iter().enumerate() {
                if *declared != 0 && i < learned.len() {
                    learned[i] = *declared;
                }
            }
            prepared.types = learned;
        }
    }

    async fn set_running(&mut self, dest: Dest) {
        let handle = self.conn(dest).cancel_handle();
        *self.running.lock().expect("cancel lock") = handle;
    }

    /// A statement this session's deadlock across servers was broken by cancelling fails as
    /// PostgreSQL reports a deadlock it detects (SQLSTATE 40P01, which applications retry),
    /// not as a cancellation.
    fn report_deadlock(&mut self, place: Option<Place>, fields: &mut Vec<(u8, String)>) {
        let cancelled = fields
            .iter()
            .any(|(code, value)| *code == b'C' && value == "57014");
        if !cancelled
            || !self
                .shared
                .deadlock_victims
                .lock()
                .expect("victims lock")
                .remove(&self.owner)
        {
            return;
        }
        fields.retain(|(code, _)| !matches!(code, b'C' | b'M' | b'D' | b'H' | b'W'));
        fields.push((b'C', "40P01".to_string()));
        fields.push((b'M', "deadlock detected".to_string()));
        let on = place.map_or_else(String::new, |p| format!(" on {}", super::place_name(p)));
        fields.push((
            b'D',
            format!(
                "This transaction waited{on} for a lock held by another transaction, which \
                 waited for one of this transaction's locks on another server."
            ),
        ));
        fields.push((
            b'H',
            "Retry the transaction; taking rows in the same order everywhere avoids it."
                .to_string(),
        ));
    }
}
