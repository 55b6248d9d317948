//! Transaction control the endpoint carries out itself: BEGIN held back until a statement
//! picks the path, savepoints on every participant, and the end of a block, one participant
//! committing alone or several by two-phase commit.

use pgwire::messages::PgWireFrontendMessage;

use super::settings::SessionSettings;
use super::{complete, lost, prepare_failure, Dest, Session};
use crate::control::Control;
use crate::error::{EndpointError, ServerError};
use crate::transaction::{Path, Transaction};
use crate::twophase;
use shoal_route::Place;
use shoal_sql::quote_literal;

impl Session {
    /// Carries out transaction control the endpoint owns; `false` when the statement goes
    /// to the coordinator session as it is.
    pub(super) async fn run_control(
        &mut self,
        control: &Control,
        sql: &str,
    ) -> Result<bool, EndpointError> {
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
    pub(super) async fn settle(&mut self, dest: Dest) -> Result<(), EndpointError> {
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
    pub(super) async fn commit(&mut self, txn: &Transaction) -> Result<(), ServerError> {
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

    pub(super) async fn two_phase_commit(&mut self, places: &[Place]) -> Result<(), ServerError> {
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

    pub(super) async fn abort_prepared(&mut self, prepared: &[(Place, String)], places: &[Place]) {
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
    pub(super) async fn end_participants(&mut self, txn: &Transaction) {
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

    pub(super) fn release(&mut self, place: Place) {
        self.touched.retain(|d| *d != Dest::Shoal(place));
        if let Some(pooled) = self.unhold(place) {
            self.shared.pool.put(place, pooled);
        }
    }

    /// The client left: its open transaction rolls back, connections go back or close.
    pub(super) async fn abandon(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.end_participants(&txn).await;
        }
        if let Some((pid, _)) = self.coordinator.key {
            self.shared
                .holds
                .lock()
                .expect("holds lock")
                .remove(&(Place::Coordinator, pid));
        }
        self.leave_groups();
        let places: Vec<Place> = self.held.keys().copied().collect();
        for place in places {
            if let Some(mut pooled) = self.unhold(place) {
                pooled.reusable = false;
                self.shared.pool.put(place, pooled);
            }
        }
    }

    /// A setting changed mid-transaction reaches the participants already in it.
    pub(super) async fn apply_settings_to_held(&mut self) -> Result<(), EndpointError> {
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
    pub(super) async fn refresh_settings(&mut self) -> Result<(), EndpointError> {
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
