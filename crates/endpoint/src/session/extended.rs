//! The extended query protocol: Parse, Bind, Describe, Execute, Close, Flush.
//!
//! A statement the router may send to a node, or transaction control, is parsed by the
//! endpoint alone (ParseComplete answered at once); its server is known at Bind, from the
//! parameters, and the node gets Parse (of the rewritten text), Bind and what follows. Any
//! other statement is parsed on the coordinator session as the client wrote it. A statement
//! the coordinator must answer after all (or describe before any Bind) is parsed there when
//! that happens.

use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Execute, Parse, ParseComplete,
};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::scatter::{InTransaction, Parameters};
use super::{params, Await, Dest, Route, Session};
use crate::control::{self, Control};
use crate::error::EndpointError;
use crate::transaction::{Need, Path};
use shoal_route::{NotRoutable, Plan, Scatter};

pub struct Prepared {
    sql: String,
    /// As declared at Parse, completed by the coordinator's ParameterDescription.
    pub(super) types: Vec<u32>,
    control: Control,
    /// The router's plan, when the statement may go to a node.
    plan: Option<Plan>,
    /// Else, an aggregate the endpoint splits across the nodes (outside transaction blocks).
    scatter: Option<Scatter>,
    /// Parsed on the coordinator session under the client's name.
    on_coordinator: bool,
}

pub enum Portal {
    /// Bound on a server under the client's portal name.
    Server(Dest),
    /// A split aggregate, run when the client describes or executes it.
    Scatter {
        statement: String,
        bind: Bind,
        scatter: Scatter,
    },
    /// Transaction control, run by the endpoint at Execute.
    Control(Control, String),
}

/// The server a portal lives on; one the endpoint does not know is the coordinator session's
/// to report on.
fn portal_dest(portal: Option<&Portal>) -> Dest {
    match portal {
        Some(Portal::Server(dest)) => *dest,
        _ => Dest::Session,
    }
}

fn name(name: &Option<String>) -> String {
    name.clone().unwrap_or_default()
}

impl Session {
    pub(super) async fn extended(
        &mut self,
        message: PgWireFrontendMessage,
    ) -> Result<(), EndpointError> {
        match message {
            PgWireFrontendMessage::Parse(parse) => self.parse(parse).await,
            PgWireFrontendMessage::Bind(bind) => self.bind(bind).await,
            PgWireFrontendMessage::Describe(describe) => self.describe(describe).await,
            PgWireFrontendMessage::Execute(execute) => self.execute(execute).await,
            PgWireFrontendMessage::Close(close) => self.close(close).await,
            PgWireFrontendMessage::Flush(_) => {
                self.complete_segment().await?;
                self.client.flush().await
            }
            _ => Ok(()),
        }
    }

    async fn parse(&mut self, parse: Parse) -> Result<(), EndpointError> {
        let statement = name(&parse.name);
        let control = control::classify(&parse.query);
        if matches!(control, Control::CoordinatorOnly | Control::Unparsed) {
            self.catalog_may_change = true;
        }
        let plan = match control {
            Control::Statement => shoal_route::plan(&parse.query, &self.topology()).ok(),
            _ => None,
        };
        let scatter = match (&control, &plan) {
            (Control::Statement, None) => {
                shoal_route::plan_scatter(&parse.query, &self.topology()).ok()
            }
            _ => None,
        };
        let deferred = plan.is_some()
            || scatter.is_some()
            || matches!(
                control,
                Control::Begin { .. }
                    | Control::Commit
                    | Control::Rollback
                    | Control::Savepoint(_)
                    | Control::Release(_)
                    | Control::RollbackTo(_)
                    | Control::ConcurrentIndex { .. }
            );
        let prepared = Prepared {
            sql: parse.query.clone(),
            types: parse.type_oids.clone(),
            control,
            plan,
            scatter,
            on_coordinator: !deferred,
        };
        if deferred {
            if !statement.is_empty() && self.statements.contains_key(&statement) {
                let error = crate::error::ServerError::new(
                    "42P05",
                    format!("prepared statement \"{statement}\" already exists"),
                );
                return self.local_error(error).await;
            }
            self.statements.insert(statement, prepared);
            return self
                .local(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
                .await;
        }
        self.statements.insert(statement, prepared);
        self.send(
            Dest::Session,
            PgWireFrontendMessage::Parse(parse),
            Some(Await::Parse),
            true,
        )
        .await
    }

    /// Parses a deferred statement on the coordinator session, answers swallowed.
    async fn parse_on_coordinator(&mut self, statement: &str) -> Result<(), EndpointError> {
        let Some(prepared) = self.statements.get_mut(statement) else {
            return Ok(());
        };
        if prepared.on_coordinator {
            return Ok(());
        }
        prepared.on_coordinator = true;
        let parse = Parse::new(
            (!statement.is_empty()).then(|| statement.to_string()),
            prepared.sql.clone(),
            prepared.types.clone(),
        );
        self.send(
            Dest::Session,
            PgWireFrontendMessage::Parse(parse),
            Some(Await::Parse),
            false,
        )
        .await
    }

    async fn bind(&mut self, bind: Bind) -> Result<(), EndpointError> {
        let statement = name(&bind.statement_name);
        let portal = name(&bind.portal_name);
        let Some(prepared) = self.statements.get(&statement) else {
            // Unknown here: the coordinator answers with PostgreSQL's error.
            self.portals.insert(portal, Portal::Server(Dest::Session));
            return self
                .send(
                    Dest::Session,
                    PgWireFrontendMessage::Bind(bind),
                    Some(Await::Bind),
                    true,
                )
                .await;
        };
        let coordinator_path =
            matches!(&self.txn, Some(t) if t.path == crate::transaction::Path::Coordinator);
        if prepared.plan.is_none() && !coordinator_path && prepared.control != Control::Statement {
            if let Control::Begin { .. }
            | Control::Commit
            | Control::Rollback
            | Control::Savepoint(_)
            | Control::Release(_)
            | Control::RollbackTo(_)
            | Control::ConcurrentIndex { .. } = prepared.control
            {
                let (control, sql) = (prepared.control.clone(), prepared.sql.clone());
                self.portals.insert(portal, Portal::Control(control, sql));
                return self
                    .local(PgWireBackendMessage::BindComplete(BindComplete::new()))
                    .await;
            }
        }
        // In a transaction block only on its participants (see `gather_in_transaction`).
        let scatter = match (&prepared.plan, &prepared.scatter, &self.txn) {
            (None, Some(scatter), None) => Some(scatter.clone()),
            (None, Some(scatter), Some(txn)) if matches!(txn.path, Path::Participants(_)) => {
                Some(scatter.clone())
            }
            _ => None,
        };
        if let Some(scatter) = scatter {
            let portal_state = Portal::Scatter {
                statement: statement.clone(),
                bind,
                scatter,
            };
            self.portals.insert(portal, portal_state);
            return self
                .local(PgWireBackendMessage::BindComplete(BindComplete::new()))
                .await;
        }
        let types = prepared.types.clone();
        let plan = prepared.plan.clone();
        let routed = match &plan {
            Some(plan) => {
                let values = params(&bind.parameters, &bind.parameter_format_codes, &types);
                self.bind_entered(plan, &values)
                    .await
                    .map(|t| (t, plan.clone()))
            }
            None => Err(NotRoutable("it goes to the coordinator".into())),
        };
        let target = routed.as_ref().ok().map(|(t, _)| t.clone());
        let route = match &routed {
            Ok((target, plan)) => self.route(Ok((target.clone(), plan))).await?,
            Err(reason) => self.route(Err(reason.clone())).await?,
        };
        match route {
            Route::Refused(error) => {
                self.shared.metrics.refused();
                self.local_error(error).await
            }
            Route::Coordinator { begin_first } => {
                self.shared.metrics.to_coordinator();
                if begin_first {
                    self.begin_on_coordinator().await?;
                }
                // What the coordinator would run otherwise than one server fails there at
                // once, explained, and the batch with it ([`shoal_route::coordinator`]).
                let refusal = self
                    .statements
                    .get(&statement)
                    .and_then(|p| self.coordinator_refusal(&p.sql));
                if let Some(refusal) = refusal {
                    self.portals.insert(portal, Portal::Server(Dest::Session));
                    return self.inject(Dest::Session, &refusal).await;
                }
                self.parse_on_coordinator(&statement).await?;
                self.portals.insert(portal, Portal::Server(Dest::Session));
                self.send(
                    Dest::Session,
                    PgWireFrontendMessage::Bind(bind),
                    Some(Await::Bind),
                    true,
                )
                .await
            }
            Route::Participant { place, join } => {
                self.shared.metrics.routed();
                if join {
                    self.complete_segment().await?;
                    if let Err(error) = self.join(place).await? {
                        return self.local_error(error).await;
                    }
                } else if let Err(error) = self.hold(place).await {
                    return self
                        .local_error(super::connect_failure(place, &error))
                        .await;
                }
                let target = target.expect("a routed statement has its target");
                let dest = Dest::Shoal(place);
                if let Some(guard) = &target.guard {
                    // In the statement's transaction, before it (see `Target::guard`).
                    self.inject(dest, &super::guard_sql(guard)).await?;
                }
                let parse = Parse::new(None, target.sql, types);
                self.send(
                    dest,
                    PgWireFrontendMessage::Parse(parse),
                    Some(Await::Parse),
                    false,
                )
                .await?;
                let mut bind = bind;
                bind.statement_name = None;
                self.portals.insert(portal, Portal::Server(dest));
                self.send(
                    dest,
                    PgWireFrontendMessage::Bind(bind),
                    Some(Await::Bind),
                    true,
                )
                .await
            }
        }
    }

    async fn describe(&mut self, describe: Describe) -> Result<(), EndpointError> {
        let target = name(&describe.name);
        if describe.target_type == b'S' {
            let control = self.statements.get(&target).map(|p| {
                (
                    p.control != Control::Statement && p.plan.is_none(),
                    p.on_coordinator,
                )
            });
            if let Some((true, false)) = control {
                // Transaction control: no parameters, no rows.
                self.local(PgWireBackendMessage::ParameterDescription(
                    ParameterDescription::new(vec![]),
                ))
                .await?;
                return self
                    .local(PgWireBackendMessage::NoData(NoData::new()))
                    .await;
            }
            self.parse_on_coordinator(&target).await?;
            self.describing.push_back(target);
            return self
                .send(
                    Dest::Session,
                    PgWireFrontendMessage::Describe(describe),
                    Some(Await::Describe),
                    true,
                )
                .await;
        }
        self.materialize(&target).await?;
        match self.portals.get(&target) {
            Some(Portal::Control(..)) => {
                self.local(PgWireBackendMessage::NoData(NoData::new()))
                    .await
            }
            Some(Portal::Scatter { .. }) => unreachable!("materialized above"),
            // Unknown here: the coordinator answers with PostgreSQL's error.
            portal => {
                let dest = portal_dest(portal);
                self.send(
                    dest,
                    PgWireFrontendMessage::Describe(describe),
                    Some(Await::Describe),
                    true,
                )
                .await
            }
        }
    }

    async fn execute(&mut self, execute: Execute) -> Result<(), EndpointError> {
        let portal = name(&execute.name);
        self.materialize(&portal).await?;
        match self.portals.get(&portal) {
            Some(Portal::Scatter { .. }) => unreachable!("materialized above"),
            Some(Portal::Control(control, sql)) => {
                let (control, sql) = (control.clone(), sql.clone());
                if !self.run_control(&control, &sql).await? {
                    // Bound before an earlier statement of the same batch gave the
                    // transaction to the coordinator.
                    let error = crate::error::ServerError::new(
                        "0A000",
                        "transaction control bound before the transaction moved to the \
                         coordinator; send it again",
                    );
                    self.local_error(error).await?;
                }
                Ok(())
            }
            portal => {
                let dest = portal_dest(portal);
                self.send(
                    dest,
                    PgWireFrontendMessage::Execute(execute),
                    Some(Await::Execute),
                    true,
                )
                .await
            }
        }
    }

    /// A split aggregate's portal becomes a portal of the coordinator session: over the
    /// nodes' partials (the merging statement), or, if they could not all answer, over the
    /// statement itself.
    async fn materialize(&mut self, portal: &str) -> Result<(), EndpointError> {
        if !matches!(self.portals.get(portal), Some(Portal::Scatter { .. })) {
            return Ok(());
        }
        let Some(Portal::Scatter {
            statement,
            mut bind,
            scatter,
        }) = self.portals.remove(portal)
        else {
            unreachable!("checked above");
        };
        let parameters = Parameters {
            types: (self.statements.get(&statement))
                .map(|p| p.types.clone())
                .unwrap_or_default(),
            values: bind.parameters.clone(),
            formats: bind.parameter_format_codes.clone(),
        };
        let outcome = if self.txn.is_none() {
            match self.gather(&scatter, Some(&parameters)).await? {
                Some(merge) => InTransaction::Merge(merge),
                None => InTransaction::NotSplit,
            }
        } else {
            self.gather_in_transaction(&scatter, Some(&parameters))
                .await?
        };
        let merged = match outcome {
            InTransaction::Merge(merge) => Some(merge),
            InTransaction::Refused(error) => return self.local_error(error).await,
            // In a transaction on its participants the coordinator cannot take it either.
            InTransaction::NotSplit if self.txn.is_some() => {
                let txn = self.txn.as_mut().expect("a transaction");
                let why = "the client's role lacks a privilege the coordinator checks";
                match txn.route(Need::Coordinator, why) {
                    Err(error) => return self.local_error(error).await,
                    Ok(_) => None,
                }
            }
            InTransaction::NotSplit => None,
        };
        match merged {
            Some(merge) => {
                self.merges += 1;
                let merge_name = Some(format!("__shoal_merge_{}", self.merges));
                let parse = Parse::new(merge_name.clone(), merge, Vec::new());
                self.send(
                    Dest::Session,
                    PgWireFrontendMessage::Parse(parse),
                    Some(Await::Parse),
                    false,
                )
                .await?;
                bind.statement_name = merge_name.clone();
                bind.parameters = Vec::new();
                bind.parameter_format_codes = Vec::new();
                self.send(
                    Dest::Session,
                    PgWireFrontendMessage::Bind(bind),
                    Some(Await::Bind),
                    false,
                )
                .await?;
                let close = Close::new(b'S', merge_name);
                self.send(
                    Dest::Session,
                    PgWireFrontendMessage::Close(close),
                    Some(Await::Close),
                    false,
                )
                .await?;
            }
            None => {
                self.parse_on_coordinator(&statement).await?;
                self.send(
                    Dest::Session,
                    PgWireFrontendMessage::Bind(bind),
                    Some(Await::Bind),
                    false,
                )
                .await?;
            }
        }
        self.portals
            .insert(portal.to_string(), Portal::Server(Dest::Session));
        Ok(())
    }

    async fn close(&mut self, close: Close) -> Result<(), EndpointError> {
        let target = name(&close.name);
        let dest = if close.target_type == b'S' {
            match self.statements.remove(&target) {
                Some(p) if !p.on_coordinator => None,
                _ => Some(Dest::Session),
            }
        } else {
            match self.portals.remove(&target) {
                Some(Portal::Server(dest)) => Some(dest),
                Some(Portal::Control(..)) | Some(Portal::Scatter { .. }) => None,
                None => Some(Dest::Session),
            }
        };
        match dest {
            // A participant released since then has closed its portals with its transaction.
            Some(Dest::Shoal(place)) if !self.held.contains_key(&place) => {
                self.local(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
                    .await
            }
            Some(dest) => {
                self.send(
                    dest,
                    PgWireFrontendMessage::Close(close),
                    Some(Await::Close),
                    true,
                )
                .await
            }
            None => {
                self.local(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
                    .await
            }
        }
    }
}
