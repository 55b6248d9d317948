//! One client connection: its session on the coordinator (as the client's own role, which
//! authenticated through it), the participants of its transaction (Shoal's pooled
//! connections), and the relay of protocol messages between them.
//!
//! Responses reach the client in the order of its messages: messages for one server are
//! sent together, and before a message goes to another server (or the endpoint answers one
//! itself) the first server is flushed and its answers relayed. After an error nothing more
//! runs until the client's Sync, as in PostgreSQL.

mod ddl;
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
use crate::control::{self, Control};
use crate::error::{EndpointError, ServerError};
use crate::gate::Group;
use crate::pool::Pooled;
use crate::server::{CancelHandle, ServerConn};
use crate::shared::Shared;
use crate::transaction::{Need, Path, Step, Transaction};
use crate::twophase;
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
        };
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
            if let Some(pooled) = self.held.remove(&place) {
                self.shared.pool.put(place, pooled);
            }
        }
    }

    // ---- connections

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
        self.held.insert(place, pooled);
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
                if planned.is_err() && self.txn.is_none() {
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
                let route = self.route(routed).await?;
                self.simple_routed(route, sql, target).await?;
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
                let route = self
                    .route(Err(NotRoutable("it is not a routable statement".into())))
                    .await?;
                self.simple_routed(route, sql, None).await?;
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

    // ---- transaction control

    /// Carries out transaction control the endpoint owns; `false` when the statement goes
    /// to the coordinator session as it is.
    async fn run_control(&mut self, control: &Control, sql: &str) -> Result<bool, EndpointError> {
        if matches!(&self.txn, Some(t) if t.path == Path::Coordinator) {
            return Ok(false);
        }
        match control {
            Control::Begin { sql, isolation } => {
                if self.txn.is_some() {
                    self.warning("there is already a transaction in progress")
                        .await?;
                } else {
                    let isolation = isolation.unwrap_or(self.settings.default_isolation());
                    self.txn = Some(Transaction::begin(sql.clone(), isolation));
                }
                self.local(complete("BEGIN")).await?;
                Ok(true)
            }
            Control::Commit => {
                let tag = match self.txn.take() {
                    None => {
                        self.warning("there is no transaction in progress").await?;
                        "COMMIT"
                    }
                    Some(txn) if txn.failed => {
                        self.end_participants(&txn).await;
                        "ROLLBACK"
                    }
                    Some(txn) => match self.commit(&txn).await {
                        Ok(()) => "COMMIT",
                        Err(error) => {
                            self.local_error(error).await?;
                            return Ok(true);
                        }
                    },
                };
                self.local(complete(tag)).await?;
                Ok(true)
            }
            Control::Rollback => {
                match self.txn.take() {
                    None => self.warning("there is no transaction in progress").await?,
                    Some(txn) => self.end_participants(&txn).await,
                }
                self.local(complete("ROLLBACK")).await?;
                Ok(true)
            }
            Control::Savepoint(name) | Control::Release(name) | Control::RollbackTo(name) => {
                let Some(txn) = &self.txn else {
                    let verb = match control {
                        Control::Savepoint(_) => "SAVEPOINT",
                        Control::Release(_) => "RELEASE SAVEPOINT",
                        _ => "ROLLBACK TO SAVEPOINT",
                    };
                    let error = ServerError::new(
                        "25P01",
                        format!("{verb} can only be used in transaction blocks"),
                    );
                    self.local_error(error).await?;
                    return Ok(true);
                };
                if txn.failed && !matches!(control, Control::RollbackTo(_)) {
                    let error = txn.check_not_failed().unwrap_err();
                    self.local_error(error).await?;
                    return Ok(true);
                }
                let places = txn.participants().to_vec();
                for place in places {
                    self.settle(Dest::Shoal(place)).await?;
                    if let Err(error) = self.conn(Dest::Shoal(place)).simple_query(sql).await {
                        match error {
                            EndpointError::Server(error) => {
                                self.local_error(error).await?;
                                return Ok(true);
                            }
                            other => return Err(other),
                        }
                    }
                }
                let txn = self.txn.as_mut().expect("a transaction");
                let tag = match control {
                    Control::Savepoint(name) => {
                        txn.savepoint(name);
                        "SAVEPOINT"
                    }
                    Control::Release(_) | Control::RollbackTo(_) => {
                        let release = matches!(control, Control::Release(_));
                        if !txn.unwind_to(name, release) {
                            let error = ServerError::new(
                                "3B001",
                                format!("savepoint \"{name}\" does not exist"),
                            );
                            self.local_error(error).await?;
                            return Ok(true);
                        }
                        if release {
                            "RELEASE"
                        } else {
                            "ROLLBACK"
                        }
                    }
                    _ => unreachable!(),
                };
                self.local(complete(tag)).await?;
                Ok(true)
            }
            Control::ConcurrentIndex {
                create,
                schema,
                name,
            } => {
                if !self.concurrent_index(*create, schema, name, sql).await? {
                    self.settle(Dest::Session).await?;
                    match self.coordinator.simple_query(sql).await {
                        Ok(_) => {
                            let tag = if *create {
                                "CREATE INDEX"
                            } else {
                                "DROP INDEX"
                            };
                            self.local(complete(tag)).await?;
                        }
                        Err(EndpointError::Server(error)) => self.local_error(error).await?,
                        Err(other) => return Err(other),
                    }
                }
                Ok(true)
            }
            Control::Session => {
                // A setting inside a transaction block that has not picked its path yet
                // belongs to that transaction: it goes to the coordinator with it.
                if let Some(txn) = &mut self.txn {
                    if txn.path == Path::Undecided {
                        txn.path = Path::Coordinator;
                        if let Err(EndpointError::Server(error)) = self.begin_on_coordinator().await
                        {
                            self.local_error(error).await?;
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Brings a server's extended-protocol batch to its end before a statement of the
    /// endpoint's own runs on it.
    async fn settle(&mut self, dest: Dest) -> Result<(), EndpointError> {
        self.complete_segment().await?;
        if let Some(i) = self.touched.iter().position(|d| *d == dest) {
            self.touched.remove(i);
            let conn = self.conn(dest);
            conn.framed.queue_frontend(&PgWireFrontendMessage::Sync(
                pgwire::messages::extendedquery::Sync::new(),
            ))?;
            conn.framed.flush().await?;
            self.pump(dest, true).await?;
        }
        Ok(())
    }

    /// Commits the participants: one commits alone, several with two-phase commit.
    async fn commit(&mut self, txn: &Transaction) -> Result<(), ServerError> {
        let places = txn.participants().to_vec();
        for place in &places {
            if let Err(error) = self.settle(Dest::Shoal(*place)).await {
                self.end_participants(txn).await;
                return Err(lost(*place, &error));
            }
        }
        match places.as_slice() {
            [] => Ok(()),
            [place] => {
                let result = self.conn(Dest::Shoal(*place)).simple_query("COMMIT").await;
                self.release(*place);
                result.map(|_| ()).map_err(|e| lost(*place, &e))
            }
            _ => {
                let outcome = self.two_phase_commit(&places).await;
                for place in &places {
                    self.release(*place);
                }
                outcome
            }
        }
    }

    async fn two_phase_commit(&mut self, places: &[Place]) -> Result<(), ServerError> {
        let shared = self.shared.clone();
        let transaction = shared.next_transaction();
        let _in_flight = shared.in_flight(&transaction);
        shared.metrics.two_phase_commit();
        // The coordinator's participant decides last: its commit, with the decision row in
        // it, is the decision.
        let last_agent = places
            .contains(&Place::Coordinator)
            .then_some(Place::Coordinator);
        let mut prepared = Vec::new();
        for place in places.iter().filter(|p| Some(**p) != last_agent) {
            let gid = twophase::participant_gid(&transaction, *place);
            let sql = format!("PREPARE TRANSACTION {}", quote_literal(&gid));
            match self.conn(Dest::Shoal(*place)).simple_query(&sql).await {
                Ok(_) => prepared.push((*place, gid)),
                Err(error) => {
                    self.abort_prepared(&prepared, places).await;
                    return Err(prepare_failure(*place, &error));
                }
            }
        }
        let record = format!(
            "INSERT INTO shoal.commit_decision (transaction_id, participants) VALUES ({}, {})",
            quote_literal(&transaction),
            quote_literal(&format!(
                "{{{}}}",
                places
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        );
        let decided = match last_agent {
            Some(place) => {
                self.conn(Dest::Shoal(place))
                    .simple_query(&format!("{record}; COMMIT"))
                    .await
            }
            None => match self.shared.pool.get(Place::Coordinator).await {
                Ok(mut pooled) => {
                    let result = pooled.conn.simple_query(&record).await;
                    pooled.reusable = result.is_ok();
                    self.shared.pool.put(Place::Coordinator, pooled);
                    result
                }
                Err(error) => Err(error),
            },
        };
        match decided {
            Ok(_) => {}
            Err(EndpointError::Server(error)) => {
                // Refused, so not recorded: nothing commits.
                self.abort_prepared(&prepared, places).await;
                return Err(error);
            }
            Err(error) => {
                // The decision may or may not be durable: recovery settles it by the record.
                tracing::warn!(%error, transaction, "commit outcome unknown until recovery");
                return Err(ServerError::new(
                    "08007",
                    format!(
                        "the connection to the coordinator failed while committing ({error}); \
                         the transaction commits or rolls back everywhere once recovery runs"
                    ),
                ));
            }
        }
        for (place, gid) in &prepared {
            let sql = format!("COMMIT PREPARED {}", quote_literal(gid));
            if let Err(error) = self.conn(Dest::Shoal(*place)).simple_query(&sql).await {
                // Decided: recovery commits it.
                tracing::warn!(%error, gid, "COMMIT PREPARED failed; recovery will finish it");
                if let Some(pooled) = self.held.get_mut(place) {
                    pooled.reusable = false;
                }
            }
        }
        Ok(())
    }

    async fn abort_prepared(&mut self, prepared: &[(Place, String)], places: &[Place]) {
        for place in places {
            let sql = match prepared.iter().find(|(p, _)| p == place) {
                Some((_, gid)) => format!("ROLLBACK PREPARED {}", quote_literal(gid)),
                None => "ROLLBACK".to_string(),
            };
            if self.held.contains_key(place) {
                if let Err(error) = self.conn(Dest::Shoal(*place)).simple_query(&sql).await {
                    tracing::warn!(%error, ?place, "rollback failed; recovery will finish it");
                    if let Some(pooled) = self.held.get_mut(place) {
                        pooled.reusable = false;
                    }
                }
            }
        }
    }

    /// Rolls back the participants and returns their connections.
    async fn end_participants(&mut self, txn: &Transaction) {
        for place in txn.participants().to_vec() {
            if self.held.contains_key(&place) {
                let _ = self.settle(Dest::Shoal(place)).await;
                if self
                    .conn(Dest::Shoal(place))
                    .simple_query("ROLLBACK")
                    .await
                    .is_err()
                {
                    if let Some(pooled) = self.held.get_mut(&place) {
                        pooled.reusable = false;
                    }
                }
            }
            self.release(place);
        }
    }

    fn release(&mut self, place: Place) {
        self.touched.retain(|d| *d != Dest::Shoal(place));
        if let Some(pooled) = self.held.remove(&place) {
            self.shared.pool.put(place, pooled);
        }
    }

    /// The client left: its open transaction rolls back, connections go back or close.
    async fn abandon(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.end_participants(&txn).await;
        }
        self.leave_groups();
        let places: Vec<Place> = self.held.keys().copied().collect();
        for place in places {
            if let Some(mut pooled) = self.held.remove(&place) {
                pooled.reusable = false;
                self.shared.pool.put(place, pooled);
            }
        }
    }

    /// A setting changed mid-transaction reaches the participants already in it.
    async fn apply_settings_to_held(&mut self) -> Result<(), EndpointError> {
        let places: Vec<Place> = self.held.keys().copied().collect();
        for place in places {
            self.settle(Dest::Shoal(place)).await?;
            let pooled = self.held.get_mut(&place).expect("held connection");
            if let Some(sql) = self.settings.apply_sql(&pooled.settings) {
                pooled.conn.simple_query(&sql).await?;
                pooled.settings = self.settings.values.clone();
            }
        }
        Ok(())
    }

    /// The session settings (and search path) as the coordinator session now has them.
    async fn refresh_settings(&mut self) -> Result<(), EndpointError> {
        if self.coordinator.status == b'E' {
            return Ok(());
        }
        let rows = self
            .coordinator
            .simple_query(&SessionSettings::query())
            .await?;
        let (settings, search_path) = SessionSettings::from_rows(&rows);
        self.settings = settings;
        self.search_path = search_path;
        self.privileges.clear();
        Ok(())
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
