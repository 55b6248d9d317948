//! One client connection: its session on the coordinator (as the client's own role, which
//! authenticated through it), the participants of its transaction (Shoal's pooled
//! connections), and the relay of protocol messages between them.
//!
//! Responses reach the client in the order of its messages: messages for one server are
//! sent together, and before a message goes to another server (or the endpoint answers one
//! itself) the first server is flushed and its answers relayed. After an error nothing more
//! runs until the client's Sync, as in PostgreSQL.

mod ddl;
mod ending;
mod extended;
mod relay;
mod scatter;
mod settings;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pgwire::messages::response::TransactionStatus;
use pgwire::messages::response::{CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpStream;

use self::settings::SessionSettings;
use crate::control::{self, Control, Isolation};
use crate::error::{EndpointError, ServerError};
use crate::gate::Group;
use crate::pool::Pooled;
use crate::server::{CancelHandle, ServerConn};
use crate::shared::Shared;
use crate::transaction::{Need, Path, Step, Transaction};
use crate::wire::Framed;
use shoal_route::{NotRoutable, Param, Place, Plan, Privilege, Target, Topology};
use shoal_sql::{quote_literal, QualifiedName};

/// Where a message goes: the client's coordinator session, or one of Shoal's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dest {
    Session,
    Shoal(Place),
}

/// What a message sent to a server answers with, and whether the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Await {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
}

pub struct Session {
    client: Framed<TcpStream>,
    coordinator: ServerConn,
    shared: Arc<Shared>,
    /// Shoal's connections in use: the participants of an explicit transaction, or the one
    /// an autocommit statement runs on until the next Sync.
    held: HashMap<Place, Pooled>,
    txn: Option<Transaction>,
    settings: SessionSettings,
    search_path: Vec<String>,
    privileges: HashMap<(QualifiedName, Privilege), bool>,
    statements: HashMap<String, extended::Prepared>,
    portals: HashMap<String, extended::Portal>,
    /// The server whose messages are not flushed yet, and what they answer with.
    segment: Option<(Dest, VecDeque<(Await, bool)>)>,
    /// Servers that got extended-protocol messages since the last Sync.
    touched: Vec<Dest>,
    /// Statements whose Describe went to the coordinator, in order: their parameter types
    /// come back with it (a client that binds binary values often declares none).
    describing: VecDeque<String>,
    /// An error was reported: client messages are dropped until Sync.
    skipping: bool,
    /// What a cancel request from the client interrupts.
    running: Arc<Mutex<Option<CancelHandle>>>,
    /// Shard groups the transaction (or the autocommit statement) works in.
    entered: Vec<Group>,
    /// The coordinator ran something that may change tables (DDL): the router reads them
    /// again before this session routes anything more.
    catalog_may_change: bool,
    /// The next result of a simple query is the endpoint's own (a guard): not relayed.
    swallow_result: bool,
    /// Merging statements prepared so far (each gets a name of its own).
    merges: u64,
    /// This session among the endpoint's, for deadlock detection across servers.
    owner: shoal_cluster::deadlock::Owner,
}

/// A statement's destination, decided before it is sent.
enum Route {
    Coordinator { begin_first: bool },
    Participant { place: Place, join: bool },
    Refused(ServerError),
}

impl Session {
    pub async fn start(
        client: Framed<TcpStream>,
        coordinator: ServerConn,
        shared: Arc<Shared>,
        running: Arc<Mutex<Option<CancelHandle>>>,
    ) -> Result<Session, EndpointError> {
        let owner = shared.next_owner();
        let mut session = Session {
            client,
            coordinator,
            shared,
            held: HashMap::new(),
            txn: None,
            settings: SessionSettings::default(),
            search_path: Vec::new(),
            privileges: HashMap::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            segment: None,
            touched: Vec::new(),
            describing: VecDeque::new(),
            skipping: false,
            running,
            entered: Vec::new(),
            catalog_may_change: false,
            swallow_result: false,
            merges: 0,
            owner,
        };
        // Its coordinator session's postgres_fdw connections work for it on the nodes: deadlock
        // detection knows them as this session's by that backend.
        if let Some(cancel) = session.coordinator.cancel_handle() {
            session.known_as_mine(Place::Coordinator, cancel);
        }
        session.refresh_settings().await?;
        Ok(session)
    }

    /// Serves the client until it leaves. Whatever it left open is rolled back.
    pub async fn run(mut self) -> Result<(), EndpointError> {
        let result = self.serve().await;
        self.abandon().await;
        result
    }

    async fn serve(&mut self) -> Result<(), EndpointError> {
        loop {
            if !self.client.has_buffered_input() {
                self.client.flush().await?;
            }
            let Some(message) = self.client.read_frontend().await? else {
                return Ok(());
            };
            match message {
                PgWireFrontendMessage::Terminate(_) => return Ok(()),
                PgWireFrontendMessage::Query(query) => {
                    self.simple_query(&query.query).await?;
                }
                PgWireFrontendMessage::Sync(_) => self.sync().await?,
                message if message.is_extended_query() && !self.skipping => {
                    self.extended(message).await?;
                }
                // Copy messages outside COPY are ignored, as PostgreSQL does.
                _ => {}
            }
        }
    }

    // ---- answers of the endpoint's own

    fn queue(&mut self, message: PgWireBackendMessage) -> Result<(), EndpointError> {
        self.client.queue_backend(&message)
    }

    /// Answers the client directly, after whatever servers owe it before.
    async fn local(&mut self, message: PgWireBackendMessage) -> Result<(), EndpointError> {
        self.complete_segment().await?;
        self.queue(message)
    }

    async fn local_error(&mut self, error: ServerError) -> Result<(), EndpointError> {
        self.local(PgWireBackendMessage::ErrorResponse(ErrorResponse::new(
            error.fields,
        )))
        .await?;
        self.after_error();
        Ok(())
    }

    fn after_error(&mut self) {
        self.skipping = true;
        if let Some(txn) = &mut self.txn {
            if txn.path != Path::Coordinator {
                txn.fail();
            }
        }
    }

    async fn warning(&mut self, message: &str) -> Result<(), EndpointError> {
        let fields = vec![
            (b'S', "WARNING".to_string()),
            (b'V', "WARNING".to_string()),
            (b'C', "25001".to_string()),
            (b'M', message.to_string()),
        ];
        self.local(PgWireBackendMessage::NoticeResponse(NoticeResponse::new(
            fields,
        )))
        .await
    }

    fn status(&mut self) -> TransactionStatus {
        match &self.txn {
            None => TransactionStatus::Idle,
            Some(txn) if txn.path == Path::Coordinator => match self.coordinator.status {
                b'T' => TransactionStatus::Transaction,
                b'E' => TransactionStatus::Error,
                _ => {
                    self.txn = None;
                    TransactionStatus::Idle
                }
            },
            Some(txn) if txn.failed => TransactionStatus::Error,
            Some(_) => TransactionStatus::Transaction,
        }
    }

    async fn ready(&mut self) -> Result<(), EndpointError> {
        // A deadlock's cancellation that found no statement waiting any more is over.
        self.shared
            .deadlock_victims
            .lock()
            .expect("victims lock")
            .remove(&self.owner);
        if self.txn.is_none() && matches!(self.coordinator.status, b'T' | b'E') {
            // The coordinator session entered a transaction block the endpoint did not see
            // begin (a BEGIN among several statements of one query string): the block is
            // the coordinator's, and every statement goes there until it ends.
            let mut txn = Transaction::begin(String::new(), Isolation::ReadCommitted);
            txn.path = Path::Coordinator;
            self.txn = Some(txn);
        }
        if self.txn.is_none() {
            self.release_autocommit();
            self.leave_groups();
        }
        let status = self.status();
        if self.catalog_may_change && status == TransactionStatus::Idle {
            self.catalog_may_change = false;
            self.shared.refresh_topology().await;
        }
        self.queue(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
            status,
        )))
    }

    fn leave_groups(&mut self) {
        for group in self.entered.drain(..) {
            self.shared.gate.leave(group);
        }
    }

    /// Binds `plan` and enters its shard group, waiting while a move's fence closes it (then
    /// binding again: the group may have moved).
    async fn bind_entered(
        &mut self,
        plan: &Plan,
        params: &[Param<'_>],
    ) -> Result<Target, NotRoutable> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let epoch = self.shared.placements_epoch.load(SeqCst);
            let target = plan.bind(params, &self.topology())?;
            if target.place == Place::Coordinator {
                return Ok(target);
            }
            let group = (target.colocation, target.shard_index);
            if self.entered.contains(&group) {
                // Working in the group already: no move can switch it meanwhile.
                return Ok(target);
            }
            if self.shared.gate.try_enter(group) {
                // A move may have switched the group between the binding and the entry.
                if self.shared.placements_epoch.load(SeqCst) != epoch {
                    self.shared.gate.leave(group);
                    continue;
                }
                self.entered.push(group);
                return Ok(target);
            }
            while self.shared.gate.is_closed(group) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    }

    fn release_autocommit(&mut self) {
        let in_transaction = self.txn.as_ref().map(|t| t.participants().to_vec());
        let held: Vec<Place> = self.held.keys().copied().collect();
        for place in held {
            if in_transaction.as_ref().is_some_and(|p| p.contains(&place)) {
                continue;
            }
            if let Some(pooled) = self.unhold(place) {
                self.shared.pool.put(place, pooled);
            }
        }
    }

    // ---- connections

    /// Keeps `pooled` for `place`, known to deadlock detection as this session's.
    fn keep(&mut self, place: Place, pooled: Pooled) {
        if let Some(cancel) = pooled.conn.cancel_handle() {
            self.known_as_mine(place, cancel);
        }
        self.held.insert(place, pooled);
    }

    /// Tells deadlock detection that the backend `cancel` reaches on `place` works for this
    /// session.
    fn known_as_mine(&self, place: Place, cancel: CancelHandle) {
        self.shared
            .holds
            .lock()
            .expect("holds lock")
            .insert((place, cancel.pid), (self.owner, cancel));
    }

    /// The statement that fails on the coordinator session in place of `sql`, if the
    /// coordinator would run `sql` otherwise than one server ([`shoal_route::coordinator`]).
    fn coordinator_refusal(&self, sql: &str) -> Option<String> {
        shoal_route::coordinator_differs(sql, &self.topology()).map(|d| d.raise_sql())
    }

    /// Takes back the connection kept for `place`; once the session keeps none, a deadlock
    /// it was cancelled for is over.
    fn unhold(&mut self, place: Place) -> Option<Pooled> {
        let pooled = self.held.remove(&place)?;
        if let Some((pid, _)) = pooled.conn.key {
            let mut holds = self.shared.holds.lock().expect("holds lock");
            if holds
                .get(&(place, pid))
                .is_some_and(|(o, _)| *o == self.owner)
            {
                holds.remove(&(place, pid));
            }
        }
        if self.held.is_empty() {
            self.shared
                .deadlock_victims
                .lock()
                .expect("victims lock")
                .remove(&self.owner);
        }
        Some(pooled)
    }

    fn conn(&mut self, dest: Dest) -> &mut ServerConn {
        match dest {
            Dest::Session => &mut self.coordinator,
            Dest::Shoal(place) => &mut self.held.get_mut(&place).expect("held connection").conn,
        }
    }

    /// A connection for `place`, taken from the pool with the session's settings copied.
    async fn hold(&mut self, place: Place) -> Result<(), EndpointError> {
        if self.held.contains_key(&place) {
            return Ok(());
        }
        let mut pooled = self.shared.pool.get(place).await?;
        if let Some(sql) = self.settings.apply_sql(&pooled.settings) {
            if let Err(error) = pooled.conn.simple_query(&sql).await {
                pooled.reusable = false;
                self.shared.pool.put(place, pooled);
                return Err(error);
            }
            pooled.settings = self.settings.values.clone();
        }
        self.keep(place, pooled);
        Ok(())
    }

    fn topology(&self) -> Topology {
        let shared = self.shared.topology.read().expect("topology lock").clone();
        Topology {
            search_path: self.search_path.clone(),
            tables: shared.tables.clone(),
            builtin_functions: shared.builtin_functions.clone(),
            node_versions: shared.node_versions.clone(),
        }
    }

    // ---- deciding where a statement goes

    /// Whether the client's role holds every privilege the plan needs (asked of its
    /// coordinator session once per table and privilege).
    async fn allowed(&mut self, plan: &Plan) -> Result<bool, EndpointError> {
        for (name, privilege) in plan.accesses() {
            if !self.may(name, *privilege).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the client's role holds `privilege` on `name` (asked of its own coordinator
    /// session once per table and privilege).
    async fn may(
        &mut self,
        name: &QualifiedName,
        privilege: Privilege,
    ) -> Result<bool, EndpointError> {
        let key = (name.clone(), privilege);
        if let Some(granted) = self.privileges.get(&key) {
            return Ok(*granted);
        }
        let sql = format!(
            "SELECT pg_catalog.has_table_privilege({}, {})",
            quote_literal(&name.quoted()),
            quote_literal(privilege.as_str())
        );
        let rows = self.coordinator.simple_query(&sql).await;
        let granted = matches!(rows.as_deref(), Ok([row]) if row[0].as_deref() == Some("t"));
        self.privileges.insert(key, granted);
        Ok(granted)
    }

    /// Where a statement goes, given its routing (`target`) or the reason it has none.
    async fn route(
        &mut self,
        routed: Result<(Target, &Plan), NotRoutable>,
    ) -> Result<Route, EndpointError> {
        let need = match routed {
            Ok((target, plan)) => {
                if self.allowed(plan).await? {
                    Ok(Need::Participant {
                        place: target.place,
                        reads_reference_replica: plan.reads_reference_replica(),
                        writes_reference: plan.writes_reference(),
                    })
                } else {
                    Err("the client's role lacks a privilege the coordinator checks".to_string())
                }
            }
            Err(reason) => Err(reason.0),
        };
        let Some(txn) = &mut self.txn else {
            return Ok(match need {
                // Outside a transaction block a reference write needs no participant: the
                // client's own session writes the authoritative table.
                Ok(Need::Participant {
                    place: Place::Coordinator,
                    ..
                })
                | Err(_) => Route::Coordinator { begin_first: false },
                Ok(Need::Participant { place, .. }) => {
                    let other = self.held.keys().find(|p| **p != place).copied();
                    if other.is_some() {
                        Route::Refused(
                            ServerError::new(
                                "0A000",
                                "statements of one implicit transaction reach two servers through \
                             Shoal's endpoint",
                            )
                            .with_hint("Wrap them in BEGIN and COMMIT."),
                        )
                    } else {
                        Route::Participant { place, join: false }
                    }
                }
                Ok(Need::Coordinator) => Route::Coordinator { begin_first: false },
            });
        };
        let (need, why) = match need {
            Ok(need) => (need, String::new()),
            Err(why) => (Need::Coordinator, why),
        };
        Ok(match txn.route(need, &why) {
            Ok(Step::Coordinator { begin_first }) => Route::Coordinator { begin_first },
            Ok(Step::Participant { place, join }) => Route::Participant { place, join },
            Err(error) => Route::Refused(error),
        })
    }

    /// Opens the transaction on a participant that joins it: the client's BEGIN, then its
    /// savepoints, on a connection of its own.
    async fn join(&mut self, place: Place) -> Result<Result<(), ServerError>, EndpointError> {
        if let Err(error) = self.hold(place).await {
            return Ok(Err(connect_failure(place, &error)));
        }
        let txn = self.txn.as_ref().expect("a transaction");
        let mut sql = txn.begin.clone();
        for savepoint in &txn.savepoints {
            sql.push_str("; ");
            sql.push_str(&control::savepoint_sql(savepoint));
        }
        match self.conn(Dest::Shoal(place)).simple_query(&sql).await {
            Ok(_) => {
                self.shared.metrics.participants_joined();
                Ok(Ok(()))
            }
            Err(EndpointError::Server(error)) => Ok(Err(error)),
            Err(other) => Err(other),
        }
    }

    /// The held-back BEGIN and savepoints, on the coordinator session.
    async fn begin_on_coordinator(&mut self) -> Result<(), EndpointError> {
        let txn = self.txn.as_ref().expect("a transaction");
        let mut statements = vec![txn.begin.clone()];
        statements.extend(txn.savepoints.iter().map(|s| control::savepoint_sql(s)));
        if self.touched.contains(&Dest::Session) {
            for sql in statements {
                self.inject(Dest::Session, &sql).await?;
            }
        } else {
            self.coordinator
                .simple_query(&statements.join("; "))
                .await?;
        }
        Ok(())
    }

    // ---- the simple query protocol

    async fn simple_query(&mut self, sql: &str) -> Result<(), EndpointError> {
        self.complete_segment().await?;
        self.skipping = false;
        let control = control::classify(sql);
        match control {
            Control::Statement => {
                let planned = shoal_route::plan(sql, &self.topology());
                if planned.is_err() {
                    if let Ok(scatter) = shoal_route::plan_scatter(sql, &self.topology()) {
                        if self.scatter_simple(&scatter).await? {
                            self.skipping = false;
                            return self.ready().await;
                        }
                    }
                }
                let routed = match &planned {
                    Ok(plan) => self.bind_entered(plan, &[]).await.map(|t| (t, plan)),
                    Err(reason) => Err(reason.clone()),
                };
                let target = routed.as_ref().ok().map(|(t, _)| t.clone());
                // What the coordinator would run otherwise than one server fails there at
                // once, explained ([`shoal_route::coordinator`]).
                let refusal = match &routed {
                    Err(_) => self.coordinator_refusal(sql),
                    Ok(_) => None,
                };
                let route = self.route(routed).await?;
                self.simple_routed(route, refusal.as_deref().unwrap_or(sql), target)
                    .await?;
            }
            Control::ConcurrentIndex {
                create,
                ref schema,
                ref name,
            } => {
                if !self.concurrent_index(create, schema, name, sql).await? {
                    let why = NotRoutable("it is not a table of Shoal's".into());
                    let route = self.route(Err(why)).await?;
                    self.simple_routed(route, sql, None).await?;
                }
            }
            Control::Unparsed | Control::CoordinatorOnly => {
                self.catalog_may_change = true;
                let refusal = self.coordinator_refusal(sql);
                let route = self
                    .route(Err(NotRoutable("it is not a routable statement".into())))
                    .await?;
                self.simple_routed(route, refusal.as_deref().unwrap_or(sql), None)
                    .await?;
            }
            control => {
                if self.run_control(&control, sql).await? {
                    // Handled by the endpoint.
                } else {
                    self.relay_simple(Dest::Session, sql).await?;
                    if control == Control::Session {
                        self.refresh_settings().await?;
                        self.apply_settings_to_held().await?;
                    }
                }
            }
        }
        // An error ends a simple query alone; the extended protocol's skipping is for a batch.
        self.skipping = false;
        self.ready().await
    }

    async fn simple_routed(
        &mut self,
        route: Route,
        sql: &str,
        target: Option<Target>,
    ) -> Result<(), EndpointError> {
        match route {
            Route::Refused(error) => {
                self.shared.metrics.refused();
                self.local_error(error).await
            }
            Route::Coordinator { begin_first } => {
                self.shared.metrics.to_coordinator();
                if begin_first {
                    if let Err(EndpointError::Server(error)) = self.begin_on_coordinator().await {
                        return self.local_error(error).await;
                    }
                }
                self.relay_simple(Dest::Session, sql).await
            }
            Route::Participant { place, join } => {
                self.shared.metrics.routed();
                if join {
                    if let Err(error) = self.join(place).await? {
                        return self.local_error(error).await;
                    }
                } else if let Err(error) = self.hold(place).await {
                    return self.local_error(connect_failure(place, &error)).await;
                }
                let target = target.expect("a routed statement has its target");
                let dest = Dest::Shoal(place);
                match &target.guard {
                    None => self.relay_simple(dest, &target.sql).await,
                    // In a transaction block the check runs first on its own; alone, in the
                    // same query string (one implicit transaction), its answer swallowed.
                    Some(guard) if self.txn.is_some() => {
                        match self.conn(dest).simple_query(&guard_sql(guard)).await {
                            Ok(_) => self.relay_simple(dest, &target.sql).await,
                            Err(EndpointError::Server(error)) => self.local_error(error).await,
                            Err(other) => Err(other),
                        }
                    }
                    Some(guard) => {
                        self.swallow_result = true;
                        let sql = format!("{}; {}", guard_sql(guard), target.sql);
                        let result = self.relay_simple(dest, &sql).await;
                        self.swallow_result = false;
                        result
                    }
                }
            }
        }
    }
}

/// The check an INSERT that leaves columns out runs first on its node (see `Target::guard`).
fn guard_sql(guard: &shoal_route::Guard) -> String {
    format!(
        "SELECT shoal_worker.expect_tables({}, {})",
        guard.version,
        quote_literal(&guard.shard.quoted())
    )
}

fn complete(tag: &str) -> PgWireBackendMessage {
    PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_string()))
}

fn connect_failure(place: Place, error: &EndpointError) -> ServerError {
    ServerError::new(
        "08006",
        format!(
            "could not reach {} through Shoal's endpoint: {error}",
            place_name(place)
        ),
    )
}

fn lost(place: Place, error: &EndpointError) -> ServerError {
    match error {
        EndpointError::Server(error) => error.clone(),
        other => ServerError::new(
            "08006",
            format!("the connection to {} failed: {other}", place_name(place)),
        ),
    }
}

fn prepare_failure(place: Place, error: &EndpointError) -> ServerError {
    let mut error = lost(place, error);
    if error
        .message()
        .contains("prepared transactions are disabled")
    {
        error = error.with_hint(format!(
            "Set max_prepared_transactions (e.g. to max_connections) on {} and restart it: \
             a transaction that writes on several servers commits with two-phase commit.",
            place_name(place)
        ));
    }
    error
}

fn place_name(place: Place) -> String {
    match place {
        Place::Coordinator => "the coordinator".to_string(),
        Place::Node(id) => format!("node {id}"),
    }
}

/// Parameters as the router reads them: text, or binary with their declared type.
fn params<'a>(
    values: &'a [Option<bytes::Bytes>],
    formats: &[i16],
    types: &[u32],
) -> Vec<Param<'a>> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let format = match formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            match value {
                None => Param::Null,
                Some(bytes) if format == 0 => match std::str::from_utf8(bytes) {
                    Ok(text) => Param::Text(text),
                    Err(_) => Param::Binary { ty: None, bytes },
                },
                Some(bytes) => Param::Binary {
                    ty: types
                        .get(i)
                        .and_then(|oid| shoal_route::KeyType::from_builtin_oid(*oid)),
                    bytes,
                },
            }
        })
        .collect()
}
